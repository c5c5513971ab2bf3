"""Per-run cgroups: memory, pids and CPU limits, and what they observed (OOM kills, pids
limit hits). cgroup v2 where it is delegated to us, cgroup v1 where that is what the host has.

Layout: ``<base>/union-sandbox-<session>-p<pid>.<pid namespace>/run-<n>`` in each hierarchy
we use. The owner's pid (and the pid namespace it is a pid in) in the name lets a later
session remove what a killed process left (see :func:`sweep_stale`). The host creates
the directories and opens each run's ``cgroup.procs`` for writing; the run's init writes
``0`` into it (join myself) before it starts the command, so the command and everything it
forks is charged to the run's cgroup from its first instruction.
"""

from __future__ import annotations

import errno
import os
import re
from typing import NamedTuple

from ..resources import ResourceLimits

__all__ = ["CgroupRun", "CgroupSession", "CgroupSupport", "detect", "sweep_stale"]

ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000


def _own_path(controller: str | None) -> str:
    """This process's cgroup path in a v1 hierarchy (``controller``) or in v2 (``None``)."""
    try:
        text = _read("/proc/self/cgroup")
    except OSError:
        return "/"
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",") if controllers else []
        if (controller is None and not controllers) or controller in names:
            return path
    return "/"


# Paths are plain strings here, not pathlib's: this module loads at every session start.


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _beneath(base: str, cgroup_path: str) -> str:
    """``base`` joined with a cgroup path as /proc/self/cgroup spells it (absolute)."""
    return os.path.normpath(os.path.join(base, cgroup_path.lstrip("/")))


def _make_dir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


# A NamedTuple: created at import ~5x faster than a frozen dataclass (docs/design.md).
class CgroupSupport(NamedTuple):
    """Where per-run cgroups can be created here, or why they cannot."""

    version: str  # "v1", "v2" or "" (none)
    bases: dict[str, str]  # controller ("memory", "pids", "cpu") -> parent directory
    problem: str = ""

    def can(self, controller: str) -> bool:
        return controller in self.bases

    def mechanism(self, controller: str) -> str:
        return f"cgroup-{self.version}" if self.can(controller) else ""


def detect() -> CgroupSupport:
    """Find writable cgroup parents for memory, pids and cpu."""
    if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        return _detect_v2()
    bases: dict[str, str] = {}
    for controller in ("memory", "pids", "cpu"):
        hierarchy = os.path.join(ROOT, controller)
        if not os.path.isdir(hierarchy):
            continue
        own = _beneath(hierarchy, _own_path(controller))
        for candidate in (own, hierarchy):
            if _writable_dir(candidate):
                bases[controller] = candidate
                break
    if not bases:
        return CgroupSupport(
            "",
            {},
            "no writable cgroup v1 hierarchy for memory, pids or cpu "
            "(run as root, or on a cgroup v2 host with delegation)",
        )
    return CgroupSupport("v1", bases)


