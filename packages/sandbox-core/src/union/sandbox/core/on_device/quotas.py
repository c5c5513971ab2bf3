"""Per-user kernel quotas: whose counters a session's runs are charged to, and how much of
them a session may take.

The kernel counts some objects per user. Pending signals (which also bound POSIX timers),
POSIX message queue bytes, locked shared memory and tasks are *rlimit-type* counts; inotify
instances and watches, fanotify groups and marks, and namespaces are *ucounts*. A count made
in a user namespace is charged to (that namespace, the uid) and then, level by level up to
the initial namespace, to (parent namespace, the uid that created the child namespace):
kernel/ucount.c. Each level is checked: rlimit-type counts against the caller's rlimit at
the bottom and, above, against a snapshot of the namespace creator's rlimits taken when it
created the namespace; ucounts against each level's ``/proc/sys/user/max_*``.

So whoever creates the session's user namespace shares every one of these counters with the
sandbox. Creating it as host root (as we did) let a run take host root's pending signals and
inotify instances, and so every other session's. What we do instead:

- **host root**: the namespace is created by a per-session *accounting uid* (never a file
  owner, and only our own short-lived helper ever runs as it: it takes the uid, creates the
  namespace and exits; ids inside still map to the sandbox uid 65534). The level above the
  sandbox is then a counter nobody else uses: host users and other sessions keep theirs.
  The session's own use is bounded as host root's would be (its rlimits, the host's
  ``max_*``), and its tasks by the session's pids budget.
- **unprivileged caller**: its uid creates the namespace and is charged; that cannot be
  avoided without privileges. The sandbox's share is bounded instead, to half of each of the
  caller's quotas: its rlimits (the sandbox's own count is checked against them) and the
  namespace's ``/proc/sys/user/max_*``. Several sessions of one caller together can still
  take all of it.

kuid-keyed counts (``user_struct``: epoll watches, in-flight SCM_RIGHTS descriptors, pipe
buffer pages) are per host uid whatever the namespace: every root-opened session runs as uid
65534 and shares them; see docs/security.md.
"""

from __future__ import annotations

import os
import resource
from typing import Any

__all__ = [
    "ACCOUNT_UID_FIRST",
    "ACCOUNT_UID_SPAN",
    "accounting_uid",
    "session_quota",
    "with_accounting_uid",
]

#: Accounting uids are taken from [FIRST, FIRST + SPAN): unused by distributions, systemd
#: (its nspawn and dynamic ranges end below) and Kubernetes user namespaces (65536-sized
#: blocks from 65536 up, far below); never a file owner.
ACCOUNT_UID_FIRST = 0x70000000
ACCOUNT_UID_SPAN = 1 << 24

#: The rlimit-type counts an unprivileged caller's sandbox gets half of. (A root caller's
#: sandbox keeps the host's values: its counts are its own.)
SHARED_RLIMITS = ("RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_MEMLOCK")
#: Tasks beyond the session's pids budget: the supervisor and prepared inits, which are in
#: no run's cgroup. The cgroup's limit is hit first where there is one.
NPROC_SLACK = 16
#: The ucounts the sandbox can grow itself (it cannot create namespaces: seccomp).
USER_MAX = (
    "max_inotify_instances",
    "max_inotify_watches",
    "max_fanotify_groups",
    "max_fanotify_marks",
)


def accounting_uid(pid: int) -> int:
    """The accounting uid of the session whose supervisor (or bwrap) is ``pid``: unique among
    the live sessions of this pid namespace (a pid is; the uid lives as long as the session's
    namespace, which dies with that process), offset per pid namespace so that sessions in
    other containers of this kernel are unlikely to meet."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    offset = (namespace * 0x9E3779B1) % ACCOUNT_UID_SPAN
    return ACCOUNT_UID_FIRST + (offset + pid) % ACCOUNT_UID_SPAN


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _soft(name: str) -> int:
    soft, _hard = resource.getrlimit(getattr(resource, name))
    return soft


def session_quota(root: bool, session_pids: int) -> dict[str, Any]:
    """What the supervisor applies to its session: ``rlimits`` (name -> value, set as soft
    and hard limit before the namespace exists, so that the namespace's snapshot has them
    too) and ``user_max`` (``/proc/sys/user`` name -> value, written in the session's
    namespace). A root caller's sandbox has counters of its own (the accounting uid, added
    by :func:`with_accounting_uid` once the supervisor's pid is known): only its tasks are
    bounded, by the session's pids budget. An unprivileged caller's sandbox gets half of
    each of the caller's quotas, so that the caller keeps the other half."""
    tasks = session_pids + NPROC_SLACK
    if root:
        return {"rlimits": {"RLIMIT_NPROC": _half_or_less(_soft("RLIMIT_NPROC"), 1, tasks)}}
    rlimits = {name: _half_or_less(_soft(name), 2) for name in SHARED_RLIMITS}
    rlimits["RLIMIT_NPROC"] = _half_or_less(_soft("RLIMIT_NPROC"), 2, tasks)
    user_max: dict[str, int] = {}
    for name in USER_MAX:
        value = _read_int(f"/proc/sys/user/{name}")
        if value is not None:
            user_max[name] = max(1, value // 2)
    return {"rlimits": rlimits, "user_max": user_max}


def _half_or_less(current: int, share: int, cap: int | None = None) -> int:
    """``current // share``, at most ``cap``; an unlimited ``current`` stays unlimited unless
    capped (nobody can be starved of an unlimited quota)."""
    if current == resource.RLIM_INFINITY:
        return resource.RLIM_INFINITY if cap is None else cap
    value = max(1, current // share)
    return value if cap is None else min(value, cap)


def with_accounting_uid(config: dict[str, Any], pid: int) -> dict[str, Any]:
    """``config`` with the accounting uid of the session started as ``pid``, when the session
    needs one (host root, an isolating backend)."""
    quota = config.get("quota")
    if not quota or not quota.get("account"):
        return config
    return {**config, "quota": {**quota, "account_uid": accounting_uid(pid)}}
