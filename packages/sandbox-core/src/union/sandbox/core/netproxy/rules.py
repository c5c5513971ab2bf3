"""Allow/deny rules and the decision the proxies ask for before every dial.

Rules are parsed once (:meth:`RuleSet.parse`) into lookup tables; a decision is a few dict
and prefix checks plus, for a hostname, one resolution done by the proxy itself (the
client's DNS is never trusted). The addresses that passed are returned in the
:class:`Decision` and are the only ones the proxy dials, so a name cannot re-resolve to
something else between check and connect (DNS rebinding).

Semantics, in order:

1. The host is canonicalised (:func:`~.addresses.parse_host`); anything unparseable is
   refused.
2. Deny-list first: a name rule against the name, CIDR rules against an IP literal, every
   resolved address (the first :data:`MAX_ADDRESSES` of an answer; the rest are ignored,
   never dialled), and the IPv4 address a NAT64/6to4/Teredo address carries. Any hit
   refuses the whole request.
3. An empty allow-list means "anything not denied" (``open`` mode with a deny-list): no
   further checks, private ranges included (the published API leaves that backstop off in
   ``open`` mode, where the run has the host network anyway).
4. Otherwise an IP literal needs a CIDR rule (a hostname rule never authorises a raw IP) and
   a hostname needs a name rule. CIDR rules do not authorise hostnames: a name is resolved
   only once a name rule allowed it, so unlisted names never leak out as DNS queries.
5. A special-purpose address (loopback, private, link-local, CGNAT, metadata, unspecified,
   multicast, reserved) is dialled only if an allow-list CIDR *names that range*: the CIDR
   lies inside it (``127.0.0.0/8``, ``10.1.0.0/16``, ``169.254.169.254``). ``0.0.0.0/0`` or
   ``::/0`` do not name a private range.
6. A rule with ``:port`` matches that port only; without it, any port.

Any exception while deciding refuses (fail closed).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from .addresses import (
    IPAddress,
    IPNetwork,
    canonical_ip,
    embedded_ipv4,
    parse_host,
    special_ranges,
)
from .lookups import blocking_resolver

__all__ = ["Decision", "Resolver", "Rule", "RuleSet", "system_resolver"]

#: ``resolver(name, port)`` returns the addresses (text) ``name`` resolves to.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: Addresses of a name that are considered (checked, and dialled if they pass); the rest of a
#: longer answer is ignored. A hostile DNS answer can carry thousands, and each decision is
#: checked on the proxy's loop and cached with its addresses.
MAX_ADDRESSES = 32

_EXPECTED = (
    "expected a CIDR like '10.0.0.0/8' or '2001:db8::/32', an IP literal like '10.1.2.3' or "
    "'::1', a hostname like 'pypi.org', or a wildcard like '*.example.org', optionally "
    "followed by ':port' ('pypi.org:443', '10.0.0.0/8:8080', '[::1]:8080')"
)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict on one ``host:port`` request.

    ``host`` is the canonical host (an address in its one spelling, or the normalised
    name); ``rule`` the rule text that allowed or denied it, if one did; ``reason`` a sentence
    for people and programs; ``addresses`` the only addresses the proxy may dial (empty when
    refused). ``network_error`` marks a refusal that is not a policy verdict (the name did not
    resolve), which the proxies report as a gateway error instead of "forbidden".
    """

    allowed: bool
    host: str
    port: int
    rule: str | None
    reason: str
    addresses: tuple[str, ...]
    network_error: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parsed entry: a network (IP literals are /32 or /128), or a hostname pattern."""

    text: str
    port: int | None
    network: IPNetwork | None = None
    name: str | None = None
    wildcard: bool = False

    def port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


def _bad(entry: object, why: str) -> ValueError:
    return ValueError(f"invalid network rule {entry!r}: {why}; {_EXPECTED}")


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_port(entry: str, text: str) -> int:
    if not _digits(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise _bad(entry, f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _parse_network(entry: str, address: str, prefix: str | None) -> IPNetwork:
    """A network from an address (any inet_aton / IPv6 spelling) and an optional prefix."""
    try:
        parsed = parse_host(address)
    except ValueError as exc:
        raise _bad(entry, str(exc)) from None
    if isinstance(parsed, str):
        raise _bad(entry, f"{address!r} is not an IP address")
    if ":" in address and parsed.version == 4:
        # ``::ffff:10.0.0.0/104`` is the IPv4 network 10.0.0.0/8: the proxy only ever sees
        # the IPv4 spelling, so the rule must be IPv4 too.
        if prefix is not None and _digits(prefix) and int(prefix) >= 96:
            prefix = str(int(prefix) - 96)
        elif prefix is not None:
            raise _bad(entry, "an IPv4-mapped network needs a prefix length of at least 96")
    bits = 32 if parsed.version == 4 else 128
    if prefix is None:
        return ipaddress.ip_network((parsed, bits))
    if not _digits(prefix) or int(prefix) > bits:
        raise _bad(entry, f"prefix length {prefix!r} is not a number from 0 to {bits}")
    try:
        return ipaddress.ip_network((parsed, int(prefix)))
    except ValueError:
        network = ipaddress.ip_network((parsed, int(prefix)), strict=False)
        raise _bad(entry, f"it has host bits set; did you mean '{network}'?") from None


def _parse_name(entry: str, text: str, port: int | None) -> Rule:
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if "*" in name:
        raise _bad(entry, "'*' is only allowed as a leading '*.' label")
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
        parsed = parse_host(name)
    except (ValueError, UnicodeError) as exc:
        raise _bad(entry, str(exc)) from None
    if not isinstance(parsed, str):
        if wildcard:
            raise _bad(entry, "a wildcard must be followed by a hostname, not an address")
        return Rule(entry, port, network=ipaddress.ip_network(parsed))
    return Rule(entry, port, name=parsed, wildcard=wildcard)


def parse_rule(entry: str) -> Rule:
    """Parse one allow- or deny-list entry; ``ValueError`` says what is wrong with it."""
    if not isinstance(entry, str):
        raise _bad(entry, f"rules are strings, not {type(entry).__name__}")
    text = entry.strip()
    if not text or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise _bad(entry, "empty or contains whitespace")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad(entry, "unbalanced '['")
        inner, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad(entry, f"unexpected {rest!r} after ']'")
            port = _parse_port(entry, rest[1:])
        address, _, prefix = inner.partition("/")
        return Rule(entry, port, network=_parse_network(entry, address, prefix or None))
    if "/" in text:
        address, _, prefix = text.partition("/")
        if ":" in prefix:
            prefix, _, port_text = prefix.partition(":")
            port = _parse_port(entry, port_text)
        return Rule(entry, port, network=_parse_network(entry, address, prefix))
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _parse_port(entry, port_text)
        return _parse_name(entry, host, port)
    if ":" in text:
        return Rule(entry, None, network=_parse_network(entry, text, None))
    return _parse_name(entry, text, None)


class _Table:
    """Rules of one list, pre-sorted for lookup."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.exact: dict[str, list[Rule]] = {}
        self.suffix: dict[str, list[Rule]] = {}
        self.networks: list[tuple[IPNetwork, Rule]] = []
        for rule in rules:
            if rule.network is not None:
                self.networks.append((rule.network, rule))
            elif rule.name is not None:
                table = self.suffix if rule.wildcard else self.exact
                table.setdefault(rule.name, []).append(rule)

    def names_matching(self, name: str) -> list[Rule]:
        """Rules matching ``name``, any port: exact names, then ``*.`` parents, nearest first."""
        found = list(self.exact.get(name, ()))
        rest = name
        while "." in rest:
            rest = rest.split(".", 1)[1]
            found.extend(self.suffix.get(rest, ()))
        return found

    def match_name(self, name: str, port: int) -> Rule | None:
        return next((r for r in self.names_matching(name) if r.port_ok(port)), None)

    def networks_matching(self, address: IPAddress, port: int) -> list[Rule]:
        return [
            rule
            for network, rule in self.networks
            if network.version == address.version and address in network and rule.port_ok(port)
        ]

    def match_address(self, address: IPAddress, port: int) -> tuple[Rule, IPAddress] | None:
        """First rule matching ``address`` or the IPv4 address it carries."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            carried = embedded_ipv4(address)
            if carried is not None:
                candidates.append(carried[0])
        for candidate in candidates:
            rules = self.networks_matching(candidate, port)
            if rules:
                return rules[0], candidate
        return None


def _getaddrinfo(name: str, port: int) -> Sequence[str]:
    infos = socket.getaddrinfo(
        name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_ADDRCONFIG
    )
    return [str(info[4][0]) for info in infos]


#: Addresses of a name from the host's resolver (families this host has configured), looked
#: up on the threads the proxy host provides (:mod:`.lookups`).
system_resolver: Resolver = blocking_resolver(_getaddrinfo)


class RuleSet:
    """A parsed allow-list and deny-list, and the :meth:`decide` check both proxies use.

    Thread-safe: one instance may serve several proxies and event loops. Decisions are cached
    for ``cache_ttl`` seconds per ``(host, port)``, except lookups that failed.
    """

    def __init__(
        self,
        allow: Sequence[Rule],
        deny: Sequence[Rule],
        *,
        resolver: Resolver | None = None,
        cache_ttl: float = 5.0,
        resolve_timeout: float = 10.0,
        cache_size: int = 1024,
    ) -> None:
        self._allow = _Table(allow)
        self._deny = _Table(deny)
        self._resolver: Resolver = resolver or system_resolver
        self._cache_ttl = cache_ttl
        self._resolve_timeout = resolve_timeout
        self._cache_size = cache_size
        self._cache: dict[tuple[str, int], tuple[float, Decision]] = {}
        self._lock = threading.Lock()

    @classmethod
    def parse(
        cls,
        allow: Sequence[str],
        deny: Sequence[str],
        *,
        resolver: Resolver | None = None,
        cache_ttl: float = 5.0,
        resolve_timeout: float = 10.0,
    ) -> RuleSet:
        """Parse both lists; ``ValueError`` names the first bad entry and the valid forms.

        ``resolver`` replaces the system resolver (tests use it to map names to addresses
        without DNS).
        """
        for value, what in ((allow, "allow"), (deny, "deny")):
            if isinstance(value, (str, bytes)):
                raise TypeError(f"the {what}-list must be a sequence of strings, not one string")
        return cls(
            [parse_rule(e) for e in allow],
            [parse_rule(e) for e in deny],
            resolver=resolver,
            cache_ttl=cache_ttl,
            resolve_timeout=resolve_timeout,
        )

    @property
    def open_mode(self) -> bool:
        """True when the allow-list is empty: anything not denied is allowed."""
        return not self._allow.rules

    @property
    def allow_rules(self) -> tuple[Rule, ...]:
        return self._allow.rules

    @property
    def deny_rules(self) -> tuple[Rule, ...]:
        return self._deny.rules

    async def decide(self, host: str, port: int) -> Decision:
        """Decide whether ``host:port`` may be dialled, and to which addresses.

        Never raises (except cancellation): any internal error is a refusal whose reason
        says so.
        """
        key = (host, port)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            decision = await self._decide(host, port)
        except Exception as exc:
            return Decision(
                False,
                _shown(host),
                port,
                None,
                f"internal error while checking the network rules, refused: {exc!r}",
                (),
            )
        if decision.network_error:
            # Not cached: a lookup that failed or timed out (perhaps waiting behind the
            # asking run's own slow lookups) must not become another run's answer.
            return decision
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
            self._cache[key] = (now + self._cache_ttl, decision)
        return decision

    async def _decide(self, host: str, port: int) -> Decision:
        if not isinstance(port, int) or not 0 < port < 65536:
            return _refuse(_shown(host), port, f"invalid port {port!r}")
        try:
            target = parse_host(host)
        except ValueError as exc:
            return _refuse(_shown(host), port, f"invalid host {_shown(host)!r}: {exc}")
        if isinstance(target, str):
            return await self._decide_name(target, port)
        return self._decide_address(target, port)

    def _decide_address(self, address: IPAddress, port: int) -> Decision:
        shown = str(address)
        denied = self._deny.match_address(address, port)
        if denied is not None:
            rule, hit = denied
            via = "" if hit == address else f" (it carries {hit})"
            return _refuse(shown, port, f"{shown}{via} matches deny-list rule {rule.text!r}", rule)
        if self.open_mode:
            return Decision(True, shown, port, None, "not on the deny-list", (shown,))
        matching = self._allow.networks_matching(address, port)
        if not matching:
            return _refuse(
                shown,
                port,
                f"{_target(shown, port)} is not on the allow-list "
                "(an IP address is allowed only by a CIDR or IP rule, never by a hostname rule)",
            )
        ok, allow_rule, why = self._special_ok(address, matching)
        if not ok or allow_rule is None:
            return _refuse(shown, port, f"{shown} is {why}")
        text = allow_rule.text
        return Decision(True, shown, port, text, f"allowed by {text!r}", (shown,))

    async def _decide_name(self, name: str, port: int) -> Decision:
        rule = self._deny.match_name(name, port)
        if rule is not None:
            return _refuse(name, port, f"{name} matches deny-list rule {rule.text!r}", rule)
        allowed_by: Rule | None = None
        if not self.open_mode:
            allowed_by = self._allow.match_name(name, port)
            if allowed_by is None:
                return _refuse(name, port, self._not_listed(name, port))
        try:
            with anyio.fail_after(self._resolve_timeout):
                raw = await self._resolver(name, port)
        except TimeoutError:
            return _unresolved(name, port, f"resolving {name} timed out")
        except OSError as exc:
            detail = exc.strerror or str(exc) or type(exc).__name__
            return _unresolved(name, port, f"cannot resolve {name}: {detail}")
        addresses: list[IPAddress] = []
        for text in list(raw)[:MAX_ADDRESSES]:
            address = canonical_ip(ipaddress.ip_address(str(text).split("%", 1)[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            return _unresolved(name, port, f"{name} resolved to no addresses")
        for address in addresses:
            denied = self._deny.match_address(address, port)
            if denied is not None:
                rule, hit = denied
                return _refuse(
                    name,
                    port,
                    f"{name} resolves to {hit}, which matches deny-list rule {rule.text!r}",
                    rule,
                )
        if allowed_by is None:
            shown = tuple(str(a) for a in addresses)
            return Decision(True, name, port, None, "not on the deny-list", shown)
        passed: list[str] = []
        first_refusal = ""
        naming: list[tuple[IPAddress, Rule]] = []
        for address in addresses:
            ok, network_rule, why = self._special_ok(
                address, self._allow.networks_matching(address, port)
            )
            if not ok:
                first_refusal = first_refusal or f"{name} resolves to {address}, which is {why}"
                continue
            if network_rule is not None and special_ranges(address):
                naming.append((address, network_rule))
            passed.append(str(address))
        if not passed:
            return _refuse(name, port, first_refusal)
        reason = f"allowed by {allowed_by.text!r}"
        if naming:
            address, network_rule = naming[0]
            reason += f"; its address {address} is permitted by {network_rule.text!r}"
        return Decision(True, name, port, allowed_by.text, reason, tuple(passed))

    @staticmethod
    def _special_ok(address: IPAddress, matching: Sequence[Rule]) -> tuple[bool, Rule | None, str]:
        """May ``address`` be dialled, given the allow CIDR rules ``matching`` it?

        Returns ``(ok, rule, why)``: a non-special address is fine (``rule`` is the first
        covering CIDR, if any); a special one needs a covering CIDR that lies inside its
        range, returned as ``rule``; ``why`` says what is missing when not ok.
        """
        ranges = special_ranges(address)
        if not ranges:
            return True, (matching[0] if matching else None), ""
        for rule in matching:
            network = rule.network
            if network is None:
                continue
            for special in ranges:
                inner = special.network
                if isinstance(network, ipaddress.IPv4Network):
                    named = isinstance(inner, ipaddress.IPv4Network) and network.subnet_of(inner)
                else:
                    named = isinstance(inner, ipaddress.IPv6Network) and network.subnet_of(inner)
                if named:
                    return True, rule, ""
        label = ranges[0].label
        article = "an" if label[0] in "aeiou" else "a"
        return (
            False,
            None,
            (
                f"{article} {label} address; only an allow-list CIDR naming that range "
                f"(e.g. '{ranges[0].network}') permits it"
            ),
        )

    def _not_listed(self, name: str, port: int) -> str:
        other_ports = sorted(
            {r.port for r in self._allow.names_matching(name) if r.port is not None}
        )
        if other_ports:
            ports = ", ".join(str(p) for p in other_ports)
            return f"{name} is allowed only on port {ports}, not {port}"
        hint = ""
        if self._allow.networks:
            hint = " (CIDR rules match IP addresses only; add the hostname to allow it by name)"
        return f"{_target(name, port)} is not on the allow-list{hint}"


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shown(host: object) -> str:
    """A client-supplied host, bounded and printable, for messages and logs."""
    text = host if isinstance(host, str) else repr(host)
    text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text[:256])
    return text


def _refuse(host: str, port: int, reason: str, rule: Rule | None = None) -> Decision:
    return Decision(False, host, port, rule.text if rule else None, reason, ())


def _unresolved(host: str, port: int, reason: str) -> Decision:
    return Decision(False, host, port, None, reason, (), network_error=True)
