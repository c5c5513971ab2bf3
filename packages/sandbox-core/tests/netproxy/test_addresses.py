"""Host canonicalisation: every spelling of an address becomes one, names are normalised."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from union.sandbox.core.netproxy.addresses import parse_host, special_ranges

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0X7F000001",
        "0x7f.1",
        "0177.0.0.1",
        "0177.0.0.01",
        "127.1",
        "127.0.1",
        "127.0.0.1.",
        "[::ffff:127.0.0.1]",
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "[::FFFF:7F00:0001]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
    ],
)
def test_loopback_spellings_canonicalise(text: str) -> None:
    assert parse_host(text) == LOOPBACK


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]", ipaddress.IPv6Address("::1")),
        ("0:0:0:0:0:0:0:1", ipaddress.IPv6Address("::1")),
        ("[fe80::1%eth0]", ipaddress.IPv6Address("fe80::1")),
        ("fe80::1%25eth0", ipaddress.IPv6Address("fe80::1")),
        ("[2001:DB8::1]", ipaddress.IPv6Address("2001:db8::1")),
        ("169.254.169.254", ipaddress.IPv4Address("169.254.169.254")),
        ("2852039166", ipaddress.IPv4Address("169.254.169.254")),
        ("0xa9.0xfe.0xa9.0xfe", ipaddress.IPv4Address("169.254.169.254")),
        ("0", ipaddress.IPv4Address("0.0.0.0")),
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        ("LOCALHOST.", "localhost"),
        ("_dmarc.example.org", "_dmarc.example.org"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("1e100.net", "1e100.net"),
        ("0xdead.com", "0xdead.com"),
    ],
)
def test_canonical_forms(text: str, expected: object) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "..",
        "a..b",
        "exa mple.org",
        "example.org ",
        " example.org",
        "127.0.0.1 ",
        "127.0.0.1\n",
        "1.2.3.4.5",
        "256.1.1.1",
        "0x100000000",
        "08.1.1.1",
        "foo.123",
        "[127.0.0.1]",
        "[::1",
        "::1]",
        "[]",
        "[%eth0]",
        "bücher.de",
        "ex/ample.org",
        "ex%41mple.org",
        "user@example.org",
        "-" * 64 + ".org",
        "a" * 64 + ".org",
        ("a" * 60 + ".") * 5 + "org",
        "example.org..",
        "*.example.org",
    ],
)
def test_invalid_hosts_raise(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        parse_host(text)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_spelling_is_the_same_address(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    a, b, c, d = address.packed
    spellings = [
        str(value),
        hex(value),
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{a:#x}.{b:#x}.{c:#x}.{d:#x}",
        f"[::ffff:{address}]",
        f"{address}.",
    ]
    for text in spellings:
        assert parse_host(text) == address, text


@given(st.text(max_size=80))
def test_parse_host_only_raises_value_error(text: str) -> None:
    try:
        result = parse_host(text)
    except ValueError:
        return
    if isinstance(result, str):
        assert result == result.lower()
        assert not result.endswith(".")
        assert result.isascii()
        assert all(c.isalnum() or c in "-_." for c in result)


def inet_aton_reading(text: str) -> ipaddress.IPv4Address | None:
    """What the C resolver makes of ``text`` as an IPv4 literal (``None``: not one).

    A resolver drops exactly one trailing dot (the root label of a fully qualified name) before
    reading the rest; ``'0..'`` keeps an empty label and is no address (nor a valid name).
    """
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


# The '0..' family: more than one trailing dot leaves an empty label. An oracle that stripped
# every trailing dot read them as addresses, and failed whenever Hypothesis drew one.
@given(st.text(alphabet="0123456789abcdefxX.", min_size=1, max_size=24))
@example("0..")
@example("0...")
@example("1..")
@example("0x7f..")
@example("127.0.0.1..")
@example("127.1..")
@example("..")
@example("0.")
@example("127.0.0.1.")
def test_numeric_hosts_follow_inet_aton(text: str) -> None:
    """A host the C resolver would read as an address is read as that same address, and
    nothing it would not read as one becomes an address."""
    expected = inet_aton_reading(text)
    try:
        got: object = parse_host(text)
    except ValueError:
        got = None
    if isinstance(got, str):
        assert expected is None, text  # a name only when the resolver would look it up
        return
    assert got == expected, text


@pytest.mark.parametrize("text", ["0..", "0...", "1..", "0x7f..", "127.0.0.1..", "127.1.."])
def test_more_than_one_trailing_dot_is_no_address(text: str) -> None:
    assert inet_aton_reading(text) is None
    with pytest.raises(ValueError, match="not a valid hostname"):
        parse_host(text)


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fd12::1", "unique local"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::7f00:1", "reserved"),
        ("64:ff9b::7f00:1", "loopback (127.0.0.1 inside)"),
        ("2002:a9fe:a9fe::1", "cloud metadata (169.254.169.254 inside)"),
    ],
)
def test_special_ranges(address: str, label: str) -> None:
    found = special_ranges(ipaddress.ip_address(address))
    assert found, address
    assert label in found[0].label or any(label in r.label for r in found)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1", "64:ff9b::808:808"]
)
def test_public_addresses_are_not_special(address: str) -> None:
    assert special_ranges(ipaddress.ip_address(address)) == []
