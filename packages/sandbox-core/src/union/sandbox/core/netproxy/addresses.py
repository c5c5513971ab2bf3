"""Host canonicalisation and special-purpose address ranges.

Everything the proxies compare against a rule goes through :func:`parse_host` first, so that
one address has exactly one spelling: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``
and ``[::ffff:127.0.0.1]`` all become ``IPv4Address('127.0.0.1')``; hostnames are
lower-cased, lose one trailing dot and must be plain ASCII LDH labels.

IPv4 shorthand follows ``inet_aton`` (what the C resolver applies to numeric hosts), so the
proxy checks the address a client library would have reached with the same string.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Final, TypeAlias

__all__ = [
    "IPAddress",
    "IPNetwork",
    "SpecialRange",
    "canonical_ip",
    "embedded_ipv4",
    "parse_host",
    "special_ranges",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_INET_ATON_CHARS = re.compile(r"[0-9a-fx.]+\Z")
_MAX_NAME = 253


def _v4(text: str) -> ipaddress.IPv4Address:
    """``inet_aton`` semantics (1 to 4 parts, octal and hex parts) on a pre-checked string."""
    if not _INET_ATON_CHARS.match(text):
        raise ValueError("not a valid IPv4 address")
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise ValueError("not a valid IPv4 address") from None


def canonical_ip(address: IPAddress) -> IPAddress:
    """The one spelling of ``address``: IPv4-mapped IPv6 becomes IPv4, a zone id is dropped."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def _v6(text: str) -> IPAddress:
    bare = text.split("%", 1)[0]  # zone id: meaningless off-link, never part of a match
    if not bare:
        raise ValueError("empty IPv6 address")
    try:
        return canonical_ip(ipaddress.IPv6Address(bare))
    except ValueError:
        raise ValueError("not a valid IPv6 address") from None


def parse_host(host: str) -> IPAddress | str:
    """Canonical form of a client-supplied host: an address, or a normalised hostname.

    Raises ``ValueError`` (with a short reason) for anything that is neither, including
    names with characters a DNS hostname cannot hold. Names never reach a resolver before
    passing this check.
    """
    if not host:
        raise ValueError("empty host")
    if len(host) > 1024:
        raise ValueError("host is too long")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("unbalanced '[' in host")
        return _v6(host[1:-1])
    if ":" in host:
        return _v6(host)
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty host")
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # The resolver would treat it as an address (or fail): so do we, never as a name.
        return _v4(name)
    if len(name) > _MAX_NAME:
        raise ValueError("hostname is longer than 253 characters")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(
                "not a valid hostname (labels of letters, digits, '-' and '_', "
                "1 to 63 characters; internationalised names must be sent as punycode)"
            )
    return name


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, IPNetwork] | None:
    """The IPv4 address a translation prefix (NAT64, 6to4, Teredo) carries, with the prefix.

    Rules are checked against the carried address too, so ``64:ff9b::a9fe:a9fe`` is not a
    way around a deny rule for ``169.254.169.254``.
    """
    if address in _NAT64 or address in _NAT64_LOCAL:
        prefix = _NAT64 if address in _NAT64 else _NAT64_LOCAL
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), prefix
    if address.sixtofour is not None:
        return address.sixtofour, _SIXTOFOUR
    if address.teredo is not None:
        return address.teredo[1], _TEREDO
    return None


_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIXTOFOUR: Final = ipaddress.IPv6Network("2002::/16")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")


class SpecialRange:
    """A special-purpose range (RFC 6890 registries) with a label for refusal messages."""

    __slots__ = ("label", "network")

    def __init__(self, network: IPNetwork, label: str) -> None:
        self.network = network
        self.label = label

    def __repr__(self) -> str:
        return f"SpecialRange({str(self.network)!r}, {self.label!r})"


def _ranges(*entries: tuple[str, str]) -> tuple[SpecialRange, ...]:
    return tuple(SpecialRange(ipaddress.ip_network(net), label) for net, label in entries)


# Most specific first: the first hit names the address in messages.
_SPECIAL: Final = _ranges(
    ("169.254.169.254/32", "cloud metadata"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT (shared)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (including broadcast)"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "reserved (IPv4-mapped)"),
    ("::/8", "reserved"),
    ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
    ("100::/64", "reserved (discard-only)"),
    ("2001:db8::/32", "reserved (documentation)"),
    ("2001::/23", "reserved (IETF protocol assignments)"),
    ("3fff::/20", "reserved (documentation)"),
    ("5f00::/16", "reserved (segment routing)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved (deprecated site-local)"),
    ("ff00::/8", "multicast"),
)


def special_ranges(address: IPAddress) -> list[SpecialRange]:
    """Every special-purpose range ``address`` falls in, most specific first.

    For an IPv6 address carrying an IPv4 one (NAT64, 6to4, Teredo) whose IPv4 address is
    special, the translation prefix is reported as the range, labelled after the IPv4 range.
    Also anything ``ipaddress`` does not consider globally reachable lands here, so a range
    missing from the table still fails closed.
    """
    found = [r for r in _SPECIAL if address in r.network]
    if address in _NAT64:
        # The well-known NAT64 prefix is globally routable (DNS64 gives it to every public
        # host on IPv6-only networks): only the IPv4 address it carries decides.
        found = [r for r in found if r.network.prefixlen >= _NAT64.prefixlen]
    if isinstance(address, ipaddress.IPv6Address):
        carried = embedded_ipv4(address)
        if carried is not None:
            inner, prefix = carried
            inner_ranges = special_ranges(inner)
            if inner_ranges:
                found.append(SpecialRange(prefix, f"{inner_ranges[0].label} ({inner} inside)"))
    if not found and not address.is_global:
        host_bits = 32 if address.version == 4 else 128
        found.append(SpecialRange(ipaddress.ip_network((address, host_bits)), "not global"))
    return found
