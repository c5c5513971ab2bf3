"""How each requested limit is enforced on this host, decided before a run starts."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from ..errors import LimitUnavailableError
from ..resources import ResourceLimits
from .cgroups import CgroupSupport

__all__ = [
    "DEFAULT_PIDS",
    "DEFAULT_SESSION_PIDS",
    "LimitPlan",
    "plan_limits",
    "session_pids_budget",
]

#: Processes a run may have at once when the caller sets no ``pids`` limit (where a pids
#: cgroup is available): enough for builds and test runners, low enough to stop a fork bomb.
DEFAULT_PIDS = 4096
#: Processes all runs of one session may have at once, by default: two runs' worth. Never
#: more than a quarter of the host's pid space (``kernel.pid_max``) unless asked for.
DEFAULT_SESSION_PIDS = 2 * DEFAULT_PIDS
#: Size of each run's fresh /tmp and /dev/shm when no ``disk`` limit is given.
DEFAULT_TMP_SIZE = 1 << 30


# A NamedTuple: created at import ~5x faster than a frozen dataclass (docs/design.md).
class LimitPlan(NamedTuple):
    """The limits of one run and the mechanism enforcing each."""

    limits: ResourceLimits
    rlimits: dict[str, int]
    tmp_size: int
    mechanisms: dict[str, str]
    use_cgroup: bool


def plan_limits(limits: ResourceLimits, support: CgroupSupport, *, best_effort: bool) -> LimitPlan:
    """Pick a mechanism for every limit; raise :class:`LimitUnavailableError` for a requested
    limit nothing here can enforce (unless ``best_effort``)."""
    mechanisms: dict[str, str] = {}
    rlimits: dict[str, int] = {"RLIMIT_CORE": 0}
    skipped: list[str] = []
    effective = limits
    for name, field, controller in (
        ("memory", limits.memory_bytes, "memory"),
        ("cpu", limits.cpu_milli, "cpu"),
        ("pids", limits.pids, "pids"),
    ):
        if not field:
            continue
        if support.can(controller):
            mechanisms[name] = support.mechanism(controller)
        elif name == "memory" and best_effort:
            rlimits["RLIMIT_AS"] = limits.memory_bytes
            mechanisms[name] = "rlimit-as (address space, not resident memory)"
        else:
            skipped.append(name)
            mechanisms[name] = "not enforced"
    if skipped and not best_effort:
        why = support.problem or "no cgroup controller for it"
        raise LimitUnavailableError(
            f"cannot enforce the {', '.join(skipped)} limit here: {why}. Pass "
            "best_effort_limits=True to the session to run without it."
        )
    if not limits.pids and support.can("pids"):
        effective = dataclasses.replace(effective, pids=DEFAULT_PIDS)
        mechanisms["pids"] = f"{support.mechanism('pids')} (default {DEFAULT_PIDS})"
    if limits.file_size_bytes:
        rlimits["RLIMIT_FSIZE"] = limits.file_size_bytes
        mechanisms["file_size"] = "rlimit-fsize"
    tmp_size = limits.ephemeral_storage_bytes or DEFAULT_TMP_SIZE
    mechanisms["disk"] = (
        "tmpfs size of /tmp and /dev/shm (the work dir is not limited)"
        if limits.ephemeral_storage_bytes
        else f"tmpfs size of /tmp and /dev/shm (default {DEFAULT_TMP_SIZE >> 20} MiB)"
    )
    use_cgroup = any(
        (
            effective.memory_bytes and support.can("memory"),
            effective.cpu_milli and support.can("cpu"),
            effective.pids and support.can("pids"),
        )
    )
    return LimitPlan(effective, rlimits, tmp_size, mechanisms, bool(use_cgroup))


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


def session_pids_budget(requested: int | None, per_run: int) -> int:
    """The session's pids budget: ``requested`` (``session_pids=``), else the default,
    within a quarter of ``kernel.pid_max`` and at least the session's own per-run limit."""
    if requested:
        return requested
    return max(min(DEFAULT_SESSION_PIDS, _pid_max() // 4), per_run)


def session_mechanisms(
    support: CgroupSupport, session_pids: int, *, isolated: bool, root: bool
) -> dict[str, str]:
    """How the session-wide limits are enforced, for every run's isolation report."""
    enforcers = []
    if support.can("pids"):
        enforcers.append(f"{support.mechanism('pids')} of the session")
    if isolated:
        enforcers.append("rlimit-nproc")
    mechanisms = {
        "session_pids": (
            f"{' and '.join(enforcers)}: {session_pids} for all runs together"
            if enforcers
            else "not enforced"
        )
    }
    if isolated:
        mechanisms["per_user_quotas"] = (
            "the session's own (its user namespace is created by a per-session accounting uid)"
            if root
            else "at most half of the caller's (rlimits and /proc/sys/user of the session)"
        )
    return mechanisms
