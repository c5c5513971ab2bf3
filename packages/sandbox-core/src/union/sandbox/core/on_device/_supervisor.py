"""Per-session sandbox supervisor. Runs inside the sandbox, stdlib only, one file.

The host starts it once per session (under ``bwrap`` for the bubblewrap backend, directly for
the userns backend) with ``python -I -S <this file> <control-fd>``. It finishes the session
isolation (an unprivileged user namespace; when the host is root, one whose root maps to an
unprivileged host uid), then serves run requests that arrive on a SOCK_SEQPACKET control
socket (``marshal``-encoded, plus file descriptors: stdin, stdout, stderr, status pipe).

Each run is a raw ``clone()`` into fresh pid, mount, IPC (and, unless the posture is
``open``, network) namespaces. The clone becomes the run's init (pid 1): it mounts a fresh
``/tmp``, ``/dev/shm`` and ``/proc``, brings loopback up, applies rlimits, drops every
capability, sets no_new_privs, enters the Landlock domain and the seccomp filter, then
``posix_spawn``s the command (pid 2, its own session) and waits. When the command exits, init
kills and reaps whatever it left behind, reports the status on the run's status pipe and
exits. A timeout is the same; should init fail to end a run by its deadline (stopped,
stuck), the supervisor kills it and reports the timeout itself. A signal for the command
travels as a request on init's socket (init passes it to the command's process group),
never as itself to init. Everything a run needs that does not change between runs
(Landlock rule handles, the seccomp program, the capability bounding set) is prepared once
here, so the per-run work is a handful of syscalls.

Forking from here instead of starting a fresh interpreter and bwrap per run is what keeps a
run at about a millisecond of overhead; see docs/design.md.
"""

# ruff: noqa: PLW0603
from __future__ import annotations

# The C modules behind ``signal`` and ``socket``, and no ``array`` or ``typing``: their
# Python layers import enum, selectors and collections, about 11 of the 14 ms these imports
# took at every session start. (The type checker reads the Python modules' stubs.)
import _socket as socket
import ctypes
import errno
import fcntl
import gc
import marshal
import os
import resource
import select
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]

MACHINE = os.uname().machine
SYS_CLONE = {"x86_64": 56, "aarch64": 220}[MACHINE]
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}[MACHINE]
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
SYS_SCHED_GETATTR = {"x86_64": 315, "aarch64": 275}[MACHINE]
SYS_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}[MACHINE]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME = 1, 2, 4, 8, 1024
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
MS_NODIRATIME, MS_RELATIME = 2048, 1 << 21
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # the same on x86_64 and aarch64
OPEN_TREE_CLONE, AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x1000, 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
PR_SET_SECUREBITS, PR_SET_KEEPCAPS = 28, 8
CAP_SYS_ADMIN = 21
# NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE, each with its LOCKED bit.
SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
MAX_MSG = 1 << 20
_FD_SIZE = struct.calcsize("i")
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
    signal.SIGWINCH,
)

CONFIG: dict[str, Any] = {}
SECCOMP_PROG: Any = None
SECCOMP_FPROG: bytes = b""
RUNS: dict[int, dict[str, Any]] = {}  # init pid -> run record
LANDLOCK_ABI = 0
LANDLOCK_RULES: list[tuple[int, int]] = []  # (O_PATH fd, access) opened once per session
SCRATCH_REBINDS: list[str] = []  # granted paths under /tmp or /dev/shm
# What the session resolved each of those paths to, (device, inode): a run's init binds a
# path back only if it still names the same object (see ``check_rebinds``).
SCRATCH_IDS: dict[str, tuple[int, int]] = {}
WORK_DIR_FD = -1  # during session setup: the work dir, checked to be the host's (O_PATH)
CONTROL_FD = -1
CHILD = 0
WARM: dict[str, tuple[int, socket.socket, int]] = {}  # posture -> prepared (pid, sock, serial)
PENDING_PREFORK: set[str] = set()
WAKE_FDS: list[int] = []
# Inits that may be recycled: serial -> {"pid", "sock"} (the supervisor's end of the init's
# socket). An init whose run ended clean says "I" on it and waits there for its next run.
INITS: dict[int, dict[str, Any]] = {}
INIT_SERIALS: dict[int, int] = {}  # pid -> serial
INIT_BY_FD: dict[int, int] = {}  # socket fd -> serial
INIT_SOCK: socket.socket | None = None  # in a run's init: its socket to the supervisor
IDLE: dict[int, float] = {}  # serial -> when it went idle (oldest first)
# Idle inits beyond this many exit once idle this long (a burst's surplus goes; the host's
# slot then gets a fresh init when next used).
KEEP_IDLE, IDLE_GRACE_S = 8, 1.0
# A run's init ends it at its timeout; past this much more the supervisor does (init may be
# stopped or stuck), so that a deadline holds whatever happens to init.
BACKSTOP_S = 2.0
LAST_SERIAL = 0
POLLER: Any = None
# In a run's init: its serial (what the host names to reuse it), and what its scratch mounts
# looked like before the first run (a later run reuses the init only if they still do).
MY_SERIAL = 0
JOINED_CGROUPS: set[tuple[int, int]] = set()  # cgroup.procs files (dev, inode) we are in
# The cgroup.procs of the session's first run, sent with the configuration: the init prepared
# at startup joins them while the host is still busy, so the first run does not wait for
# the move (a cgroup v1 move waits for an RCU grace period: ~10-30 ms on a loaded VM).
PREFORK_CGROUPS: list[int] = []
HANDLERS_SET = False  # the run's signal handlers are installed (in this init)
PROXY_PORTS: tuple[int, ...] = ()  # this init's proxy listeners (http, socks5), kept
SCRATCH_DIRS: list[str] = []
SCRATCH_BASELINE: Any = None
# What else of the init's namespaces and of init itself a run could change, read at the end of
# each run from descriptors opened once per init (a pread is cheap, a path walk in /proc is
# not), and what it read before the first run. See ``arm_reuse_checks``.
WATCHED_FDS: list[int] = []
WATCHED_BASELINE: list[bytes] = []
REUSE_ARMED = False  # everything left_clean compares could be set up (else: never reuse)
INIT_BASELINE: Any = None
# Every rlimit: RLIM_NLIMITS on Linux (RLIMIT_LOCKS has no name in the resource module).
RLIMITS = range(16)
SCHED_ATTR = ctypes.create_string_buffer(56)  # struct sched_attr, SCHED_ATTR_SIZE_VER1

# Status records on a run's status pipe: a kind byte, then fields.
REC_EXIT, REC_TIMEOUT, REC_ERROR, REC_REAPED = b"E", b"T", b"X", b"R"


class SetupError(Exception):
    """A step of the sandbox setup failed; the message names it."""


class Refused(SetupError):
    """Setup stopped because something it was given changed under it (a granted path
    replaced), not for want of a host feature: the host raises it as it is."""


def check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})")
    return result


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    check(
        LIBC.mount(
            source and source.encode(),
            target.encode(),
            fstype and fstype.encode(),
            flags,
            data and data.encode(),
        ),
        f"mount {fstype or source} on {target}",
    )


