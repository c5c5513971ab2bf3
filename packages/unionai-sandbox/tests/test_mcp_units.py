"""The MCP server's own logic without a server: narrowing within the operator's ceiling
(adversarial rule pairs: a call must never get more than the flags grant), trimming a
stream for a model, and the argument checks."""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")  # the [mcp] extra (the modules below do not import it)

from union.sandbox._mcp.ceiling import BadArgument, Ceiling, Refused
from union.sandbox._mcp.output import Spool, utf8_head, utf8_tail
from union.sandbox._mcp.runs import OutputLimits
from union.sandbox._mcp.schema import check_arguments, tool_specs

ALLOW = Ceiling(
    mode="allowlist",
    allow=("pypi.org", "*.example.com", "10.1.0.0/16", "api.test:443", "2001:db8::/32"),
    timeout_s=30,
)


@pytest.mark.parametrize(
    "asked",
    [
        ["pypi.org"],
        ["PyPI.org."],  # the same name, spelled differently
        ["a.example.com", "*.b.example.com"],
        ["10.1.2.0/24", "10.1.2.3"],
        ["api.test:443"],
        ["pypi.org:8443"],  # a port of a rule without one
        ["2001:db8:1::/48"],
    ],
)
def test_narrowing_within_the_allow_list(asked: list[str]) -> None:
    network = ALLOW.network(None, asked, None)
    assert network.mode == "allowlist" and network.allow == tuple(asked)


@pytest.mark.parametrize(
    ("asked", "flag"),
    [
        (["evilpypi.org"], "--allow evilpypi.org"),
        (["pypi.org.evil.net"], "--allow pypi.org.evil.net"),
        (["example.com"], "--allow example.com"),  # the apex is not under its wildcard
        (["*.com"], "--allow *.com"),
        (["10.0.0.0/8"], "--allow 10.0.0.0/8"),  # a wider network
        (["10.0.0.0/15"], "--allow 10.0.0.0/15"),
        (["api.test"], "--allow api.test"),  # any port, where only 443 is granted
        (["api.test:80"], "--allow api.test:80"),
        (["1.2.3.4"], "--allow 1.2.3.4"),
        (["2001:db9::/32"], "--allow 2001:db9::/32"),
        (["::ffff:10.1.2.3"], None),  # IPv4-mapped: allowed only if its IPv4 is (it is)
    ],
)
def test_widening_the_allow_list_is_refused(asked: list[str], flag: str | None) -> None:
    if flag is None:
        ALLOW.network("allowlist", asked, None)
        return
    with pytest.raises(Refused) as refused:
        ALLOW.network("allowlist", asked, None)
    assert refused.value.flag == flag


def test_names_are_never_covered_by_addresses_or_the_reverse() -> None:
    by_name = Ceiling(mode="allowlist", allow=("localhost",))
    with pytest.raises(Refused):
        by_name.network(None, ["127.0.0.1"], None)
    by_address = Ceiling(mode="allowlist", allow=("127.0.0.0/8",))
    with pytest.raises(Refused):
        by_address.network(None, ["localhost"], None)


def test_postures() -> None:
    blocked = Ceiling()
    assert blocked.network(None, None, None).mode == "blocked"
    assert blocked.network("blocked", None, None).mode == "blocked"
    with pytest.raises(Refused, match="--network open"):
        blocked.network("open", None, None)
    with pytest.raises(Refused, match=r"--allow x\.org"):
        blocked.network(None, ["x.org"], None)
    opened = Ceiling(mode="open", deny=("169.254.0.0/16",))
    assert opened.network("allowlist", ["any.org"], ["bad.org"]).allow == ("any.org",)
    assert opened.network(None, None, ["bad.org"]).deny == ("bad.org",)
    with pytest.raises(BadArgument, match="needs allow"):
        opened.network("allowlist", None, None)
    assert ALLOW.network("allowlist", None, None).allow == ALLOW.allow
    with pytest.raises(BadArgument, match="invalid network rule"):
        ALLOW.network(None, ["not a host"], None)
    with pytest.raises(BadArgument, match="goes with network='allowlist'"):
        ALLOW.network("blocked", ["pypi.org"], None)


