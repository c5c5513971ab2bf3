"""Every run ends cleanly: timeouts, kill(), signals, cancellation and close take the whole
process tree down, and the result says why (reference-api §2.6, §2.7, §2.19, §3.3;
ARCHITECTURE "Every run ends cleanly")."""

from __future__ import annotations

import os
import signal
import time
import warnings

import anyio
import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio

# -- timeouts --------------------------------------------------------------------------


async def test_timeout_kills_with_137_and_says_why(any_sbx) -> None:
    with anyio.fail_after(6):
        start = time.monotonic()
        proc = await any_sbx.run("echo started; sleep 10", timeout_s=0.5)
        out, _ = await proc.communicate()  # no exception: a timeout is data
        elapsed = time.monotonic() - start
    assert out == b"started\n"
    assert proc.returncode == 137
    assert proc.termination is not None
    assert proc.termination.kind == "timeout"
    assert "timeout" in proc.termination_reason
    assert proc.terminated_abnormally is False
    assert 0.45 <= elapsed < 5
    assert proc.runtime_ms is not None and 450 <= proc.runtime_ms < 5000
    # The session is still usable afterwards.
    assert (await any_sbx.exec("echo alive")).stdout == "alive\n"


async def test_a_timeout_of_decades_is_fine(any_sbx) -> None:
    """The supervisor waits on a run's deadline (its backstop): a far one must not
    overflow its poll timeout."""
    with anyio.fail_after(10):
        result = await any_sbx.exec("sleep 0.2; echo done", timeout_s=1e9)
    assert (result.returncode, result.stdout) == (0, "done\n")


async def test_session_default_timeout_applies(any_backend: str) -> None:
    session = sb.on_device.session(backend=any_backend, timeout_s=0.5)
    with pytest.warns(UserWarning, match="NO isolation") if any_backend == "none" else _nothing():
        await session.open()
    try:
        with anyio.fail_after(6):
            proc = await session.run("sleep 10")
            assert await proc.wait() == 137
        assert proc.termination is not None and proc.termination.kind == "timeout"
        # A per-call timeout overrides the session default.
        proc = await session.run("sleep 0.8; echo finished", timeout_s=10)
        assert await proc.communicate() == (b"finished\n", b"")
    finally:
        await session.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_timeout_kills_the_whole_tree(sbx, unique_sleep: str, host_pids_with) -> None:
    with anyio.fail_after(6):
        proc = await sbx.run(
            f"sleep {unique_sleep} & (sleep {unique_sleep} &) ; sleep {unique_sleep}",
            timeout_s=0.5,
        )
        await proc.communicate()
    assert proc.returncode == 137
    assert host_pids_with(unique_sleep) == []


async def test_timeout_with_a_grandchild_holding_stdout(any_sbx, unique_sleep: str) -> None:
    """A descendant that keeps the output pipe open must not keep communicate() waiting."""
    with anyio.fail_after(6):
        proc = await any_sbx.run(f"sleep {unique_sleep} & sleep {unique_sleep}", timeout_s=0.5)
        await proc.communicate()
    assert proc.returncode == 137


# -- leftovers -------------------------------------------------------------------------


async def test_setsid_background_child_does_not_survive(
    sbx, unique_sleep: str, host_pids_with
) -> None:
    with anyio.fail_after(6):
        result = await sbx.exec(
            f"setsid sleep {unique_sleep} >/dev/null 2>&1 < /dev/null & echo started"
        )
    assert result.stdout == "started\n"
    assert host_pids_with(unique_sleep) == []
    # Nor does a later run of the session see it.
    later = await sbx.exec("ps -eo args")
    assert unique_sleep not in later.stdout


async def test_double_forked_daemon_does_not_survive(
    sbx, unique_sleep: str, host_pids_with
) -> None:
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', {unique_sleep!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('parent done')\n"
    )
    with anyio.fail_after(6):
        out = await sbx.run_code(code)
    assert out == "parent done\n"
    assert host_pids_with(unique_sleep) == []


