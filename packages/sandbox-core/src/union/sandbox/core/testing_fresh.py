"""What a run can observe of the environment it was given, for differential tests of init
reuse: a run on a reused init must see exactly what a run on a fresh init sees, whatever the
run before it did (``docs/design.md``, "Reusing a clean run's init and cgroups").

:data:`OBSERVE` is a Python program for a sandboxed run: it reads, and changes nothing
(no file, no IPC object, no packet), so a run of it leaves its init reusable. It prints one
``OBSERVED <json>`` line; :func:`observed` parses it and :func:`differences` compares two.
``observe_program(allocate=True)`` also reports the ids the System V allocators hand out next,
which only an allocation shows (so that run's init is not reused after it).
:data:`TAMPER` is a Python program that changes everything a run could try to leave for the
next one (sysctls, its init's rlimits, nice, affinity, I/O priority and scheduling, init's
``/proc`` files, scratch-mount attributes, ACLs and times, IPC ids, loopback traffic); it
prints ``TAMPERED <json>``, what each attempt returned ("ok" or the errno name).

Left out of the comparison, as they legitimately differ between two fresh inits: process ids,
the local ports of sockets (a proxied run's listeners get kernel-chosen ports; an init that
serves another proxied run keeps its listeners, and their ports),
init's CPU, fault and context-switch counters, mount ids and device numbers, the autogroup's
number, absolute times (the scratch directories' times are compared relative to their birth,
in whole seconds), and a few system-wide sysctls that move on their own (:data:`VOLATILE`).
The network namespace's protocol counters (``/proc/net/snmp``, ``netstat``) are not read
either: a reused init keeps them (see ``docs/security.md``).
"""

from __future__ import annotations

import json
from typing import Any

from .testing import RUN_HELPERS

__all__ = [
    "OBSERVE",
    "observe_program",
    "TAMPER",
    "TAMPER_PARTS",
    "VOLATILE",
    "differences",
    "observed",
    "tamper_program",
    "tampered",
]

#: Sysctls that change by themselves (entropy, counters of system-wide objects, the pid
#: counter), or describe the caller's machine rather than the run's namespaces.
VOLATILE = (
    "/proc/sys/kernel/random/",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/kernel/pty/nr",
    "/proc/sys/fs/dentry-state",
    "/proc/sys/fs/inode-nr",
    "/proc/sys/fs/inode-state",
    "/proc/sys/fs/file-nr",
    "/proc/sys/fs/aio-nr",
    "/proc/sys/fs/quota/",
    "/proc/sys/fs/binfmt_misc/",
    "/proc/sys/kernel/tainted",
    "/proc/sys/kernel/sched_domain/",
    "/proc/sys/net/netfilter/nf_conntrack_count",
    "/proc/sys/vm/stat_refresh",
    "/proc/sys/debug/",
    "/proc/sys/dev/",
)

_PRELUDE = (
    r"""
import ctypes, errno, json, os, resource, signal, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ARCH = os.uname().machine
NR = {
    "x86_64": dict(ioprio_set=251, ioprio_get=252, sched_setattr=314, sched_getattr=315,
                   statx=332),
    "aarch64": dict(ioprio_set=30, ioprio_get=31, sched_setattr=274, sched_getattr=275,
                    statx=291),
}[ARCH]
RLIMITS = range(16)  # RLIM_NLIMITS (RLIMIT_LOCKS, 10, has no name in resource)
SCRATCH = ("/tmp", "/dev/shm")
"""
    + RUN_HELPERS
    + r"""

def sys_attempt(name, *args):
    ctypes.set_errno(0)
    return "ok" if libc.syscall(NR[name], *args) >= 0 else err(ctypes.get_errno())


def read(path, n=1 << 20):
    return read_text(path, n)
"""
)