def _detect_v2() -> CgroupSupport:
    own = _beneath(ROOT, _own_path(None))
    needed = {"memory", "pids", "cpu"}
    try:
        enabled = set(_read(os.path.join(own, "cgroup.subtree_control")).split())
    except OSError:
        enabled = set()
    if not _writable_dir(own):
        return CgroupSupport(
            "",
            {},
            f"cgroup v2 is not delegated to this process ({own} is not "
            "writable): run it in a delegated cgroup, e.g. `systemd-run --user "
            "--scope -p Delegate=yes ...`, or a container with a writable "
            "cgroupns",
        )
    missing = needed - enabled
    if missing:
        # Enabling controllers for children needs a cgroup without processes of its own.
        try:
            _write(
                os.path.join(own, "cgroup.subtree_control"),
                " ".join(f"+{c}" for c in sorted(missing)),
            )
            enabled |= missing
        except OSError as exc:
            controllers = os.path.join(own, "cgroup.controllers")
            available = set(_read(controllers).split()) if os.path.exists(controllers) else set()
            usable = enabled & needed
            if not usable:
                reason = (
                    "this process's cgroup has processes of its own, so it cannot enable "
                    "controllers for children"
                    if exc.errno == errno.EBUSY
                    else str(exc)
                )
                return CgroupSupport(
                    "",
                    {},
                    f"cannot enable cgroup v2 controllers "
                    f"{sorted(missing & available) or sorted(missing)} under "
                    f"{own}: {reason}; run this process in a leaf of a "
                    "delegated subtree (systemd Delegate=yes)",
                )
            enabled = usable
    return CgroupSupport("v2", {c: own for c in needed & enabled})


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_key(fd: int, key: bytes) -> int:
    """The value of ``key`` in a flat-keyed cgroup file opened as ``fd`` (re-read from the
    start: cgroup files are generated afresh on each read)."""
    try:
        for line in os.pread(fd, 4096, 0).splitlines():
            name, _, value = line.partition(b" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


_OWNED = re.compile(r"union-sandbox-.+-p(\d+)\.(\d+)")


def _pid_namespace() -> str:
    """Our pid namespace (its inode): a pid means something only in its namespace."""
    return str(os.stat("/proc/self/ns/pid").st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, someone else's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sweep_stale(support: CgroupSupport) -> list[str]:
    """Remove the session cgroups of processes that are gone (killed before they could close
    their sessions), with their run cgroups; return what was removed. A directory still
    holding a process, whose owner's pid is alive (even reused), or whose owner lived in
    another pid namespace (we cannot tell if it is alive), is left alone."""
    namespace = _pid_namespace()
    removed = []
    for base in set(support.bases.values()):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = _OWNED.fullmatch(name)
            if match is None or match.group(2) != namespace or _alive(int(match.group(1))):
                continue
            path = os.path.join(base, name)
            try:
                for run in os.listdir(path):
                    if run.startswith("run-"):
                        os.rmdir(os.path.join(path, run))
                os.rmdir(path)
            except OSError:
                continue  # busy: processes still leaving, or not ours to remove
            removed.append(path)
    return removed


class CgroupSession:
    """A session's cgroup directory in each hierarchy; runs get children of it. ``pids_max``
    bounds the processes of all its runs together (each run's own limit applies beneath:
    the pids controller is hierarchical in v1 and v2)."""

    def __init__(self, support: CgroupSupport, name: str, pids_max: int = 0) -> None:
        self.support = support
        self.dirs: dict[str, str] = {}
        # What killed processes left goes first: opening a session is when someone is here
        # to notice.
        sweep_stale(support)
        owner = f"{os.getpid()}.{_pid_namespace()}"
        self._pending: list[str] = []
        self._runs: set[CgroupRun] = set()
        self._pids_fd = -1
        try:
            for controller, base in support.bases.items():
                path = os.path.join(base, f"union-sandbox-{name}-p{owner}")
                if path not in self.dirs.values():
                    _make_dir(path)
                    if support.version == "v2":
                        _enable_v2_children(path)
                self.dirs[controller] = path
            if "pids" in self.dirs:
                if pids_max:
                    _write(os.path.join(self.dirs["pids"], "pids.max"), str(pids_max))
                self._pids_fd = os.open(
                    os.path.join(self.dirs["pids"], "pids.events"), os.O_RDONLY | os.O_CLOEXEC
                )
        except BaseException:
            self.cleanup(final=True)
            raise

    def pids_limit_hits(self) -> int:
        """Forks refused by the session's own pids limit (all its runs together)."""
        return _read_key(self._pids_fd, b"max") if self._pids_fd >= 0 else 0

    def create_run(self, run_id: int, limits: ResourceLimits) -> CgroupRun:
        run = CgroupRun(self, run_id, limits)
        self._runs.add(run)
        return run

    def defer_removal(self, path: str) -> None:
        self._pending.append(path)

    def cleanup(self, *, final: bool = False) -> int:
        """Remove run cgroups whose processes are gone (and, if ``final``, ours); how many
        are still waiting for their processes to leave."""
        still = []
        for path in self._pending:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                still.append(path)
        self._pending = still
        if final:
            # Runs nobody waited on still hold their cgroups: the session is over, so are they.
            for run in list(self._runs):
                run.remove()
            for path in [*self._pending, *set(self.dirs.values())]:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            if self._pids_fd >= 0:
                os.close(self._pids_fd)
                self._pids_fd = -1
        return len(self._pending)


def _enable_v2_children(path: str) -> None:
    available = set(_read(os.path.join(path, "cgroup.controllers")).split())
    wanted = available & {"memory", "pids", "cpu"}
    if wanted:
        _write(
            os.path.join(path, "cgroup.subtree_control"),
            " ".join(f"+{c}" for c in sorted(wanted)),
        )


class CgroupRun:
    """One run's cgroups, with its limits written and its ``cgroup.procs`` opened."""

    def __init__(self, session: CgroupSession, run_id: int, limits: ResourceLimits) -> None:
        self.session = session
        self.version = session.support.version
        self.dirs: dict[str, str] = {}
        self.procs_fds: list[int] = []
        # Event counter files, opened once: read after every run that uses these cgroups.
        self._oom_fd = self._pids_fd = -1
        wanted = {"memory": limits.memory_bytes, "pids": limits.pids, "cpu": limits.cpu_milli}
        try:
            for controller, parent in session.dirs.items():
                if not wanted.get(controller):
                    continue  # only the hierarchies that limit something
                path = os.path.join(parent, f"run-{run_id}")
                if path not in self.dirs.values():
                    _make_dir(path)
                    self.procs_fds.append(
                        os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
                    )
                self.dirs[controller] = path
            self._apply(limits)
            if "memory" in self.dirs:
                events = "memory.events" if self.version == "v2" else "memory.oom_control"
                self._oom_fd = os.open(
                    os.path.join(self.dirs["memory"], events), os.O_RDONLY | os.O_CLOEXEC
                )
            if "pids" in self.dirs:
                self._pids_fd = os.open(
                    os.path.join(self.dirs["pids"], "pids.events"), os.O_RDONLY | os.O_CLOEXEC
                )
        except BaseException:
            self.close_fds()
            self.remove()
            raise

    def _apply(self, limits: ResourceLimits) -> None:
        v2 = self.version == "v2"
        join = os.path.join
        if limits.memory_bytes and "memory" in self.dirs:
            mem = self.dirs["memory"]
            if v2:
                _write(join(mem, "memory.max"), str(limits.memory_bytes))
                if os.path.exists(join(mem, "memory.swap.max")):
                    _write(join(mem, "memory.swap.max"), "0")
            else:
                _write(join(mem, "memory.limit_in_bytes"), str(limits.memory_bytes))
                if os.path.exists(join(mem, "memory.memsw.limit_in_bytes")):
                    _write(join(mem, "memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
        if limits.pids and "pids" in self.dirs:
            _write(join(self.dirs["pids"], "pids.max"), str(limits.pids))
        if limits.cpu_milli and "cpu" in self.dirs:
            quota = max(1000, limits.cpu_milli * CPU_PERIOD_US // 1000)
            cpu = self.dirs["cpu"]
            if v2:
                _write(join(cpu, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            else:
                _write(join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                _write(join(cpu, "cpu.cfs_quota_us"), str(quota))

    def oom_kills(self) -> int:
        return _read_key(self._oom_fd, b"oom_kill") if self._oom_fd >= 0 else 0

    def pids_limit_hits(self) -> int:
        return _read_key(self._pids_fd, b"max") if self._pids_fd >= 0 else 0

    def close_fds(self) -> None:
        for fd in [*self.procs_fds, self._oom_fd, self._pids_fd]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.procs_fds = []
        self._oom_fd = self._pids_fd = -1

    def remove(self) -> None:
        self.close_fds()
        self.session._runs.discard(self)
        for path in set(self.dirs.values()):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                # Processes still leaving (the run's init exits after it reports).
                self.session.defer_removal(path)