def write_file(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Session setup
# --------------------------------------------------------------------------------------


def enter_mapped_userns(host_uid: int, host_gid: int, account_uid: int | None) -> None:
    """As host root: move into a fresh user namespace whose uid/gid 0 are the unprivileged
    ``host_uid``/``host_gid``, keeping full capabilities inside it only. Files the host's root
    owns are then out of reach by ownership, whatever the allow-list says.

    The namespace is created by a helper running as ``account_uid``: the kernel charges
    everything counted per user inside the namespace (pending signals, inotify instances...)
    to its creator as well, and that must not be host root (see quotas.py)."""
    # Supplementary groups are host gids: drop them while we still may.
    os.setgroups([])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            if account_uid is not None:
                become_account_uid(account_uid)
            check(LIBC.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            nsfd = os.open("/proc/self/ns/user", os.O_RDONLY)
            send_fds(theirs, [b"1"], [nsfd])
            theirs.recv(1)  # our namespace must live until the parent has joined it
        except BaseException as exc:  # the parent reports it
            theirs.send(b"0" + str(exc).encode()[:4000])
        finally:
            os._exit(0)
    theirs.close()
    try:
        data, fds, _flags, _addr = recv_request(ours)
        if data != b"1" or len(fds) != 1:
            why = data[1:].decode(errors="replace") or "the helper died"
            raise SetupError(f"could not create the session's user namespace: {why}")
        nsfd = fds[0]
        # The helper is not dumpable (it changed uid), so its namespace comes as a
        # descriptor; its id maps are written from here, by host root.
        write_file(f"/proc/{pid}/uid_map", f"0 {host_uid} 1\n")
        write_file(f"/proc/{pid}/setgroups", "deny\n")
        write_file(f"/proc/{pid}/gid_map", f"0 {host_gid} 1\n")
        try:
            check(LIBC.setns(nsfd, CLONE_NEWUSER), "setns(user namespace)")
        finally:
            os.close(nsfd)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    # Inside the new namespace our ids are unmapped until we take the namespace's root,
    # which is the unprivileged host uid.
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def become_account_uid(uid: int) -> None:
    """In the helper that creates the session's user namespace: take the accounting uid,
    keeping CAP_SYS_ADMIN (hosts that refuse user namespaces to unprivileged users, through
    kernel.unprivileged_userns_clone or AppArmor, still let it create one)."""
    check(LIBC.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    admin = 1 << CAP_SYS_ADMIN
    data = ctypes.create_string_buffer(struct.pack("IIIIII", admin, admin, 0, 0, 0, 0), 24)
    check(LIBC.syscall(SYS_CAPSET, ctypes.c_char_p(header), data), "capset(CAP_SYS_ADMIN)")


def enter_self_mapped_userns() -> None:
    """As an unprivileged host user: a user namespace where we are root (mapped to us)."""
    uid, gid = os.getuid(), os.getgid()
    check(LIBC.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    write_file("/proc/self/uid_map", f"0 {uid} 1\n")
    write_file("/proc/self/setgroups", "deny\n")
    write_file("/proc/self/gid_map", f"0 {gid} 1\n")


def limit_session(rlimits: dict[str, int]) -> None:
    """Set the session's rlimit-type quotas as soft and hard limits, before its user
    namespace exists: every run inherits them (the sandbox's own count is checked against
    them), and the namespace keeps a snapshot that bounds what it charges to its creator."""
    for name, budget in rlimits.items():
        kind = getattr(resource, name)
        _soft, hard = resource.getrlimit(kind)
        value = budget if hard == resource.RLIM_INFINITY else min(budget, hard)
        resource.setrlimit(kind, (value, value))


def limit_user_counts(user_max: dict[str, int]) -> None:
    """In the session's user namespace, while we hold CAP_SYS_RESOURCE there: bound what the
    sandbox counts per user (inotify, fanotify) below the creator's limits. The runs, without
    capabilities, cannot raise them."""
    for name, value in user_max.items():
        try:
            write_file(f"/proc/sys/user/{name}", f"{value}\n")
        except FileNotFoundError:
            continue  # a kernel without that counter
        except OSError as exc:
            raise SetupError(
                f"cannot bound the session's share of the per-user quota {name} "
                f"(/proc/sys/user/{name}: {exc.strerror})"
            ) from None


def outermost(paths: list[str]) -> list[str]:
    """Drop paths that lie under another path of the list (binding the parent covers them)."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def hold(paths: list[str]) -> list[tuple[str, int]]:
    """O_PATH handles on ``paths`` (missing ones skipped), taken before they get covered."""
    held = []
    for path in outermost(paths):
        try:
            held.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SetupError(f"cannot keep granted path {path!r}: {exc.strerror}") from None
    return held


def bind_back(path: str, fd: int, read_only: bool) -> None:
    """Bind the object behind ``fd`` at ``path``, creating a mount point of the right type.
    A bind keeps the flags of the mounts it copies: a path bound read-only in the session
    stays read-only wherever a run binds it again."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    if read_only:
        make_read_only(path)
    os.close(fd)


def make_read_only(path: str) -> None:
    """Make the mount at ``path`` and every mount beneath it read-only (and nosuid)."""
    done = mount_setattr(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    if done == 0:
        return
    if ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM):
        check(done, f"mount_setattr(read-only) on {path}")
    # No mount_setattr (kernel < 5.12, or a filter refusing it): this mount alone, keeping
    # the flags it has (a remount may not clear flags a less privileged namespace locked).
    flags = os.statvfs(path).f_flag
    kept = flags & (MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    kept |= MS_RELATIME if flags & os.ST_RELATIME else 0
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)


def bind_grants(plan: list[list[str]], seal_root: bool) -> None:
    """userns, once per session, in the session's mount namespace (every run's copies it):

    - ``seal_root``: every mount of the host's tree becomes read-only. Landlock mediates
      opening, creating, removing and renaming files but not changing their metadata:
      ``chmod``, ``chown``, ``utimensat`` and ``setxattr`` (ACLs among them) of a file
      outside every grant need nothing but the sandbox uid owning it, which for a non-root
      caller is every file of the caller's. A read-only mount refuses them all.
    - Each read-only grant beneath a writable one is bound read-only: Landlock rights add
      up along a path, so a read-only grant beneath a read-write grant, the work dir, or
      the fresh /tmp a run binds it back under would be writable by Landlock alone.
    - Each read-write grant is bound back writable, from a copy of its mounts taken
      before the seal (``open_tree``), so it keeps the host's mount flags.

    ``plan`` is shallowest first (the deeper grant decides); every handle is taken before
    anything is covered, the work dir's being the one checked against the host's."""
    held: list[tuple[str, int, str]] = []
    try:
        for path, kind in plan:
            try:
                fd = open_grant(path)
            except FileNotFoundError:
                continue  # a granted path that does not exist grants nothing
            except OSError as exc:
                raise SetupError(f"cannot keep granted path {path!r}: {exc.strerror}") from None
            if kind == "rw":
                try:
                    fd = clone_tree(fd, path)
                except BaseException:
                    os.close(fd)
                    raise
            held.append((path, fd, kind))
        if seal_root:
            set_mount_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, "read-only")
        while held:
            path, fd, kind = held.pop(0)
            if kind == "rw":
                attach_tree(fd, path)
            else:
                bind_back(path, fd, read_only=True)
    finally:
        for _path, fd, _kind in held:
            os.close(fd)


def clone_tree(fd: int, path: str) -> int:
    """A detached copy of the mounts at and beneath ``fd`` as they are now (their flags
    included), for :func:`attach_tree`; ``fd`` is closed."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE
    try:
        return check(LIBC.syscall(SYS_OPEN_TREE, fd, b"", flags), f"open_tree(copy of {path})")
    finally:
        os.close(fd)


def attach_tree(tree: int, path: str) -> None:
    """Mount a copy made by :func:`clone_tree` at ``path``; ``tree`` is closed."""
    try:
        check(
            LIBC.syscall(
                SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"move_mount onto {path}",
        )
    finally:
        os.close(tree)


def mount_setattr(path: str, attr_set: int) -> int:
    """``mount_setattr(2)`` setting ``attr_set`` on the mount at ``path`` and every mount
    beneath it; the raw result (-1 and errno on failure)."""
    attr = struct.pack("QQQQ", attr_set, 0, 0, 0)
    return int(
        LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, attr, len(attr))
    )


def set_mount_attr(path: str, attr_set: int, what: str) -> None:
    """:func:`mount_setattr`, no fallback: this backend needs Landlock, so a kernel of 5.13
    or later, which has it."""
    check(mount_setattr(path, attr_set), f"mount_setattr({what}) on {path}")


def hold_work_dir(path: str, expected: list[int]) -> int:
    """An O_PATH handle on the work dir at ``path``, if that is still the directory the host
    holds open (``expected``: its device and inode, which the host's descriptor keeps from
    being reused). A live sandbox that can write the path's parents (a pinned dir inside
    another session's work dir) may have replaced it since the host opened it: the session
    then fails rather than bind or grant whatever is there now."""
    why = "it is another directory now"
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        why = exc.strerror or "it cannot be opened"
    else:
        st = os.fstat(fd)
        if [st.st_dev, st.st_ino] == list(expected):
            return fd
        os.close(fd)
    raise Refused(
        f"the work dir {path!r} was replaced after the session opened it ({why}; is a "
        "sandbox that can write its parent renaming or linking it?); open the session again"
    )


def open_grant(path: str) -> int:
    """An O_PATH handle on a granted path: the checked one for the work dir."""
    if WORK_DIR_FD >= 0 and path == CONFIG.get("work_dir"):
        return os.dup(WORK_DIR_FD)
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def mask_dirs_as_root(masks: list[str], rebinds: list[str]) -> None:
    """Userns backend as host root: in a private mount namespace, cover ``masks`` (``/root``,
    ``/home``) with empty tmpfs, then bind back the granted paths that lived under them (the
    interpreter, uv). Done with host root's rights, before dropping to the unprivileged uid,
    so that a Python under ``/root/.pyenv`` stays usable while the rest of ``/root`` is gone."""
    check(LIBC.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    under = [p for p in rebinds if any(p.startswith(m.rstrip("/") + "/") for m in masks)]
    held = hold(under)
    for mask in masks:
        if os.path.isdir(mask):
            mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    for path, fd in held:
        bind_back(path, fd, read_only=False)
    for mask in masks:
        if os.path.isdir(mask):
            mount(None, mask, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")


#: In the minimal /dev of a userns session, as in bubblewrap's.
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)


def minimal_dev(binds: list[str]) -> None:
    """userns: cover the host's /dev (a default read-only grant) with an empty tmpfs that
    holds ``binds`` (the usual device nodes, /dev/shm beneath which grants are bound back
    each run, and granted paths under /dev), bound from the host's, plus the usual links.
    The host's /dev holds a non-root caller's own terminals (``/dev/pts/N``: a run could
    read what is typed into them) and whatever devices the host gave the caller; bubblewrap
    builds its /dev the same way. The tmpfs becomes read-only with the rest of the tree."""
    held = hold(binds)
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for path, fd in held:
        bind_back(path, fd, read_only=False)
    for name in ("pts", "shm"):
        os.makedirs(f"/dev/{name}", 0o755, exist_ok=True)
    for name, target in DEV_LINKS:
        os.symlink(target, f"/dev/{name}")


def landlock_abi() -> int:
    abi = LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)
    return abi if abi > 0 else 0


LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
LL_FILE_RIGHTS = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV


def landlock_handled(abi: int) -> int:
    """Every filesystem right this kernel's Landlock ABI knows."""
    handled = (1 << 13) - 1
    if abi >= 2:
        handled |= 1 << 13  # REFER
    if abi >= 3:
        handled |= LL_TRUNCATE
    if abi >= 5:
        handled |= LL_IOCTL_DEV
    return handled


def landlock_access(kind: str, is_dir: bool) -> int:
    access = landlock_handled(LANDLOCK_ABI)
    if kind != "rw":
        access = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
    return access if is_dir else access & LL_FILE_RIGHTS


def prepare_landlock(rules: list[list[str]]) -> None:
    """Open every granted path once; runs turn these handles into a ruleset. The per-run
    scratch mounts (/tmp, /dev/shm) are new each run and are added by the run itself."""
    for path, kind in rules:
        if path in ("/tmp", "/dev/shm", "/proc"):
            continue
        try:
            fd = open_grant(path)
        except OSError:
            continue  # a granted path that does not exist grants nothing
        is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
        LANDLOCK_RULES.append((fd, landlock_access(kind, is_dir)))


def prepare_seccomp(filter_bytes: bytes) -> None:
    global SECCOMP_PROG, SECCOMP_FPROG
    if not filter_bytes:
        return
    SECCOMP_PROG = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    SECCOMP_FPROG = struct.pack("HxxxxxxP", len(filter_bytes) // 8, ctypes.addressof(SECCOMP_PROG))


def drop_bounding_set() -> None:
    """No run may ever regain a capability through execve: empty the bounding set once for
    the whole session (we keep our own effective capabilities; we never execve)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")


def setup_session(config: dict[str, Any]) -> str:
    """Finish the session-level isolation; return the facts line of the ready message."""
    global LANDLOCK_ABI, WORK_DIR_FD
    mode = config["mode"]
    quota = config.get("quota") or {}
    root = os.getuid() == 0
    if mode == "userns":
        if root:
            mask_dirs_as_root(config["mask_dirs"], config["rebind"])
            limit_session(quota.get("rlimits", {}))
            enter_mapped_userns(
                config["sandbox_uid"], config["sandbox_gid"], quota.get("account_uid")
            )
        else:
            limit_session(quota.get("rlimits", {}))
            enter_self_mapped_userns()
            limit_user_counts(quota.get("user_max", {}))
        check(
            LIBC.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC),
            "unshare(mount, uts, ipc namespaces)",
        )
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        socket.sethostname("sandbox")
        # Landlock does not mediate connect() on pathname unix sockets, and this backend
        # shows the host's tree: hide the usual socket directories (D-Bus, journald, the
        # Docker socket) behind empty read-only tmpfs.
        for path in config.get("hide_dirs", ()):
            if os.path.isdir(path) and not os.path.islink(path):
                mount(
                    "tmpfs",
                    path,
                    "tmpfs",
                    MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                    "mode=0755,size=4k",
                )
        if config.get("dev_binds") is not None:
            minimal_dev(config["dev_binds"])
    elif mode == "bwrap":
        # bwrap's /proc carries read-only covers (/proc/sys, ...): they would be locked from
        # the mapped namespace below, and the kernel only lets a run mount its own /proc
        # while a fully visible one exists; an unprivileged caller's session also writes
        # /proc/sys/user. Stack a clean instance first.
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        limit_session(quota.get("rlimits", {}))
        if root and config.get("sandbox_uid") is not None and not config["in_userns"]:
            # bubblewrap started as host root: bwrap built the root and namespaces with
            # root's rights; now leave the initial user namespace for an unprivileged one.
            enter_mapped_userns(
                config["sandbox_uid"], config["sandbox_gid"], quota.get("account_uid")
            )
        else:
            limit_user_counts(quota.get("user_max", {}))
    # Nobody in a run may ptrace or read our memory, whatever happens.
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    isolate = mode != "none"
    if isolate:
        # In the session's mount namespace (bwrap's root: where bwrap bound it): from here
        # on the work dir is reached through this handle only, never by its path again.
        WORK_DIR_FD = hold_work_dir(config["work_dir"], config["work_dir_id"])
        drop_bounding_set()
        if config.get("landlock"):
            LANDLOCK_ABI = landlock_abi()
            if not LANDLOCK_ABI and mode == "userns":
                # userns confines files with Landlock alone: without it there is no backend.
                raise SetupError(
                    "Landlock is not available (kernel older than 5.13, or landlock missing "
                    "from the lsm= boot parameter): the userns backend cannot confine files"
                )
            prepare_landlock(config["landlock_rules"])
        prepare_seccomp(bytes.fromhex(config.get("seccomp", "")))
        SCRATCH_REBINDS.extend(outermost(config["scratch_rebinds"]))
    with open("/proc/self/uid_map") as f:
        _inside, outside, _count = f.read().split()[:3]
    return f"{LANDLOCK_ABI} {outside} {int(bool(SECCOMP_FPROG))}"


# --------------------------------------------------------------------------------------
# Per-run init (pid 1 of the run's pid namespace)
# --------------------------------------------------------------------------------------


def loopback_up() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, ifreq))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))
    finally:
        sock.close()


def remember_rebinds() -> None:
    """At the end of session setup: what each path a run binds back under its fresh /tmp or
    /dev/shm is (the work dir: the host's), then let go of the work dir's handle."""
    global WORK_DIR_FD
    for path in SCRATCH_REBINDS:
        try:
            fd = open_grant(path)
        except FileNotFoundError:
            continue  # a granted path that does not exist grants nothing, now or later
        st = os.fstat(fd)
        os.close(fd)
        SCRATCH_IDS[path] = (st.st_dev, st.st_ino)
    SCRATCH_REBINDS[:] = [path for path in SCRATCH_REBINDS if path in SCRATCH_IDS]
    if WORK_DIR_FD >= 0:
        os.close(WORK_DIR_FD)
        WORK_DIR_FD = -1


def check_rebinds(held: list[tuple[str, int]]) -> None:
    """A run's init resolves the paths it binds back by name, in its own mount namespace:
    each must still be what the session resolved. Their parents are host directories, and
    where another sandbox may write one (a pinned work dir inside another session's work
    dir) it could have put something else there, which beneath the fresh /tmp would get
    that mount's rights."""
    for path, fd in held:
        st = os.fstat(fd)
        if SCRATCH_IDS.get(path) != (st.st_dev, st.st_ino):
            for _path, other in held:
                os.close(other)
            raise SetupError(
                f"the granted path {path!r} was replaced after the session started (is a "
                "sandbox that can write its parent renaming or linking it?); open the "
                "session again"
            )


def mount_run_filesystems(tmp_size: int) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Paths granted under the scratch mounts (a work dir in /tmp) come back on top. The
    # handles must be taken here: a bind source has to live in this mount namespace.
    held = hold(SCRATCH_REBINDS)
    check_rebinds(held)
    for scratch in ("/tmp", "/dev/shm"):
        # noatime: reading the scratch dirs changes nothing a reuse check compares.
        flags = MS_NOSUID | MS_NODEV | MS_NOATIME
        mount("tmpfs", scratch, "tmpfs", flags, f"mode=1777,size={tmp_size}")
    for path, fd in held:
        bind_back(path, fd, read_only=False)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def apply_landlock() -> None:
    """Enter the session's Landlock domain, plus this run's fresh /tmp and /dev/shm."""
    handled = landlock_handled(LANDLOCK_ABI)
    if LANDLOCK_ABI >= 6:  # abstract unix sockets and signals stay inside the domain
        attr = struct.pack("QQQ", handled, 0, 0x3)
    elif LANDLOCK_ABI >= 4:
        attr = struct.pack("QQ", handled, 0)
    else:
        attr = struct.pack("Q", handled)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = check(
        LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0), "landlock_create_ruleset"
    )
    # This run's own mounts are new inodes: grant them here (the session's rules cannot).
    scratch = [os.open(p, os.O_PATH | os.O_CLOEXEC) for p in ("/tmp", "/dev/shm", "/proc")]
    # /proc is readable, and writable where procfs itself allows it (a thread's comm: CUDA
    # names its threads and fails to initialise when it cannot). Kernel knobs stay out of
    # reach: they belong to the host's root, and the run holds no capability.
    proc_access = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR | LL_WRITE_FILE | LL_TRUNCATE
    rules = [
        *LANDLOCK_RULES,
        (scratch[0], handled),
        (scratch[1], handled),
        (scratch[2], proc_access),
    ]
    beneath = ctypes.create_string_buffer(12)
    for fd, access in rules:
        struct.pack_into("=Qi", beneath, 0, access, fd)
        check(LIBC.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, beneath, 0), "landlock_add_rule")
    check(LIBC.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    for fd in scratch:
        os.close(fd)


def lock_down() -> None:
    """Drop every privilege the run could use against the sandbox itself. The bounding set
    is already empty (session setup)."""
    # Root in the user namespace gets no capabilities from execve, and that is locked.
    check(LIBC.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
    LIBC.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = ctypes.create_string_buffer(24)
    check(LIBC.syscall(SYS_CAPSET, ctypes.c_char_p(header), data), "capset(drop all)")
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if LANDLOCK_ABI:
        apply_landlock()
    if SECCOMP_FPROG:
        check(
            LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(SECCOMP_FPROG), 0, 0),
            "seccomp filter",
        )


def report(fd: int, kind: bytes, payload: bytes = b"") -> None:
    record = kind + payload
    try:
        os.write(fd, struct.pack("<H", len(record)) + record)
    except OSError:
        pass


class Timeout(Exception):
    pass


#: Sent by the supervisor to a run's init: signals for the run's command wait on init's
#: socket (``RUN_REQUEST``). The signal itself carries nothing, so a run that sends it to
#: its init achieves nothing; and no signal meant for the command reaches init as itself
#: (a SIGSTOP would stop the run's clock, a SIGALRM fake its timeout, a SIGSEGV kill init).
RUN_REQUEST = signal.SIGRTMIN + 2
RUN_REQUEST_RECORD = struct.Struct("<cqi")  # b"S", run id, signal number
CURRENT_RUN = 0  # in a run's init: the id of the run it serves now (0: between runs)
REQUEST_WAITING = False  # RUN_REQUEST came between runs: look when the next one starts
PENDING_SIGNALS: list[int] = []  # signals that came before the command existed
TIMER_ARMED = False  # init's own ITIMER_REAL runs (its SIGALRM is the timeout)


def on_alarm(signo: int, frame: object) -> None:
    # Only our own timer, once expired, ends the run: not a SIGALRM the run sent us.
    if TIMER_ARMED and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        raise Timeout


def on_run_request(signo: int, frame: object) -> None:
    """The supervisor left signals for this run's command on our socket: deliver them (or
    keep them until the command exists). Only the supervisor writes to that socket.
    Between runs it is not read here: the next run's request may be on it."""
    global REQUEST_WAITING
    if not CURRENT_RUN:
        REQUEST_WAITING = True
        return
    while INIT_SOCK is not None:
        try:
            record = INIT_SOCK.recv(64, socket.MSG_DONTWAIT)
        except OSError:  # all read (or the supervisor is gone: PDEATHSIG follows)
            break
        if len(record) != RUN_REQUEST_RECORD.size:
            continue
        kind, run_id, signo = RUN_REQUEST_RECORD.unpack(record)
        if kind == b"S" and run_id == CURRENT_RUN:
            PENDING_SIGNALS.append(signo)
    deliver_pending()


def deliver_pending() -> None:
    if CHILD:
        while PENDING_SIGNALS:
            forward_signal(PENDING_SIGNALS.pop(0), None)


def forward_signal(signo: int, frame: object) -> None:
    """Pass ``signo`` to the command's process group (to the command alone if it has left
    its group). Also the handler of the usual job signals: the run itself, or with backend
    none any process of the user, may send those to init."""
    if CHILD:
        try:
            os.kill(-CHILD, signo)
        except ProcessLookupError:
            try:
                os.kill(CHILD, signo)
            except ProcessLookupError:
                pass


def end_everything(child: int) -> None:
    """Kill and reap every process the run left behind, so that when the status is reported
    the run is over. In a pid namespace, init's kill(-1) reaches them all; backend ``none``
    only has the command's process group."""
    try:
        if CONFIG["mode"] == "none":
            if child:
                os.kill(-child, signal.SIGKILL)
        else:
            os.kill(-1, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def prepare_init(net: str, tmp_size: int) -> str:
    """The request-independent part of a run's init, done ahead of time for a prepared
    init: fresh scratch mounts, /proc, loopback, and the lock-down (capabilities,
    no_new_privs, Landlock, seccomp). Returns "" or the error, which is reported once the
    request (and its status pipe) arrives."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # RUN_REQUEST may come as soon as the supervisor has sent a request, before we are
    # ready for it: a clone starts with it blocked (held pending) until here.
    signal.signal(RUN_REQUEST, on_run_request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (RUN_REQUEST,))
    # A clone holds copies of the supervisor's descriptors: other runs' status pipes above
    # all, which must close when *those* runs end. Keep only our own.
    for fd in supervisor_fds():
        try:
            os.close(fd)
        except OSError:
            pass
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        if CONFIG["mode"] != "none":
            mount_run_filesystems(tmp_size)
            if net != "open":
                loopback_up()
            arm_reuse_checks(net)  # while init still has its capabilities
            seal_proc_sys()
            lock_down()
            remember_scratch()
    except SetupError as exc:
        return str(exc)
    except Exception as exc:  # report anything, never hang the caller
        return f"sandbox init failed: {exc!r}"
    return ""


def seal_proc_sys() -> None:
    """Make the run's ``/proc/sys`` read-only. Capabilities guard most kernel knobs, but the
    IPC namespace's (``kernel.shm*``, ``msg*``, ``sem``, ``fs.mqueue.*``) only ask for the
    namespace owner's uid, which is the run's: a run could change the limits the next run of
    a reused init finds (a channel between runs, and between clients of one server). No run
    has a reason to tune them; with no capability it cannot remount."""
    mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    mount(
        None,
        "/proc/sys",
        None,
        MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
    )


def arm_reuse_checks(net: str) -> None:
    """Set up what ``left_clean`` reads, from descriptors opened once per init. If anything
    here fails, this init serves one run only.

    - System V IPC: each allocator's next id is set to 0, the id a fresh namespace hands out
      first anyway. Any allocation consumes it (the file then reads -1), so the check sees
      a run that made an object even if it removed it (which would have moved the ids the
      next run gets). Without checkpoint/restore support: the object lists instead.
    - POSIX message queues: none may be made (``fs.mqueue.queues_max`` 0; a run has no
      CAP_SYS_RESOURCE to exceed it). Landlock refuses to open a new queue anyway, but only
      after the kernel made it, and a queue is a name the next run would find taken.
    - The network namespace's interface counters: any packet a run sent (and so any TCP
      connection, which leaves TIME_WAIT sockets behind, or fragment) changes them.
    - Where the run owns init's /proc files (bubblewrap as a non-root caller: its user
      namespace maps the caller to uid 0): oom_score_adj, coredump_filter and the
      autogroup's nice, which the next command would inherit. Init then gets a session,
      and so an autogroup, of its own: a renice of it changes this init only, not the
      supervisor and every later init."""
    global REUSE_ARMED
    try:
        arm_watches(net)
    except OSError:
        return
    REUSE_ARMED = True


def arm_watches(net: str) -> None:
    """The descriptors and settings of ``arm_reuse_checks``."""
    for kind in ("shm", "sem", "msg"):
        try:
            fd = os.open(f"/proc/sys/kernel/{kind}_next_id", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        else:
            try:
                os.write(fd, b"0")
            except OSError:
                os.close(fd)
                fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        WATCHED_FDS.append(fd)
    try:
        write_file("/proc/sys/fs/mqueue/queues_max", "0")
    except FileNotFoundError:
        pass  # no POSIX message queues in this kernel
    if net != "open":
        WATCHED_FDS.append(os.open("/proc/net/dev", os.O_RDONLY | os.O_CLOEXEC))
    fd = os.open("/proc/self/oom_score_adj", os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        return
    os.setsid()
    WATCHED_FDS.append(fd)
    for name in ("coredump_filter", "autogroup"):
        try:
            WATCHED_FDS.append(os.open(f"/proc/self/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            continue  # a kernel without autogroups


def remember_scratch() -> None:
    """Note what ``left_clean`` compares, as it is before the first run: the scratch
    directories a run could leave something in (/tmp, /dev/shm and the directories leading
    to paths bound under them), the watched descriptors and init's own attributes."""
    global SCRATCH_BASELINE, INIT_BASELINE
    dirs = {"/tmp", "/dev/shm"}
    for path in SCRATCH_REBINDS:
        parent = os.path.dirname(path)
        while parent not in ("/", "/dev") and parent not in dirs:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    SCRATCH_DIRS[:] = sorted(dirs)
    SCRATCH_BASELINE = scratch_state()
    WATCHED_BASELINE[:] = watched_state()
    INIT_BASELINE = init_state()


def scratch_state() -> Any:
    """Everything a run can see of the scratch directories: entries, mode, owner, extended
    attributes (POSIX ACLs among them) and times. Every change to an inode moves its ctime,
    which no unprivileged process can set; the scratch mounts are ``noatime``, so reading
    them moves nothing. (Entries and attributes are listed too: on a kernel with coarse
    timestamps a change may land in the same tick.)"""
    state = []
    try:
        for path in SCRATCH_DIRS:
            st = os.lstat(path)
            names = sorted(os.listxattr(path, follow_symlinks=False))
            state.append(
                (
                    path,
                    st.st_ino,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_nlink,
                    st.st_size,
                    st.st_atime_ns,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    sorted(os.listdir(path)),
                    [(n, os.getxattr(path, n, follow_symlinks=False)) for n in names],
                )
            )
    except OSError:
        return None
    return state


def watched_state() -> list[bytes]:
    return [os.pread(fd, 4096, 0) for fd in WATCHED_FDS]


def init_state() -> tuple[dict[int, tuple[int, int]], bytes, set[int], int, set[int]]:
    """What a process of the same uid can change about init (``prlimit``, ``renice``,
    ``taskset``, ``ionice``, ``chrt``, uclamp, a signal), which the next command would
    inherit or see: rlimits; scheduling policy, nice, flags and utilisation clamps; CPU
    affinity; I/O priority; pending signals."""
    LIBC.syscall(SYS_SCHED_GETATTR, 0, SCHED_ATTR, len(SCHED_ATTR), 0)
    return (
        {res: resource.getrlimit(res) for res in RLIMITS},
        SCHED_ATTR.raw,
        os.sched_getaffinity(0),
        int(LIBC.syscall(SYS_IOPRIO_GET, 1, 0)),  # IOPRIO_WHO_PROCESS, this process
        signal.sigpending(),
    )


def left_clean(req: dict[str, Any]) -> bool:
    """Whether the run that just ended (everything it started is dead and reaped) left the
    init and its namespaces as a fresh init would give them to the next run with the same
    settings (``req``'s): the scratch directories, the System V IPC allocators, the network
    namespace's interface counters, and init's own attributes. (It cannot have changed
    mounts, interfaces, routes or kernel knobs, nor made a POSIX message queue: it held no
    capability and /proc/sys is read-only.)"""
    if CONFIG["mode"] == "none":
        return True
    if not REUSE_ARMED or SCRATCH_BASELINE is None or scratch_state() != SCRATCH_BASELINE:
        return False
    if watched_state() != WATCHED_BASELINE:
        return False
    rlimits, sched, cpus, ioprio, pending = init_state()
    expected = dict(INIT_BASELINE[0])
    for name, value in req.get("rlimits", {}).items():  # what run_once set for this run
        expected[getattr(resource, name)] = (value, value)
    return (rlimits, sched, cpus, ioprio, pending) == (expected, *INIT_BASELINE[1:])


def conclude(
    sock: socket.socket | None, req: dict[str, Any], status_fd: int, record: bytes
) -> bool:
    """Report the run's end to the host; return whether this init serves another run. It
    does when the host allowed it and the run left nothing behind; it then tells the
    supervisor first ("I"), so the host, which learns the init's serial from the report, can
    only name an init that the supervisor already knows is idle."""
    global CHILD
    CHILD = 0
    serial = 0
    if sock is not None and req.get("recycle") and left_clean(req):
        try:
            sock.send(b"I")
            serial = MY_SERIAL
        except OSError:
            serial = 0
    report(status_fd, record[:1], record[1:] + struct.pack("<q", serial))
    os.close(status_fd)
    return bool(serial)


def init_loop(
    sock: socket.socket | None, req: dict[str, Any], fds: dict[str, Any], setup_error: str
) -> None:
    """A run's pid 1: serve this run and, while each leaves things clean, the next ones the
    supervisor hands over on ``sock``. Never returns."""
    global INIT_SOCK
    INIT_SOCK = sock
    try:
        while run_once(sock, req, fds, setup_error):
            assert sock is not None
            data, raw_fds = next_request(sock)
            if not data:
                os._exit(0)  # retired by the supervisor
            req = marshal.loads(data)
            named = name_fds(req, raw_fds)
            if named is None:
                os._exit(0)
            fds, setup_error = named, ""
    except BaseException:
        # This process is a copy of the supervisor: an exception must never unwind into
        # the supervisor's loop here (and serve the session's control socket). The
        # supervisor reports the init's death; a lost socket is its retirement.
        os._exit(1)
    os._exit(0)


def run_once(
    sock: socket.socket | None, req: dict[str, Any], fds: dict[str, Any], setup_error: str
) -> bool:
    """One run, from its request to its report; returns whether the init may serve another."""
    global CHILD, CURRENT_RUN, HANDLERS_SET, REQUEST_WAITING, TIMER_ARMED
    status_fd = fds["status"]
    started = time.monotonic()
    if setup_error:
        report(status_fd, REC_ERROR, setup_error.encode())
        return False
    try:
        CURRENT_RUN = req["id"]
        PENDING_SIGNALS.clear()
        if REQUEST_WAITING:  # it came before we read this run's request
            REQUEST_WAITING = False
            on_run_request(RUN_REQUEST, None)
        # Join the run's cgroups (memory, pids, cpu) before the command exists.
        join_cgroups(fds.get("cgroups", ()))
        cwd = req["cwd"]
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise SetupError(f"cwd {cwd!r}: {exc.strerror}") from None
        for name, value in req.get("rlimits", {}).items():
            resource.setrlimit(getattr(resource, name), (value, value))
        env = req["env"]
        if "proxy_chan" in fds or PROXY_PORTS:
            env = open_proxy_listeners(fds.pop("proxy_chan", -1), env, req.get("proxy_env"))
        if not HANDLERS_SET:  # once per init: a reused init keeps them
            for signo in FORWARDED_SIGNALS:
                signal.signal(signo, forward_signal)
            signal.signal(signal.SIGALRM, on_alarm)
            HANDLERS_SET = True
        file_actions = [
            (os.POSIX_SPAWN_DUP2, fds["stdin"], 0),
            (os.POSIX_SPAWN_DUP2, fds["stdout"], 1),
            (os.POSIX_SPAWN_DUP2, fds["stderr"], 2),
        ]
        if "script_fd" in fds:
            file_actions.append((os.POSIX_SPAWN_DUP2, fds["script_fd"], 3))
        argv = req["argv"]
        started = time.monotonic()
        # A signal to forward that arrived before CHILD is known would be lost: hold them
        # until it is; the command itself starts with nothing blocked.
        held = (*FORWARDED_SIGNALS, RUN_REQUEST)
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            CHILD = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=file_actions,
                setsid=True,
                # Our interpreter ignores SIGPIPE and SIGXFSZ; commands get the defaults
                # (a write past the file-size limit must end them with SIGXFSZ).
                setsigdef=(
                    *FORWARDED_SIGNALS,
                    signal.SIGALRM,
                    signal.SIGPIPE,
                    signal.SIGCHLD,
                    signal.SIGXFSZ,
                ),
                setsigmask=(),
                scheduler=(os.SCHED_OTHER, os.sched_param(0)),
            )
        except OSError as exc:
            raise SetupError(f"cannot execute {argv[0]!r}: {exc.strerror}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        deliver_pending()
        for name in ("stdin", "stdout", "stderr", "script_fd"):
            if name in fds:
                os.close(fds[name])
        TIMER_ARMED = True
        signal.setitimer(signal.ITIMER_REAL, req["timeout"])
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == CHILD:
                break
        TIMER_ARMED = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        runtime_ns = int((time.monotonic() - started) * 1e9)
        end_everything(CHILD)
        CURRENT_RUN = 0  # the next request may arrive once conclude() said "idle"
        return conclude(sock, req, status_fd, REC_EXIT + struct.pack("<iq", status, runtime_ns))
    except Timeout:
        TIMER_ARMED = False
        signal.setitimer(signal.ITIMER_REAL, 0)  # (spent, unless a stray SIGALRM raced it)
        runtime_ns = int((time.monotonic() - started) * 1e9)
        end_everything(CHILD)
        CURRENT_RUN = 0
        return conclude(sock, req, status_fd, REC_TIMEOUT + struct.pack("<q", runtime_ns))
    except SetupError as exc:
        report(status_fd, REC_ERROR, str(exc).encode())
    except BaseException as exc:  # report anything, never hang the caller
        report(status_fd, REC_ERROR, f"sandbox init failed: {exc!r}".encode())
    return False


def join_cgroups(fds: list[int]) -> None:
    """Move this init into the cgroups whose ``cgroup.procs`` are ``fds`` (closed here).
    (Writing to a cgroup.procs file the host opened needs no privilege: we move ourselves.)
    A move is costly (cgroup v1 takes a global lock with an RCU grace period): skip the ones
    this init joined before (a reused init, or the one prepared for the first run)."""
    try:
        for fd in fds:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) not in JOINED_CGROUPS:
                try:
                    os.write(fd, b"0")
                except OSError as exc:
                    raise SetupError(f"joining the run's cgroup: {exc.strerror}") from None
                JOINED_CGROUPS.add((st.st_dev, st.st_ino))
    finally:
        for fd in fds:
            os.close(fd)


def open_proxy_listeners(
    chan_fd: int, env: dict[str, str], template: dict[str, str] | None
) -> dict[str, str]:
    """Listen for the run's HTTP and SOCKS5 proxies on 127.0.0.1 in the run's own network
    namespace (so only this run can reach them), hand the sockets to the host, which serves
    them, and point the command at them (variables the caller set win).

    An init that serves several runs keeps its listeners (the host holds them and arms them
    for each run's rules, credentials and decision log): a later run is told "K" on its
    channel instead of new listeners ("L"), and the same ports. A run without proxies is
    never served by an init that has them."""
    global PROXY_PORTS
    if chan_fd < 0 or template is None:
        if chan_fd >= 0:
            os.close(chan_fd)
        raise SetupError("this init holds proxy listeners: it serves proxied runs only")
    chan = socket.socket(fileno=chan_fd)
    listeners = []
    try:
        if PROXY_PORTS:
            chan.send(b"K")
        else:
            for _ in range(2):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listeners.append(sock)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
            send_fds(chan, [b"L"], [sock.fileno() for sock in listeners])
            PROXY_PORTS = tuple(sock.getsockname()[1] for sock in listeners)
    except OSError as exc:
        raise SetupError(f"starting the run's proxy listeners: {exc.strerror}") from None
    finally:
        for sock in listeners:
            sock.close()  # the host's copies keep them listening
        chan.close()
    http_port, socks_port = PROXY_PORTS
    merged = dict(env)
    for key, value in template.items():
        merged.setdefault(key, value.format(http=http_port, socks=socks_port))
    return merged


def warm_init(sock: socket.socket, net: str) -> None:
    """A pre-forked init: prepared ahead of time, it waits for the next run's request (and
    its descriptors) on its own socket. Never returns."""
    try:
        if PREFORK_CGROUPS:  # the session's first run's cgroups (see PREFORK_CGROUPS)
            try:
                join_cgroups(PREFORK_CGROUPS)
            except SetupError:
                pass  # the first run joins (and reports the failure) itself
        error = prepare_init(net, CONFIG["tmp_size"])
        data, fds = next_request(sock)
        if not data:
            os._exit(0)
        req = marshal.loads(data)
        named = name_fds(req, fds)
        if named is None:
            os._exit(0)
        init_loop(sock, req, named, error)
    except BaseException:  # never back into the supervisor's code, whatever happened
        os._exit(1)


# --------------------------------------------------------------------------------------
# Supervisor loop
# --------------------------------------------------------------------------------------


def recv_request(sock: socket.socket) -> tuple[bytes, list[int], int, Any]:
    """A request and its descriptors, received close-on-exec (only what posix_spawn dup2s
    reaches the command), with room for the most a run carries: stdio, status, script,
    proxy channel and three cgroups. (``socket.recv_fds`` ignores its ``flags`` argument
    before Python 3.12, so this calls ``recvmsg`` itself.)"""
    fds: list[int] = []
    data, ancdata, flags, addr = sock.recvmsg(
        MAX_MSG, socket.CMSG_LEN(16 * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD_SIZE
            fds += memoryview(payload)[:whole].cast("i")
    return data, fds, flags, addr


def next_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """An idle init's next run request and its descriptors (empty: the supervisor retired
    it). Signals for a run that ended meanwhile may come first: dropped."""
    while True:
        data, fds, _flags, _addr = recv_request(sock)
        if len(data) != RUN_REQUEST_RECORD.size or data[:1] != b"S":
            return data, fds
        for fd in fds:
            os.close(fd)


def send_fds(sock: socket.socket, buffers: list[bytes], fds: list[int]) -> None:
    """``socket.send_fds`` (which lives in the Python layer we do not import)."""
    rights = struct.pack(f"{len(fds)}i", *fds)
    sock.sendmsg(buffers, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


def name_fds(req: dict[str, Any], fds: list[int]) -> dict[str, Any] | None:
    """Label a run's descriptors (stdin, stdout, stderr, status, [script], cgroups...)."""
    names = ["stdin", "stdout", "stderr", "status"]
    names += ["script_fd"] if req.get("script") else []
    names += ["proxy_chan"] if req.get("proxy_env") else []
    if len(fds) != len(names) + int(req.get("cgroups", 0)):
        for fd in fds:
            os.close(fd)
        return None
    named: dict[str, Any] = dict(zip(names, fds[: len(names)], strict=True))
    named["cgroups"] = fds[len(names) :]
    return named


def supervisor_fds() -> list[int]:
    """Descriptors the supervisor holds for itself (a run's init must not keep them)."""
    fds = [CONTROL_FD, *WAKE_FDS, *INIT_BY_FD]
    fds += [sock.fileno() for _pid, sock, _serial in WARM.values()]
    fds += [run["status_fd"] for run in RUNS.values()]
    return fds


def net_key(req_net: str) -> str:
    return "open" if req_net == "open" or CONFIG["mode"] == "none" else "blocked"


def clone_init(net: str) -> tuple[int, int]:
    """Clone a run's init into fresh namespaces; returns its pid (0 in the child) and its
    serial."""
    global LAST_SERIAL, MY_SERIAL
    LAST_SERIAL += 1
    flags = int(signal.SIGCHLD)
    if CONFIG["mode"] != "none":
        flags |= CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC
        if net != "open":
            flags |= CLONE_NEWNET
    pid: int = LIBC.syscall(SYS_CLONE, flags, 0, 0, 0, 0)
    if pid == 0:
        MY_SERIAL = LAST_SERIAL
    return pid, LAST_SERIAL


def track_init(pid: int, serial: int, sock: socket.socket) -> None:
    """Listen for a dispatched init's "I" (its run ended clean and it waits for another)."""
    INITS[serial] = {"pid": pid, "sock": sock}
    INIT_SERIALS[pid] = serial
    INIT_BY_FD[sock.fileno()] = serial
    POLLER.register(sock.fileno(), select.POLLIN)


def forget_init(serial: int) -> None:
    """Stop tracking an init (it died, or is retired: closing its socket makes it exit)."""
    info = INITS.pop(serial, None)
    if info is None:
        return
    IDLE.pop(serial, None)
    INIT_SERIALS.pop(info["pid"], None)
    fd = info["sock"].fileno()
    INIT_BY_FD.pop(fd, None)
    POLLER.unregister(fd)
    info["sock"].close()


def init_message(serial: int) -> None:
    """Read what an init said: "I" (idle), or end of file (it is gone)."""
    info = INITS[serial]
    try:
        msg = info["sock"].recv(16, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return
    except OSError:
        msg = b""
    if msg != b"I":
        forget_init(serial)
        return
    run = RUNS.pop(info["pid"], None)
    if run is not None:
        os.close(run["status_fd"])
    IDLE[serial] = time.monotonic()


def dispatch_to_idle(serial: int, data: bytes, fds: list[int]) -> int:
    """Hand a run to the idle init the host named; its pid, or 0 if it cannot take it."""
    info = INITS.get(serial)
    if info is None:
        return 0
    if serial not in IDLE:
        # Its "I" may be queued behind the host's request: the host learned the serial
        # from the report the init sent after it.
        init_message(serial)
        if serial not in IDLE:
            return 0
    try:
        send_fds(info["sock"], [data], fds)
    except OSError:
        forget_init(serial)
        return 0
    del IDLE[serial]
    return int(info["pid"])


def prefork(net: str) -> None:
    """Keep one prepared init per network posture ready, so that a run's critical path is
    only its request-specific steps."""
    if net in WARM:
        return
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid, serial = clone_init(net)
    if pid == 0:
        ours.close()
        warm_init(theirs, net)
    theirs.close()
    if pid < 0:
        ours.close()
        return
    WARM[net] = (pid, ours, serial)


def start_run(req: dict[str, Any], fds: list[int], data: bytes) -> None:
    """Start a run: on the idle init the host named, a prepared init, or a new one. ``data``
    is the request as received, forwarded as is."""
    named = name_fds(req, fds)
    if named is None:
        return
    net = net_key(req["net"])
    # The init of an earlier run with the same settings, if the host named one still idle.
    pid = dispatch_to_idle(req["slot"], data, fds) if req.get("slot") else 0
    # Else a prepared init: it has the default scratch size; other sizes start cold.
    warm = WARM.pop(net, None) if not pid and req["tmp_size"] == CONFIG["tmp_size"] else None
    if warm is not None:
        warm_pid, sock, serial = warm
        try:
            send_fds(sock, [data], fds)
            pid = warm_pid
            track_init(pid, serial, sock)
        except OSError:
            try:
                os.kill(warm_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            sock.close()
    if not pid:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid, serial = clone_init(net)
        if pid == 0:
            ours.close()
            init_loop(theirs, req, named, prepare_init(net, req["tmp_size"]))
        theirs.close()
        if pid > 0:
            track_init(pid, serial, ours)
        else:
            ours.close()
    if pid < 0:
        err = ctypes.get_errno()
        report(named["status"], REC_ERROR, f"clone(new namespaces): {os.strerror(err)}".encode())
    else:
        now = time.monotonic()
        RUNS[pid] = {
            "id": req["id"],
            "status_fd": os.dup(named["status"]),
            "net": net,
            "started": now,
            "deadline": now + float(req["timeout"]) + BACKSTOP_S,
        }
    for fd in fds:
        os.close(fd)
    if CONFIG.get("warm") == "dispatch":
        prefork(net)


def find_run(run_id: int) -> int | None:
    for pid, run in RUNS.items():
        if run["id"] == run_id:
            return pid
    return None


def handle(msg: dict[str, Any], fds: list[int], data: bytes) -> None:
    op = msg.get("op")
    if op == "run":
        start_run(msg, fds, data)
        return
    for fd in fds:
        os.close(fd)
    if op == "retire":  # the host keeps fewer idle inits: this one exits
        if msg.get("slot") in IDLE:
            forget_init(msg["slot"])
        return
    pid = find_run(msg.get("id", -1))
    if pid is None:
        return
    if op == "kill":
        kill_run(pid)
    elif op == "signal":
        signal_run(pid, msg["id"], int(msg.get("signal", 0)))


def signal_run(pid: int, run_id: int, signo: int) -> None:
    """Have the run's init pass ``signo`` to the command's process group: the request waits
    on init's socket, and RUN_REQUEST tells init to look. Never blocks: if init does not
    read (a flood of requests), the surplus is dropped."""
    info = INITS.get(INIT_SERIALS.get(pid, 0))
    if info is None or not 0 < signo < signal.NSIG:
        return
    try:
        info["sock"].send(RUN_REQUEST_RECORD.pack(b"S", run_id, signo), socket.MSG_DONTWAIT)
        os.kill(pid, RUN_REQUEST)
    except OSError:
        pass


def kill_run(pid: int) -> None:
    """Kill a run's whole tree now. SIGKILL to its init takes the pid namespace down with
    it. Backend none has none: the command's process group (init's children's groups) goes
    first, from here, so that a stopped or dead init cannot keep it alive."""
    if CONFIG["mode"] == "none":
        try:
            os.kill(pid, signal.SIGSTOP)  # spawns nothing more while we look
        except ProcessLookupError:
            return
        for child in children_of(pid):
            try:
                os.kill(-child, signal.SIGKILL)
            except ProcessLookupError:  # not (yet) a group leader
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: look for them
        pass
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(name))
    return found


def enforce_deadlines() -> float | None:
    """The backstop of timeout_s: kill a run its init did not end by its deadline (init
    stopped, or stuck), and report it as a timeout once reaped. Returns the seconds until
    the next deadline (None: no run)."""
    if not RUNS:
        return None
    now = time.monotonic()
    nearest = None
    for pid, run in RUNS.items():  # (kill_run does not change RUNS: reaping does)
        if run.get("overdue"):
            continue
        left = run["deadline"] - now
        if left <= 0:
            run["overdue"] = True
            kill_run(pid)
        elif nearest is None or left < nearest:
            nearest = left
    # (Capped: poll() takes a C int of milliseconds, and timeout_s may be years.)
    return None if nearest is None else min(nearest, 86400.0)


def reaped(pid: int, status: int) -> None:
    for net, (warm_pid, sock, _serial) in list(WARM.items()):
        if warm_pid == pid:  # a prepared init died before use
            del WARM[net]
            sock.close()
    if pid in INIT_SERIALS:
        forget_init(INIT_SERIALS[pid])
    run = RUNS.pop(pid, None)
    if run is not None and CONFIG.get("warm") == "reap" and not RUNS:
        PENDING_PREFORK.add(run["net"])
    if run is not None:
        # Only meaningful when init died before reporting (killed, or crashed).
        if run.get("overdue"):
            runtime_ns = int((time.monotonic() - run["started"]) * 1e9)
            report(run["status_fd"], REC_TIMEOUT, struct.pack("<qq", runtime_ns, 0))
        else:
            report(run["status_fd"], REC_REAPED, struct.pack("<i", status))
        os.close(run["status_fd"])


def reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped(pid, status)


def retire_surplus_idle() -> float | None:
    """Let idle inits beyond KEEP_IDLE that have been idle IDLE_GRACE_S exit; return the
    seconds until the next one is due (None: none is)."""
    surplus = len(IDLE) - KEEP_IDLE
    if surplus <= 0:
        return None
    now = time.monotonic()
    for serial, since in list(IDLE.items())[:surplus]:
        if now - since < IDLE_GRACE_S:
            return since + IDLE_GRACE_S - now
        forget_init(serial)
    return None


def serve(control: socket.socket) -> None:
    global POLLER
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    WAKE_FDS.extend((wake_r, wake_w))
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    POLLER = poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        due = retire_surplus_idle()
        deadline = enforce_deadlines()
        if deadline is not None and (due is None or deadline < due):
            due = deadline
        if PENDING_PREFORK:
            timeout_ms: int | None = 0
        elif due is not None:
            timeout_ms = int(due * 1000) + 1
        else:
            timeout_ms = None
        events = poller.poll(timeout_ms)
        if not events and PENDING_PREFORK:
            prefork(PENDING_PREFORK.pop())  # idle: prepare the next run's init now
            continue
        # Inits' messages first: a request may name an init whose "I" came in this batch.
        events.sort(key=lambda event: event[0] not in INIT_BY_FD)
        for fd, _events in events:
            if fd in INIT_BY_FD:
                init_message(INIT_BY_FD[fd])
                continue
            if fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                reap()
                continue
            try:
                data, fds, _flags, _addr = recv_request(control)
            except InterruptedError:
                continue
            if not data:
                shutdown()
            handle(marshal.loads(data), fds, data)


def shutdown() -> None:
    """The host closed the control socket: kill every run and exit (bounded)."""
    dying = set(RUNS)
    for pid, _sock, _serial in WARM.values():
        dying.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for serial in list(IDLE):
        pid = INITS[serial]["pid"]
        dying.add(pid)
        forget_init(serial)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(RUNS):
        kill_run(pid)
    # Reap the inits (runs, prepared and idle ones), so that the host finds their cgroups
    # empty once we are gone. Not any other child: with backend none, a daemon that left
    # its run's process group is reparented to us and may never exit.
    wait_for(dying, time.monotonic() + 5)
    os._exit(0)


def wait_for(pids: set[int], deadline: float) -> None:
    """Reap children until none of ``pids`` is left, or until ``deadline``."""
    # Polled from 0.1 ms up to 2 ms: a killed init is usually gone within a millisecond,
    # and the session's close() waits for us.
    pause = 0.0001
    while pids and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            reaped(pid, status)
            pids.discard(pid)
        else:
            time.sleep(pause)
            pause = min(pause * 2, 0.002)


def read_config(fds: list[int]) -> dict[str, Any]:
    """The session configuration, from the memfd the host sent (see engine._send_config),
    and the descriptors that came with it: the first run's cgroup.procs."""
    if not fds:
        raise SetupError("the host sent no session configuration")
    PREFORK_CGROUPS[:] = fds[1:]
    try:
        config: dict[str, Any] = marshal.loads(os.pread(fds[0], os.fstat(fds[0]).st_size, 0))
        return config
    finally:
        os.close(fds[0])


def main() -> None:
    global CONTROL_FD, CONFIG
    CONTROL_FD = int(sys.argv[1])
    # The supervisor never takes RUN_REQUEST; its clones (runs' inits) start with it held.
    signal.pthread_sigmask(signal.SIG_BLOCK, (RUN_REQUEST,))
    os.set_inheritable(CONTROL_FD, False)
    control = socket.socket(fileno=CONTROL_FD)
    _data, fds, _flags, _addr = recv_request(control)
    try:
        CONFIG = read_config(fds)
        facts = setup_session(CONFIG)
        # In the session's own mount namespace now (userns): the host's tree becomes
        # read-only and grants are bound as granted, which every run's namespace copies.
        bind_grants(CONFIG.get("session_binds", []), bool(CONFIG.get("seal_root")))
        remember_rebinds()
    except Exception as exc:  # the host shows this to the user
        detail = str(exc) if isinstance(exc, SetupError) else repr(exc)
        control.send((b"refused " if isinstance(exc, Refused) else b"error ") + detail.encode())
        os._exit(1)
    # A run is a copy of this process: keep the garbage collector from touching (and so
    # copying) every object in each copy.
    gc.collect()
    gc.freeze()
    gc.disable()
    # The supervisor and the inits are bookkeeping: as SCHED_BATCH, their wake-ups do not
    # preempt the host that sent them work, so requests and replies are handled in batches
    # with fewer context switches. Commands start as SCHED_OTHER again (posix_spawn below).
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    control.send(b"ready " + facts.encode())
    if CONFIG.get("warm") in ("dispatch", "reap"):
        prefork(net_key(CONFIG.get("default_net", "blocked")))
    for fd in PREFORK_CGROUPS:  # only the init prepared now was to join them
        os.close(fd)
    PREFORK_CGROUPS.clear()
    serve(control)


if __name__ == "__main__":
    main()