async def test_background_child_holding_stdout_does_not_block(
    any_sbx, unique_sleep: str, survivors
) -> None:
    with anyio.fail_after(6):
        start = time.monotonic()
        proc = await any_sbx.run(f"sleep {unique_sleep} & echo done")
        out, _ = await proc.communicate()
    assert out == b"done\n"
    assert proc.returncode == 0
    assert time.monotonic() - start < 5
    assert survivors(unique_sleep) == []


# -- kill() / send_signal() ------------------------------------------------------------


async def test_kill_ends_the_tree(any_sbx, unique_sleep: str, survivors) -> None:
    with anyio.fail_after(6):
        proc = await any_sbx.run(f"sleep {unique_sleep} & sleep {unique_sleep}; echo never")
        assert proc.stdout is not None
        await anyio.sleep(0.2)
        await proc.kill()
        out, _ = await proc.communicate()
    assert out == b""
    assert proc.returncode == 137
    assert proc.termination is not None and proc.termination.kind == "killed"
    assert proc.termination_reason
    assert survivors(unique_sleep) == []
    # kill() after the end is a harmless no-op, and the session goes on.
    await proc.kill()
    assert (await any_sbx.exec("echo next")).stdout == "next\n"


async def test_kill_right_after_start(sbx) -> None:
    # (Backend "none" is covered by test_kill_ends_the_tree; here its known kill bug would
    # make the outcome depend on whether the command was already spawned.)
    with anyio.fail_after(6):
        proc = await sbx.run("sleep 30")
        await proc.kill()
        assert await proc.wait() == 137


async def test_terminate_sends_sigterm(any_sbx) -> None:
    with anyio.fail_after(6):
        proc = await any_sbx.run("echo ready; sleep 30")
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        # Past the start-up window (see test_signal_right_after_start_is_not_lost).
        await anyio.sleep(0.2)
        await proc.terminate()
        assert await proc.wait() == 143
    assert "TERM" in proc.termination_reason