def test_timeout() -> None:
    assert ALLOW.timeout(None) == 30 and ALLOW.timeout(0.5) == 0.5 and ALLOW.timeout(30) == 30
    with pytest.raises(Refused, match="--timeout 31"):
        ALLOW.timeout(31)


def test_install_network() -> None:
    with pytest.raises(Refused, match="--allow-install"):
        Ceiling().install_network()
    install = Ceiling(allow_install=True).install_network()
    assert install.mode == "allowlist" and "pypi.org" in (install.allow or ())
    pypi = Ceiling(mode="allowlist", allow=("pypi.org", "*.pythonhosted.org"))
    assert pypi.install_network().allow == pypi.allow  # covered already: no widening
    assert Ceiling(mode="open").install_network().mode == "open"
    # A remote sandbox's network is fixed when it opens: wide enough for the install.
    assert Ceiling(allow_install=True).session_network().mode == "allowlist"
    assert Ceiling().session_network().mode == "blocked"


async def _spool(chunks: list[bytes], head: int, tail: int) -> tuple[str, bool, int]:
    spool = Spool("stdout", head=head, tail=tail, file_cap=1 << 20, open_file=None)
    for chunk in chunks:
        await spool.feed(chunk)
    shown = await spool.finish()
    return shown.text, shown.trimmed, shown.total_bytes


@pytest.mark.anyio
async def test_trimming() -> None:
    text, trimmed, total = await _spool([b"short\n"], 10, 10)
    assert (text, trimmed, total) == ("short\n", False, 6)
    lines = [f"line {i}\n".encode() for i in range(1000)]
    text, trimmed, total = await _spool(lines, 20, 20)
    assert trimmed and total == sum(map(len, lines))
    assert text.startswith("line 0\nline 1\nline") and text.endswith("line 999\n")
    assert f"cut from the middle of stdout: {total:,} bytes in all" in text
    # Multi-byte characters cut at either edge are dropped, never shown broken.
    data = "é" * 100
    text, _, _ = await _spool([data.encode()], 5, 5)
    assert "\ufffd" not in text and text.startswith("éé") and text.endswith("éé")


def test_utf8_edges() -> None:
    euro = "€".encode()
    assert utf8_head(b"ab" + euro[:2]) == "ab"
    assert utf8_head(b"ab" + euro) == "ab€"
    assert utf8_tail(euro[1:] + b"cd") == "cd"
    assert utf8_tail(b"\xff\xfecd") == "\ufffd\ufffdcd"  # invalid bytes stay visible


VALID = {"command": "x", "code": "x", "path": "x", "content": "x", "packages": ["x"]}


def test_every_schema_checks_what_it_declares() -> None:
    for spec in tool_specs(ALLOW, OutputLimits()):
        required = spec.schema["required"]
        given = {name: VALID[name] for name in required}
        assert check_arguments(spec.schema, given) == given
        with pytest.raises(BadArgument, match="unknown argument 'nope'"):
            check_arguments(spec.schema, {**given, "nope": 1})
        for name in required:
            others = {other: VALID[other] for other in required if other != name}
            with pytest.raises(BadArgument, match=f"missing required argument '{name}'"):
                check_arguments(spec.schema, others)
    run_shell = next(s for s in tool_specs(ALLOW, OutputLimits()) if s.name == "run_shell")
    with pytest.raises(BadArgument, match="must be a number"):
        check_arguments(run_shell.schema, {"command": "x", "timeout_s": float("nan")})
    with pytest.raises(BadArgument, match=r"the arguments must be an object"):
        check_arguments(run_shell.schema, ["x"])