_OBSERVE = (
    _PRELUDE
    + f"VOLATILE = {VOLATILE!r}\n"
    + r'''
seen = {"pid": os.getpid()}


def sysctls():
    out = {}
    for top, dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(top, name)
            if not path.startswith(VOLATILE):
                out[path] = read(path, 1 << 16)
    return out


def sched_attr(pid):
    buf = ctypes.create_string_buffer(56)
    ctypes.set_errno(0)
    if libc.syscall(NR["sched_getattr"], pid, buf, 56, 0) < 0:
        return err(ctypes.get_errno())
    return buf.raw.hex()


def status_fields(pid, keys):
    lines = read("/proc/%d/status" % pid).splitlines()
    return {k: v.strip() for k, _, v in (l.partition(":") for l in lines) if k in keys}


def process(pid):
    """What the run sees of process ``pid`` (0: itself) that state, not time, decides."""
    proc = "/proc/%s/" % (pid or "self")
    stat = read(proc + "stat").rsplit(")", 1)[-1].split()
    out = {
        "limits": read(proc + "limits"),
        "nice": stat[16] if len(stat) > 16 else "?",
        "policy": stat[38] if len(stat) > 38 else "?",
        "rt_priority": stat[37] if len(stat) > 37 else "?",
        "sched_attr": sched_attr(pid),
        "affinity": sorted(os.sched_getaffinity(pid)),
        "ioprio": libc.syscall(NR["ioprio_get"], 1, pid),
        "status": status_fields(
            pid or os.getpid(),
            ("Umask", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "CapInh",
             "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
             "Cpus_allowed_list", "Mems_allowed_list", "Speculation_Store_Bypass"),
        ),
    }
    for name in ("oom_score_adj", "oom_adj", "coredump_filter", "timerslack_ns", "comm",
                 "loginuid", "sessionid", "personality", "cgroup", "attr/current"):
        out[name] = read(proc + name).strip()
    out["autogroup"] = read(proc + "autogroup").split(" ", 1)[-1].strip()  # not its number
    return out


def statx_times(path):
    buf = ctypes.create_string_buffer(256)
    # AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME
    if libc.syscall(NR["statx"], -100, path.encode(), 0x100, 0x7FF | 0x800, buf) < 0:
        return {"error": err(ctypes.get_errno())}
    def ts(offset):
        sec, nsec = struct.unpack_from("<qI", buf, offset)
        return sec * 10**9 + nsec
    birth = ts(80)
    # Whole seconds after the directory's birth: 0 for a fresh mount, whatever the clock.
    return {name: (ts(off) - birth) // 10**9
            for name, off in (("atime", 64), ("ctime", 96), ("mtime", 112))}


def scratch(path):
    st = os.lstat(path)
    vfs = os.statvfs(path)
    xattrs = {}
    for name in os.listxattr(path, follow_symlinks=False):
        xattrs[name] = os.getxattr(path, name, follow_symlinks=False).hex()
    return {
        "mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
        "size": st.st_size, "entries": sorted(os.listdir(path)), "xattrs": xattrs,
        "times": statx_times(path),
        "statvfs": [vfs.f_bsize, vfs.f_blocks, vfs.f_bfree, vfs.f_files, vfs.f_ffree,
                    vfs.f_flag, vfs.f_namemax],
    }


def mounts():
    out = []
    for line in read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")
        # root, mount point, per-mount options, then fs type, source, super options;
        # not the mount ids, device numbers or propagation peer groups.
        out.append(" ".join(fields[3:6] + fields[sep + 1:]))
    return sorted(out)


def interfaces():
    out = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _index, name in socket.if_nameindex():
            req = struct.pack("16sH14x", name.encode(), 0)
            import fcntl
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, req))[1]
            mtu = struct.unpack("16si12x", fcntl.ioctl(sock, 0x8921, req))[1]
            out[name] = [flags, mtu]
    finally:
        sock.close()
    return out


seen["sysctl"] = sysctls()
seen["init"] = process(1)
seen["self"] = process(0)
seen["self"]["rlimits"] = [resource.getrlimit(n) for n in RLIMITS]
seen["self"]["priority"] = os.getpriority(os.PRIO_PROCESS, 0)
seen["self"]["sigpending"] = sorted(int(s) for s in signal.sigpending())
seen["self"]["sigmask"] = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
seen["self"]["umask"] = os.umask(0o22)
seen["scratch"] = {path: scratch(path) for path in SCRATCH}
seen["mounts"] = mounts()
seen["sysvipc"] = {k: read("/proc/sysvipc/" + k) for k in ("shm", "sem", "msg")}
# sockstat: the namespace's sockets in use, TIME_WAIT and fragments, not the system-wide
# allocation and memory figures on the same lines.
GLOBAL_FIGURES = ("alloc", "mem", "orphan", "memory")
seen["sockstat"] = [
    [word for i, word in enumerate(line.split()) if word not in GLOBAL_FIGURES
     and (i == 0 or line.split()[i - 1] not in GLOBAL_FIGURES)]
    for name in ("sockstat", "sockstat6") for line in read("/proc/net/" + name).splitlines()
]
seen["net"] = {k: read("/proc/net/" + k) for k in (
    "dev", "tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix",
    "route", "ipv6_route", "if_inet6", "igmp", "igmp6", "arp")}
seen["interfaces"] = interfaces()
seen["uts"] = list(os.uname()[1:2]) + [read("/proc/sys/kernel/domainname").strip()]
# A POSIX message queue by the name TAMPER uses: opening without O_CREAT makes nothing.
libc.mq_open.restype = ctypes.c_int
ctypes.set_errno(0)
seen["mqueue"] = "ok" if libc.mq_open(b"/tampered", os.O_RDONLY) >= 0 else err(ctypes.get_errno())
'''
)

_ALLOCATE = r"""
# The ids the System V allocators hand out next (the first in a fresh namespace: 0). This
# makes and removes an object of each kind, so the init is not reused after this run.
libc.semget.restype = libc.msgget.restype = libc.shmget.restype = ctypes.c_int
ids = {"sem": libc.semget(0, 1, 0o600), "msg": libc.msgget(0, 0o600),
       "shm": libc.shmget(0, 4096, 0o600)}
libc.semctl(ids["sem"], 0, 0)
libc.msgctl(ids["msg"], 0, None)
libc.shmctl(ids["shm"], 0, None)
seen["next System V ids"] = ids
"""

_PRINT = 'print("OBSERVED " + json.dumps(seen, sort_keys=True), flush=True)\n'


def observe_program(*, allocate: bool = False) -> str:
    """:data:`OBSERVE`, or with ``allocate`` also the ids the System V allocators hand out
    next (which only an allocation shows, so that run leaves its init dirty)."""
    return _OBSERVE + (_ALLOCATE if allocate else "") + _PRINT


#: What a run observes; it changes nothing, so its init stays reusable.
OBSERVE = observe_program()

_TAMPER_HEAD = r"""done = {}


def write(path, value):
    def go():
        with open(path, "w") as f:
            f.write(value)
    return attempt(go)


"""

