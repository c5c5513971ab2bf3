"""What a run's proxies decided, connection by connection, for the run's result.

An agent reads it to tell a policy refusal from a network failure: each entry says which
host and port were asked for, whether the rules allowed it (and which rule, or why not),
through which proxy, and how many bytes went each way.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Literal

__all__ = ["DecisionLog", "NetworkDecision", "Protocol"]

#: Which front end handled the request.
Protocol = Literal["http-connect", "http-forward", "socks5"]

#: Longest reason kept (a failed connect lists every address tried, and a name can resolve
#: to thousands): 10,000 entries of a run stay within a few MiB of the caller's memory.
MAX_REASON = 500


def _clip(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 15] + " ... (clipped)"


@dataclasses.dataclass(frozen=True)
class NetworkDecision:
    """One request through a proxy.

    ``host`` is canonical (address in its one spelling, or the lower-cased name); it is
    empty for a request too malformed to name a target. ``allowed`` is the policy verdict;
    a connection that was allowed but could not be made says so in ``reason``.
    ``timestamp`` is UNIX time of the decision; byte counts are final once the connection
    has closed.
    """

    host: str
    port: int
    allowed: bool
    rule: str | None
    reason: str
    protocol: Protocol
    timestamp: float
    bytes_up: int = 0
    bytes_down: int = 0


class DecisionLog:
    """Thread-safe, append-only record of :class:`NetworkDecision` entries.

    Entries are immutable; the proxy replaces an entry's byte counts (and reason, on a
    failed connect) when its connection ends. Bounded: past ``max_entries`` new entries are
    counted in :attr:`dropped` instead of stored, and reasons are clipped to
    :data:`MAX_REASON` characters, so a run opening connections in a loop cannot grow the
    caller's memory without limit.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: list[NetworkDecision] = []
        self._lock = threading.Lock()
        self._max = max_entries
        self.dropped = 0

    def append(self, entry: NetworkDecision) -> int:
        """Add ``entry``; its index for :meth:`update`, or -1 if the log is full."""
        with self._lock:
            if len(self._entries) >= self._max:
                self.dropped += 1
                return -1
            self._entries.append(entry)
            return len(self._entries) - 1

    def record(
        self,
        *,
        host: str,
        port: int,
        allowed: bool,
        rule: str | None,
        reason: str,
        protocol: Protocol,
    ) -> int:
        """Append a decision stamped now; returns its index (see :meth:`append`)."""
        return self.append(
            NetworkDecision(host, port, allowed, rule, _clip(reason), protocol, time.time())
        )

    def update(self, index: int, **changes: Any) -> None:
        """Replace fields of entry ``index`` (no-op for -1)."""
        if index < 0:
            return
        if "reason" in changes:
            changes["reason"] = _clip(changes["reason"])
        with self._lock:
            self._entries[index] = dataclasses.replace(self._entries[index], **changes)

    def snapshot(self) -> list[NetworkDecision]:
        """A copy of the entries so far, in decision order."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
