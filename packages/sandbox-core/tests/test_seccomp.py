"""Tests of the seccomp deny-list.

Three layers: the program's shape (both arches), its decisions under a small BPF interpreter
(both arches, whatever the host), and its real effect once installed in a forked child (host
arch only, Linux only).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from union.sandbox.core import _seccomp
from union.sandbox.core._seccomp import (
    ABSENT_SYSCALLS,
    DENIED_SYSCALLS,
    SUPPORTED_ARCHES,
    UnsupportedArchError,
    _Assembler,
    build_deny_filter,
    syscall_number,
)

# Values restated from the kernel headers on purpose: the tests check the module, not
# themselves.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_ARM = 0x40000028
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_EPERM = RET_ERRNO | 1
RET_ENOSYS = RET_ERRNO | 38
RET_EAFNOSUPPORT = RET_ERRNO | 97

CLONE_NEW_FLAGS = {
    "NEWNS": 0x00020000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x80
CLONE_FILES = 0x400
CLONE_THREAD = 0x10000
SIGCHLD = 17

# x86_64 numbers this file uses that the module does not need to know.
READ = {"x86_64": 0, "aarch64": 63}
LANDLOCK_CREATE_RULESET = 444  # same on both arches

# What the filter must refuse whatever the arguments, and the syscall numbers, restated from
# the kernel's tables (arch/x86/entry/syscalls/syscall_64.tbl; the generic table for aarch64)
# on purpose: the module's list is checked against this one, so dropping a name from the
# filter fails here. None: the arch has no such syscall.
MUST_EPERM: dict[str, tuple[int | None, int | None]] = {
    # name: (x86_64, aarch64)
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "open_tree_attr": (467, 467),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "setns": (308, 268),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "lookup_dcookie": (212, 18),
    "fanotify_init": (300, 262),
    "nfsservctl": (180, 42),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
}
#: Refused with ENOSYS, as if the kernel lacked them.
MUST_ENOSYS: dict[str, tuple[int | None, int | None]] = {
    "clone3": (435, 435),
    "statmount": (457, 457),
    "listmount": (458, 458),
}
#: Allowed calls the probes below need.
OTHER_CALLS: dict[str, tuple[int | None, int | None]] = {"pidfd_open": (434, 434)}
#: The syscalls whose arguments the filter reads.
BY_ARGUMENT: dict[str, tuple[int | None, int | None]] = {
    "unshare": (272, 97),
    "clone": (56, 220),
    "personality": (135, 92),
    "socket": (41, 198),
    "socketpair": (53, 199),
}
ARCH_COLUMN = {"x86_64": 0, "aarch64": 1}

HOST_ARCH = platform.machine()
on_linux_host = pytest.mark.skipif(
    sys.platform != "linux" or HOST_ARCH not in SUPPORTED_ARCHES,
    reason="installing the filter needs Linux on a supported arch",
)
x86_64_only = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64-specific ABI")


# --------------------------------------------------------------------------- BPF helpers

Insn = tuple[int, int, int, int]


def decode(prog: bytes) -> list[Insn]:
    assert len(prog) % 8 == 0
    return [(c, jt, jf, k) for c, jt, jf, k in struct.iter_unpack("<HBBI", prog)]


def seccomp_data(nr: int, arch: int, *args: int) -> bytes:
    full = [*args, *([0] * (6 - len(args)))]
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *(a & (2**64 - 1) for a in full))


def run_bpf(prog: bytes, data: bytes) -> int:
    """Interpret the subset of classic BPF the module emits; anything else fails the test."""
    insns = decode(prog)
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # LD W ABS
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # ALU AND K
            acc &= k
        elif code == 0x15:  # JEQ K
            pc += jt if acc == k else jf
        elif code == 0x45:  # JSET K
            pc += jt if acc & k else jf
        elif code == 0x06:  # RET K
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc - 1}")


def decide(arch: str, name_or_nr: str | int, *args: int, audit: int | None = None) -> int:
    nr = syscall_number(name_or_nr, arch) if isinstance(name_or_nr, str) else name_or_nr
    data = seccomp_data(nr, AUDIT_ARCH[arch] if audit is None else audit, *args)
    return run_bpf(build_deny_filter(arch), data)


def on_arch(table: dict[str, tuple[int | None, int | None]], arch: str) -> dict[str, int]:
    """``table`` restricted to the syscalls ``arch`` has: name -> number."""
    column = ARCH_COLUMN[arch]
    return {name: nrs[column] for name, nrs in table.items() if nrs[column] is not None}


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_syscall_numbers_match_the_kernel_tables(arch: str) -> None:
    for table in (MUST_EPERM, MUST_ENOSYS, BY_ARGUMENT):
        column = ARCH_COLUMN[arch]
        for name, nrs in table.items():
            if nrs[column] is None:
                with pytest.raises(KeyError, match=name):
                    syscall_number(name, arch)
            else:
                assert syscall_number(name, arch) == nrs[column], (arch, name)


def test_the_filter_refuses_exactly_the_required_syscalls() -> None:
    """Dropping a name from the filter (or adding one without a test) fails here."""
    assert len(set(DENIED_SYSCALLS)) == len(DENIED_SYSCALLS)
    assert set(DENIED_SYSCALLS) == set(MUST_EPERM)
    assert set(ABSENT_SYSCALLS) == set(MUST_ENOSYS)
    assert not any(name.startswith("landlock") for name in DENIED_SYSCALLS)


HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"),
    "aarch64": ("/usr/include/asm-generic/unistd.h",),
}


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_syscall_numbers_agree_with_installed_headers(arch: str) -> None:
    found = [Path(h) for h in HEADERS[arch] if Path(h).is_file()]
    if not found:
        pytest.skip(f"no kernel syscall header for {arch} installed")
    path = found[0]
    defined = {
        m["name"]: int(m["nr"])
        for m in re.finditer(
            r"^#define __NR_(?P<name>\w+)\s+(?P<nr>\d+)\s*$", path.read_text(), re.M
        )
    }
    names = [*MUST_EPERM, *MUST_ENOSYS, *BY_ARGUMENT]
    checked = 0
    for name in names:
        if name not in defined:
            continue  # newer than the installed headers, or not on this arch
        # A name the header defines must be in the module's table (KeyError otherwise).
        assert syscall_number(name, arch) == defined[name], name
        checked += 1
    assert checked > 40


def test_syscall_number_defaults_to_host_arch() -> None:
    if HOST_ARCH not in SUPPORTED_ARCHES:
        pytest.skip("host arch unsupported")
    assert syscall_number("ptrace") == syscall_number("ptrace", HOST_ARCH)
    assert build_deny_filter() == build_deny_filter(HOST_ARCH)


def test_syscall_number_unknown_name_or_absent_on_arch() -> None:
    with pytest.raises(KeyError, match="no_such_call"):
        syscall_number("no_such_call", "x86_64")
    with pytest.raises(KeyError, match="iopl"):
        syscall_number("iopl", "aarch64")
    assert syscall_number("iopl", "x86_64") == 172


def test_arch_aliases() -> None:
    assert build_deny_filter("amd64") == build_deny_filter("x86_64")
    assert build_deny_filter("arm64") == build_deny_filter("aarch64")


@pytest.mark.parametrize("arch", ["riscv64", "i686", "armv7l", ""])
def test_unsupported_arch(arch: str) -> None:
    with pytest.raises(UnsupportedArchError) as info:
        build_deny_filter(arch)
    message = str(info.value)
    assert repr(arch) in message
    assert "x86_64" in message
    assert "aarch64" in message
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(UnsupportedArchError):
        syscall_number("ptrace", arch)


def test_unsupported_host_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_seccomp, "host_machine", lambda: "s390x")
    with pytest.raises(UnsupportedArchError, match="s390x"):
        build_deny_filter()


# --------------------------------------------------------------------------- program shape


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_program_shape(arch: str) -> None:
    prog = build_deny_filter(arch)
    insns = decode(prog)
    assert 0 < len(insns) <= 4096  # BPF_MAXINSNS
    for pc, (code, jt, jf, k) in enumerate(insns):
        assert code in {0x20, 0x54, 0x15, 0x45, 0x06}, pc
        if code in {0x15, 0x45}:
            # Conditional jumps: forward, inside the program (8-bit by construction).
            assert pc + 1 + jt < len(insns)
            assert pc + 1 + jf < len(insns)
        else:
            assert jt == jf == 0
        if code == 0x20:
            assert k % 4 == 0
            assert k < 64  # sizeof(struct seccomp_data)
    assert insns[-1] == (0x06, 0, 0, RET_ALLOW)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_arch_is_checked_first(arch: str) -> None:
    insns = decode(build_deny_filter(arch))
    assert insns[0] == (0x20, 0, 0, 4)  # A = seccomp_data.arch
    assert insns[1] == (0x15, 1, 0, AUDIT_ARCH[arch])  # native: skip the kill
    assert insns[2] == (0x06, 0, 0, RET_KILL_PROCESS)
    assert insns[3] == (0x20, 0, 0, 0)  # A = seccomp_data.nr


def test_assembler_rejects_long_jumps() -> None:
    asm = _Assembler()
    far = asm.new_label("far")
    asm.jeq(1, jt=far)
    for _ in range(256):
        asm.ret(0)
    asm.label(far)
    asm.ret(0)
    with pytest.raises(ValueError, match="out of range"):
        asm.assemble()


def test_assembler_accepts_the_longest_jump() -> None:
    asm = _Assembler()
    far = asm.new_label("far")
    asm.jeq(1, jt=far)
    for _ in range(255):
        asm.ret(0)
    asm.label(far)
    asm.ret(7)
    insns = decode(asm.assemble())
    assert insns[0] == (0x15, 255, 0, 1)


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_foreign_abi_is_killed(arch: str) -> None:
    for audit in (AUDIT_ARCH_I386, AUDIT_ARCH_ARM, 0, AUDIT_ARCH["x86_64"] ^ AUDIT_ARCH["aarch64"]):
        assert decide(arch, READ[arch], audit=audit) == RET_KILL_PROCESS
    other = "aarch64" if arch == "x86_64" else "x86_64"
    assert decide(arch, READ[arch], audit=AUDIT_ARCH[other]) == RET_KILL_PROCESS


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_denied_syscalls_decide_eperm(arch: str) -> None:
    for name, nr in on_arch(MUST_EPERM, arch).items():
        assert decide(arch, nr, 0, 0, 0) == RET_EPERM, name


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_ordinary_syscalls_are_allowed(arch: str) -> None:
    special = set(on_arch(BY_ARGUMENT, arch).values()) | set(on_arch(MUST_ENOSYS, arch).values())
    denied = set(on_arch(MUST_EPERM, arch).values()) | special
    for nr in range(0, 480):
        if nr not in denied:
            assert decide(arch, nr, 0xFFFFFFFF, 0x10000000) == RET_ALLOW, nr
    assert decide(arch, LANDLOCK_CREATE_RULESET, 0, 0, 1) == RET_ALLOW


def test_x32_numbers_are_refused_on_x86_64() -> None:
    assert decide("x86_64", 0x40000000 | 39) == RET_EPERM  # x32 getpid
    assert decide("x86_64", 0x40000000 | 272, 0) == RET_EPERM  # x32 unshare(0)
    assert decide("aarch64", 0x40000000 | 39) == RET_ALLOW  # no x32 ABI there: kernel ENOSYS


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_absent_syscalls_decide_enosys(arch: str) -> None:
    for name, nr in on_arch(MUST_ENOSYS, arch).items():
        assert decide(arch, nr, 0, 88) == RET_ENOSYS, name
        assert decide(arch, nr, 0xFFFFFFFF, 0xFFFFFFFF) == RET_ENOSYS, name


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
@pytest.mark.parametrize("flag", CLONE_NEW_FLAGS.values(), ids=CLONE_NEW_FLAGS.keys())
def test_namespace_flags(arch: str, flag: int) -> None:
    assert decide(arch, "unshare", flag) == RET_EPERM
    assert decide(arch, "unshare", flag | CLONE_FILES) == RET_EPERM
    assert decide(arch, "clone", flag | SIGCHLD) == RET_EPERM
    # The kernel reads only the low 32 bits of clone's flags: so does the filter.
    assert decide(arch, "clone", (1 << 40) | flag | SIGCHLD) == RET_EPERM
    assert decide(arch, "clone", (flag << 32) | SIGCHLD) == RET_ALLOW


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_namespace_free_clone_and_unshare_are_allowed(arch: str) -> None:
    assert decide(arch, "unshare", CLONE_FILES) == RET_ALLOW
    assert decide(arch, "unshare", 0) == RET_ALLOW
    assert decide(arch, "unshare", CLONE_NEWTIME) == RET_EPERM
    assert decide(arch, "clone", SIGCHLD) == RET_ALLOW
    assert decide(arch, "clone", 0x003D0F00) == RET_ALLOW  # glibc's pthread_create flags
    assert decide(arch, "clone", 0x01200000 | SIGCHLD) == RET_ALLOW  # glibc fork()


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_personality(arch: str) -> None:
    assert decide(arch, "personality", 0) == RET_ALLOW
    assert decide(arch, "personality", 0xFFFFFFFF) == RET_ALLOW
    assert decide(arch, "personality", 0x0040000) == RET_EPERM  # ADDR_NO_RANDOMIZE
    assert decide(arch, "personality", 0x0008) == RET_EPERM  # PER_LINUX32
    assert decide(arch, "personality", 0x0020000) == RET_EPERM  # UNAME26


@pytest.mark.parametrize("call", ["socket", "socketpair"])
@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_socket_rules(arch: str, call: str) -> None:
    """socketpair() makes its sockets in the family asked for before the family refuses to
    pair them, so it takes socket()'s rule."""
    af_inet, af_inet6, af_unix, af_key, af_netlink, af_packet = 2, 10, 1, 15, 16, 17
    stream, dgram, raw, packet = 1, 2, 3, 10
    cloexec_nonblock = 0o2000000 | 0o4000
    assert decide(arch, call, af_packet, raw) == RET_EAFNOSUPPORT
    assert decide(arch, call, af_packet, dgram) == RET_EAFNOSUPPORT
    assert decide(arch, call, af_key, raw, 2) == RET_EAFNOSUPPORT
    assert decide(arch, call, af_inet, raw, 1) == RET_EPERM
    assert decide(arch, call, af_inet6, raw | cloexec_nonblock, 58) == RET_EPERM
    assert decide(arch, call, af_inet, packet, 0x300) == RET_EPERM
    assert decide(arch, call, af_unix, raw) == RET_EPERM
    assert decide(arch, call, af_netlink, raw, 0) == RET_ALLOW
    assert decide(arch, call, af_netlink, raw | cloexec_nonblock, 0) == RET_ALLOW
    assert decide(arch, call, af_inet, stream | cloexec_nonblock) == RET_ALLOW
    assert decide(arch, call, af_inet6, dgram, 17) == RET_ALLOW
    assert decide(arch, call, af_inet, dgram, 1) == RET_ALLOW  # unprivileged ICMP ping
    assert decide(arch, call, af_unix, stream) == RET_ALLOW
    # Families outside the allow-list: AF_ALG (kernel crypto API), AF_VSOCK (ignores
    # network namespaces: it reaches the hypervisor), AF_BLUETOOTH.
    assert decide(arch, call, 38, 5) == RET_EAFNOSUPPORT
    assert decide(arch, call, 40, stream) == RET_EAFNOSUPPORT
    assert decide(arch, call, 31, stream) == RET_EAFNOSUPPORT


