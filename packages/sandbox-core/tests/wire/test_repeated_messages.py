"""A repeated message field (Termination.network_decisions) round-trips element by element
in both codecs, and two occurrences never merge into one element."""

from __future__ import annotations

from union.sandbox.core.wire import messages as pb


def _termination() -> pb.Termination:
    return pb.Termination(
        exit_code=0,
        network_decisions=[
            pb.NetworkDecision(
                host="pypi.org",
                port=443,
                allowed=True,
                rule="pypi.org",
                reason="allowed",
                protocol="http-connect",
                bytes_down=10,
            ),
            pb.NetworkDecision(
                host="10.0.0.1",
                port=80,
                allowed=False,
                reason="not on the allow-list",
                protocol="socks5",
            ),
        ],
    )


def test_binary_round_trip_keeps_each_element() -> None:
    original = _termination()
    decoded = pb.Termination.decode(original.encode())
    assert decoded == original
    assert [d.host for d in decoded.network_decisions] == ["pypi.org", "10.0.0.1"]


def test_json_round_trip_keeps_each_element() -> None:
    original = _termination()
    assert pb.Termination.from_json_bytes(original.to_json_bytes()) == original


def test_empty_list_is_the_default() -> None:
    assert pb.Termination.decode(pb.Termination(exit_code=3).encode()).network_decisions == []
