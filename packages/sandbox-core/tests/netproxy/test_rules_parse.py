"""Parsing allow- and deny-list entries: what is accepted, and what each error says."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from union.sandbox.core.constants import CLOUD_METADATA_DENY, PYPI_HOSTS
from union.sandbox.core.netproxy import RuleSet
from union.sandbox.core.netproxy.rules import parse_rule


@pytest.mark.parametrize(
    ("entry", "network", "name", "wildcard", "port"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None, False, None),
        ("10.0.0.0/8:8080", "10.0.0.0/8", None, False, 8080),
        ("2001:db8::/32", "2001:db8::/32", None, False, None),
        ("2001:db8::/32:443", "2001:db8::/32", None, False, 443),
        ("[2001:db8::/32]:443", "2001:db8::/32", None, False, 443),
        ("[::1]:8080", "::1/128", None, False, 8080),
        ("[::1]", "::1/128", None, False, None),
        ("::1", "::1/128", None, False, None),
        ("fd00:ec2::254", "fd00:ec2::254/128", None, False, None),
        ("10.1.2.3", "10.1.2.3/32", None, False, None),
        ("10.1.2.3:80", "10.1.2.3/32", None, False, 80),
        ("127.1", "127.0.0.1/32", None, False, None),
        ("0x7f.0/8", "127.0.0.0/8", None, False, None),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8", None, False, None),
        ("169.254.0.0/16", "169.254.0.0/16", None, False, None),
        ("0.0.0.0/0", "0.0.0.0/0", None, False, None),
        ("pypi.org", None, "pypi.org", False, None),
        ("PyPI.org.", None, "pypi.org", False, None),
        ("pypi.org:443", None, "pypi.org", False, 443),
        ("*.pythonhosted.org", None, "pythonhosted.org", True, None),
        ("*.Example.ORG:8443", None, "example.org", True, 8443),
        ("localhost", None, "localhost", False, None),
        ("bücher.de", None, "xn--bcher-kva.de", False, None),
        ("  pypi.org  ", None, "pypi.org", False, None),
    ],
)
def test_valid_entries(
    entry: str, network: str | None, name: str | None, wildcard: bool, port: int | None
) -> None:
    rule = parse_rule(entry)
    assert rule.network == (ipaddress.ip_network(network) if network else None)
    assert rule.name == name
    assert rule.wildcard is wildcard
    assert rule.port == port
    assert rule.text == entry


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("pypi .org", "whitespace"),
        ("10.0.0.0/33", "prefix length"),
        ("10.0.0.1/8", "did you mean '10.0.0.0/8'"),
        ("2001:db8::1/32", "did you mean '2001:db8::/32'"),
        ("2001:db8::/129", "prefix length"),
        ("10.0.0.0/x", "prefix length"),
        ("300.1.2.3", "IPv4"),
        ("pypi.org/simple", "not an IP address"),
        ("*", "'*'"),
        ("*.", "empty host"),
        ("**.example.org", "'*'"),
        ("a.*.example.org", "'*'"),
        ("*example.org", "'*'"),
        ("*.10.0.0.1", "wildcard"),
        ("pypi.org:0", "port"),
        ("pypi.org:65536", "port"),
        ("pypi.org:https", "port"),
        ("pypi.org:", "port"),
        ("[::1", "unbalanced"),
        ("[::1]x", "unexpected"),
        ("[::1]:", "port"),
        ("[pypi.org]", "not an IP address"),
        ("http://pypi.org", "port"),
        ("user@pypi.org", "hostname"),
        ("a..b", "hostname"),
        ("2001:db8:::1", "IPv6"),
        ("10.0.0.0/8:99999", "port"),
    ],
)
def test_invalid_entries_name_the_entry_and_the_valid_forms(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match="invalid network rule") as caught:
        RuleSet.parse([entry], [])
    message = str(caught.value)
    assert repr(entry) in message
    assert why in message
    assert "10.0.0.0/8" in message
    assert "*.example.org" in message


def test_bad_deny_entry_is_reported_too() -> None:
    with pytest.raises(ValueError, match=r"'evil\.\*'"):
        RuleSet.parse(["pypi.org"], ["evil.*"])


def test_non_string_entry() -> None:
    with pytest.raises(ValueError, match="rules are strings"):
        RuleSet.parse([42], [])  # type: ignore[list-item]


def test_a_single_string_is_not_a_list() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        RuleSet.parse("pypi.org", [])


def test_published_constants_parse() -> None:
    ruleset = RuleSet.parse(PYPI_HOSTS, CLOUD_METADATA_DENY)
    assert len(ruleset.allow_rules) == len(PYPI_HOSTS)
    assert len(ruleset.deny_rules) == len(CLOUD_METADATA_DENY)
    assert not ruleset.open_mode


def test_empty_allow_list_is_open_mode() -> None:
    assert RuleSet.parse([], ["169.254.0.0/16"]).open_mode


@given(
    st.text(max_size=60) | st.from_regex(r"\[?[0-9a-fx:.*/\]]{1,30}(:[0-9]{0,6})?", fullmatch=True)
)
def test_parse_rule_only_raises_its_own_value_error(entry: str) -> None:
    try:
        rule = parse_rule(entry)
    except ValueError as exc:
        message = str(exc)
    else:
        assert (rule.network is None) != (rule.name is None)
        assert rule.port is None or 0 < rule.port < 65536
        return
    assert "invalid network rule" in message