#: The parts of :data:`TAMPER`, by what they change (each a Python program to append to
#: :func:`tamper_program`'s preamble).
TAMPER_PARTS = {
    "kernel knobs": r"""
# Kernel knobs of the run's namespaces (IPC, message queues, network, pid).
for path, value in (
    ("/proc/sys/kernel/msgmni", "123"), ("/proc/sys/kernel/msgmax", "999"),
    ("/proc/sys/kernel/msgmnb", "999"), ("/proc/sys/kernel/shmmax", "4242"),
    ("/proc/sys/kernel/shmall", "555"), ("/proc/sys/kernel/shmmni", "77"),
    ("/proc/sys/kernel/sem", "1 2 3 4"), ("/proc/sys/kernel/shm_rmid_forced", "1"),
    ("/proc/sys/kernel/auto_msgmni", "1"), ("/proc/sys/kernel/msg_next_id", "77"),
    ("/proc/sys/kernel/sem_next_id", "77"), ("/proc/sys/kernel/shm_next_id", "77"),
    ("/proc/sys/fs/mqueue/queues_max", "33"), ("/proc/sys/fs/mqueue/msg_max", "33"),
    ("/proc/sys/fs/mqueue/msgsize_max", "3333"), ("/proc/sys/fs/mqueue/msg_default", "3"),
    ("/proc/sys/fs/mqueue/msgsize_default", "333"),
    ("/proc/sys/net/ipv4/ip_default_ttl", "7"), ("/proc/sys/net/core/somaxconn", "9"),
    ("/proc/sys/net/ipv4/ping_group_range", "0 0"),
    ("/proc/sys/net/ipv4/ip_local_port_range", "40000 40010"),
    ("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "1"),
    ("/proc/sys/kernel/pid_max", "1000"), ("/proc/sys/kernel/ns_last_pid", "5000"),
    ("/proc/sys/kernel/hostname", "tampered"),
):
    done["sysctl " + path[len("/proc/sys/"):]] = write(path, value)
""",
    "init attributes": r"""
# The run's init (pid 1): what a process of the same uid may change, and its children
# inherit.
for name, res, (soft, hard) in (
    ("NOFILE", resource.RLIMIT_NOFILE, (40, 40)), ("NPROC", resource.RLIMIT_NPROC, (50, 50)),
    ("SIGPENDING", resource.RLIMIT_SIGPENDING, (10, 10)),
    ("MSGQUEUE", resource.RLIMIT_MSGQUEUE, (0, 0)), ("LOCKS", 10, (1, 1)),
    ("STACK", resource.RLIMIT_STACK, (1 << 20, None)),
):
    if hard is None:
        hard = resource.prlimit(1, res)[1]
    done["prlimit RLIMIT_" + name] = attempt(resource.prlimit, 1, res, (soft, hard))
done["renice"] = attempt(os.setpriority, os.PRIO_PROCESS, 1, 19)
cpus = sorted(os.sched_getaffinity(1))
done["taskset"] = attempt(os.sched_setaffinity, 1, cpus[:1]) if len(cpus) > 1 else "one cpu"
done["ionice idle"] = sys_attempt("ioprio_set", 1, 1, 3 << 13)
attr = struct.pack("<IIQiIQQQII", 56, 3, 0x08 | 0x10 | 0x40, 0, 0, 0, 0, 0, 0, 100)
done["uclamp max"] = sys_attempt("sched_setattr", 1, attr, 0)
# (Not SCHED_IDLE: a command cannot be spawned from it, so a reuse would fail outright.)
done["reset on fork"] = attempt(
    os.sched_setscheduler, 1, os.SCHED_BATCH | os.SCHED_RESET_ON_FORK, os.sched_param(0))
done["signal init"] = attempt(os.kill, 1, signal.SIGWINCH)
for name, value in (("oom_score_adj", "500"), ("coredump_filter", "0x7"),
                    ("autogroup", "5"), ("comm", "tampered"), ("timerslack_ns", "12345")):
    done["/proc/1/" + name] = write("/proc/1/" + name, value)
""",
    "scratch mounts": r"""
# The scratch mounts: attributes, an ACL that makes the next run's new files mode 000,
# times (after a pause, so they are seen to move), an entry made and removed.
ACL_UNDEFINED = 0xFFFFFFFF


def acl(*entries):
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


for path in SCRATCH:
    done["xattr " + path] = attempt(os.setxattr, path, "user.tampered", b"1")
done["default ACL /tmp"] = attempt(os.setxattr, "/tmp", "system.posix_acl_default", acl(
    (0x01, 0, ACL_UNDEFINED), (0x04, 0, ACL_UNDEFINED), (0x20, 0, ACL_UNDEFINED)))
done["access ACL /dev/shm"] = attempt(os.setxattr, "/dev/shm", "system.posix_acl_access", acl(
    (0x01, 7, ACL_UNDEFINED), (0x02, 4, 0), (0x04, 7, ACL_UNDEFINED), (0x10, 7, ACL_UNDEFINED),
    (0x20, 7, ACL_UNDEFINED)))
for path in SCRATCH:
    done["chmod " + path] = attempt(os.chmod, path, 0o1777)
time.sleep(1.2)
done["utime /dev/shm"] = attempt(os.utime, "/dev/shm", (1, 1))


def touch_and_remove():
    open("/tmp/tampered", "w").close()
    os.unlink("/tmp/tampered")


done["entry made and removed in /tmp"] = attempt(touch_and_remove)
""",
    "IPC": r"""
# System V IPC objects made and removed: the next run's ids would follow on.
IPC_RMID = 0
libc.semget.restype = libc.msgget.restype = libc.shmget.restype = ctypes.c_int
for kind, make, ctl in (
    ("sem", lambda: libc.semget(0, 1, 0o600), lambda i: libc.semctl(i, 0, IPC_RMID)),
    ("msg", lambda: libc.msgget(0, 0o600), lambda i: libc.msgctl(i, IPC_RMID, None)),
    ("shm", lambda: libc.shmget(0, 4096, 0o600), lambda i: libc.shmctl(i, IPC_RMID, None)),
):
    ident = make()
    done["System V %s made and removed" % kind] = (
        "ok" if ident >= 0 and ctl(ident) == 0 else err(ctypes.get_errno()))
libc.mq_open.restype = ctypes.c_int
ctypes.set_errno(0)
mq = libc.mq_open(b"/tampered", os.O_CREAT | os.O_RDWR, 0o600, None)
done["POSIX message queue"] = "ok" if mq >= 0 else err(ctypes.get_errno())
""",
    "loopback traffic": r"""
# Loopback traffic: a TCP connection (TIME_WAIT, counters) and a datagram.
def traffic():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.sendall(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += conn.recv(1000)
    client.close()
    conn.close()
    server.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("127.0.0.1", 9))
    udp.close()


done["loopback traffic"] = attempt(traffic)
""",
}


