"""The named mutants: one plausible bug each in a security-critical line, and the tests that
must fail while it is in (see README.md for how to add one).

``original`` must occur exactly once in ``file``; the runner reports a mutant whose snippet
is gone as ``stale`` (the code moved: update the entry). ``tests`` are pytest arguments (paths,
node ids, ``-k`` expressions), kept narrow: each mutant runs them once. ``pending`` names who
writes the killing test while it is not merged yet; such a mutant is expected to survive
until then.
"""

from __future__ import annotations

import dataclasses

__all__ = ["MUTANTS", "Mutant"]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    file: str
    """Repository-relative path of the file to change."""
    original: str
    replacement: str
    tests: tuple[str, ...]
    """pytest arguments: at least one selected test must fail with the mutant in."""
    allows: str
    """What the bug would let hostile code (or a hostile caller) do."""
    pending: str = ""
    """Who writes the killing test, while it is not merged (the mutant survives until then)."""


CORE = "packages/sandbox-core/src/union/sandbox/core"
SECCOMP = f"{CORE}/_seccomp.py"
SUPERVISOR = f"{CORE}/on_device/_supervisor.py"
SESSION = f"{CORE}/on_device/_session.py"
FS = f"{CORE}/on_device/fs.py"
PROCESS = f"{CORE}/process.py"
RULES = f"{CORE}/netproxy/rules.py"
CONNECT = "packages/sandbox-server/src/union/sandbox/server/_connect.py"
SERVICE = "packages/sandbox-server/src/union/sandbox/server/service.py"

CORE_TESTS = "packages/sandbox-core/tests"
SECCOMP_TESTS = f"{CORE_TESTS}/test_seccomp.py"
KERNEL_PROBES = "integration/conformance/test_kernel_surface.py::test_kernel_surface"
#: Every selection below either names whole files and node ids, or filters them all with one
#: ``-k`` (which applies to every path given).
AUTH_TESTS = "packages/sandbox-server/tests/test_auth.py"


def _on_device(node: str) -> tuple[str, ...]:
    """The conformance node id ``node`` (``{backend}`` in it) on both isolating on-device
    backends."""
    return tuple(node.format(backend=backend) for backend in ("bubblewrap", "userns"))


GRANTS = "integration/conformance/test_grants.py"
SIGNALS = "integration/conformance/test_signals.py"
BACKENDS = f"{CORE}/on_device/backends.py"


def _probes(*ids: str) -> tuple[str, ...]:
    """The kernel-surface probes ``ids`` on both isolating on-device backends, as node ids
    (a ``-k`` would filter every other path of the selection too)."""
    return tuple(
        f"{KERNEL_PROBES}[on-device-{backend}-{probe}-asyncio]"
        for probe in ids
        for backend in ("bubblewrap", "userns")
    )


