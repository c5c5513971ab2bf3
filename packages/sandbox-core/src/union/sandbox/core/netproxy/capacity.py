"""How much of the caller a session's proxies may hold, and how the runs share it.

Whatever a run does through its proxies, the host process pays for: each accepted connection
holds up to :data:`FDS_PER_CONNECTION` descriptors (the client socket, the upstream socket,
a splice pipe per direction) and, once relaying, two pump threads; each name lookup holds a
thread until the resolver returns. So every one of them is admitted against three bounds:

- the run's *share* (a run at its share is refused, recorded in its ``network_decisions``);
- the session's *capacity*, of which greedy runs together may take all but a *headroom*
  that only runs holding fewer than their *floor* may use: a run that starts while others
  sit at their shares still gets its first connections;
- the process's descriptor budget (:data:`PROCESS_DESCRIPTORS`): all proxies of all sessions
  in this process stay within half of ``RLIMIT_NOFILE``, so a run can never make the caller
  run out of descriptors.

Everything here runs on the proxy host's event loop, except :class:`ProcessDescriptors`,
which every session's loop shares (it has a lock).
"""

from __future__ import annotations

import resource
import threading

import anyio

__all__ = [
    "FDS_PER_CONNECTION",
    "MAX_RUN_CONNECTIONS",
    "MAX_SESSION_CONNECTIONS",
    "PROCESS_DESCRIPTORS",
    "ProcessDescriptors",
    "Shares",
    "connection_shares",
]

#: Descriptors one proxied connection can hold at once (2 sockets, 2 pipes of 2 ends).
FDS_PER_CONNECTION = 6
#: Connections one session's proxies hold at most, whatever the descriptor budget allows.
MAX_SESSION_CONNECTIONS = 512
#: A run's share when not configured: a quarter of the session's capacity, at most this.
MAX_RUN_CONNECTIONS = 128


class ProcessDescriptors:
    """Descriptors held by the proxies of every session in this process; at most half of
    the soft ``RLIMIT_NOFILE`` (read at each check, so a limit the caller changes counts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0

    @staticmethod
    def budget() -> int:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 1 << 30
        return int(soft) // 2

    def take(self, n: int) -> bool:
        budget = self.budget()
        with self._lock:
            if self.held + n > budget:
                return False
            self.held += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.held -= n


PROCESS_DESCRIPTORS = ProcessDescriptors()


class Shares:
    """One resource of a session, shared by its runs (any hashable holder).

    The session holds at most ``capacity`` units and a holder at most ``share``. Once the
    session is within ``headroom`` of its capacity, only holders with fewer than ``floor``
    units get more. ``what`` names a unit in refusals ("proxy connections").
    """

    def __init__(self, *, capacity: int, share: int, floor: int, headroom: int, what: str) -> None:
        if capacity < 1:
            raise ValueError(f"the capacity for {what} must be at least 1, got {capacity}")
        if not 0 < share <= capacity:
            raise ValueError(f"a run's share of {what} must be 1 to {capacity}, got {share}")
        self.capacity = capacity
        self.share = share
        self.floor = max(1, min(floor, share))
        self.headroom = max(0, min(headroom, capacity - 1))
        self.what = what
        self.total = 0
        self._held: dict[object, int] = {}
        self._freed: anyio.Event | None = None  # made on the loop, by the first waiter

    def held(self, holder: object) -> int:
        return self._held.get(holder, 0)

    def take(self, holder: object) -> str | None:
        """Count one more unit for ``holder``; or, without counting, why not."""
        held = self._held.get(holder, 0)
        if held >= self.share:
            return (
                f"too many concurrent {self.what}: this run has {held} open, its share of "
                f"the session's proxies (limit {self.share})"
            )
        if self.total >= self.capacity:
            return (
                f"too many concurrent {self.what} in this session "
                f"(limit {self.capacity}, all runs together)"
            )
        if held >= self.floor and self.total >= self.capacity - self.headroom:
            which = "none" if self.floor == 1 else f"fewer than {self.floor}"
            return (
                f"too many concurrent {self.what} in this session: the last {self.headroom} "
                f"of {self.capacity} are kept for runs that have {which} open"
            )
        self._held[holder] = held + 1
        self.total += 1
        return None

    async def acquire(self, holder: object) -> None:
        """Wait until :meth:`take` succeeds (the caller bounds the wait)."""
        while self.take(holder) is not None:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()

    def give_back(self, holder: object) -> None:
        held = self._held.get(holder, 0)
        if held <= 1:
            self._held.pop(holder, None)
        else:
            self._held[holder] = held - 1
        self.total -= 1
        if self._freed is not None:
            self._freed.set()
            self._freed = None


def connection_shares(capacity: int | None = None, per_run: int | None = None) -> Shares:
    """The session's connection shares: ``capacity`` (default: 512, or what half of the
    process's descriptor limit holds, if less), ``per_run`` (default: a quarter of it, at
    most 128); a run's floor is an eighth of its share, the headroom a quarter of capacity."""
    if capacity is None:
        fitting = ProcessDescriptors.budget() // FDS_PER_CONNECTION
        capacity = max(1, min(MAX_SESSION_CONNECTIONS, fitting))
    if per_run is None:
        per_run = max(1, min(MAX_RUN_CONNECTIONS, capacity // 4))
    per_run = min(per_run, capacity)
    return Shares(
        capacity=capacity,
        share=per_run,
        floor=max(1, per_run // 8),
        headroom=capacity // 4,
        what="proxy connections",
    )
