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
ENGINE = f"{CORE}/on_device/engine.py"
RULES = f"{CORE}/netproxy/rules.py"
CONNECT = "packages/sandbox-server/src/union/sandbox/server/_connect.py"
SERVICE = "packages/sandbox-server/src/union/sandbox/server/service.py"

CORE_TESTS = "packages/sandbox-core/tests"
PARITY = "integration/parity/test_parity.py"
LEAK_TESTS = f"{CORE_TESTS}/test_concurrency_leaks.py"
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
METADATA = "integration/conformance/test_metadata.py"
WORK_DIR_BIND = "integration/conformance/test_work_dir_bind.py"
SIGNALS = "integration/conformance/test_signals.py"
FILE_PROBES = "integration/conformance/test_files.py"
REUSE_PROBES = "integration/conformance/test_reuse.py"
QUOTA_PROBES = "integration/conformance/test_quotas.py"
NETWORK_REUSE = "integration/network/test_reuse.py"
BACKENDS = f"{CORE}/on_device/backends.py"
FILES = f"{CORE}/on_device/files.py"
WORKDIR = f"{CORE}/on_device/workdir.py"
RMTREE = f"{CORE}/on_device/rmtree.py"
REUSE_TESTS = f"{CORE_TESTS}/test_run_reuse.py"
CAPACITY_TESTS = f"{CORE_TESTS}/netproxy/test_capacity.py"
PROXY_HOST = f"{CORE}/netproxy/host.py"
MCP = "packages/unionai-sandbox/src/union/sandbox/_mcp"
MCP_UNITS = "packages/unionai-sandbox/tests/test_mcp_units.py"
FLYTE_BODY = "packages/sandbox-flyte/src/union/sandbox/flyte/_body.py"
FLYTE_BODY_TESTS = "packages/sandbox-flyte/tests/test_body.py"


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
        FILES,
        "os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC",
        "os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC",
        _on_device(
            f"{FILE_PROBES}::test_symlink_race_on_the_final_name[on-device-{{backend}}-asyncio]"
        ),
        "a racer swaps the file name for a symlink to a root-only file and get_bytes reads it",
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
        # Remote only: the on-device file tests kill it too (the server uses the same
        # check), but what issue 17 asked for is a remote test sending such a path.
        tuple(
            f"{FILE_PROBES}::test_paths_outside_the_work_dir[remote-{backend}-asyncio]"
            for backend in ("bubblewrap", "userns")
        ),
        "remote put/get reach <work dir>-sibling/..., outside the work dir",
    ),
    Mutant(
        "get-bytes-cap-not-applied",
        "files",
        SERVICE,
        "        if cap and (not requested or requested > cap):\n",
        "        if cap and not requested:\n",
        ("packages/sandbox-server/tests/test_file_rpcs.py",),
        "a client asking max_bytes above --max-get-bytes-mb gets more than the server's cap",
    ),
    Mutant(
        "reuse-checks-only-sysv-shm",
        "reuse",
        SUPERVISOR,
        '    for kind in ("shm", "sem", "msg"):\n',
        '    for kind in ("shm",):\n',
        (REUSE_TESTS, "-k", "change_to_init and System and not shared and asyncio"),
        "a semaphore or message queue of one run is visible in the next run",
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
    Mutant(
        "seccomp-socketpair-unchecked",
        "seccomp",
        SECCOMP,
        '    asm.jeq(table["socketpair"], jf=after_socket)\n',
        '    asm.jeq(table["socket"], jf=after_socket)\n',
        (SECCOMP_TESTS, *_probes("socketpair-family")),
        "socketpair() in any family: its create code runs (AF_VSOCK reaches the hypervisor's "
        "transport) though socket() refuses the family",
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
        # With the host's tree sealed read-only a bind copies that flag anyway: only a
        # session granting "/" read-write (no seal) still depends on this line.
        (f"{CORE_TESTS}/test_grants.py", "-k", "read_write_root and userns"),
        "userns, with / granted read-write: write beneath a read-only grant",
    ),
    Mutant(
        "grants-host-root-not-sealed",
        "grants",
        SUPERVISOR,
        '            set_mount_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, "read-only")\n',
        "            pass\n",
        (
            f"{METADATA}::test_metadata_of_host_files[asyncio-on-device-userns-outside-grants]",
            f"{METADATA}::test_non_root_callers_own_files[asyncio-on-device-userns]",
        ),
        "userns: chmod, chown, utime, xattrs of any host file the sandbox uid owns (a non-root "
        "caller's: all of theirs), outside every grant",
    ),
    Mutant(
        "grants-userns-host-dev",
        "grants",
        SUPERVISOR,
        '        if config.get("dev_binds") is not None:\n'
        '            minimal_dev(config["dev_binds"])\n',
        "        pass\n",
        (f"{METADATA}::test_non_root_callers_terminal[asyncio-on-device-userns]",),
        "userns as a non-root caller: read what is typed into the caller's terminal",
    ),
    Mutant(
        "grants-bwrap-dev-writable",
        "grants",
        BACKENDS,
        '    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--"]\n',
        '    args += ["--remount-ro", "/", "--"]\n',
        (f"{METADATA}::test_non_root_callers_session_dev[asyncio-on-device-bubblewrap]",),
        "bubblewrap as a non-root caller: a run chmods the session's /dev for every later run",
    ),
    # ---- the work dir and grants are what the session resolved -----------------------------
    # (bubblewrap binding the work dir by path again is not a mutant here: the supervisor's
    # own check of the work dir, below, refuses the swapped directory inside bwrap too.)
    Mutant(
        "work-dir-userns-not-checked",
        "work-dir",
        SUPERVISOR,
        "        if [st.st_dev, st.st_ino] == list(expected):\n",
        "        if True:\n",
        (
            f"{WORK_DIR_BIND}::test_pinned_work_dir_swapped_before_the_bind[asyncio-on-device-userns]",
        ),
        "userns: a pinned work dir swapped for a symlink after the host opened it is granted",
    ),
    Mutant(
        "work-dir-rebinds-not-checked",
        "work-dir",
        SUPERVISOR,
        "    check_rebinds(held)\n",
        "    pass\n",
        (f"{CORE_TESTS}/test_grants.py", "-k", "replaced_mid_session and userns"),
        "userns: a directory swapped in for a grant under /tmp gets the fresh /tmp's rights",
    ),
    Mutant(
        "work-dir-pinned-follows-a-symlink",
        "work-dir",
        f"{CORE}/on_device/workdir.py",
        "os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC",
        "os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC",
        (f"{CORE_TESTS}/test_work_dir.py", "-k", "behind_a_link"),
        "a symlink planted at a pinned work dir's name: the host takes (as root: chowns) its "
        "target",
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
        WORKDIR,
        "                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)\n",
        "                next_fd = os.open(part, DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd)\n",
        _on_device(f"{FILE_PROBES}::test_symlinks_in_put_get[asyncio-on-device-{{backend}}]"),
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
        '            _write(join(self.dirs["pids"], "pids.max"), str(limits.pids))\n',
        "            pass\n",
        # The session's pids budget contains a bomb on its own: what shows the run's limit
        # is a run that holds more than its pids= without a fork failing.
        (
            "integration/conformance/test_limits.py",
            "-k",
            "(fork_bomb_pids_64 or pids_limit_bounds) and on-device",
        ),
        "a run holds more processes than its pids= (up to the session's budget)",
    ),
    Mutant(
        "output-cap-not-applied",
        "limits",
        PROCESS,
        "        room = self._limit - len(self._buf) - self._kept_size\n",
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
        "    if not REUSE_ARMED or SCRATCH_BASELINE is None "
        "or scratch_state() != SCRATCH_BASELINE:\n",
        "    if not REUSE_ARMED or SCRATCH_BASELINE is None:\n",
        (REUSE_TESTS, "-k", "leftover_ends_reuse and asyncio"),
        "a file one run left in /tmp or /dev/shm is seen by the next run",
    ),
    Mutant(
        "reuse-ignores-init-attributes",
        "reuse",
        SUPERVISOR,
        "    return (rlimits, sched, cpus, ioprio, pending) == (expected, *INIT_BASELINE[1:])\n",
        "    return True\n",
        (REUSE_TESTS, "-k", "change_to_init and (prlimit or renice) and asyncio"),
        "a run's prlimit/renice of its init is inherited by the next run's command",
    ),
    Mutant(
        "reuse-proc-sys-writable",
        "reuse",
        SUPERVISOR,
        "            seal_proc_sys()\n",
        "            pass\n",
        _on_device(
            f"{REUSE_PROBES}::test_tampering_reaches_a_later_run[on-device-{{backend}}-"
            "kernel knobs-blocked-asyncio]"
        ),
        "a run sets its namespaces' kernel knobs (shmmax, msgmni...) for the next run of the init",
    ),
    Mutant(
        "reuse-posix-mqueue-allowed",
        "reuse",
        SUPERVISOR,
        '        write_file("/proc/sys/fs/mqueue/queues_max", "0")\n',
        "        pass\n",
        (REUSE_TESTS, "-k", "posix_message_queue and asyncio"),
        "a POSIX message queue made by one run (unchecked by reuse) is found by the next",
    ),
    Mutant(
        "reuse-sysv-next-id-not-armed",
        "reuse",
        SUPERVISOR,
        '        else:\n            try:\n                os.write(fd, b"0")\n',
        "        else:\n            try:\n                pass\n",
        (REUSE_TESTS, "-k", "change_to_init and removed and asyncio"),
        "a System V object made and removed moves the ids the next run is handed",
    ),
    Mutant(
        "reuse-scratch-ignores-ctime",
        "reuse",
        SUPERVISOR,
        "                    st.st_ctime_ns,\n",
        "                    0,\n",
        (REUSE_TESTS, "-k", "change_to_init and mode and asyncio"),
        "a change to /tmp or /dev/shm that moves only its ctime (chmod to its own mode) "
        "goes unseen: a one-bit channel to the next run",
    ),
    # ---- per-session quotas (accounting uid, session pids budget) ------------------------
    Mutant(
        "quota-namespace-charged-to-host-root",
        "quotas",
        SUPERVISOR,
        "            if account_uid is not None:\n",
        "            if False:\n",
        (
            *_on_device(f"{QUOTA_PROBES}::test_host_roots_quotas[on-device-{{backend}}-asyncio]"),
            *_on_device(
                f"{QUOTA_PROBES}::test_other_sessions_quotas[on-device-{{backend}}-asyncio]"
            ),
        ),
        "host root's session: a run exhausts pending signals/inotify for host root and every "
        "other session",
    ),
    Mutant(
        "quota-session-nproc-uncapped",
        "quotas",
        f"{CORE}/on_device/quotas.py",
        '        return {"rlimits": {"RLIMIT_NPROC": _half_or_less(_soft("RLIMIT_NPROC"), 1, '
        "tasks)}}\n",
        '        return {"rlimits": {"RLIMIT_NPROC": _half_or_less(_soft("RLIMIT_NPROC"), 1)}}\n',
        # Where the pids cgroup is writable the session cgroup's pids.max holds the budget
        # first (quota-session-cgroup-pids-unbounded): this test takes the cgroups away.
        (
            f"{CORE_TESTS}/test_session_limits.py",
            "-k",
            "nproc_limit_holds_the_budget and asyncio",
        ),
        "host root's session without a pids cgroup: its runs together hold more processes "
        "than session_pids",
    ),
    Mutant(
        "quota-session-cgroup-pids-unbounded",
        "quotas",
        f"{CORE}/on_device/cgroups.py",
        "                if pids_max:\n",
        "                if False:\n",
        _on_device(f"{QUOTA_PROBES}::test_session_pids_budget[on-device-{{backend}}-asyncio]"),
        "the session's cgroup does not bound its runs' processes together",
    ),
    Mutant(
        "request-size-unchecked",
        "limits",
        f"{CORE}/request_size.py",
        "    return args_size(argv, env) <= MAX_ARGS_BYTES\n",
        "    return True\n",
        (
            "integration/parity/test_request_sizes.py",
            "-k",
            "beyond and asyncio and on_device and (KiB or variables)",
        ),
        "an oversized argv/env reaches the supervisor's socket and execve: a failed run or a "
        "'dead' supervisor instead of a clear ValueError",
    ),
    # ---- host paths: the removal walk ------------------------------------------------------
    Mutant(
        "rmtree-follows-a-swapped-in-symlink",
        "files",
        RMTREE,
        "            return self._at(frame, os.open, name, DIR_FLAGS)\n",
        "            return self._at(frame, os.open, name, DIR_FLAGS & ~os.O_NOFOLLOW)\n",
        # The live race in test_work_dir.py seldom hits this window: the swap is forced here.
        (f"{CORE_TESTS}/test_rmtree_swaps.py", "-k", "swapped_for_a_symlink"),
        "a live sandbox swaps a directory of the tree for a link: close() empties a host dir",
    ),
    Mutant(
        "rmtree-does-not-take-directories",
        "files",
        RMTREE,
        "        self._take(fd, st)\n",
        "        pass\n",
        (f"{CORE_TESTS}/test_rmtree_swaps.py", "-k", "frozen"),
        "a live sandbox keeps adding to (or moving out of) a directory being removed",
    ),
    # ---- proxy capacity --------------------------------------------------------------------
    Mutant(
        "proxy-run-share-off-by-one",
        "netproxy",
        f"{CORE}/netproxy/capacity.py",
        "        if held >= self.share:\n",
        "        if held > self.share:\n",
        (CAPACITY_TESTS, "-k", "at_its_share or slow_request_heads"),
        "a run holds one proxy connection more than its share",
    ),
    Mutant(
        "proxy-headroom-not-kept",
        "netproxy",
        f"{CORE}/netproxy/capacity.py",
        "        if held >= self.floor and self.total >= self.capacity - self.headroom:\n",
        "        if False:\n",
        (CAPACITY_TESTS, "-k", "greedy_runs"),
        "greedy runs take the whole session capacity: a later run gets no connection",
    ),
    Mutant(
        "proxy-process-descriptor-budget-off",
        "netproxy",
        f"{CORE}/netproxy/capacity.py",
        "            if self.held + n > budget:\n",
        "            if False:\n",
        (CAPACITY_TESTS, "-k", "process_descriptor_budget"),
        "the proxies of all sessions run the caller out of descriptors (EMFILE)",
    ),
    # ---- proxied runs on a reused init (issue 15) ------------------------------------------
    Mutant(
        "egress-reused-listeners-without-credentials",
        "netproxy",
        f"{CORE}/on_device/egress.py",
        "                self._proxy_host().arm(kept, egress, rules, egress.log, "
        "credentials=credentials)\n",
        "                self._proxy_host().arm(kept, egress, rules, egress.log, "
        "credentials=None)\n",
        _on_device(
            f"{NETWORK_REUSE}::test_each_run_on_a_reused_init_gets_new_credentials"
            "[asyncio-{backend}]"
        ),
        "an open run on a reused init: any local process uses its proxies without credentials",
    ),
    Mutant(
        "proxy-disarm-keeps-the-run-armed",
        "netproxy",
        PROXY_HOST,
        "            if run.group.current is run:\n                run.group.current = None\n",
        "            if False:\n                run.group.current = None\n",
        _on_device(
            f"{NETWORK_REUSE}::test_a_reused_init_serves_the_next_runs_policy_and_log"
            "[asyncio-{backend}-wide-then-narrow]"
        ),
        "between runs of an init, its listeners still serve the ended run (its rules and log)",
    ),
    Mutant(
        # (Not disarm's own stop: every caller then waits for the run's connections, which
        # stops them again, so skipping that one changes nothing.)
        "proxy-stop-run-leaves-connections-open",
        "netproxy",
        PROXY_HOST,
        "        for scope in run.scopes:\n            scope.cancel()\n",
        "        for scope in run.scopes:\n            pass\n",
        _on_device(
            f"{NETWORK_REUSE}::test_a_connection_a_run_leaves_open_is_closed_when_it_ends"
            "[asyncio-{backend}-allowlist]"
        ),
        "a tunnel a run left open outlives the run (into the next run of its init)",
    ),
    Mutant(
        "relay-pipe-growth-unbudgeted",
        "netproxy",
        f"{CORE}/netproxy/relay.py",
        "                grown = growth is None or growth.take()\n",
        "                grown = True\n",
        (f"{CORE_TESTS}/netproxy/test_relay.py", "-k", "pipe_growth_is_budgeted"),
        "every tunnel grows its splice pipe: runs take the caller's pipe-buffer pages "
        "(per host uid) without bound",
    ),
    Mutant(
        "workers-idle-threads-never-exit",
        "netproxy",
        f"{CORE}/netproxy/workers.py",
        "            left = deadline - time.monotonic()\n",
        "            left = 3600.0\n",
        # The integration test's baseline already holds the pool's spare threads, which
        # leave on the spare rule: the idle timeout is checked on the pool itself.
        (CAPACITY_TESTS, "-k", "worker_threads_exit_when_idle"),
        "threads of ended tunnels stay in the caller: bursts of runs pile them up",
    ),
    Mutant(
        "lookups-on-the-shared-pool",
        "netproxy",
        f"{CORE}/netproxy/host.py",
        "                    with lookups_run_by(functools.partial(self._lookup, run)):\n",
        "                    with contextlib.nullcontext():\n",
        (CAPACITY_TESTS, "-k", "lookups"),
        "one run's hanging name lookups hold the shared threads: other runs' lookups time out",
    ),
    # ---- MCP: the model may narrow, never widen, the operator's flags ----------------------
    Mutant(
        "mcp-timeout-above-the-ceiling",
        "mcp",
        f"{MCP}/ceiling.py",
        "        if asked > self.timeout_s:\n",
        "        if asked > self.timeout_s + 1:\n",
        (MCP_UNITS, "-k", "timeout"),
        "a tool call runs longer than the operator's --timeout",
    ),
    Mutant(
        "mcp-wildcard-covers-its-apex",
        "mcp",
        f"{MCP}/ceiling.py",
        '    return wanted.name.endswith("." + granted.name) or (\n',
        "    return wanted.name.endswith(granted.name) or (\n",
        (MCP_UNITS, "-k", "widening"),
        "--allow *.example.com lets a call allow example.com (or evilexample.com)",
    ),
    Mutant(
        "mcp-rule-port-ignored",
        "mcp",
        f"{MCP}/ceiling.py",
        "    if granted.port is not None and granted.port != wanted.port:\n        return False\n",
        "",
        (MCP_UNITS, "-k", "widening"),
        "--allow api.test:443 lets a call allow every port of api.test",
    ),
    Mutant(
        "mcp-open-beyond-the-ceiling",
        "mcp",
        f"{MCP}/ceiling.py",
        '            if self.mode != "open":\n',
        "            if False:\n",
        (MCP_UNITS, "-k", "postures"),
        "a tool call asks for network='open' under a blocked or allow-list ceiling",
    ),
    Mutant(
        "mcp-tool-timeout-not-capped",
        "mcp",
        f"{MCP}/tools.py",
        '            timeout_s=self.ceiling.timeout(args.get("timeout_s")),\n',
        '            timeout_s=args.get("timeout_s") or self.ceiling.timeout_s,\n',
        (
            "packages/unionai-sandbox/tests/test_mcp_stdio.py::"
            "test_narrowing_and_refused_widening[asyncio-userns]",
        ),
        "run_shell takes the model's timeout_s as is, above the operator's --timeout",
    ),
    # ---- the Flyte task body ---------------------------------------------------------------
    Mutant(
        "flyte-server-gets-the-pods-environment",
        "flyte",
        FLYTE_BODY,
        "    env = server_environment(os.environ if environ is None else environ)\n",
        "    env = dict(os.environ if environ is None else environ)\n",
        (f"{FLYTE_BODY_TESTS}::test_soft_timeout_with_the_real_server[asyncio]",),
        "the pod's cloud/Flyte credentials reach the server, and so any sandboxed process",
    ),
    Mutant(
        "flyte-server-without-a-token",
        "flyte",
        FLYTE_BODY,
        "    env[TOKEN_ENV] = options.token\n",
        "    pass\n",
        (f"{FLYTE_BODY_TESTS}::test_serves_a_run_with_auth_and_cancel_leaves_nothing[asyncio]",),
        "the task's server on the pod network serves anyone, without auth",
    ),
    Mutant(
        "flyte-short-token-accepted",
        "flyte",
        FLYTE_BODY,
        "        if not isinstance(self.token, str) or len(self.token) < 16:\n",
        "        if not isinstance(self.token, str):\n",
        (FLYTE_BODY_TESTS, "-k", "bad_options and asyncio and bearer"),
        "a task server with an empty or guessable bearer token",
    ),
    # ---- descriptors of a run and of the session (host side) ------------------------------
    Mutant(
        "pipe-end-keeps-its-number-after-close",
        "descriptors",
        ENGINE,
        "        fd, self.fd = self.fd, -1\n        if fd >= 0:\n            await self._waits",
        "        fd = self.fd\n        if fd >= 0:\n            await self._waits",
        (PARITY, "-k", "ended_run_reaches_no_later_run and on_device"),
        "a write to an ended run's stdin goes into the next run's stdin (its pipe took the number)",
    ),
    Mutant(
        "pipe-end-closed-under-a-waiter",
        "descriptors",
        ENGINE,
        "            await self._waits.release(fd)\n            os.close(fd)\n",
        "            os.close(fd)\n",
        (f"{CORE_TESTS}/test_pipe_end.py",),
        "a task waiting on a released run's pipe hangs, or drops a later wait on the number",
    ),
    Mutant(
        "supervisor-socket-closed-under-a-waiter",
        "descriptors",
        ENGINE,
        "        await self._sock_waits.release(self._sock)\n",
        "",
        (LEAK_TESTS, "-k", "closing_a_session"),
        "close() during a run's start: the run hangs, close() fails and leaves the work dir",
    ),
    Mutant(
        "supervisor-requests-not-serialised",
        "descriptors",
        ENGINE,
        "        async with self._send_lock:\n            await self._send_now(data, fds)\n",
        "        await self._send_now(data, fds)\n",
        (LEAK_TESTS, "-k", "queue_while"),
        "a run started while the supervisor's socket is full fails with BusyResourceError",
    ),
)
