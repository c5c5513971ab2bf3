"""Hostile code against the kernel surface: privileges, ptrace, mount, namespaces, keyrings,
bpf, io_uring, raw sockets, sysctls, /sys, devices.

Each probe is a Python program run inside the sandbox; it tries the operation and reports
``let_through`` (it got what it wanted) and what it saw. These probes do not depend on the
event loop, so they run under asyncio only (the basic probes in ``test_host_secrets.py`` and
``test_termination.py`` run under both).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
from pathlib import Path
from typing import Any

import pytest

from union.sandbox.core import _seccomp

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_SECCOMP_TABLE_HEADER = "| what | syscalls | errno |"


def documented_seccomp_denials() -> dict[str, str]:
    """The syscalls docs/security.md says the filter refuses whatever their arguments:
    name -> errno name. The documented table is the contract the probes hold the filter to."""
    lines = SECURITY_DOC.read_text().splitlines()
    start = lines.index(_SECCOMP_TABLE_HEADER) + 2  # past the header and its rule
    denials: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        _what, names, result = (cell.strip() for cell in line.strip("|").split("|"))
        errno_name = result.strip("`")
        for name in re.findall(r"`([a-z_][a-z0-9_]*)`", names):
            assert name not in denials, f"{name} is listed twice in {SECURITY_DOC.name}"
            denials[name] = errno_name
    return denials


def _seccomp_calls() -> dict[str, list[Any]]:
    """name -> [number on this arch, documented errno] for every documented denial the arch
    has; a name no supported arch knows maps to [None, errno] (the probe then fails)."""
    arch = platform.machine()
    calls: dict[str, list[Any]] = {}
    for name, errno_name in documented_seccomp_denials().items():
        try:
            calls[name] = [_seccomp.syscall_number(name, arch), errno_name]
        except KeyError:
            elsewhere = False
            for other in _seccomp.SUPPORTED_ARCHES:
                try:
                    _seccomp.syscall_number(name, other)
                    elsewhere = True
                except KeyError:
                    pass
            if not elsewhere:
                calls[name] = [None, errno_name]
    return calls


def test_the_documented_deny_list_is_the_filter() -> None:
    """docs/security.md lists exactly what the filter refuses by number, with its errno."""
    documented = documented_seccomp_denials()
    assert set(documented.values()) == {"EPERM", "ENOSYS"}
    assert {n for n, e in documented.items() if e == "EPERM"} == set(_seccomp.DENIED_SYSCALLS)
    assert {n for n, e in documented.items() if e == "ENOSYS"} == set(_seccomp.ABSENT_SYSCALLS)


@dataclasses.dataclass(frozen=True)
class Hostile:
    """A hostile program and what it must observe."""

    id: str
    name: str
    expected: str
    code: str
    on_none: str = "leak"
    """``leak`` / ``held`` / ``any`` (see ``UNISOLATED_EXPECTATIONS``), or ``not run: why``."""


PROBES = [
    Hostile(
        "ptrace-traceme",
        "ptrace(PTRACE_TRACEME)",
        "EPERM",
        """
ctypes.set_errno(0)
r = libc.ptrace(0, 0, None, None)
verdict(r == 0, "ok" if r == 0 else err(ctypes.get_errno()))
""",
    ),
    Hostile(
        "ptrace-attach-init",
        "ptrace(PTRACE_ATTACH, 1)",
        "EPERM",
        """
ctypes.set_errno(0)
r = libc.ptrace(16, 1, None, None)
e = "ok" if r == 0 else err(ctypes.get_errno())
if r == 0:
    libc.ptrace(17, 1, None, None)
verdict(r == 0, e)
""",
        on_none="not run: pid 1 is the host's init",
    ),
    Hostile(
        "ptrace-attach-child",
        "ptrace(PTRACE_ATTACH) of a sibling",
        "EPERM",
        """
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
ctypes.set_errno(0)
r = libc.ptrace(16, child, None, None)
e = "ok" if r == 0 else err(ctypes.get_errno())
if r == 0:
    os.waitpid(child, 0)
    libc.ptrace(17, child, None, None)
os.kill(child, 9)
os.waitpid(child, 0)
verdict(r == 0, e)
""",
    ),
    Hostile(
        "init-memory",
        "open the run init's /proc/1/mem, fds",
        "EACCES / not visible",
        """
