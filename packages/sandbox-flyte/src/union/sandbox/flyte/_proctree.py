"""Finding and killing what a process left behind, from ``/proc``.

The server's sandboxes run under a supervisor in a session of its own (not the server's
process group), so killing the server's group does not reach them directly: they die with
the supervisor (which exits when the server goes, and takes its runs with it through
``PR_SET_PDEATHSIG``). To be sure, the task body snapshots the server's descendants before it
stops the server, and afterwards kills whatever of that snapshot is still alive.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

__all__ = ["Proc", "alive", "descendants", "kill_all", "reap"]


@dataclass(frozen=True)
class Proc:
    """A process identified by pid *and* start time, so a reused pid is never mistaken."""

    pid: int
    start: int


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid``, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def descendants(root: int) -> list[Proc]:
    """Every live process below ``root`` (not ``root`` itself), from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None:
            continue
        children.setdefault(stat[0], []).append(int(entry))
        starts[int(entry)] = stat[2]
    found: list[Proc] = []
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(Proc(pid, starts[pid]))
        todo.extend(children.get(pid, ()))
    return found


def alive(procs: list[Proc]) -> list[Proc]:
    """Those of ``procs`` still running (zombies count as gone: they hold no resources)."""
    out = []
    for proc in procs:
        stat = _stat(proc.pid)
        if stat is not None and stat[2] == proc.start and stat[1] not in ("Z", "X"):
            out.append(proc)
    return out


def kill_all(procs: list[Proc]) -> None:
    """SIGKILL those of ``procs`` still running."""
    for proc in alive(procs):
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap(procs: list[Proc]) -> None:
    """When this process is PID 1 (``a0`` in a pod), orphans are reparented to it and stay
    zombies until it waits for them: wait for those of ``procs`` that have exited."""
    if os.getpid() != 1:
        return
    for proc in procs:
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass
