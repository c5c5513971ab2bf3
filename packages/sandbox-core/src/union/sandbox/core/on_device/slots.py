"""Reuse of what one run set up, by the next run with the same settings.

Most of a run's cost on this engine is setting the run up and tearing it down: cloning its
init into fresh namespaces, mounting its scratch filesystems, locking it down, creating and
removing its cgroups. A *slot* keeps two of those across runs whose settings (network
posture, scratch size, rlimits, cgroup limits) are the same:

- the run's cgroups, with their limits written and their ``cgroup.procs`` open, whenever
  the run ended with everything in them killed and reaped (its init reported);
- the run's init, idle in the supervisor, when the run also left it and its namespaces as a
  fresh init would be (the init checks: the scratch directories down to their attributes
  and times, no System V IPC object ever made, no packet sent, its own rlimits, priorities
  and affinity; see ``left_clean`` in ``_supervisor.py``) and the host allowed it;
- for proxied runs (``allowlist``, or ``open`` with a deny-list), the init's proxy listeners,
  which the host arms for each run's rules, credentials and decision log (``egress.py``).
  Proxied and plain runs never share an init: a plain run must not find listeners in its
  network namespace.

A slot is used by one run at a time. Up to ``max_idle`` (64) wait between runs: under
concurrency a finished slot is wanted again a moment later (over the remote transport, a
round trip later). The oldest goes first: its init is told to exit and its cgroups are
removed. Idle *inits* are fewer: the supervisor lets those beyond 8 exit after a second idle
(a slot whose init is gone gets a fresh init when next used), so a burst's surplus of
processes does not outlive it; the cgroup directories stay.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable
from typing import TYPE_CHECKING

from .cgroups import CgroupRun

if TYPE_CHECKING:
    from ..netproxy import ListenerGroup

__all__ = ["RunSlot", "SlotPool"]

DEFAULT_MAX_IDLE = 64


@dataclasses.dataclass(eq=False)
class RunSlot:
    """What a run with these settings can reuse: its cgroups and its idle init."""

    key: Hashable
    cgroup: CgroupRun | None
    init_serial: int = 0
    """The idle init the supervisor keeps for this slot, by serial (0: none)."""
    proxy: ListenerGroup | None = None
    """That init's proxy listeners (proxied runs; ``None`` once the init is gone)."""
    _oom_seen: int = 0
    _pids_seen: int = 0

    def observe(self) -> tuple[int, int]:
        """OOM kills and pids-limit hits in the cgroups since the last call (the counters
        keep counting across the runs that share them)."""
        if self.cgroup is None:
            return 0, 0
        oom, pids = self.cgroup.oom_kills(), self.cgroup.pids_limit_hits()
        new = (oom - self._oom_seen, pids - self._pids_seen)
        self._oom_seen, self._pids_seen = oom, pids
        return new


class SlotPool:
    """Idle slots by settings, most recently used first."""

    def __init__(self, max_idle: int = DEFAULT_MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._idle: collections.OrderedDict[RunSlot, Hashable] = collections.OrderedDict()
        self._by_key: dict[Hashable, list[RunSlot]] = {}

    def take(self, key: Hashable) -> RunSlot | None:
        """An idle slot with these settings, now in use, or ``None``."""
        slots = self._by_key.get(key)
        if not slots:
            return None
        slot = slots.pop()  # the most recent: its init and cgroups are the warmest
        del self._idle[slot]
        return slot

    def put(self, slot: RunSlot) -> list[RunSlot]:
        """Keep ``slot`` for a later run; return the slots that no longer fit (to discard)."""
        self._idle[slot] = slot.key
        self._by_key.setdefault(slot.key, []).append(slot)
        evicted = []
        while len(self._idle) > self.max_idle:
            oldest, key = self._idle.popitem(last=False)
            self._by_key[key].remove(oldest)
            evicted.append(oldest)
        return evicted

    def drain(self) -> list[RunSlot]:
        """Every idle slot, removed from the pool."""
        slots = list(self._idle)
        self._idle.clear()
        self._by_key.clear()
        return slots