# --------------------------------------------------------------------------- installed


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2


def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.prctl.restype = ctypes.c_int
    return lib


def install_filter(prog: bytes) -> None:
    lib = libc()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    zero = ctypes.c_ulong(0)
    if lib.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    mode = ctypes.c_ulong(SECCOMP_MODE_FILTER)
    if lib.prctl(PR_SET_SECCOMP, mode, ctypes.byref(fprog), zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def host_nr(name: str) -> int:
    """The host's number of a syscall the tables above list."""
    for table in (MUST_EPERM, MUST_ENOSYS, BY_ARGUMENT, OTHER_CALLS):
        if name in table:
            nr = table[name][ARCH_COLUMN[HOST_ARCH]]
            assert nr is not None, f"no {name} on {HOST_ARCH}"
            return nr
    raise KeyError(name)


def sc(name_or_nr: str | int, *args: int | bytes) -> int:
    """Make a raw syscall; return its result, or ``-errno``. Bytes are passed as pointers."""
    nr = host_nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    lib = libc()
    ctypes.set_errno(0)
    argv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    result: int = lib.syscall(ctypes.c_long(nr), *argv)
    return -ctypes.get_errno() if result == -1 else result


def closed(fd: int) -> int:
    """0 for a descriptor (closed at once), else the ``-errno`` it stands for."""
    if fd >= 0:
        os.close(fd)
        return 0
    return fd


AT_FDCWD = -100


def pidfd_getfd_from_child() -> int:
    """Take a descriptor out of a child (``pidfd_getfd``): 0 when that worked."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        pidfd = sc("pidfd_open", pid, 0)
        if pidfd < 0:
            return 1000 + pidfd  # not the call under test: fails the comparison loudly
        try:
            return closed(sc("pidfd_getfd", pidfd, write_end, 0))
        finally:
            os.close(pidfd)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)


def mnt_id_req(mnt_id: int, param: int = 0) -> bytes:
    """``struct mnt_id_req`` (version 0: size, spare, mnt_id, param)."""
    return struct.pack("<IIQQ", 24, 0, mnt_id, param)


def listmount_root() -> int:
    buf = ctypes.create_string_buffer(8 * 64)
    lsmt_root = 0xFFFFFFFFFFFFFFFF
    count = sc("listmount", mnt_id_req(lsmt_root), ctypes.addressof(buf), 64, 0)
    return min(count, 0)  # 0 when the kernel listed mounts


def in_child(fn: Callable[[], Any], *, filtered: bool = True) -> tuple[Any, int]:
    """Run ``fn`` in a forked child (under the filter unless told otherwise).

    Returns what ``fn`` returned (JSON round-trip) and the child's wait status; a Python
    exception in the child fails the test with the child's traceback.
    """
    prog = build_deny_filter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            signal.alarm(30)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if filtered:
                install_filter(prog)
            payload = {"value": fn()}
        except BaseException:
            payload = {"error": traceback.format_exc()}
        try:
            with os.fdopen(write_fd, "w") as out:
                json.dump(payload, out)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not raw:
        return None, status
    payload = json.loads(raw)
    if "error" in payload:
        pytest.fail(f"child raised:\n{payload['error']}")
    return payload["value"], status


def filtered(fn: Callable[[], Any]) -> Any:
    value, status = in_child(fn)
    assert os.waitstatus_to_exitcode(status) == 0
    return value


def unfiltered(fn: Callable[[], Any]) -> Any:
    value, status = in_child(fn, filtered=False)
    assert os.waitstatus_to_exitcode(status) == 0
    return value


def socket_errno(family: int, kind: int, proto: int = 0) -> int:
    try:
        socket.socket(family, kind, proto).close()
    except OSError as exc:
        return exc.errno or -1
    return 0


def ptrace_traceme() -> int:
    return sc("ptrace", 0, 0, 0, 0)


# Each case: an action run in the child and its result under the filter. The same action run
# without the filter must give something else, or the case would prove nothing.
DENIAL_CASES: dict[str, tuple[Callable[[], int], int]] = {
    "unshare_newuser": (lambda: sc("unshare", CLONE_NEW_FLAGS["NEWUSER"]), -errno.EPERM),
    "unshare_newns": (lambda: sc("unshare", CLONE_NEW_FLAGS["NEWNS"]), -errno.EPERM),
    "unshare_newnet": (lambda: sc("unshare", CLONE_NEW_FLAGS["NEWNET"]), -errno.EPERM),
    # CLONE_THREAD without CLONE_SIGHAND: the kernel refuses with EINVAL, so no child is made.
    "clone_newuser": (
        lambda: sc("clone", CLONE_NEW_FLAGS["NEWUSER"] | CLONE_THREAD, 0, 0, 0, 0),
        -errno.EPERM,
    ),
    "clone_newpid": (
        lambda: sc("clone", CLONE_NEW_FLAGS["NEWPID"] | CLONE_THREAD, 0, 0, 0, 0),
        -errno.EPERM,
    ),
    "clone3": (lambda: sc("clone3", 0, 0), -errno.ENOSYS),
    # Calls that work without the filter, even for an unprivileged process.
    "pidfd_getfd": (pidfd_getfd_from_child, -errno.EPERM),
    "open_tree": (lambda: closed(sc("open_tree", AT_FDCWD, b"/", 0)), -errno.EPERM),
    "open_tree_attr": (
        lambda: closed(sc("open_tree_attr", AT_FDCWD, b"/", 0, 0, 0)),
        -errno.EPERM,
    ),
    "name_to_handle_at": (
        lambda: sc("name_to_handle_at", AT_FDCWD, b"/", 0, 0, 0),  # EFAULT unfiltered
        -errno.EPERM,
    ),
    "listmount": (listmount_root, -errno.ENOSYS),
    "statmount": (lambda: sc("statmount", mnt_id_req(1, 1), 0, 0, 0), -errno.ENOSYS),
    "mount": (lambda: sc("mount", 0, 0, 0, 0, 0), -errno.EPERM),
    "ptrace_traceme": (ptrace_traceme, -errno.EPERM),
    "keyctl": (lambda: sc("keyctl", 0, -3, 0), -errno.EPERM),  # KEYCTL_GET_KEYRING_ID
    "bpf": (lambda: sc("bpf", -1, 0, 0), -errno.EPERM),
    "io_uring_setup": (lambda: sc("io_uring_setup", 1, 0), -errno.EPERM),
    "personality_set": (lambda: sc("personality", 0x0040000), -errno.EPERM),
    "socket_af_packet": (
        lambda: socket_errno(socket.AF_PACKET, socket.SOCK_RAW),
        errno.EAFNOSUPPORT,
    ),
    "socket_inet_raw": (
        lambda: socket_errno(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        errno.EPERM,
    ),
    "socket_inet6_raw": (
        lambda: socket_errno(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
        errno.EPERM,
    ),
    "socket_inet_sock_packet": (lambda: socket_errno(socket.AF_INET, 10, 0x300), errno.EPERM),
}


@on_linux_host
@pytest.mark.parametrize("case", DENIAL_CASES)
def test_denied_when_installed(case: str) -> None:
    action, expected = DENIAL_CASES[case]
    assert filtered(action) == expected


@on_linux_host
@pytest.mark.parametrize("case", DENIAL_CASES)
def test_denial_cases_differ_without_filter(case: str) -> None:
    action, expected = DENIAL_CASES[case]
    got = unfiltered(action)
    if got == expected and os.geteuid() != 0:
        pytest.skip(f"the host itself refuses {case} to this user")
    if got == expected and case == "io_uring_setup":
        pytest.skip("io_uring is disabled on this host (kernel.io_uring_disabled)")
    assert got != expected


@on_linux_host
def test_every_denied_syscall_is_refused_when_installed() -> None:
    eperm = on_arch(MUST_EPERM, HOST_ARCH)
    enosys = on_arch(MUST_ENOSYS, HOST_ARCH)

    def attempt() -> dict[str, int]:
        os.setsid()  # no controlling terminal: vhangup() would be harmless even if allowed
        # All-ones arguments: invalid for every listed call, should the filter let one pass.
        return {name: sc(nr, *([-1] * 6)) for name, nr in {**eperm, **enosys}.items()}

    results = filtered(attempt)
    expected = {**dict.fromkeys(eperm, -errno.EPERM), **dict.fromkeys(enosys, -errno.ENOSYS)}
    assert results == expected


@on_linux_host
def test_fork_subprocess_posix_spawn_and_threads_still_work() -> None:
    true = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"

    def attempt() -> dict[str, int]:
        out: dict[str, int] = {}
        pid = os.fork()  # glibc: clone(SIGCHLD | CLONE_CHILD_*)
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        out["subprocess"] = subprocess.run([true], check=False).returncode
        out["subprocess_py"] = subprocess.run(
            [sys.executable, "-c", "import os; raise SystemExit(os.fork() and 3)"], check=False
        ).returncode
        # glibc >= 2.34 tries clone3 first here, gets ENOSYS, falls back to clone.
        pid = os.posix_spawn(true, [true], {})
        out["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
        thread.start()
        thread.join()
        out["thread"] = int(len(seen) == 1 and seen[0] != threading.get_native_id())
        return out

    assert filtered(attempt) == {
        "fork": 7,
        "subprocess": 0,
        "subprocess_py": 3,
        "posix_spawn": 0,
        "thread": 1,
    }


@on_linux_host
def test_allowed_calls_still_work(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"

    def attempt() -> dict[str, int]:
        fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o600)
        written = os.write(fd, b"hello seccomp")
        os.close(fd)
        fd = os.open(target, os.O_RDONLY)
        data = os.read(fd, 100)
        os.close(fd)
        return {
            "io": int(written == 13 and data == b"hello seccomp"),
            "tcp": socket_errno(socket.AF_INET, socket.SOCK_STREAM),
            "udp6": socket_errno(socket.AF_INET6, socket.SOCK_DGRAM) in (0, errno.EAFNOSUPPORT),
            "unix": socket_errno(socket.AF_UNIX, socket.SOCK_STREAM),
            "netlink": socket_errno(socket.AF_NETLINK, socket.SOCK_RAW, 0),
            "personality_query": int(sc("personality", 0xFFFFFFFF) >= 0),
            "unshare_files": sc("unshare", CLONE_FILES),
            "landlock": int(sc(LANDLOCK_CREATE_RULESET, 0, 0, 1) != -errno.EPERM),
        }

    assert filtered(attempt) == {
        "io": 1,
        "tcp": 0,
        "udp6": 1,
        "unix": 0,
        "netlink": 0,
        "personality_query": 1,
        "unshare_files": 0,
        "landlock": 1,
    }
    assert target.read_bytes() == b"hello seccomp"


@on_linux_host
@x86_64_only
def test_x32_syscall_is_refused_when_installed() -> None:
    x32_getpid = 0x40000000 | 39
    assert filtered(lambda: sc(x32_getpid)) == -errno.EPERM
    assert unfiltered(lambda: sc(x32_getpid)) != -errno.EPERM


def int80_getpid() -> int:
    """Call i386 getpid (20) through ``int 0x80`` from a few bytes of machine code."""
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
    prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=prot)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    func = ctypes.CFUNCTYPE(ctypes.c_int)(address)
    return int(func()) - os.getpid()  # 0 when the call went through


@on_linux_host
@x86_64_only
def test_i386_abi_call_kills_the_process() -> None:
    value, status = in_child(int80_getpid, filtered=False)
    if value != 0:
        pytest.skip(f"int 0x80 does not work on this host (status {status:#x})")
    value, status = in_child(int80_getpid)
    assert value is None
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGSYS
