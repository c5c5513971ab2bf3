"""A run that leaves things clean hands its init and cgroups to the next run with the same
settings (see ``on_device/slots.py``). What a run leaves behind must never reach a later
run: each leftover below must end the reuse, and the next run must find a fresh state.

How a test sees reuse from inside: a fresh init's command is pid 2 of a new pid namespace;
a reused init's next command gets a later pid.
"""

from __future__ import annotations

import glob
import os

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core import Resources
from union.sandbox.core.testing import host_pids_with

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
