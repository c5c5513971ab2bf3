"""Seccomp deny-list, assembled as a classic BPF program in pure Python (no libseccomp).

The ``userns`` backend installs this filter in every run, after ``PR_SET_NO_NEW_PRIVS`` and
after the run's namespaces are built, so that sandboxed code cannot reach kernel surfaces that
namespaces, capabilities and Landlock leave open (ptrace, the mount API, keyrings, bpf,
io_uring, new namespaces, ...). The result of :func:`build_deny_filter` is the raw
``struct sock_filter`` array: point a ``struct sock_fprog`` at it for
``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)``, or hand it to ``bwrap --seccomp FD``.

What the program does, in order:

1. A call made through another ABI than the one the filter was built for (``int 0x80`` i386
   calls on x86_64, AArch32 calls on aarch64) kills the process: its syscall numbers differ,
   so the list below would not apply to it.
2. x86_64 only: a syscall number with the x32 bit (``0x40000000``) set fails with ``EPERM``.
3. Every syscall of :data:`DENIED_SYSCALLS` that exists on the arch fails with ``EPERM``.
4. Every syscall of :data:`ABSENT_SYSCALLS` fails with ``ENOSYS``, as on a kernel without
   it, so that userspace takes the fallback it already has for such kernels:

   * ``clone3``: its flags live in user memory that BPF cannot read. glibc then falls back
     to ``clone``, whose flags are checked.
   * ``statmount`` and ``listmount`` (Linux 6.8): the mount tree as structured queries.
     libmount and friends fall back to ``/proc/self/mountinfo``, which shows the run the
     same mounts; the new calls add kernel surface and nothing the run needs.

5. Argument-dependent rules (only the low 32 bits of an argument are compared; the kernel
   reads no more than that for these arguments, or rejects the high bits itself):

   * ``unshare`` and ``clone`` fail with ``EPERM`` when the flags ask for any new namespace.
   * ``personality`` fails with ``EPERM`` unless the argument is ``PER_LINUX`` (0) or the
     query value ``0xffffffff``.
   * ``socket`` and ``socketpair`` allow only ``AF_UNIX``, ``AF_INET``, ``AF_INET6`` and
     ``AF_NETLINK`` (which glibc needs for ``getaddrinfo``); any other family (``AF_PACKET``,
     ``AF_KEY``, and ``AF_VSOCK``, which ignores network namespaces and reaches the
     hypervisor) fails with ``EAFNOSUPPORT``. ``SOCK_RAW``/``SOCK_PACKET`` fail with
     ``EPERM`` in any family but ``AF_NETLINK``. ``socketpair`` creates both sockets in the
     family asked for (its create code runs, its module loads) before the family can refuse
     to pair them, so it is one more way to make a socket and takes the same rule.

6. Everything else is allowed. Landlock stays allowed on purpose: a nested restriction can
   only narrow what the run may do.

Only unshare, clone, personality, socket and socketpair look at arguments; every other
syscall is decided from its number and arch alone, so the kernel's per-syscall action cache
(Linux 5.11+) lets allowed calls skip the filter entirely.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Mapping
from typing import Final, NamedTuple

__all__ = [
    "ABSENT_SYSCALLS",
    "DENIED_SYSCALLS",
    "SUPPORTED_ARCHES",
    "UnsupportedArchError",
    "build_deny_filter",
    "syscall_number",
]


def host_machine() -> str:
    """This machine's architecture (``uname -m``); ``platform.machine()`` without importing
    ``platform`` into every session."""
    return os.uname().machine


#: Architectures the filter can be built for (``os.uname().machine`` spelling).
SUPPORTED_ARCHES: Final = ("x86_64", "aarch64")

_ARCH_ALIASES: Final = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}

#: Syscalls denied outright with ``EPERM``; a name that does not exist on an arch is skipped
#: there (see :func:`syscall_number`).
DENIED_SYSCALLS: Final[tuple[str, ...]] = (
    # Inspecting or driving other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",  # steals a descriptor from another process (ptrace-grade access)
    "kcmp",
    # The mount API, old and new, and changing the root.
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "open_tree_attr",  # open_tree with mount attributes (Linux 6.15)
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # Joining namespaces (creating them is filtered by flags, below).
    "setns",
    # Swap, reboot, kexec, kernel modules.
    "swapon",
    "swapoff",
    "reboot",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    # Kernel keyrings (not namespaced).
    "keyctl",
    "add_key",
    "request_key",
    # Large kernel attack surface or ways around this filter.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",  # io_uring runs its operations without passing through seccomp
    "io_uring_enter",
    "io_uring_register",
    # Host-wide administration.
    "acct",
    "quotactl",
    "quotactl_fd",
    "open_by_handle_at",  # opens files by handle, around path-based confinement
    "name_to_handle_at",
    "lookup_dcookie",
    "fanotify_init",
    "nfsservctl",
    "uselib",
    "_sysctl",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    # Clocks and host identity.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
)

#: Syscalls that fail with ``ENOSYS``, as if this kernel did not have them (see the module
#: docstring, step 4).
ABSENT_SYSCALLS: Final[tuple[str, ...]] = ("clone3", "statmount", "listmount")

# Syscall numbers, from arch/x86/entry/syscalls/syscall_64.tbl (x86_64) and the generic table
# include/uapi/asm-generic/unistd.h / scripts/syscall.tbl (aarch64). Only the syscalls this
# filter refers to are listed.
_X86_64: Final[Mapping[str, int]] = {
    "clone": 56,
    "socket": 41,
    "socketpair": 53,
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "personality": 135,
    "vhangup": 153,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "statmount": 457,
    "listmount": 458,
    "open_tree_attr": 467,
}

_AARCH64: Final[Mapping[str, int]] = {
    "lookup_dcookie": 18,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "nfsservctl": 42,
    "chroot": 51,
    "vhangup": 58,
    "quotactl": 60,
    "acct": 89,
    "personality": 92,
    "unshare": 97,
    "kexec_load": 104,
    "init_module": 105,
    "delete_module": 106,
    "clock_settime": 112,
    "syslog": 116,
    "ptrace": 117,
    "reboot": 142,
    "sethostname": 161,
    "setdomainname": 162,
    "settimeofday": 170,
    "adjtimex": 171,
    "socket": 198,
    "socketpair": 199,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "clone": 220,
    "swapon": 224,
    "swapoff": 225,
    "perf_event_open": 241,
    "fanotify_init": 262,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "clock_adjtime": 266,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "bpf": 280,
    "userfaultfd": 282,
    "kexec_file_load": 294,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "statmount": 457,
    "listmount": 458,
    "open_tree_attr": 467,
}

_TABLES: Final[Mapping[str, Mapping[str, int]]] = {"x86_64": _X86_64, "aarch64": _AARCH64}
# seccomp_data.arch values (linux/audit.h): EM_X86_64 / EM_AARCH64 | 64BIT | LE.
_AUDIT_ARCH: Final[Mapping[str, int]] = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Return actions (linux/seccomp.h) and the errno values the filter uses (same on both arches).
_RET_KILL_PROCESS: Final = 0x80000000
_RET_ERRNO: Final = 0x00050000
_RET_ALLOW: Final = 0x7FFF0000
_EPERM: Final = 1
_ENOSYS: Final = 38
_EAFNOSUPPORT: Final = 97

# Offsets into struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}. Both supported
# arches are little-endian, so the low word of args[i] comes first.
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i


_X32_SYSCALL_BIT: Final = 0x40000000

_CLONE_NEWTIME: Final = 0x00000080
_CLONE_NEWNS: Final = 0x00020000
_CLONE_NEWCGROUP: Final = 0x02000000
_CLONE_NEWUTS: Final = 0x04000000
_CLONE_NEWIPC: Final = 0x08000000
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWPID: Final = 0x20000000
_CLONE_NEWNET: Final = 0x40000000
# clone(2) reads its low byte as the exit signal (CSIGNAL), so 0x80 is not CLONE_NEWTIME
# there (new time namespaces come only from unshare/clone3).
_CLONE_NEW_MASK: Final = (
    _CLONE_NEWNS
    | _CLONE_NEWCGROUP
    | _CLONE_NEWUTS
    | _CLONE_NEWIPC
    | _CLONE_NEWUSER
    | _CLONE_NEWPID
    | _CLONE_NEWNET
)
_UNSHARE_NEW_MASK: Final = _CLONE_NEW_MASK | _CLONE_NEWTIME

_PER_LINUX: Final = 0
_PER_QUERY: Final = 0xFFFFFFFF

_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10
_AF_NETLINK: Final = 16
_SOCK_TYPE_MASK: Final = 0xF
_SOCK_RAW: Final = 3
_SOCK_PACKET: Final = 10  # socket(AF_INET, SOCK_PACKET) is turned into an AF_PACKET socket

# Classic BPF opcodes (linux/filter.h), restricted to what seccomp accepts and we use.
_LD_W_ABS: Final = 0x20
_ALU_AND_K: Final = 0x54
_JMP_JEQ_K: Final = 0x15
_JMP_JSET_K: Final = 0x45
_RET_K: Final = 0x06
_MAX_JUMP: Final = 0xFF


class UnsupportedArchError(RuntimeError):
    """The seccomp filter cannot be built for this CPU architecture."""

    def __init__(self, arch: str) -> None:
        super().__init__(
            f"seccomp filter: unsupported architecture {arch!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHES)})"
        )
        self.arch = arch


def _resolve_arch(arch: str | None) -> str:
    name = host_machine() if arch is None else arch
    resolved = _ARCH_ALIASES.get(name.lower())
    if resolved is None:
        raise UnsupportedArchError(name)
    return resolved


def syscall_number(name: str, arch: str | None = None) -> int:
    """Return the number of syscall ``name`` on ``arch`` (default: this machine).

    Only syscalls the filter refers to are known. Raises :class:`KeyError` for a name that is
    unknown or does not exist on the arch, and :class:`UnsupportedArchError` for the arch.
    """
    resolved = _resolve_arch(arch)
    try:
        return _TABLES[resolved][name]
    except KeyError:
        raise KeyError(f"no syscall {name!r} on {resolved}") from None


class _Insn(NamedTuple):
    code: int
    jt: str | None  # label to jump to when true; None: next instruction
    jf: str | None  # label to jump to when false; None: next instruction
    k: int


class _Assembler:
    """Collects instructions with symbolic jump targets, then resolves them to offsets."""

    def __init__(self) -> None:
        self._insns: list[_Insn] = []
        self._labels: dict[str, int] = {}
        self._counter = 0

    def new_label(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}.{self._counter}"

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"duplicate BPF label {name!r}")
        self._labels[name] = len(self._insns)

    def load(self, offset: int) -> None:
        self._insns.append(_Insn(_LD_W_ABS, None, None, offset))

    def and_(self, k: int) -> None:
        self._insns.append(_Insn(_ALU_AND_K, None, None, k))

    def jeq(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self._insns.append(_Insn(_JMP_JEQ_K, jt, jf, k))

    def jset(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self._insns.append(_Insn(_JMP_JSET_K, jt, jf, k))

    def ret(self, k: int) -> None:
        self._insns.append(_Insn(_RET_K, None, None, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, insn in enumerate(self._insns):
            jt = self._offset(pc, insn.jt)
            jf = self._offset(pc, insn.jf)
            out += struct.pack("<HBBI", insn.code, jt, jf, insn.k)
        return bytes(out)

    def _offset(self, pc: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - (pc + 1)
        if not 0 <= offset <= _MAX_JUMP:
            raise ValueError(f"BPF jump from {pc} to {target!r} out of range ({offset})")
        return offset


def _deny_if(asm: _Assembler, nr: int, action: int) -> None:
    """``if nr == <nr>: return action`` (a local return keeps every jump short)."""
    skip = asm.new_label("skip")
    asm.jeq(nr, jf=skip)
    asm.ret(action)
    asm.label(skip)


@functools.cache
def _build(arch: str) -> bytes:
    table = _TABLES[arch]
    eperm = _RET_ERRNO | _EPERM
    asm = _Assembler()

    # 1. Foreign ABI: kill. (Checked before the number: numbers differ between ABIs.)
    native = asm.new_label("native")
    asm.load(_OFF_ARCH)
    asm.jeq(_AUDIT_ARCH[arch], jt=native)
    asm.ret(_RET_KILL_PROCESS)
    asm.label(native)
    asm.load(_OFF_NR)

    # 2. x32 calls share AUDIT_ARCH_X86_64 but use other numbers.
    if arch == "x86_64":
        not_x32 = asm.new_label("not_x32")
        asm.jset(_X32_SYSCALL_BIT, jf=not_x32)
        asm.ret(eperm)
        asm.label(not_x32)

    # 3. Unconditional denials.
    for name in DENIED_SYSCALLS:
        if name in table:
            _deny_if(asm, table[name], eperm)

    # 4. As if absent.
    for name in ABSENT_SYSCALLS:
        _deny_if(asm, table[name], _RET_ERRNO | _ENOSYS)

    # 5. Argument-dependent rules. Each block starts with A = nr and ends in returns.

    for name, mask in (("unshare", _UNSHARE_NEW_MASK), ("clone", _CLONE_NEW_MASK)):
        after = asm.new_label(f"after_{name}")
        asm.jeq(table[name], jf=after)
        asm.load(_arg_low(0))
        ok = asm.new_label(f"{name}_ok")
        asm.jset(mask, jf=ok)
        asm.ret(eperm)
        asm.label(ok)
        asm.ret(_RET_ALLOW)
        asm.label(after)

    after_personality = asm.new_label("after_personality")
    personality_ok = asm.new_label("personality_ok")
    asm.jeq(table["personality"], jf=after_personality)
    asm.load(_arg_low(0))
    asm.jeq(_PER_LINUX, jt=personality_ok)
    asm.jeq(_PER_QUERY, jt=personality_ok)
    asm.ret(eperm)
    asm.label(personality_ok)
    asm.ret(_RET_ALLOW)
    asm.label(after_personality)

    after_socket = asm.new_label("after_socket")
    socket_rule = asm.new_label("socket_rule")
    socket_ok = asm.new_label("socket_ok")
    socket_eperm = asm.new_label("socket_eperm")
    socket_inet = asm.new_label("socket_inet")
    # socketpair() creates both sockets in the family asked for (running its create code,
    # loading its module) before the family can refuse the pair: same rule as socket().
    asm.jeq(table["socket"], jt=socket_rule)
    asm.jeq(table["socketpair"], jf=after_socket)
    asm.label(socket_rule)
    asm.load(_arg_low(0))  # domain: an allow-list, since families ignore namespaces (vsock)
    asm.jeq(_AF_NETLINK, jt=socket_ok)
    asm.jeq(_AF_UNIX, jt=socket_inet)
    asm.jeq(_AF_INET, jt=socket_inet)
    asm.jeq(_AF_INET6, jt=socket_inet)
    asm.ret(_RET_ERRNO | _EAFNOSUPPORT)
    asm.label(socket_inet)
    asm.load(_arg_low(1))  # type, with SOCK_NONBLOCK / SOCK_CLOEXEC
    asm.and_(_SOCK_TYPE_MASK)
    asm.jeq(_SOCK_RAW, jt=socket_eperm)
    asm.jeq(_SOCK_PACKET, jt=socket_eperm)
    asm.label(socket_ok)
    asm.ret(_RET_ALLOW)
    asm.label(socket_eperm)
    asm.ret(eperm)
    asm.label(after_socket)

    # 6. Default.
    asm.ret(_RET_ALLOW)
    return asm.assemble()


def build_deny_filter(arch: str | None = None) -> bytes:
    """Return the deny-list seccomp program for ``arch`` as a ``struct sock_filter`` array.

    ``arch`` is ``"x86_64"`` or ``"aarch64"`` (default: ``os.uname().machine``); the program
    kills any call made through another ABI, so it must match the process that installs it.
    Raises :class:`UnsupportedArchError` for any other arch.
    """
    return _build(_resolve_arch(arch))