MUTANTS: tuple[Mutant, ...] = (
    # ---- the survivors of issue 17 ---------------------------------------------------------
    Mutant(
        "seccomp-pidfd-getfd-allowed",
        "seccomp",
        SECCOMP,
        '    "pidfd_getfd",  # steals a descriptor from another process (ptrace-grade access)\n',
        "",
        (SECCOMP_TESTS, *_probes("seccomp-deny-list")),
        "take a working descriptor out of another process of the run",
    ),
    Mutant(
        "landlock-read-only-grant-writable",
        "landlock",
        SUPERVISOR,
        '    if kind != "rw":\n        access = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR\n',
        '    if kind == "never":\n        access = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR\n',
        # Read-only grants are read-only mounts too, so writes cannot show this bug any
        # more: Landlock's own read-only rights (no device ioctl) do.
        _on_device(
            f"{GRANTS}::test_device_ioctl_beneath_read_only_grant[asyncio-on-device-{{backend}}]"
        ),
        "device ioctls (and, without the read-only mounts, writes) beneath a read-only grant",
    ),
    Mutant(
        "securebits-not-locked",
        "capabilities",
        SUPERVISOR,
        "    check(LIBC.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0), "
        '"securebits")\n',
        "    pass\n",
        _probes("securebits"),
        "uid 0 in the run's namespace regains capabilities through execve",
    ),
    Mutant(
        "init-keeps-capabilities",
        "capabilities",
        SUPERVISOR,
        '    check(LIBC.syscall(SYS_CAPSET, ctypes.c_char_p(header), data), "capset(drop all)")\n',
        "    pass\n",
        _probes("init-capabilities"),
        "the run's pid 1 keeps CapEff 000001ffffffffff",
    ),
    Mutant(
        "get-bytes-follows-a-final-symlink",
        "files",
        SESSION,
        "os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC",
        "os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC",
        (
            f"{CORE_TESTS}/test_files.py",
            "integration/conformance/test_files.py",
            "-k",
            "not remote",
        ),
        "a racer swaps the file name for a symlink to a root-only file and get_bytes reads it",
        pending="engineer hostpaths: race the final path component",
    ),
    Mutant(
        "auth-skipped-for-client-streams",
        "auth",
        CONNECT,
        "        error = self._precheck(ctx) or error\n",
        "        error = error\n",
        (AUTH_TESTS, "-k", "PutBytesStream"),
        "an unauthenticated PutBytesStream writes into the work dir",
    ),
    Mutant(
        "path-check-accepts-a-sibling-prefix",
        "files",
        FS,
        '    if not norm.startswith(root + "/"):\n',
        "    if not norm.startswith(root):\n",
        # Remote tests only: the on-device test_files.py already kills it (the server uses
        # the same check), but no remote test sends such a path, which is what the issue asks.
        (
            "packages/sandbox-server/tests",
            "integration/conformance/test_files.py",
            "-k",
            "not test_auth and not on-device",
        ),
        "remote put/get reach <work dir>-sibling/..., outside the work dir",
        pending="engineer hostpaths: remote GetBytes/PutBytes/streams with a sibling prefix",
    ),
    Mutant(
        "get-bytes-cap-not-applied",
        "files",
        SERVICE,
        "        if cap and (not requested or requested > cap):\n",
        "        if cap and not requested:\n",
        ("packages/sandbox-server/tests", "-k", "not test_auth"),
        "a client asking max_bytes above --max-get-bytes-mb gets more than the server's cap",
        pending="engineer hostpaths: max_bytes above --max-get-bytes-mb is still capped",
    ),
    Mutant(
        "reuse-checks-only-sysv-shm",
        "reuse",
        SUPERVISOR,
        '        for kind in ("shm", "sem", "msg"):\n',
        '        for kind in ("shm",):\n',
        (f"{CORE_TESTS}/test_run_reuse.py",),
        "a semaphore or message queue of one run is visible in the next run",
        pending="engineer reuse: leftovers of every IPC kind end reuse",
    ),
    # ---- the hang case: a mutant that made the suite hang instead of fail ----------------
    Mutant(
        "tree-kill-without-init-kill-all",
        "tree-kill",
        SUPERVISOR,
        "            os.kill(-1, signal.SIGKILL)\n",
        "            pass\n",
        # The suite's time limit turns the hang into a failure; a short one here keeps the
        # check quick (the test takes about a second when nothing hangs).
        (f"{CORE_TESTS}/test_run_reuse.py", "-k", "background_processes", "-o", "timeout=30"),
        "a setsid'd daemon outlives its run (and init waits on it: the run never ends)",
    ),
    # ---- seccomp ---------------------------------------------------------------------------
    Mutant(
        "seccomp-open-tree-attr-allowed",
        "seccomp",
        SECCOMP,
        '    "open_tree_attr",  # open_tree with mount attributes (Linux 6.15)\n',
        "",
        (SECCOMP_TESTS, *_probes("seccomp-deny-list")),
        "open_tree_attr: a detached mount tree with chosen attributes",
    ),
    Mutant(
        "seccomp-mount-queries-allowed",
        "seccomp",
        SECCOMP,
        'ABSENT_SYSCALLS: Final[tuple[str, ...]] = ("clone3", "statmount", "listmount")\n',
        'ABSENT_SYSCALLS: Final[tuple[str, ...]] = ("clone3",)\n',
        (SECCOMP_TESTS, *_probes("seccomp-deny-list")),
        "statmount/listmount: kernel surface the run does not need",
    ),
    Mutant(
        "seccomp-x32-allowed",
        "seccomp",
        SECCOMP,
        '    if arch == "x86_64":\n        not_x32 = asm.new_label("not_x32")\n',
        '    if False:\n        not_x32 = asm.new_label("not_x32")\n',
        (SECCOMP_TESTS, *_probes("foreign-abi")),
        "x32 syscall numbers bypass the number-based rules",
    ),
    Mutant(
        "seccomp-foreign-abi-allowed",
        "seccomp",
        SECCOMP,
        "    asm.jeq(_AUDIT_ARCH[arch], jt=native)\n    asm.ret(_RET_KILL_PROCESS)\n",
        "    asm.jeq(_AUDIT_ARCH[arch], jt=native)\n    asm.ret(_RET_ALLOW)\n",
        (SECCOMP_TESTS, *_probes("foreign-abi")),
        "int 0x80 (i386 numbers) reaches the kernel unfiltered",
    ),
    Mutant(
        "seccomp-new-user-namespace-allowed",
        "seccomp",
        SECCOMP,
        "    | _CLONE_NEWUSER\n",
        "",
        (SECCOMP_TESTS, *_probes("unshare-user")),
        "unshare(CLONE_NEWUSER): full capabilities in a new user namespace",
    ),
    Mutant(
        "seccomp-any-socket-family",
        "seccomp",
        SECCOMP,
        "    asm.ret(_RET_ERRNO | _EAFNOSUPPORT)\n",
        "    asm.ret(_RET_ALLOW)\n",
        (SECCOMP_TESTS, *_probes("by-argument-seccomp", "packet-socket")),
        "AF_VSOCK (the hypervisor, outside any network namespace), AF_PACKET, AF_ALG",
    ),
    # ---- Landlock --------------------------------------------------------------------------
    Mutant(
        "landlock-not-entered",
        "landlock",
        SUPERVISOR,
        "    if LANDLOCK_ABI:\n        apply_landlock()\n",
        "    if False:\n        apply_landlock()\n",
        (f"{CORE_TESTS}/test_isolation.py", "-k", "userns and (read or write or invisible)"),
        "userns: every host file the sandbox uid may open by mode",
    ),
    # ---- read-only grants (mounts) ---------------------------------------------------------
    Mutant(
        "grants-read-only-mount-skipped",
        "grants",
        SUPERVISOR,
        "    if read_only:\n        make_read_only(path)\n",
        "    if False:\n        make_read_only(path)\n",
        _on_device(
            f"{GRANTS}::test_read_only_grant_stays_read_only[asyncio-on-device-{{backend}}-tmp]"
        ),
        "userns: write beneath a read-only grant under /tmp, /dev/shm, the work dir, a rw grant",
    ),
    Mutant(
        "grants-bwrap-binds-in-list-order",
        "grants",
        BACKENDS,
        "    binds.sort(key=lambda bind: _depth(bind[1]))\n",
        "    pass\n",
        _on_device(
            f"{GRANTS}::test_read_only_grant_stays_read_only[asyncio-on-device-{{backend}}-"
            "under-work-dir]"
        ),
        "bubblewrap: the work dir's bind covers a read-only grant inside it (writable)",
    ),
    # ---- signals and deadlines -------------------------------------------------------------
    Mutant(
        "signals-sent-to-init-itself",
        "signals",
        SUPERVISOR,
        '        signal_run(pid, msg["id"], int(msg.get("signal", 0)))\n',
        '        os.kill(pid, int(msg.get("signal", 0)))\n',
        _on_device(
            f"{SIGNALS}::test_caller_signals_reach_the_command[on-device-{{backend}}-asyncio]"
        ),
        "SIGSTOP stops init (and the run's clock), SIGALRM fakes a timeout, stops never arrive",
    ),
    Mutant(
        "deadline-backstop-off",
        "signals",
        SUPERVISOR,
        "BACKSTOP_S = 2.0\n",
        "BACKSTOP_S = 1e6\n",
        (f"{CORE_TESTS}/test_timeouts_signals.py", "-k", "stopped_from_outside and asyncio"),
        "a run whose init is stopped or stuck outlives timeout_s (and --max-runtime-s)",
    ),
    Mutant(
        "init-takes-any-sigalrm",
        "signals",
        SUPERVISOR,
        "    if TIMER_ARMED and signal.getitimer(signal.ITIMER_REAL)[0] == 0:\n",
        "    if True:\n",
        (f"{CORE_TESTS}/test_timeouts_signals.py", "-k", "sigalrm and asyncio"),
        "a run's own SIGALRM to its init ends it as a (fake) timeout",
    ),
    Mutant(
        "send-signal-unchecked",
        "signals",
        PROCESS,
        "        signo = validate_signal(signo)\n",
        "        pass\n",
        (f"{CORE_TESTS}/test_timeouts_signals.py", "-k", "refuses and asyncio"),
        "signal 0 or an out-of-range number silently does nothing (or errors deep down)",
    ),
    # ---- capabilities ----------------------------------------------------------------------
    Mutant(
        "bounding-set-kept",
        "capabilities",
        SUPERVISOR,
        "    for cap in range(last + 1):\n        check(LIBC.prctl(PR_CAPBSET_DROP",
        "    for cap in range(0):\n        check(LIBC.prctl(PR_CAPBSET_DROP",
        _probes("capabilities", "init-capabilities"),
        "a full bounding set: capabilities regained through a file-capability binary",
    ),
    Mutant(
        "no-new-privs-not-set",
        "capabilities",
        SUPERVISOR,
        '    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")\n',
        "    pass\n",
        _probes("nnp-seccomp"),
        "setuid binaries gain privileges (and the filter needs no_new_privs)",
    ),
    # ---- auth ------------------------------------------------------------------------------
    Mutant(
        "auth-any-scheme-accepted",
        "auth",
        CONNECT,
        '            ok = scheme.lower() == "bearer" and hmac.compare_digest(\n',
        "            ok = hmac.compare_digest(\n",
        (AUTH_TESTS, "-k", "token-as-basic and Health"),
        "the token accepted under any scheme (it leaks through Basic-auth logging proxies)",
    ),
    Mutant(
        "auth-skipped-for-server-streams",
        "auth",
        CONNECT,
        "        error = self._precheck(ctx) or error or self._declared_too_big(rpc, ctx, limit)\n",
        "        error = error or self._declared_too_big(rpc, ctx, limit)\n",
        (AUTH_TESTS, "-k", "Execute and missing"),
        "an unauthenticated Execute runs a command",
    ),
    Mutant(
        "auth-skipped-for-unary-calls",
        "auth",
        CONNECT,
        "        error = self._precheck(ctx)\n        encoding = ",
        "        error = None\n        encoding = ",
        (AUTH_TESTS, "-k", "PutBytes- and missing"),
        "an unauthenticated PutBytes writes into the work dir",
    ),
    # ---- netproxy --------------------------------------------------------------------------
    Mutant(
        "netproxy-deny-name-ignored",
        "netproxy",
        RULES,
        "        rule = self._deny.match_name(name, port)\n        if rule is not None:\n",
        "        rule = self._deny.match_name(name, port)\n        if False:\n",
        (f"{CORE_TESTS}/netproxy",),
        "a name on the deny-list is dialled when an allow rule also matches it",
    ),
    Mutant(
        "netproxy-deny-resolved-address-ignored",
        "netproxy",
        RULES,
        "            denied = self._deny.match_address(address, port)\n"
        "            if denied is not None:\n",
        "            denied = self._deny.match_address(address, port)\n            if False:\n",
        (f"{CORE_TESTS}/netproxy",),
        "an allowed name that resolves to a denied address (metadata) is dialled",
    ),
    Mutant(
        "netproxy-special-ranges-allowed",
        "netproxy",
        RULES,
        "        if not ranges:\n"
        '            return True, (matching[0] if matching else None), ""\n',
        '        if True:\n            return True, (matching[0] if matching else None), ""\n',
        (f"{CORE_TESTS}/netproxy",),
        "DNS rebinding: an allowed name resolving to loopback/private/metadata is dialled",
    ),
    Mutant(
        "netproxy-nat64-not-unwrapped",
        "netproxy",
        RULES,
        "            if carried is not None:\n                candidates.append(carried[0])\n",
        "            if False:\n                candidates.append(carried[0])\n",
        (f"{CORE_TESTS}/netproxy",),
        "64:ff9b::a9fe:a9fe reaches 169.254.169.254 around a deny rule",
    ),
    Mutant(
        "netproxy-fails-open",
        "netproxy",
        RULES,
        "            return Decision(\n                False,\n                _shown(host),\n",
        "            return Decision(\n                True,\n                _shown(host),\n",
        (f"{CORE_TESTS}/netproxy",),
        "an internal error while checking the rules lets the connection through",
    ),
    Mutant(
        "netproxy-password-unchecked",
        "netproxy",
        f"{CORE}/netproxy/context.py",
        "        return hmac.compare_digest(password, want_password.encode()) and same_user\n",
        "        return same_user\n",
        (f"{CORE_TESTS}/netproxy",),
        "another local process uses a run's proxy with any password",
    ),
    Mutant(
        "netproxy-numeric-host-as-name",
        "netproxy",
        f"{CORE}/netproxy/addresses.py",
        "        return _v4(name)\n",
        "        return name\n",
        (f"{CORE_TESTS}/netproxy",),
        "2130706433 or 0x7f.1 is looked up as a name instead of read as 127.0.0.1",
    ),
    # ---- put/get ---------------------------------------------------------------------------
    Mutant(
        "put-get-parent-walk-follows-symlinks",
        "files",
        SESSION,
        "part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd",
        "part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd",
        ("integration/conformance/test_files.py", "-k", "symlink and not remote"),
        "put_bytes/get_bytes through a directory symlink the sandbox planted",
    ),
    # ---- tree kill, timeouts, limits -------------------------------------------------------
    Mutant(
        "tree-kill-none-leaves-the-group",
        "tree-kill",
        SUPERVISOR,
        "            if child:\n                os.kill(-child, signal.SIGKILL)\n",
        "            if child:\n                pass\n",
        (f"{CORE_TESTS}/test_timeouts_signals.py", "-k", "none"),
        "backend none: background children outlive their run",
    ),
    Mutant(
        "timeout-not-armed",
        "limits",
        SUPERVISOR,
        '        signal.setitimer(signal.ITIMER_REAL, req["timeout"])\n',
        "        pass\n",
        (f"{CORE_TESTS}/test_timeouts_signals.py", "-k", "timeout and userns"),
        "a run outlives its timeout",
    ),
    Mutant(
        "rlimits-not-applied",
        "limits",
        SUPERVISOR,
        "            resource.setrlimit(getattr(resource, name), (value, value))\n",
        "            pass\n",
        (f"{CORE_TESTS}/test_run_reuse.py", "-k", "rlimits"),
        "file_size and the other rlimits are not enforced",
    ),
    Mutant(
        "pids-limit-not-written",
        "limits",
        f"{CORE}/on_device/cgroups.py",
        '            _write(self.dirs["pids"] / "pids.max", str(limits.pids))\n',
        "            pass\n",
        ("integration/conformance/test_limits.py", "-k", "fork_bomb_pids_64 and on-device"),
        "a fork bomb is not contained by pids=",
    ),
    Mutant(
        "output-cap-not-applied",
        "limits",
        PROCESS,
        "        room = self._limit - len(self._buf)\n",
        "        room = 1 << 62\n",
        (f"{CORE_TESTS}/test_run_output.py", "-k", "output_cap"),
        "an output flood grows the caller's memory without bound",
    ),
    Mutant(
        "output-kept-after-a-drop",
        "limits",
        PROCESS,
        "        if self.truncated:\n            return  # after a dropped piece",
        "        if False:\n            return  # after a dropped piece",
        (f"{CORE_TESTS}/test_output_stream.py",),
        "captured output with a hole in the middle (docs/design.md, Output cap)",
    ),
    # ---- reuse checks ----------------------------------------------------------------------
    Mutant(
        "reuse-ignores-scratch-leftovers",
        "reuse",
        SUPERVISOR,
        "    if SCRATCH_BASELINE is None or scratch_state() != SCRATCH_BASELINE:\n",
        "    if SCRATCH_BASELINE is None:\n",
        (f"{CORE_TESTS}/test_run_reuse.py", "-k", "leftover"),
        "a file one run left in /tmp or /dev/shm is seen by the next run",
    ),
)