async def test_send_signal_reaches_a_handler(any_sbx) -> None:
    with anyio.fail_after(6):
        proc = await any_sbx.run(
            "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.05; done"
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        await anyio.sleep(0.2)  # see test_signal_right_after_start_is_not_lost
        await proc.send_signal(signal.SIGUSR1)
        out, _ = await proc.communicate()
    assert out == b"got-usr1\n"
    assert proc.returncode == 7


async def test_signal_right_after_start_is_not_lost(any_sbx) -> None:
    """A signal sent as soon as the command has produced output must always work (SIGKILL
    too: with backend none it is relayed by init, like the others)."""
    for attempt in range(200):
        proc = await any_sbx.run("echo ready; sleep 30")
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        signo = signal.SIGTERM if attempt % 2 else signal.SIGKILL
        await proc.send_signal(signo)
        with anyio.move_on_after(1) as scope:
            code = await proc.wait()
        # (A cancelled wait kills the process itself, so look at the scope, not returncode.)
        if scope.cancelled_caught:
            pytest.fail(f"{signo.name} lost on attempt {attempt}: the process kept running")
        assert code == 128 + signo


async def test_signal_before_the_command_started_is_not_lost(any_sbx) -> None:
    """A signal sent as soon as ``run()`` returns (the run's init may not even be ready:
    fresh, prepared or reused) reaches the command once it exists."""
    for attempt in range(60):
        proc = await any_sbx.run("sleep 30")
        await proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(5) as scope:
            code = await proc.wait()
        if scope.cancelled_caught:
            pytest.fail(f"SIGTERM lost on attempt {attempt}: the process kept running")
        assert code == 143


async def test_send_sigkill(any_sbx) -> None:
    with anyio.fail_after(6):
        proc = await any_sbx.run("echo ready; sleep 30")
        assert proc.stdout is not None
        await proc.stdout.readline()
        await anyio.sleep(0.2)  # see test_signal_right_after_start_is_not_lost
        await proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == 137


async def test_sigstop_does_not_stretch_the_timeout(any_sbx) -> None:
    """SIGSTOP stops the command, never the sandbox's own init (whose timer is the
    deadline)."""
    with anyio.fail_after(20):
        proc = await any_sbx.run("echo ready; sleep 30", timeout_s=1)
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        await proc.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        assert await proc.wait() == 137
    assert proc.termination is not None and proc.termination.kind == "timeout"
    assert time.monotonic() - start < 5


async def test_a_stopped_init_does_not_stretch_the_timeout(any_sbx) -> None:
    """The run stops its own init (pid 1 ignores it; with backend none it works): the
    supervisor still ends the run, as a timeout, shortly after ``timeout_s``."""
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run("kill -STOP $PPID; sleep 30", timeout_s=1)
        assert await proc.wait() == 137
    assert proc.termination is not None and proc.termination.kind == "timeout"
    assert time.monotonic() - start < 6


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(os.getuid() != 0, reason="stops the run's init from the host: needs root")
async def test_the_deadline_holds_when_init_is_stopped_from_outside(
    any_sbx, unique_sleep: str, host_pids_with
) -> None:
    """The supervisor's backstop: whatever stops the run's init (here the host's root), the
    run ends shortly after ``timeout_s``, reported as a timeout, nothing left."""
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run(f"exec sleep {unique_sleep}", timeout_s=1)
        for _ in range(1000):
            if host_pids_with(unique_sleep):
                break
            await anyio.sleep(0.01)
        (command,) = host_pids_with(unique_sleep)
        os.kill(_parent_of(command), signal.SIGSTOP)
        assert await proc.wait() == 137
    assert proc.termination is not None and proc.termination.kind == "timeout"
    assert time.monotonic() - start < 6
    assert not host_pids_with(unique_sleep)


async def test_sigalrm_is_the_commands_not_a_timeout(any_sbx) -> None:
    with anyio.fail_after(20):
        proc = await any_sbx.run(
            "trap 'echo alarm; exit 5' ALRM; echo ready; while :; do sleep 0.05; done",
            timeout_s=15,
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        await proc.send_signal(signal.SIGALRM)
        out, _ = await proc.communicate()
    assert (out, proc.returncode) == (b"alarm\n", 5)
    # And the run's own SIGALRM to its init is not a timeout either.
    result = await any_sbx.exec("kill -ALRM $PPID; sleep 0.3; echo on", timeout_s=15)
    assert (result.returncode, result.stdout) == (0, "on\n")


@pytest.mark.parametrize(
    ("signo", "error"),
    [(0, ValueError), (-1, ValueError), (signal.NSIG, ValueError), (True, TypeError)],
)
async def test_send_signal_refuses_what_it_cannot_deliver(
    any_sbx, signo: object, error: type[Exception]
) -> None:
    proc = await any_sbx.run("sleep 30")
    with pytest.raises(error, match="signal"):
        await proc.send_signal(signo)  # type: ignore[arg-type]
    await proc.kill()
    await proc.wait()
    with pytest.raises(error, match="signal"):  # bad input, even once it ended
        await proc.send_signal(signo)  # type: ignore[arg-type]


async def test_signal_after_exit_is_a_no_op(any_sbx) -> None:
    proc = await any_sbx.run("true")
    await proc.wait()
    await proc.send_signal(signal.SIGTERM)
    await proc.terminate()
    assert proc.returncode == 0


# -- cancellation ----------------------------------------------------------------------


async def test_cancelling_communicate_kills_the_process(
    any_sbx, unique_sleep: str, survivors
) -> None:
    proc = await any_sbx.run(f"sleep {unique_sleep} & sleep {unique_sleep}")
    with anyio.fail_after(6):
        with anyio.move_on_after(0.3) as scope:
            await proc.communicate()
    assert scope.cancelled_caught
    assert survivors(unique_sleep) == []
    assert proc.returncode is not None
    assert proc.terminated_abnormally is True
    # The handle now reports the cancellation as an abnormal end.
    with pytest.raises(sb.SandboxExecutionError):
        await proc.wait()
    assert (await any_sbx.exec("echo next")).stdout == "next\n"


async def test_cancelling_a_task_group_kills_the_process(
    any_sbx, unique_sleep: str, survivors
) -> None:
    procs = []
    await any_sbx.exec("true")  # warm: concurrent first runs are covered elsewhere

    async def worker() -> None:
        proc = await any_sbx.run(f"sleep {unique_sleep}")
        procs.append(proc)
        await proc.communicate()

    with anyio.fail_after(6):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            tg.start_soon(worker)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    assert len(procs) == 2
    assert survivors(unique_sleep) == []


async def test_cancelling_iteration_kills_when_waiting(any_sbx, unique_sleep, survivors) -> None:
    proc = await any_sbx.run(f"echo a; sleep {unique_sleep}")
    with anyio.move_on_after(0.5):
        async for _line in proc.iter_stdout_lines():
            pass
    # Iteration alone does not own the process; waiting (cancelled) does.
    with anyio.move_on_after(0.1):
        await proc.wait()
    assert survivors(unique_sleep) == []


# -- close -----------------------------------------------------------------------------


async def test_close_kills_running_processes(
    any_backend: str, unique_sleep: str, survivors, host_pids_with
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # backend "none" warns
        sbx = await sb.on_device.session(backend=any_backend)
    proc = await sbx.run(f"sleep {unique_sleep} & sleep {unique_sleep}")
    await anyio.sleep(0.2)
    assert len(host_pids_with(unique_sleep)) >= 2
    with anyio.fail_after(6):
        await sbx.close()
    assert survivors(unique_sleep) == []
    with anyio.fail_after(6):
        try:
            code = await proc.wait()
        except sb.SandboxExecutionError:
            pass
        else:
            assert code == 137
    assert proc.returncode is not None


async def test_close_releases_a_task_waiting_on_the_process(
    backend: str, unique_sleep: str, host_pids_with
) -> None:
    sbx = await sb.on_device.session(backend=backend)
    outcome: list[object] = []

    async def waiter() -> None:
        proc = await sbx.run(f"sleep {unique_sleep}")
        try:
            outcome.append(await proc.communicate())
        except sb.SandboxExecutionError as exc:
            outcome.append(exc)

    with anyio.fail_after(6):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.3)
            await sbx.close()
    assert len(outcome) == 1
    assert host_pids_with(unique_sleep) == []


# -- the supervisor dies ---------------------------------------------------------------


def _supervisor_pid(roots: set[int], children_of) -> int:
    """The session supervisor below ``roots`` (under bubblewrap it sits below two bwraps;
    its runs are copies of it, further down)."""
    frontier = sorted(roots)
    while frontier:
        pid = frontier.pop(0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"union-sandbox supervisor" in f.read():
                return pid
        frontier += sorted(children_of(pid))
    raise AssertionError("no supervisor process found")


async def test_supervisor_death_is_a_sandbox_failure(
    backend: str, unique_sleep: str, host_pids_with, my_children, children
) -> None:
    """If the session's supervisor dies (OOM killer, a bug), a waiting caller gets an
    ExecutionError promptly, never a hang or a fake exit code, and nothing survives; later
    calls fail loudly with an error that says what happened (a RuntimeError such as
    ExecutionError, not a bare OSError from the control socket)."""
    before = my_children()
    sbx = await sb.on_device.session(backend=backend)
    try:
        await sbx.exec("true")
        proc = await sbx.run(f"sleep {unique_sleep}")
        await anyio.sleep(0.2)
        os.kill(_supervisor_pid(my_children() - before, children), signal.SIGKILL)
        with anyio.fail_after(10):
            with pytest.raises(sb.SandboxExecutionError):
                await proc.communicate()
        assert proc.terminated_abnormally
        assert host_pids_with(unique_sleep) == []

        async def run_after() -> None:
            later = await sbx.run("echo after")
            await later.communicate()

        for _ in range(3):
            with anyio.fail_after(10):
                with pytest.raises(RuntimeError):
                    await run_after()
    finally:
        with anyio.fail_after(10):
            await sbx.close()
