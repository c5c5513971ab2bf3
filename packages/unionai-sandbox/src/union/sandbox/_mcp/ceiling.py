"""What the operator allows (the command line's flags), and a tool call narrowed within it.

The operator starts the server; the model only calls tools. So the flags are a ceiling: a
call may ask for less (a shorter timeout, a blocked network, part of the allow-list, more
hosts to refuse) and gets it, and a call that asks for more gets a :class:`Refused` naming
the flag that would allow it. Nothing here runs anything: it is checked before a run starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

from union.sandbox.core.constants import PYPI_HOSTS
from union.sandbox.core.netproxy.rules import Rule, parse_rule

__all__ = ["BadArgument", "Ceiling", "Refused", "RunNetwork"]


class BadArgument(ValueError):
    """A tool argument that cannot mean anything (wrong type, bad rule syntax...)."""


class Refused(Exception):
    """A call that asks for more than the operator allows; says which flag allows it."""

    def __init__(self, asked: str, now: str, flag: str) -> None:
        super().__init__(
            f"refused: {asked}, beyond what the operator allows ({now}). The operator can "
            f"allow it by starting the server with {flag}; within the current limits, leave "
            "the argument out or ask for less."
        )
        self.flag = flag


@dataclasses.dataclass(frozen=True)
class RunNetwork:
    """The network posture of one run: ``allow`` and ``deny`` are ``None`` when empty (the
    session's deny-list applies to every run whatever this says)."""

    mode: str
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.mode == "allowlist":
            return f"allowlist ({', '.join(self.allow or ())})"
        return self.mode


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """The operator's limits: the network posture (``mode``, ``allow``, ``deny``), the
    longest run, and whether the install tool may reach PyPI when runs may not."""

    mode: str = "blocked"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    timeout_s: float = 60.0
    allow_install: bool = False

    def describe_network(self) -> str:
        if self.mode == "allowlist":
            return f"allowlist: {', '.join(self.allow)}"
        return self.mode

    # -- timeout ------------------------------------------------------------------------

    def timeout(self, asked: float | None) -> float:
        """The run's timeout: ``asked`` when within the ceiling, the ceiling when omitted."""
        if asked is None:
            return self.timeout_s
        if asked > self.timeout_s:
            raise Refused(
                f"timeout_s={asked:g}",
                f"at most {self.timeout_s:g} s",
                f"--timeout {asked:g}",
            )
        return asked

    # -- network ------------------------------------------------------------------------

    def network(
        self,
        mode: str | None,
        allow: Sequence[str] | None,
        deny: Sequence[str] | None,
    ) -> RunNetwork:
        """The run's posture for a call's ``network`` / ``allow`` / ``deny`` arguments."""
        extra_deny = _rules(deny, "deny")
        asked_allow = _rules(allow, "allow")
        if mode is None:
            mode = "allowlist" if asked_allow else self.mode
        if mode == "blocked":
            if asked_allow:
                raise BadArgument("allow=[...] goes with network='allowlist', not 'blocked'")
            return RunNetwork("blocked")
        if mode == "open":
            if asked_allow:
                raise BadArgument("allow=[...] goes with network='allowlist', not 'open'")
            if self.mode != "open":
                raise Refused("network='open'", f"network {self.describe_network()}", _OPEN)
            return RunNetwork("open", None, extra_deny or None)
        if mode != "allowlist":
            raise BadArgument(f"network must be 'blocked', 'allowlist' or 'open', got {mode!r}")
        if self.mode == "blocked":
            hosts = ", ".join(asked_allow) or "HOST"
            raise Refused(
                f"network='allowlist' ({hosts})",
                "network blocked",
                " ".join(f"--allow {host}" for host in (asked_allow or ("HOST",))),
            )
        if not asked_allow:
            if self.mode == "open":
                raise BadArgument(
                    "network='allowlist' needs allow=[...]: the hosts the run may reach"
                )
            return RunNetwork("allowlist", self.allow, extra_deny or None)
        if self.mode == "allowlist":
            outside = [host for host in asked_allow if not self._covers(host)]
            if outside:
                raise Refused(
                    f"allow={outside}",
                    f"network {self.describe_network()}",
                    " ".join(f"--allow {host}" for host in outside),
                )
        return RunNetwork("allowlist", asked_allow, extra_deny or None)

    def _covers(self, asked: str) -> bool:
        wanted = parse_rule(asked)
        return any(_covers(parse_rule(granted), wanted) for granted in self.allow)

    def install_network(self) -> RunNetwork:
        """The posture of a package install: the ceiling when it reaches PyPI already, else
        ``sb.PYPI_HOSTS`` on top of the allow-list when the operator passed
        ``--allow-install``."""
        if self.mode == "open":
            return RunNetwork("open")
        if self.mode == "allowlist" and all(self._covers(host) for host in PYPI_HOSTS):
            return RunNetwork("allowlist", self.allow)
        if self.allow_install:
            return RunNetwork("allowlist", tuple(dict.fromkeys((*PYPI_HOSTS, *self.allow))))
        raise Refused(
            "installing packages (it needs PyPI: " + ", ".join(PYPI_HOSTS) + ")",
            f"network {self.describe_network()}",
            "--allow-install (only the install tool may reach PyPI), or "
            + " ".join(f"--allow {host}" for host in PYPI_HOSTS)
            + " (every run may)",
        )

    def session_network(self) -> RunNetwork:
        """The posture a session must be opened with so that every call the ceiling allows
        can run (a remote sandbox's network is fixed when it opens)."""
        if self.mode == "blocked" and self.allow_install:
            return RunNetwork("allowlist", tuple(PYPI_HOSTS), self.deny or None)
        return RunNetwork(self.mode, self.allow or None, self.deny or None)


_OPEN = "--network open"


def _rules(value: Sequence[str] | None, name: str) -> tuple[str, ...]:
    """Entries of a call's ``allow`` / ``deny``, each checked as a network rule."""
    if not value:
        return ()
    out = []
    for entry in value:
        try:
            parse_rule(entry)
        except ValueError as exc:
            raise BadArgument(f"{name}: {exc}") from None
        out.append(entry.strip())
    return tuple(dict.fromkeys(out))


def _covers(granted: Rule, wanted: Rule) -> bool:
    """Whether every target ``wanted`` allows is allowed by ``granted`` too, by the proxy's
    own matching: an address only by an address or CIDR rule, a name only by that name or
    a ``*.`` wildcard above it, a port only by a rule without a port or with the same one.
    When in doubt, not covered (the call is refused, never widened)."""
    if granted.port is not None and granted.port != wanted.port:
        return False
    if wanted.network is not None:
        if granted.network is None or granted.network.version != wanted.network.version:
            return False
        return _subnet(wanted.network, granted.network)
    if granted.name is None or wanted.name is None:
        return False
    if not granted.wildcard:
        return not wanted.wildcard and wanted.name == granted.name
    return wanted.name.endswith("." + granted.name) or (
        wanted.wildcard and wanted.name == granted.name
    )


def _subnet(
    inner: ipaddress.IPv4Network | ipaddress.IPv6Network,
    outer: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False