out = {
    "mem": attempt(lambda: os.close(os.open("/proc/1/mem", os.O_RDONLY))),
    "fd": attempt(os.listdir, "/proc/1/fd"),
}
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "mount",
        "mount tmpfs: mount(2) and mount(8) on /mnt, ./mnt",
        "EPERM",
        """
os.makedirs("mnt-probe", exist_ok=True)
out = {}
for tgt in ("/mnt", os.path.abspath("mnt-probe")):
    label = "/mnt" if tgt == "/mnt" else "./mnt-probe"
    if not os.path.isdir(tgt):
        out[label] = "absent"
        continue
    ctypes.set_errno(0)
    r = libc.mount(b"none", tgt.encode(), b"tmpfs", 0, None)
    out[label] = "ok" if r == 0 else err(ctypes.get_errno())
    if r == 0:
        libc.umount2(tgt.encode(), 2)
    try:
        cli = subprocess.run(["mount", "-t", "tmpfs", "none", tgt], capture_output=True,
                             text=True, timeout=10)
        out[label + " mount(8)"] = "ok" if cli.returncode == 0 else (
            cli.stderr.strip().splitlines() or ["rc=%d" % cli.returncode])[0][-60:]
        if cli.returncode == 0:
            subprocess.run(["umount", "-l", tgt])
    except FileNotFoundError:
        out[label + " mount(8)"] = "no mount(8)"
verdict(any(v == "ok" for v in out.values()), out)
""",
        on_none="not run: would mount on the host",
    ),
    Hostile(
        "fsopen",
        "new mount API: fsopen(tmpfs)",
        "EPERM",
        """
r, e = call("fsopen", b"tmpfs", 0)
if r >= 0:
    os.close(r)
verdict(r >= 0, e)
""",
    ),
    Hostile(
        "unshare-user",
        "new user namespace: unshare(CLONE_NEWUSER), unshare -U / -r",
        "EPERM",
        """
def in_child(flags):
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.set_errno(0)
        r = libc.unshare(flags)
        os.write(w_fd, ("ok" if r == 0 else err(ctypes.get_errno())).encode())
        os._exit(0)
    os.close(w_fd)
    out = os.read(r_fd, 64).decode()
    os.waitpid(pid, 0)
    return out

out = {"unshare(CLONE_NEWUSER)": in_child(0x10000000)}
for argv in (["unshare", "-U", "true"], ["unshare", "-r", "true"]):
    try:
        cli = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        out[" ".join(argv)] = "ok" if cli.returncode == 0 else (
            cli.stderr.strip().splitlines() or ["rc=%d" % cli.returncode])[-1][-50:]
    except FileNotFoundError:
        out[" ".join(argv)] = "absent"
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "unshare-other",
        "new net/mount/pid/uts/ipc namespaces: unshare(2)",
        "EPERM",
        """
flags = {"net": 0x40000000, "mnt": 0x20000, "pid": 0x20000000, "uts": 0x04000000,
         "ipc": 0x08000000, "cgroup": 0x02000000}
out = {}
for name, flag in flags.items():
    pid = os.fork()
    if pid == 0:
        ctypes.set_errno(0)
        os._exit(0 if libc.unshare(flag) == 0 else min(ctypes.get_errno(), 200))
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status)
    out[name] = "ok" if code == 0 else err(code)
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "clone3-newuser",
        "clone3(CLONE_NEWUSER)",
        "ENOSYS / EPERM",
        """
args = struct.pack("11Q", 0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)
buf = ctypes.create_string_buffer(args, len(args))
r, e = call("clone3", buf, len(args))
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
verdict(r > 0, e)
""",
    ),
    Hostile(
        "foreign-abi",
        "i386 ABI (int 0x80) unshare(CLONE_NEWUSER), x32 syscall",
        "killed (SIGSYS) / EPERM",
        """
import mmap
if ARCH != "x86_64":
    verdict(False, "n/a on " + ARCH)
# mov eax, 310 (i386 unshare); mov ebx, CLONE_NEWUSER; int 0x80; ret
code = bytes.fromhex("b836010000" + "bb00000010" + "cd80" + "c3")
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
pid = os.fork()
if pid == 0:
    r = fn()
    os._exit(0 if r == 0 else min(-r, 200) if r < 0 else 201)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    i386 = "killed by " + signal.Signals(os.WTERMSIG(status)).name
else:
    code = os.WEXITSTATUS(status)
    i386 = "ok" if code == 0 else err(code)
ctypes.set_errno(0)
r = libc.syscall(0x40000000 | 272, 0x10000000)
x32 = "ok" if r == 0 else err(ctypes.get_errno())
verdict(i386 == "ok" or x32 == "ok", {"int 0x80": i386, "x32": x32})
""",
    ),
    Hostile(
        "keyctl",
        "kernel keyrings: keyctl(GET_KEYRING_ID), add_key",
        "EPERM",
        """
r1, e1 = call("keyctl", 0, ctypes.c_long(-3), 0)
r2, e2 = call("add_key", b"user", b"union-conformance", b"x", 1, ctypes.c_long(-2))
verdict(r1 >= 0 or r2 >= 0, {"keyctl": e1, "add_key": e2})
""",
    ),
    Hostile(
        "bpf",
        "bpf(BPF_MAP_CREATE)",
        "EPERM",
        """
attr = ctypes.create_string_buffer(struct.pack("IIII", 2, 4, 4, 1) + bytes(112), 128)
r, e = call("bpf", 0, attr, 128)
if r >= 0:
    os.close(r)
verdict(r >= 0, e)
""",
    ),
    Hostile(
        "perf-event-open",
        "perf_event_open(software clock)",
        "EPERM",
        """
attr = bytearray(128)
struct.pack_into("IIQ", attr, 0, 1, 128, 0)
struct.pack_into("Q", attr, 40, 1)
buf = ctypes.create_string_buffer(bytes(attr), 128)
r, e = call("perf_event_open", buf, 0, ctypes.c_long(-1), ctypes.c_long(-1), 0)
if r >= 0:
    os.close(r)
verdict(r >= 0, e)
""",
        on_none="any",
    ),
    Hostile(
        "userfaultfd",
        "userfaultfd()",
        "EPERM",
        """
r, e = call("userfaultfd", os.O_CLOEXEC)
if r >= 0:
    os.close(r)
verdict(r >= 0, e)
""",
        on_none="any",
    ),
    Hostile(
        "io-uring",
        "io_uring_setup()",
        "EPERM",
        """
params = ctypes.create_string_buffer(120)
r, e = call("io_uring_setup", 1, params)
if r >= 0:
    os.close(r)
verdict(r >= 0, e)
""",
        on_none="any",
    ),
    Hostile(
        "raw-socket",
        "raw sockets: AF_INET/AF_INET6 SOCK_RAW",
        "EPERM",
        """
out = {}
for fam, proto, label in ((socket.AF_INET, 1, "inet raw icmp"),
                          (socket.AF_INET6, 58, "inet6 raw icmpv6"),
                          (socket.AF_INET, 255, "inet raw")):
    out[label] = attempt(lambda: socket.socket(fam, socket.SOCK_RAW, proto).close())
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "packet-socket",
        "packet sockets: AF_PACKET, SOCK_PACKET",
        "EAFNOSUPPORT / EPERM",
        """
out = {
    "AF_PACKET raw": attempt(
        lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()),
    "AF_PACKET dgram": attempt(
        lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3)).close()),
    "AF_INET SOCK_PACKET": attempt(
        lambda: socket.socket(socket.AF_INET, 10, socket.htons(3)).close()),
}
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "hostname",
        "change the hostname: sethostname(2), hostname(1)",
        "EPERM",
        """
out = {"sethostname": attempt(socket.sethostname, "union-conformance-evil")}
try:
    cli = subprocess.run(["hostname", "union-conformance-evil"], capture_output=True,
                         text=True, timeout=10)
    out["hostname(1)"] = "ok" if cli.returncode == 0 else cli.stderr.strip()[-50:]
except FileNotFoundError:
    out["hostname(1)"] = "absent"
out["now"] = socket.gethostname()
verdict(out["sethostname"] == "ok" or out["hostname(1)"] == "ok", out)
""",
        on_none="not run: would rename the host",
    ),
    Hostile(
        "chroot",
        "chroot(2), chroot(8)",
        "EPERM",
        """
out = {"chroot(2)": attempt(os.chroot, "/")}
try:
    cli = subprocess.run(["chroot", "/", "true"], capture_output=True, text=True, timeout=10)
    out["chroot(8)"] = "ok" if cli.returncode == 0 else cli.stderr.strip()[-50:]
except FileNotFoundError:
    out["chroot(8)"] = "absent"
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "capabilities",
        "capabilities (capget, bounding, ambient, CapEff, capsh --print)",
        "all empty",
        """
hdr = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
data = ctypes.create_string_buffer(24)
r, e = call("capget", hdr, data)
words = struct.unpack("6I", data.raw)
eff, prm, inh = words[0] | words[3] << 32, words[1] | words[4] << 32, words[2] | words[5] << 32
bnd = [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1]
amb = [c for c in range(64) if libc.prctl(47, 1, c, 0, 0) == 1]
status = {l.split(":")[0]: l.split()[1] for l in read_text("/proc/self/status").splitlines()
          if l.startswith("Cap")}
try:
    capsh = subprocess.run(["capsh", "--print"], capture_output=True, text=True, timeout=10)
    current = [l for l in capsh.stdout.splitlines() if l.startswith("Current")][:1]
except FileNotFoundError:
    current = ["no capsh"]
leak = bool(r != 0 or eff or prm or inh or bnd or amb
            or any(int(v, 16) for v in status.values()))
verdict(leak, "eff=%x prm=%x inh=%x bnd=%d amb=%d status=%s capsh=%s"
        % (eff, prm, inh, len(bnd), len(amb), status.get("CapEff", "unreadable"), current))
""",
    ),
    Hostile(
        "nnp-seccomp",
        "no_new_privs and seccomp (prctl, /proc/self/status)",
        "NoNewPrivs 1, Seccomp 2",
        """
nnp = libc.prctl(39, 0, 0, 0, 0)
sec = libc.prctl(21, 0, 0, 0, 0)
status = {l.split(":")[0]: l.split()[1] for l in read_text("/proc/self/status").splitlines()
          if l.startswith(("NoNewPrivs", "Seccomp:"))}
ok = nnp == 1 and sec == 2 and status.get("NoNewPrivs", "1") == "1" \\
    and status.get("Seccomp", "2") == "2"
verdict(not ok, "prctl NoNewPrivs=%s Seccomp=%s; status %s"
        % (nnp, sec, status or "unreadable"))
""",
    ),
    Hostile(
        "proc-sys-write",
        "write sysctls (same value back): core_pattern, swappiness",
        "EACCES / EROFS",
        """
out = {}
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/swappiness"):
    try:
        with open(path, "rb") as f:
            current = f.read()
    except OSError as exc:
        out[path] = "read " + err(exc.errno)
        continue
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, current)
            out[path] = "ok"
        finally:
            os.close(fd)
    except OSError as exc:
        out[path] = err(exc.errno)
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "sys-write",
        "/sys writes: raise own cgroup limits, move to root cgroup, khugepaged",
        "EACCES / EROFS",
        """
import glob
targets = []
for line in read_text("/proc/self/cgroup").splitlines():
    parts = line.split(":", 2)
    if len(parts) != 3:
        continue
    _, controllers, path = parts
    names = controllers.split(",")
    if "pids" in names:
        targets.append(("/sys/fs/cgroup/pids%s/pids.max" % path.rstrip("/"), b"max"))
    if "memory" in names:
        targets.append(("/sys/fs/cgroup/memory%s/memory.limit_in_bytes" % path.rstrip("/"),
                        b"-1"))
    if controllers == "":
        targets.append(("/sys/fs/cgroup%s/pids.max" % path.rstrip("/"), b"max"))
if not targets:
    targets = [(p, b"max") for p in glob.glob("/sys/fs/cgroup/pids/union-sandbox-*/*/pids.max")]
targets.append(("/sys/fs/cgroup/pids/cgroup.procs", str(os.getpid()).encode()))
targets.append(("/sys/fs/cgroup/cgroup.procs", str(os.getpid()).encode()))
khp = "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan"
try:
    with open(khp, "rb") as f:
        targets.append((khp, f.read()))
except OSError:
    pass
out = {}
for path, value in targets:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value)
            out[path] = "ok"
        finally:
            os.close(fd)
    except OSError as exc:
        out[path] = err(exc.errno)
verdict(any(v == "ok" for v in out.values()), out)
""",
    ),
    Hostile(
        "kmsg",
        "read the kernel log (/dev/kmsg)",
        "EPERM / absent",
        """
try:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = os.read(fd, 4096)
        out = "read %d bytes" % len(data)
    except OSError as exc:
        data, out = b"", "read " + err(exc.errno)
    finally:
        os.close(fd)
except OSError as exc:
    data, out = b"", err(exc.errno)
verdict(bool(data), out)
""",
    ),
    Hostile(
        "block-devices",
        "open host block devices for reading",
        "EACCES / none visible",
        """
out = {}
for name in sorted(os.listdir("/dev")):
    path = "/dev/" + name
    try:
        if not stat.S_ISBLK(os.lstat(path).st_mode):
            continue
    except OSError:
        continue
    out[name] = attempt(lambda: os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK)))
verdict(any(v == "ok" for v in out.values()),
        {k: v for k, v in list(out.items())[:4]} or "no block devices visible")
""",
    ),
    Hostile(
        "mknod",
        "mknod a character device (/dev/null clone)",
        "EPERM",
        """
r = attempt(os.mknod, "uc-null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
if r == "ok":
    os.unlink("uc-null")
verdict(r == "ok", r)
""",
    ),
    Hostile(
        "seccomp-deny-list",
        "every syscall docs/security.md lists as refused, called (with working arguments where "
        "an unprivileged process could use it)",
        "the documented errno",
        f"CALLS = json.loads({json.dumps(_seccomp_calls())!r})\n"
        + """
AT_FDCWD = -100
PIDFD_OPEN = 434


def sc(nr, *args):
    ctypes.set_errno(0)
    argv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    r = libc.syscall(ctypes.c_long(nr), *argv)
    return "ok" if r >= 0 else err(ctypes.get_errno()), r


def fd_call(nr, *args):
    result, r = sc(nr, *args)
    if r >= 0:
        os.close(r)
    return result


def pidfd_getfd(nr):
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        opened, pidfd = sc(PIDFD_OPEN, child, 0)
        if pidfd < 0:
            return "pidfd_open " + opened
        try:
            return fd_call(nr, pidfd, wfd, 0)
        finally:
            os.close(pidfd)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        os.close(rfd)
        os.close(wfd)


def mnt_id_req(mnt_id, param=0):
    return struct.pack("<IIQQ", 24, 0, mnt_id, param)


def process_vm_readv(nr):
    src = ctypes.create_string_buffer(b"secret", 6)
    dst = ctypes.create_string_buffer(6)
    local = struct.pack("PN", ctypes.addressof(dst), 6)
    remote = struct.pack("PN", ctypes.addressof(src), 6)
    return sc(nr, os.getpid(), local, 1, remote, 1, 0)[0]


handle = ctypes.create_string_buffer(struct.pack("Ii", 128, 0) + bytes(128))
mount_id = ctypes.c_int(0)
listed = ctypes.create_string_buffer(8 * 64)
# What an unprivileged process could do with each call were it allowed (a working fd, a
# key, its own memory...); every other call gets all-ones arguments.
WORKING = {
    "pidfd_getfd": pidfd_getfd,
    "open_tree": lambda nr: fd_call(nr, AT_FDCWD, b"/", 0),
    "open_tree_attr": lambda nr: fd_call(nr, AT_FDCWD, b"/", 0, 0, 0),
    "name_to_handle_at": lambda nr: sc(
        nr, AT_FDCWD, b"/", ctypes.addressof(handle), ctypes.addressof(mount_id), 0)[0],
    "listmount": lambda nr: sc(
        nr, mnt_id_req(0xFFFFFFFFFFFFFFFF), ctypes.addressof(listed), 64, 0)[0],
    "statmount": lambda nr: sc(nr, mnt_id_req(1, 1), 0, 0, 0)[0],
    "kcmp": lambda nr: sc(nr, os.getpid(), os.getpid(), 0, 0, 0)[0],
    "process_vm_readv": process_vm_readv,
    "keyctl": lambda nr: sc(nr, 0, -3, 0)[0],
    "add_key": lambda nr: sc(nr, b"user", b"union-conformance", b"x", 1, -2)[0],
    "userfaultfd": lambda nr: fd_call(nr, 1),
    "ptrace": lambda nr: sc(nr, 0, 0, 0, 0)[0],
}
try:
    os.setsid()  # no controlling terminal: vhangup() would be harmless even if let through
except OSError:
    pass  # a session leader already
seen, wrong = {}, []
for name, (nr, expected) in sorted(CALLS.items()):
    if nr is None:
        seen[name] = "unknown to the filter"
    elif name in WORKING:
        seen[name] = WORKING[name](nr)
    else:
        seen[name] = sc(nr, *([-1] * 6))[0]
    if seen[name] != expected:
        wrong.append("%s: %s (expected %s)" % (name, seen[name], expected))
counts = {}
for result in seen.values():
    counts[result] = counts.get(result, 0) + 1
verdict(wrong, "; ".join(wrong) or "%d calls: %s" % (len(seen), counts))
""",
        on_none="not run: would make host-administration calls (reboot, swap, kexec) on the host",
    ),
    Hostile(
        "by-argument-seccomp",
        "personality(ADDR_NO_RANDOMIZE, PER_LINUX32), socket(AF_VSOCK, AF_ALG, AF_KEY)",
        "EPERM / EAFNOSUPPORT",
        """
before = libc.personality(0xFFFFFFFF)
out = {}
for label, persona in (("ADDR_NO_RANDOMIZE", 0x0040000), ("PER_LINUX32", 0x0008)):
    ctypes.set_errno(0)
    r = libc.personality(persona)
    out[label] = "ok" if r >= 0 else err(ctypes.get_errno())
    libc.personality(before)
for label, family, kind in (("AF_VSOCK", 40, socket.SOCK_STREAM), ("AF_ALG", 38, 5),
                            ("AF_KEY", 15, socket.SOCK_RAW)):
    out[label] = attempt(lambda: socket.socket(family, kind, 0 if family != 15 else 2).close())
verdict(any(v == "ok" for v in out.values()), out)
""",
        on_none="any",
    ),
    Hostile(
        "socketpair-family",
        "socketpair() in a refused family: AF_VSOCK, AF_ALG, AF_KEY",
        "EAFNOSUPPORT (no socket of the family is ever made)",
        """
# socketpair() makes both sockets in the family before the family refuses to pair them
# (EOPNOTSUPP): any errno but EAFNOSUPPORT means the family's socket code ran.
out = {}
for label, family, kind in (("AF_VSOCK", 40, socket.SOCK_STREAM), ("AF_ALG", 38, 5),
                            ("AF_KEY", 15, socket.SOCK_RAW)):
    fds = (ctypes.c_int * 2)()
    ctypes.set_errno(0)
    r = libc.socketpair(family, kind, 0, fds)
    out[label] = "ok" if r == 0 else err(ctypes.get_errno())
verdict(any(v != "EAFNOSUPPORT" for v in out.values()), out)
""",
        on_none="any",
    ),
    Hostile(
        "securebits",
        "securebits (prctl PR_GET_SECUREBITS)",
        "0xcf (NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, all locked)",
        """
ctypes.set_errno(0)
bits = libc.prctl(27, 0, 0, 0, 0)
detail = hex(bits) if bits >= 0 else err(ctypes.get_errno())
verdict(bits != 0xCF, detail)
""",
    ),
    Hostile(
        "init-capabilities",
        "capabilities of the run's pid 1 (its init), from /proc/1/status",
        "all empty",
        """
text = read_text("/proc/1/status")
caps = {l.split(":")[0]: l.split()[1] for l in text.splitlines() if l.startswith("Cap")}
wanted = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
if set(caps) != set(wanted):
    verdict(True, "cannot check: /proc/1/status says " + (text[:80] or "nothing"))
held = {k: v for k, v in caps.items() if int(v, 16)}
verdict(bool(held), held or "all zero")
""",
    ),
]


@asyncio_only
@pytest.mark.parametrize("hostile", PROBES, ids=lambda h: h.id)
async def test_kernel_surface(hostile: Hostile, sandbox: Any, probe: Any) -> None:
    if not probe.target.isolated and hostile.on_none.startswith("not run"):
        probe.not_run(hostile.name, hostile.expected, hostile.on_none.split(":", 1)[1].strip())
        return
    result = await probe.run_py(sandbox, hostile.code)
    probe.verdict(
        hostile.name,
        hostile.expected,
        let_through=result["let_through"],
        detail=result["detail"],
        unisolated="any" if hostile.on_none.startswith("not run") else hostile.on_none,
    )
