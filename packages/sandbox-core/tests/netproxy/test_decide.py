"""Adversarial rule decisions, table-driven, on a fake resolver (no DNS, no traffic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from union.sandbox.core.constants import CLOUD_METADATA_DENY, PYPI_HOSTS
from union.sandbox.core.netproxy import RuleSet

pytestmark = pytest.mark.anyio

# (allow, deny, host, port, allowed, expected substring of rule-or-reason, addresses or None)
Case = tuple[list[str], list[str], str, int, bool, str, tuple[str, ...] | None]

WILDCARDS: list[Case] = [
    (["*.example.org"], [], "a.example.org", 443, True, "*.example.org", ("93.184.216.34",)),
    (["*.example.org"], [], "b.a.example.org", 443, True, "*.example.org", None),
    (["*.example.org"], [], "A.Example.ORG.", 443, True, "*.example.org", None),
    (["*.example.org"], [], "example.org", 443, False, "not on the allow-list", None),
    (["*.example.org"], [], "evilexample.org", 443, False, "not on the allow-list", None),
    (["*.example.org"], [], "example.org.evil.net", 443, False, "not on the allow-list", None),
    (["*.example.org"], [], "a.example.org.", 443, True, "*.example.org", None),
    (["*.example.org"], [], "a.example.org..", 443, False, "invalid host", None),
]

EXACT_NAMES: list[Case] = [
    (["pypi.org"], [], "pypi.org", 443, True, "pypi.org", ("151.101.0.223",)),
    (["pypi.org"], [], "PYPI.ORG.", 443, True, "pypi.org", None),
    (["pypi.org"], [], "evilpypi.org", 443, False, "not on the allow-list", None),
    (["pypi.org"], [], "pypi.org.evil.net", 443, False, "not on the allow-list", None),
    (["pypi.org"], [], "www.pypi.org", 443, False, "not on the allow-list", None),
    (["pypi.org"], [], "151.101.0.223", 443, False, "never by a hostname rule", None),
    (PYPI_HOSTS, [], "files.pythonhosted.org", 443, True, "files.pythonhosted.org", None),
    (["pypi.org"], [], "pypi.org\x00.evil.net", 443, False, "invalid host", None),
    (["pypi.org"], [], "pypi.org evil.net", 443, False, "invalid host", None),
]

IP_LITERALS: list[Case] = [
    (["127.0.0.0/8"], [], form, 80, True, "127.0.0.0/8", ("127.0.0.1",))
    for form in (
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "::ffff:7f00:1",
        "0x7f000001",
    )
] + [
    (["::1/128"], [], "[::1]", 80, True, "::1/128", ("::1",)),
    (["::1"], [], "0:0:0:0:0:0:0:1", 80, True, "::1", ("::1",)),
    (["fe80::/10"], [], "[fe80::1%eth0]", 80, True, "fe80::/10", ("fe80::1",)),
    (["10.0.0.0/8"], [], "11.0.0.1", 80, False, "not on the allow-list", None),
    (["2001:db8::/32"], [], "[2001:db9::1]", 80, False, "not on the allow-list", None),
]

SPECIAL_RANGES: list[Case] = [
    (["0.0.0.0/0"], [], "8.8.8.8", 53, True, "0.0.0.0/0", ("8.8.8.8",)),
    (["0.0.0.0/0"], [], "127.0.0.1", 80, False, "loopback", None),
    (["0.0.0.0/0"], [], "2130706433", 80, False, "loopback", None),
    (["0.0.0.0/0"], [], "10.1.2.3", 80, False, "private", None),
    (["0.0.0.0/0"], [], "192.168.0.1", 80, False, "private", None),
    (["0.0.0.0/0"], [], "100.64.1.1", 80, False, "carrier-grade NAT", None),
    (["0.0.0.0/0"], [], "169.254.169.254", 80, False, "cloud metadata", None),
    (["0.0.0.0/0"], [], "0.0.0.0", 80, False, "unspecified", None),
    (["0.0.0.0/0"], [], "224.0.0.1", 80, False, "multicast", None),
    (["0.0.0.0/0"], [], "240.0.0.1", 80, False, "reserved", None),
    (["::/0"], [], "[::1]", 80, False, "loopback", None),
    (["::/0"], [], "[fd00:ec2::254]", 80, False, "cloud metadata", None),
    (["::/0"], [], "[fd12::1]", 80, False, "unique local", None),
    (["::/0"], [], "[fe80::1]", 80, False, "link-local", None),
    (["::/0"], [], "[64:ff9b::7f00:1]", 80, False, "127.0.0.1 inside", None),
    (["::/0"], [], "[::7f00:1]", 80, False, "reserved", None),
    (["::/0"], [], "[::ffff:10.0.0.1]", 80, False, "not on the allow-list", None),
    (["10.0.0.0/8"], [], "10.1.2.3", 80, True, "10.0.0.0/8", ("10.1.2.3",)),
    (["10.1.0.0/16"], [], "10.1.2.3", 80, True, "10.1.0.0/16", None),
    (["10.1.2.3"], [], "10.1.2.3", 80, True, "10.1.2.3", None),
    (["169.254.0.0/16"], [], "169.254.169.254", 80, True, "169.254.0.0/16", None),
    (["8.0.0.0/5"], [], "10.1.2.3", 80, False, "private", None),
]

RESOLVED_NAMES: list[Case] = [
    (["private.test"], [], "private.test", 80, False, "resolves to 10.0.0.5", None),
    (["private.test", "10.0.0.0/8"], [], "private.test", 80, True, "private.test", ("10.0.0.5",)),
    (["private.test", "0.0.0.0/0"], [], "private.test", 80, False, "private", None),
    (["private.test", "10.0.0.0/8:8080"], [], "private.test", 80, False, "private", None),
    (["pkg.test"], [], "pkg.test", 80, False, "loopback", None),
    (["pkg.test", "127.0.0.0/8"], [], "pkg.test", 80, True, "pkg.test", ("127.0.0.1",)),
    (["pkg6.test"], [], "pkg6.test", 80, False, "loopback", None),
    (["mapped.test"], [], "mapped.test", 80, False, "loopback", None),
    (["mapped.test", "127.0.0.1"], [], "mapped.test", 80, True, "mapped.test", ("127.0.0.1",)),
    (["ula.test"], [], "ula.test", 80, False, "unique local", None),
    (["cgnat.test"], [], "cgnat.test", 80, False, "carrier-grade NAT", None),
    (["meta.test"], [], "meta.test", 80, False, "cloud metadata", None),
    (["meta6.test"], [], "meta6.test", 80, False, "cloud metadata", None),
    (["linklocal.test"], [], "linklocal.test", 80, False, "link-local", None),
    (["multicast.test"], [], "multicast.test", 80, False, "multicast", None),
    (["zero.test"], [], "zero.test", 80, False, "unspecified", None),
    (["nat64.test"], [], "nat64.test", 80, False, "127.0.0.1 inside", None),
    (["mixed.test"], [], "mixed.test", 80, True, "mixed.test", ("93.184.216.34",)),
    (["public6.test"], [], "public6.test", 443, True, "public6.test", None),
    (["localhost"], [], "nonexistent.test", 80, False, "not on the allow-list", None),
    (["127.0.0.0/8"], [], "pkg.test", 80, False, "CIDR rules match IP addresses only", None),
    (["10.0.0.0/8"], [], "private.test", 80, False, "add the hostname", None),
]

DENY_FIRST: list[Case] = [
    (["*.example.org"], ["bad.example.org"], "bad.example.org", 443, False, "deny-list", None),
    (["*.example.org"], ["bad.example.org"], "BAD.example.org.", 443, False, "deny-list", None),
    (["*.example.org"], ["bad.example.org"], "a.example.org", 443, True, "*.example.org", None),
    (["*.example.org"], ["*.a.example.org"], "b.a.example.org", 443, False, "deny-list", None),
    (["pkg.test", "127.0.0.0/8"], ["127.0.0.1/32"], "pkg.test", 80, False, "resolves to", None),
    (["127.0.0.0/8"], ["127.0.0.1"], "0x7f.1", 80, False, "deny-list rule '127.0.0.1'", None),
    (["0.0.0.0/0"], ["93.184.216.0/24"], "93.184.216.34", 80, False, "deny-list", None),
    (["a.example.org"], ["93.184.216.34"], "a.example.org", 80, False, "resolves to", None),
    (["*.example.org"], ["a.example.org:22"], "a.example.org", 22, False, "deny-list", None),
    (["*.example.org"], ["a.example.org:22"], "a.example.org", 443, True, "*.example.org", None),
]

OPEN_MODE: list[Case] = [
    ([], CLOUD_METADATA_DENY, "public.test", 443, True, "not on the deny-list", None),
    ([], CLOUD_METADATA_DENY, "169.254.169.254", 80, False, "169.254.0.0/16", None),
    ([], CLOUD_METADATA_DENY, "2852039166", 80, False, "169.254.0.0/16", None),
    ([], CLOUD_METADATA_DENY, "[::ffff:169.254.169.254]", 80, False, "169.254.0.0/16", None),
    ([], CLOUD_METADATA_DENY, "[64:ff9b::a9fe:a9fe]", 80, False, "carries 169.254.169.254", None),
    ([], CLOUD_METADATA_DENY, "metadata.google.internal", 80, False, "deny-list", None),
    ([], CLOUD_METADATA_DENY, "METADATA.Google.Internal.", 80, False, "deny-list", None),
    ([], CLOUD_METADATA_DENY, "meta.test", 80, False, "resolves to 169.254.169.254", None),
    ([], CLOUD_METADATA_DENY, "[fd00:ec2::254]", 80, False, "fd00:ec2::254", None),
    ([], CLOUD_METADATA_DENY, "meta6.test", 80, False, "fd00:ec2::254", None),
    ([], CLOUD_METADATA_DENY, "127.0.0.1", 80, True, "not on the deny-list", ("127.0.0.1",)),
    ([], CLOUD_METADATA_DENY, "private.test", 80, True, "not on the deny-list", ("10.0.0.5",)),
]

PORTS: list[Case] = [
    (["pypi.org:443"], [], "pypi.org", 443, True, "pypi.org:443", None),
    (["pypi.org:443"], [], "pypi.org", 80, False, "allowed only on port 443, not 80", None),
    (["pypi.org:443", "pypi.org:8443"], [], "pypi.org", 22, False, "port 443, 8443", None),
    (["10.0.0.0/8:8080"], [], "10.1.1.1", 8080, True, "10.0.0.0/8:8080", None),
    (["10.0.0.0/8:8080"], [], "10.1.1.1", 8081, False, "not on the allow-list", None),
    (["[::1]:8080"], [], "[::1]", 8080, True, "[::1]:8080", None),
    (["[::1]:8080"], [], "[::1]", 8081, False, "not on the allow-list", None),
    (["pypi.org"], [], "pypi.org", 0, False, "invalid port", None),
    (["pypi.org"], [], "pypi.org", 65536, False, "invalid port", None),
]

ALL_CASES = {
    "wildcard": WILDCARDS,
    "exact": EXACT_NAMES,
    "ip-literal": IP_LITERALS,
    "special": SPECIAL_RANGES,
    "resolved": RESOLVED_NAMES,
    "deny-first": DENY_FIRST,
    "open-mode": OPEN_MODE,
    "ports": PORTS,
}


def _flatten() -> list[Any]:
    return [
        pytest.param(case, id=f"{group}-{i}-{case[2]}:{case[3]}")
        for group, cases in ALL_CASES.items()
        for i, case in enumerate(cases)
    ]


@pytest.mark.parametrize("case", _flatten())
async def test_decision_table(make_rules: Callable[..., RuleSet], case: Case) -> None:
    allow, deny, host, port, allowed, text, addresses = case
    decision = await make_rules(allow, deny).decide(host, port)
    assert decision.allowed is allowed, decision
    assert text in f"{decision.rule} {decision.reason}", decision
    if addresses is not None:
        assert decision.addresses == addresses
    if not allowed:
        assert decision.addresses == ()
    assert decision.reason


async def test_unlisted_names_are_never_resolved(net: Any) -> None:
    """A name no rule allows never reaches DNS (no exfiltration through lookups)."""
    resolver = net.FakeResolver()
    ruleset = RuleSet.parse(["pypi.org", "10.0.0.0/8"], [], resolver=resolver)
    decision = await ruleset.decide("c2VjcmV0.attacker.test", 443)
    assert not decision.allowed
    assert resolver.calls == []


async def test_unresolvable_name_is_a_network_error_not_a_policy_refusal(
    make_rules: Callable[..., RuleSet],
) -> None:
    decision = await make_rules(["nope.test"]).decide("nope.test", 443)
    assert not decision.allowed
    assert decision.network_error
    assert "cannot resolve nope.test" in decision.reason


async def test_internal_error_refuses() -> None:
    async def broken(name: str, port: int) -> list[str]:
        raise RuntimeError("resolver exploded")

    decision = await RuleSet.parse(["pypi.org"], [], resolver=broken).decide("pypi.org", 443)
    assert not decision.allowed
    assert "internal error" in decision.reason
    assert "resolver exploded" in decision.reason


async def test_garbage_from_the_resolver_refuses() -> None:
    async def garbage(name: str, port: int) -> list[str]:
        return ["not-an-address"]

    decision = await RuleSet.parse(["pypi.org"], [], resolver=garbage).decide("pypi.org", 443)
    assert not decision.allowed
    assert "internal error" in decision.reason


async def test_empty_resolution_refuses() -> None:
    async def empty(name: str, port: int) -> list[str]:
        return []

    decision = await RuleSet.parse(["pypi.org"], [], resolver=empty).decide("pypi.org", 443)
    assert not decision.allowed
    assert decision.network_error


async def test_resolution_timeout_refuses() -> None:
    import anyio

    async def slow(name: str, port: int) -> list[str]:
        await anyio.sleep(10)
        return ["93.184.216.34"]

    ruleset = RuleSet.parse(["pypi.org"], [], resolver=slow, resolve_timeout=0.05)
    decision = await ruleset.decide("pypi.org", 443)
    assert not decision.allowed
    assert "timed out" in decision.reason


async def test_decisions_are_cached_and_pinned(net: Any) -> None:
    """Within the cache window the same addresses come back without a second lookup, so a
    name cannot rebind between the check and the connect."""
    resolver = net.FakeResolver()
    ruleset = RuleSet.parse(["pypi.org"], [], resolver=resolver, cache_ttl=60)
    first = await ruleset.decide("pypi.org", 443)
    resolver.table["pypi.org"] = ["127.0.0.1"]  # a rebinding attempt
    second = await ruleset.decide("pypi.org", 443)
    assert first == second
    assert first.addresses == ("151.101.0.223",)
    assert resolver.calls == ["pypi.org"]


async def test_cache_expires(net: Any) -> None:
    resolver = net.FakeResolver()
    ruleset = RuleSet.parse(["pypi.org"], [], resolver=resolver, cache_ttl=0)
    await ruleset.decide("pypi.org", 443)
    resolver.table["pypi.org"] = ["127.0.0.1"]
    again = await ruleset.decide("pypi.org", 443)
    assert len(resolver.calls) == 2
    assert not again.allowed  # the rebound address is loopback: refused, not followed


async def test_system_resolver_localhost() -> None:
    """The default resolver (the host's getaddrinfo) on a name that never leaves the host."""
    decision = await RuleSet.parse(["localhost", "127.0.0.0/8", "::1"], []).decide("localhost", 80)
    assert decision.allowed, decision
    assert "127.0.0.1" in decision.addresses or "::1" in decision.addresses


async def test_decide_many_is_fast(make_rules: Callable[..., RuleSet]) -> None:
    """Cached and IP decisions are cheap (a loose bound: this is not a benchmark)."""
    import time

    ruleset = make_rules([*PYPI_HOSTS, "10.0.0.0/8"], CLOUD_METADATA_DENY)
    start = time.perf_counter()
    for i in range(2000):
        await ruleset.decide("pypi.org", 443)
        await ruleset.decide(f"10.0.{i % 256}.1", 443)
    assert time.perf_counter() - start < 5


def test_cases_cover_both_outcomes() -> None:
    outcomes = {case[4] for cases in ALL_CASES.values() for case in cases}
    assert outcomes == {True, False}


async def test_failed_lookups_are_not_cached(net: Any) -> None:
    """A lookup that failed or timed out is not remembered: the rule set is shared by every
    run with the same lists, and one run's failed lookup (behind its own slow ones, say)
    must not become another run's answer."""
    resolver = net.FakeResolver({})
    ruleset = RuleSet.parse(["pkg.test", "127.0.0.0/8"], [], resolver=resolver, cache_ttl=60)
    assert (await ruleset.decide("pkg.test", 443)).network_error
    resolver.table["pkg.test"] = ["127.0.0.1"]
    assert (await ruleset.decide("pkg.test", 443)).allowed
    assert resolver.calls == ["pkg.test", "pkg.test"]


async def test_only_the_first_addresses_of_a_long_answer_count(net: Any) -> None:
    """A hostile answer with thousands of addresses costs the proxy no more than 32: only
    those are checked and dialled (and cached); the rest are never used."""
    from union.sandbox.core.netproxy.rules import MAX_ADDRESSES

    many = [f"93.184.{i // 256}.{i % 256}" for i in range(1, 4000)]
    resolver = net.FakeResolver({"big.test": many, "bad.test": [*many[:5], "10.0.0.1"]})
    ruleset = RuleSet.parse(["*.test"], ["10.0.0.0/8"], resolver=resolver)
    decision = await ruleset.decide("big.test", 443)
    assert decision.allowed
    assert decision.addresses == tuple(many[:MAX_ADDRESSES])
    assert not (await ruleset.decide("bad.test", 443)).allowed  # within the first: denied
