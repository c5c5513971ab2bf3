"""Hypothesis against both parsers: garbage is refused or closed, and the proxy survives.

The only allowed target is one echo server's port, so whatever a generated request asks
for, the proxy either refuses it, fails to connect, or reaches that echo server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from union.sandbox.core.netproxy import DecisionLog, ProxyHost, RuleSet, make_listeners
from union.sandbox.core.netproxy.http_connect import BadRequest, parse_request

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOWED_STATUSES = {200, 400, 403, 408, 431, 502, 504}


class Fuzzed:
    def __init__(
        self, host: ProxyHost, ports: dict[str, int], echo_port: int, log: DecisionLog
    ) -> None:
        self.host = host
        self.ports = ports
        self.echo_port = echo_port
        self.log = log


@pytest.fixture(scope="module")
def fuzzed(echo: Any) -> Iterator[Fuzzed]:
    with ProxyHost(handshake_timeout=2.0, connect_timeout=2.0) as host:
        listeners = make_listeners()
        ports: dict[str, int] = {kind: int(s.getsockname()[1]) for kind, s in listeners}
        ruleset = RuleSet.parse([f"127.0.0.1/32:{echo.port}"], [])
        log = DecisionLog()
        host.serve("fuzz", listeners, ruleset, log)
        yield Fuzzed(host, ports, echo.port, log)
        assert host.running  # nothing took the proxy thread down


def _targets(echo_port: int) -> st.SearchStrategy[str]:
    hosts = st.sampled_from(
        [
            "127.0.0.1", "2130706433", "0x7f.1", "[::1]", "[::ffff:127.0.0.1]", "localhost",
            "example.invalid", "[fe80::1%eth0]", "169.254.169.254", "", "[", "]", "a:b",
            "127.0.0.1.", "ünï.test", "%00", "*",
        ]
    ) | st.text(max_size=30)  # fmt: skip
    ports = st.sampled_from([str(echo_port), "0", "65536", "", "-1", "80", " 1", "1e3"]) | (
        st.integers(0, 70000).map(str)
    )
    return st.builds(
        lambda h, p, sep: f"{h}{sep}{p}", hosts, ports, st.sampled_from([":", "", "::"])
    )


def _requests(echo_port: int) -> st.SearchStrategy[bytes]:
    methods = st.sampled_from(["CONNECT", "GET", "POST", "connect", "C ONNECT", ""]) | st.text(
        max_size=8
    )
    versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", ""])
    targets = _targets(echo_port) | _targets(echo_port).map(lambda t: f"http://{t}/p")
    headers = st.lists(
        st.sampled_from(["Host: x", "X: y", " folded", "bad", "A:\x01", "Proxy-Connection: close"])
        | st.text(max_size=20),
        max_size=4,
    )
    structured = st.builds(
        lambda m, t, v, h, sep: (sep.join([f"{m} {t} {v}", *h]) + sep + sep).encode(
            "utf-8", "surrogatepass"
        ),
        methods,
        targets,
        versions,
        headers,
        st.sampled_from(["\r\n", "\n", "\r"]),
    )
    return structured | st.binary(max_size=300)


@settings(max_examples=500, deadline=None)
@given(head=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode()))
def test_parse_request_never_crashes(head: bytes) -> None:
    try:
        request = parse_request(head)
    except BadRequest as exc:
        status = exc.status
    else:
        assert 0 < request.port < 65536
        assert request.host
        return
    assert status in (400, 431)


@FUZZ
@given(data=st.data())
def test_http_proxy_fuzz(fuzzed: Fuzzed, net: Any, data: st.DataObject) -> None:
    request = data.draw(_requests(fuzzed.echo_port))
    reply = net.exchange(fuzzed.ports["http"], request)
    if reply and not reply.startswith(b"HTTP/"):
        # An allowed absolute-form request was forwarded to the echo server, which answers
        # with the (rewritten) request itself rather than an HTTP response.
        assert b" HTTP/1." in reply.split(b"\r\n", 1)[0], reply[:200]
        return
    if reply:
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), reply[:200]
        status = int(status_line.split(b" ")[1])
        assert status in ALLOWED_STATUSES, reply[:200]


@FUZZ
@given(data=st.binary(max_size=300))
def test_socks5_fuzz_raw(fuzzed: Fuzzed, net: Any, data: bytes) -> None:
    reply = net.exchange(fuzzed.ports["socks5"], data)
    if reply:
        assert reply[0] == 5, reply


SOCKS_PARTS = st.tuples(
    st.binary(min_size=0, max_size=4),  # offered methods
    st.integers(0, 255),  # command
    st.integers(0, 255),  # address type
    st.binary(max_size=40),  # address bytes
    st.integers(0, 65535),  # port
)


@FUZZ
@given(parts=SOCKS_PARTS)
def test_socks5_fuzz_structured(
    fuzzed: Fuzzed, net: Any, parts: tuple[bytes, int, int, bytes, int]
) -> None:
    methods, command, atyp, address, port = parts
    greeting = bytes((5, len(methods))) + methods
    request = bytes((5, command, 0, atyp)) + address + port.to_bytes(2, "big")
    reply = net.exchange(fuzzed.ports["socks5"], greeting + request)
    if not reply:
        return
    if 0 not in methods:
        assert reply == b"\x05\xff"
        return
    assert reply[:2] == b"\x05\x00"
    rest = reply[2:]
    if rest:
        assert rest[0] == 5
        assert rest[1] in (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x08)


def test_still_serving_after_fuzzing(fuzzed: Fuzzed, net: Any) -> None:
    """Runs last in the module: the proxy still works, and nothing the fuzzers sent was
    allowed anywhere but the one permitted target."""
    allowed = {(d.host, d.port) for d in fuzzed.log.snapshot() if d.allowed}
    assert allowed <= {("127.0.0.1", fuzzed.echo_port)}
    assert len(fuzzed.log) > 100
    connect = f"CONNECT 127.0.0.1:{fuzzed.echo_port} HTTP/1.1\r\n\r\nalive".encode()
    assert net.exchange(fuzzed.ports["http"], connect).endswith(b"\r\n\r\nalive")
    socks = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + fuzzed.echo_port.to_bytes(2, "big")
    assert net.exchange(fuzzed.ports["socks5"], socks + b"alive").endswith(b"alive")
