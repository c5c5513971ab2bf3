"""A run that leaves things clean hands its init and cgroups to the next run with the same
settings (see ``on_device/slots.py``). What a run leaves behind must never reach a later
run: each leftover below must end the reuse, and the next run must find a fresh state.

How a test sees reuse from inside: a fresh init's command is pid 2 of a new pid namespace;
a reused init's next command gets a later pid. (That, and the init's own counters, are the
documented differences between a reused and a fresh init: ``docs/security.md``.)
"""

from __future__ import annotations

import glob
import json
import os
import textwrap
from typing import Any

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core import Resources
from union.sandbox.core.testing import host_pids_with
from union.sandbox.core.testing_caller import run_as, system_python
from union.sandbox.core.testing_fresh import (
    OBSERVE,
    TAMPER,
    differences,
    observe_program,
    observed,
    tampered,
)

pytestmark = pytest.mark.anyio

MY_PID = "echo $$"


async def _pid(sbx: sb.on_device.OnDeviceSession, **kwargs: object) -> int:
    return int((await sbx.exec(MY_PID, check=True, **kwargs)).stdout)  # type: ignore[arg-type]


async def test_clean_runs_reuse_their_init(sbx) -> None:
    first = await _pid(sbx)
    assert first == 2
    assert await _pid(sbx) > first


SHMGET = (
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
    "assert libc.shmget(0, 4096, 0o1600) >= 0, ctypes.get_errno()"
)

LEFTOVERS = {
    "file in /tmp": "echo x > /tmp/leftover",
    "dir in /dev/shm": "mkdir /dev/shm/leftover",
    "hidden file": "touch /tmp/.leftover",
    "chmod /tmp": "chmod 0700 /tmp",
    "System V shared memory": f'python3 -c "{SHMGET}"',
}


@pytest.mark.parametrize("leftover", sorted(LEFTOVERS))
async def test_a_leftover_ends_reuse(sbx, leftover: str) -> None:
    await _pid(sbx)
    await sbx.exec(LEFTOVERS[leftover], check=True)
    # The run after a dirty one starts a fresh init, and sees none of it.
    assert await _pid(sbx) == 2
    seen = await sbx.exec(
        "ls -A /tmp /dev/shm; stat -c %a /tmp; tail -n +2 /proc/sysvipc/shm", check=True
    )
    assert "leftover" not in seen.stdout
    assert seen.stdout.split("\n")[-2] != "700"
    assert "1600" not in seen.stdout and seen.stdout.rstrip().endswith("1777")


def _py(code: str) -> str:
    """A shell command running the Python ``code`` in the sandbox."""
    return f"python3 - <<'EOF'\nimport ctypes, os, socket, struct\n{code}\nEOF"


_LIBC = "libc = ctypes.CDLL(None, use_errno=True)\n"
_ACL_DENY_ALL = (
    "acl = struct.pack('<I', 2) + b''.join("
    "struct.pack('<HHI', tag, 0, 0xFFFFFFFF) for tag in (1, 4, 32))\n"
)

#: What a run can change about its init or namespaces (beyond files in the scratch mounts),
#: each of which must end the reuse of its init. A mutant that misses one of them (say, a
#: check of System V shared memory alone) fails its case here.
CHANGES = {
    # Every IPC kind, left behind...
    "System V semaphore": _py(_LIBC + "assert libc.semget(0, 1, 0o600) >= 0"),
    "System V message queue": _py(_LIBC + "assert libc.msgget(0, 0o600) >= 0"),
    "System V shared memory": _py(_LIBC + "assert libc.shmget(0, 4096, 0o600) >= 0"),
    "POSIX shared memory": _py(
        "import _posixshmem\n_posixshmem.shm_open('/leftover', os.O_CREAT | os.O_RDWR, 0o600)"
    ),
    "POSIX named semaphore": _py(
        _LIBC + "libc.sem_open.restype = ctypes.c_void_p\n"
        "assert libc.sem_open(b'/leftover', os.O_CREAT, 0o600, 1)"
    ),
    # ... or made and removed: the ids the next run gets would follow on.
    "System V semaphore made and removed": _py(
        _LIBC + "i = libc.semget(0, 1, 0o600)\nassert libc.semctl(i, 0, 0) == 0"
    ),
    "System V message queue made and removed": _py(
        _LIBC + "i = libc.msgget(0, 0o600)\nassert libc.msgctl(i, 0, None) == 0"
    ),
    "System V shared memory made and removed": _py(
        _LIBC + "i = libc.shmget(0, 4096, 0o600)\nassert libc.shmctl(i, 0, None) == 0"
    ),
    # The init's attributes, which the next command would inherit.
    "prlimit on init": "prlimit --pid 1 --nofile=40:40",
    "soft rlimit of init": "prlimit --pid 1 --stack=1048576:",
    "renice init": "renice -n 19 -p 1",
    "taskset init": "taskset -p -c 0 1",
    "ionice init": "ionice -c 3 -p 1",
    "SCHED_IDLE init": "chrt --idle -p 0 1",
    "reset-on-fork on init": "chrt --batch --reset-on-fork -p 0 1",
    # The scratch mounts' attributes and times.
    "xattr on /tmp": _py("os.setxattr('/tmp', 'user.leftover', b'1')"),
    "xattr on /dev/shm": _py("os.setxattr('/dev/shm', 'user.leftover', b'1')"),
    "default ACL on /tmp": _py(
        _ACL_DENY_ALL + "os.setxattr('/tmp', 'system.posix_acl_default', acl)"
    ),
    "times of /dev/shm": "touch -d @1 /dev/shm",
    "chmod /dev/shm to its own mode": "chmod 1777 /dev/shm",
    "entry made and removed in /tmp": "touch /tmp/leftover && rm /tmp/leftover",
    # The network namespace: any packet.
    "loopback datagram": _py(
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_to_init_or_its_namespaces_ends_reuse(sbx, change: str) -> None:
    await _pid(sbx)
    assert await _pid(sbx) > 2  # reused
    await sbx.exec(CHANGES[change], check=True)
    assert await _pid(sbx) == 2


async def test_a_run_cannot_make_a_posix_message_queue(sbx) -> None:
    """The one IPC kind the reuse check does not look for, because there is none to find.
    (Landlock refuses to open a new queue, but only after the kernel made it.)"""
    made = await sbx.exec(
        _py(
            _LIBC + "libc.mq_open.restype = ctypes.c_int\n"
            "print(libc.mq_open(b'/leftover', os.O_CREAT | os.O_RDWR, 0o600, None))\n"
            "print(libc.mq_unlink(b'/leftover'), ctypes.get_errno())"
        ),
        check=True,
    )
    assert made.stdout.split() == ["-1", "-1", "2"], made  # not made: ENOENT to unlink it


async def test_a_reused_init_is_indistinguishable_from_a_fresh_one(sbx) -> None:
    """The differential test: after a run that changes everything it can, the next run
    observes exactly what the first run of the session (on a fresh init) observed: sysctls,
    its init's and its own rlimits, nice, scheduling, affinity, I/O priority and signal
    state, the scratch mounts' entries, attributes, ACLs and times, mounts, IPC objects,
    sockets and interface counters."""
    first = await sbx.exec(OBSERVE, script_type="python", check=True)
    fresh = observed(first.stdout)
    assert fresh["pid"] == 2
    again = observed((await sbx.exec(OBSERVE, script_type="python", check=True)).stdout)
    assert again["pid"] > 2  # observing left the init reusable...
    assert differences(fresh, again) == []  # ... and changed nothing it observes
    done = tampered((await sbx.exec(TAMPER, script_type="python", check=True)).stdout)
    # The tampering worked where the sandbox allows it (else this test would prove nothing).
    for attempt in (
        "prlimit RLIMIT_NOFILE",
        "renice",
        "taskset",
        "ionice idle",
        "xattr /tmp",
        "default ACL /tmp",
        "utime /dev/shm",
        "System V sem made and removed",
        "loopback traffic",
    ):
        assert done[attempt] in ("ok", "one cpu"), (attempt, done[attempt])
    # Kernel knobs are read-only to a run.
    assert {v for k, v in done.items() if k.startswith("sysctl ")} == {"EROFS"}, done
    after = observed(
        (await sbx.exec(observe_program(allocate=True), script_type="python", check=True)).stdout
    )
    # The first ids a fresh namespace hands out: nothing the tampering run made and removed
    # moved them.
    assert after.pop("next System V ids") == {"sem": 0, "msg": 0, "shm": 0}
    assert differences(fresh, after) == []


#: A run that talks through its proxies (a CONNECT to a port nothing listens on: refused
#: by the policy, recorded), leaving loopback traffic behind in the init's namespace.
PROXY_TRAFFIC = _py(
    "from urllib.parse import urlsplit\n"
    "proxy = urlsplit(os.environ['HTTP_PROXY'])\n"
    "s = socket.create_connection((proxy.hostname, proxy.port))\n"
    "s.sendall(b'CONNECT 10.9.9.9:443 HTTP/1.1\\r\\n\\r\\n')\n"
    "print(s.recv(12).decode())"
)


async def test_a_reused_allowlist_init_is_indistinguishable_from_a_fresh_one(
    backend: str,
) -> None:
    """The differential test for proxied runs: an ``allowlist`` run on a reused init (whose
    proxy listeners the host re-armed) observes what the first run on a fresh init did,
    and a run after one that used its proxies (loopback traffic) gets a fresh init."""
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=["127.0.0.1/32"]
    ) as sbx:
        fresh = observed((await sbx.exec(OBSERVE, script_type="python", check=True)).stdout)
        assert fresh["pid"] == 2
        again = observed((await sbx.exec(OBSERVE, script_type="python", check=True)).stdout)
        assert again["pid"] > 2
        assert differences(fresh, again) == []
        assert " 0A " in fresh["net"]["tcp"]  # the proxy listeners are there (LISTEN)
        used = await sbx.run(PROXY_TRAFFIC)
        out, _err = await used.communicate_text()
        assert out.startswith("HTTP/1.1 403"), out
        assert [d.host for d in used.network_decisions] == ["10.9.9.9"]
        after = observed((await sbx.exec(OBSERVE, script_type="python", check=True)).stdout)
        assert after["pid"] == 2
        assert differences(fresh, after) == []


UNPRIVILEGED_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings, anyio
    warnings.simplefilter("ignore")
    from union.sandbox.core.on_device import session
    from union.sandbox.core.testing_fresh import OBSERVE, TAMPER, differences, observed, tampered

    INIT_FILES = {"oom_score_adj": "500", "coredump_filter": "0x7", "autogroup": "5"}

    async def main(backend):
        report = {}
        async with session(backend=backend) as sbx:
            async def observe():
                return observed((await sbx.exec(OBSERVE, script_type="python")).stdout)

            async def pid():
                return int((await sbx.exec("echo $$")).stdout)

            fresh = await observe()
            report["tampered"] = tampered((await sbx.exec(TAMPER, script_type="python")).stdout)
            report["differences"] = differences(fresh, await observe())
            for name, value in INIT_FILES.items():
                await pid()
                reused = await pid()
                wrote = await sbx.exec(f"echo {value} > /proc/1/{name}")
                report[name] = [reused, wrote.returncode, await pid()]
        print("REPORT " + json.dumps(report))

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_an_unprivileged_callers_reused_init_is_indistinguishable_from_a_fresh_one(
    backend: str,
) -> None:
    """As a non-root caller, bubblewrap's runs own their init's /proc files (its user
    namespace maps the caller to uid 0 there): oom_score_adj, coredump_filter and the
    autogroup's nice are writable, and must end the reuse too."""
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    out = run_as(65534, [python, "-c", UNPRIVILEGED_SCRIPT, backend], timeout=180)
    assert out.returncode == 0, out.stderr
    report = observed_report(out.stdout)
    assert report["differences"] == []
    for name in ("oom_score_adj", "coredump_filter", "autogroup"):
        reused, wrote, after = report[name]
        assert reused > 2, (name, report[name])
        if backend == "bubblewrap":
            assert report["tampered"]["/proc/1/" + name] == "ok", report["tampered"]
            assert wrote == 0, (name, report[name])
        if wrote == 0:
            assert after == 2, (name, report[name])


def observed_report(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("REPORT "):
            return json.loads(line[len("REPORT ") :])  # type: ignore[no-any-return]
    raise AssertionError(stdout)


async def test_a_leftover_beside_a_work_dir_under_tmp_ends_reuse(
    backend: str, public_tmp: str
) -> None:
    """A work dir under /tmp is bound into the fresh /tmp, under directories the run could
    write to: a file there is a leftover too."""
    work = os.path.join(public_tmp, "work")
    async with sb.on_device.session(backend=backend, host_work_dir=work) as sbx:
        await _pid(sbx)
        parent = os.path.dirname(sbx.work_dir)
        await sbx.exec(f"touch {parent}/leftover", check=True)
        assert await _pid(sbx) == 2
        assert "leftover" not in (await sbx.exec(f"ls -A {parent}", check=True)).stdout
        assert not os.path.exists(f"{parent}/leftover")


async def test_background_processes_do_not_survive_into_a_reused_init(sbx) -> None:
    await sbx.exec("setsid sleep 1000 > /dev/null 2>&1 < /dev/null &", check=True)
    seen = await sbx.exec("echo $$; cat /proc/[0-9]*/comm", check=True)
    pid, *names = seen.stdout.split()
    assert int(pid) > 2  # reused: the first run left nothing in /tmp
    assert "sleep" not in names, names


async def test_different_rlimits_never_share_an_init(sbx) -> None:
    limited = await sbx.exec("ulimit -f", resources=Resources(file_size="1Mi"), check=True)
    assert limited.stdout.strip() != "unlimited"
    for _ in range(2):
        assert (await sbx.exec("ulimit -f", check=True)).stdout.strip() == "unlimited"


async def test_counters_of_a_reused_cgroup_start_from_the_previous_run(backend: str) -> None:
    """An OOM kill or pids-limit hit in one run must not be reported for the next run that
    reuses its cgroups."""
    limits = Resources(memory="64Mi", pids=32)
    async with sb.on_device.session(backend=backend, resources=limits) as sbx:
        bomb = await sbx.run(
            "b = []\nwhile True:\n    b.append(bytearray(8 << 20))\n", script_type="python"
        )
        await bomb.wait()
        assert bomb.termination.kind == sb.TerminationKind.OOM
        after = await sbx.run("exit 3")
        assert await after.wait() == 3
        assert after.termination.kind == sb.TerminationKind.EXIT
        forks = await sbx.run("for i in $(seq 64); do sleep 5 & done; wait", timeout_s=20)
        await forks.wait()
        assert forks.termination.kind == sb.TerminationKind.PIDS_LIMIT
        after = await sbx.run("exit 1")
        assert await after.wait() == 1
        assert after.termination.kind == sb.TerminationKind.EXIT


async def test_idle_inits_are_bounded_and_gone_after_close(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:

        async def one() -> None:
            await sbx.exec("true", check=True)

        async with anyio.create_task_group() as tg:
            for _ in range(24):
                tg.start_soon(one)
        supervisor = _supervisor_pid()
        # At most 8 idle inits and one prepared init stay (the retired ones exit at once).
        for _ in range(100):
            inits = _children_of(supervisor)
            if len(inits) <= 9:
                break
            await anyio.sleep(0.05)
        assert 1 <= len(inits) <= 9, inits
        assert await _pid(sbx) > 2  # still served by an idle init
    for _ in range(100):
        if not _children_of(supervisor):
            break
        await anyio.sleep(0.05)
    assert _children_of(supervisor) == []


async def test_release_idle_lets_idle_inits_and_their_cgroups_go(backend: str) -> None:
    async with sb.on_device.session(backend=backend, resources=Resources(pids=64)) as sbx:

        async def one() -> None:
            await sbx.exec("true", check=True)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        run_cgroups = f"/sys/fs/cgroup/**/union-sandbox-{sbx.client_id[:8]}-*/run-*"
        assert glob.glob(run_cgroups, recursive=True)  # kept for reuse
        supervisor = _supervisor_pid()
        assert await sbx.release_idle() >= 1
        assert glob.glob(run_cgroups, recursive=True) == []
        for _ in range(100):  # the retired inits exit; the one prepared for the next run stays
            if len(_children_of(supervisor)) <= 1:
                break
            await anyio.sleep(0.05)
        assert len(_children_of(supervisor)) <= 1
        assert await _pid(sbx) == 2  # the next run starts on a fresh init
        assert await sbx.release_idle() == 1
    assert await sbx.release_idle() == 0  # closed: nothing left to release


def _supervisor_pid() -> int:
    """This session's supervisor: the Python process carrying the supervisor's name that
    descends from this test (under bubblewrap, bwrap's own processes sit in between)."""
    found = []
    for pid in host_pids_with("union-sandbox supervisor"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0).startswith(b"python") and _descends_from_me(pid):
            found.append(pid)
    supervisors = [pid for pid in found if _ppid(pid) not in found]
    assert len(supervisors) == 1, found
    return supervisors[0]


def _descends_from_me(pid: int) -> bool:
    while pid > 1:
        pid = _ppid(pid)
        if pid == os.getpid():
            return True
    return False


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _children_of(pid: int) -> list[int]:
    return [
        int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _ppid(int(entry)) == pid
    ]


async def test_close_does_not_wait_for_a_daemon_that_escaped_backend_none() -> None:
    """Backend none cannot stop a daemon that left its run's process group; the supervisor
    (its subreaper) must still exit at close at once, not wait for it (it used to, until the
    host's 5 s fallback killed it, or forever once the host was gone)."""
    with pytest.warns(UserWarning, match="NO isolation"):
        sbx = await sb.on_device.session(backend="none").open()
    tag = f"1000.{os.getpid()}{int(anyio.current_time() * 1000) % 100000}"
    try:
        await sbx.exec(
            f"setsid sh -c 'touch ready; exec sleep {tag}' > /dev/null 2>&1 < /dev/null & "
            "while [ ! -e ready ]; do sleep 0.01; done",
            check=True,
        )
        assert host_pids_with(tag), "the daemon did not start"
        supervisor = _supervisor_pid()
        start = anyio.current_time()
        await sbx.close()
        assert anyio.current_time() - start < 2.5
        assert not os.path.exists(f"/proc/{supervisor}")
    finally:
        for pid in host_pids_with(tag):
            os.kill(pid, 9)


async def test_release_idle_does_not_wait_on_a_cgroup_a_daemon_keeps() -> None:
    """A daemon that escaped backend none keeps its run's cgroup busy for good: release_idle
    must give up on it once nothing progresses, not wait its whole bound at every call."""
    with pytest.warns(UserWarning, match="NO isolation"):
        sbx = await sb.on_device.session(backend="none", resources=Resources(pids=64)).open()
    tag = f"1000.{os.getpid()}{int(anyio.current_time() * 1000) % 100000 + 1}"
    try:
        await sbx.exec(
            f"setsid sh -c 'touch ready2; exec sleep {tag}' > /dev/null 2>&1 < /dev/null & "
            "while [ ! -e ready2 ]; do sleep 0.01; done; kill -9 $$",
        )
        assert host_pids_with(tag), "the daemon did not start"
        await sbx.exec("true", check=True)
        for _ in range(3):
            start = anyio.current_time()
            await sbx.release_idle(within_s=5.0)
            assert anyio.current_time() - start < 1.0
    finally:
        for pid in host_pids_with(tag):
            os.kill(pid, 9)
        await sbx.close()


async def test_a_first_run_with_other_limits_is_held_by_its_own_cgroups(backend: str) -> None:
    """The init prepared when the session opens joins the cgroups of a first run with the
    session's own settings ahead of it; a first run with other limits takes that init into
    its own cgroups, whose limits hold it, and the session's default run is unaffected."""
    async with sb.on_device.session(backend=backend) as sbx:
        forks = await sbx.run(
            "for i in $(seq 40); do sleep 5 & done; wait",
            resources=Resources(pids=16),
            timeout_s=20,
        )
        await forks.wait()
        assert forks.termination.kind == sb.TerminationKind.PIDS_LIMIT
        ok = await sbx.exec("for i in $(seq 40); do sleep 0.1 & done; wait; echo $$")
        assert ok.returncode == 0, ok.stderr