def tamper_program(*parts: str) -> str:
    """A Python program that does the named :data:`TAMPER_PARTS` (all of them by default)
    and prints ``TAMPERED <json>``."""
    chosen = parts or tuple(TAMPER_PARTS)
    return (
        _PRELUDE
        + _TAMPER_HEAD
        + "".join(TAMPER_PARTS[part] for part in chosen)
        + 'print("TAMPERED " + json.dumps(done, sort_keys=True), flush=True)\n'
    )


#: Every part of the tampering at once.
TAMPER = tamper_program()


def _parse(tag: str, stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])  # type: ignore[no-any-return]
    raise AssertionError(f"the run printed no {tag} line: {stdout[-2000:]!r}")


def observed(stdout: str) -> dict[str, Any]:
    """What a run of :data:`OBSERVE` printed."""
    return _parse("OBSERVED", stdout)


def tampered(stdout: str) -> dict[str, str]:
    """What each attempt of a run of :data:`TAMPER` returned ("ok" or an errno name)."""
    return _parse("TAMPERED", stdout)


def _sockets(table: str) -> str:
    """A ``/proc/net/tcp``-style table without what differs between two fresh inits of
    a proxied run: the local port the kernel picked for each proxy listener, and inodes
    and kernel addresses. (A socket more or less, its state and queues still show.)"""
    lines = table.splitlines()
    out = lines[:1]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > 11:
            fields[1] = fields[1].rsplit(":", 1)[0] + ":*"
            fields[9] = fields[11] = "*"
        out.append(" ".join(fields))
    return "\n".join(out)


def differences(fresh: dict[str, Any], seen: dict[str, Any]) -> list[str]:
    """Where ``seen`` differs from ``fresh``, one ``key: fresh -> seen`` line each (the
    process id is not compared, nor the ports of the sockets, which the kernel picks)."""
    out: list[str] = []
    fresh, seen = _normalised(fresh), _normalised(seen)

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(f"{path}/{key}" if path else str(key), a.get(key), b.get(key))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")

    walk(
        "",
        {k: v for k, v in fresh.items() if k != "pid"},
        {k: v for k, v in seen.items() if k != "pid"},
    )
    return out


def _normalised(observation: dict[str, Any]) -> dict[str, Any]:
    net = observation.get("net")
    if not isinstance(net, dict):
        return observation
    tables = {k: _sockets(v) for k, v in net.items() if k in ("tcp", "tcp6", "udp", "udp6")}
    return {**observation, "net": {**net, **tables}}
