"""One behaviour suite, two transports: on-device and remote must be indistinguishable."""

from __future__ import annotations

import io
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from union.sandbox.core import PIPE
from union.sandbox.core.errors import CommandError, ExecutionError
from union.sandbox.core.process import TerminationKind

from .conftest import Session, host_pids_with

pytestmark = pytest.mark.anyio


# -- output and exit -----------------------------------------------------------------------


async def test_output_and_clean_exit(sbx: Session) -> None:
    proc = await sbx.run("echo hi; echo err >&2")
    assert await proc.communicate() == (b"hi\n", b"err\n")
    assert proc.returncode == 0
    assert proc.termination_reason == ""
    assert not proc.terminated_abnormally
    assert proc.backend == "userns"
    assert proc.runtime_ms is not None
    assert proc.runtime_ms >= 0


async def test_non_zero_exit_is_data(sbx: Session) -> None:
    proc = await sbx.run("exit 5")
    assert await proc.wait() == 5
    assert proc.termination_reason == "exit=5"
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.EXIT


async def test_signal_exit(sbx: Session) -> None:
    proc = await sbx.run("kill -TERM $$")
    assert await proc.wait() == 143
    assert proc.termination_reason == "signal=SIGTERM"


async def test_uncaptured_streams(sbx: Session) -> None:
    proc = await sbx.run("echo hi; echo err >&2", stdout=False, stderr=None)
    assert proc.stdout is None
    assert proc.stderr is None
    assert await proc.communicate() == (b"", b"")


async def test_forward_to_a_file_object(sbx: Session) -> None:
    sink = io.StringIO()
    proc = await sbx.run("echo forwarded", stdout=sink)
    assert await proc.wait() == 0
    assert sink.getvalue() == "forwarded\n"


async def test_large_output_is_complete(sbx: Session) -> None:
    proc = await sbx.run("head -c 20000000 /dev/zero; echo done >&2")
    out, err = await proc.communicate()
    assert len(out) == 20_000_000
    assert out.count(0) == 20_000_000
    assert err == b"done\n"


async def test_output_cap_truncates(make_session: Callable[..., Session]) -> None:
    async with make_session(max_output_bytes=1000) as sbx:
        proc = await sbx.run("head -c 5000 /dev/zero")
        out, _ = await proc.communicate()
        assert len(out) == 1000
        assert proc.stdout_truncated
        assert not proc.stderr_truncated


async def test_wait_keeps_output_for_later_reads(sbx: Session) -> None:
    proc = await sbx.run("seq 1 5000; echo tail >&2")
    assert await proc.wait() == 0
    assert proc.stdout is not None
    assert await proc.stdout.read() == "".join(f"{i}\n" for i in range(1, 5001)).encode()
    assert (await proc.communicate())[1] == b"tail\n"


async def test_wait_on_a_flood_caps_what_it_keeps(make_session: Callable[..., Session]) -> None:
    """wait() takes the output itself: the writer never blocks, the excess is dropped."""
    async with make_session(max_output_bytes=1000) as sbx:
        proc = await sbx.run("head -c 5000000 /dev/zero; echo done >&2")
        with anyio.fail_after(60):
            assert await proc.wait() == 0
        out, err = await proc.communicate()
        assert (len(out), err) == (1000, b"done\n")
        assert proc.stdout_truncated
        assert not proc.stderr_truncated


async def test_wait_while_another_task_reads(sbx: Session) -> None:
    """Output taken by wait() and output read by a reader interleave without loss or
    reordering."""
    proc = await sbx.run("seq 1 300000; echo err >&2")
    assert proc.stdout is not None
    stdout = proc.stdout
    chunks: list[bytes] = []

    async def read() -> None:
        while chunk := await stdout.read(65536):
            chunks.append(chunk)
            await anyio.lowlevel.checkpoint()  # let wait() take chunks too

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            assert await proc.wait() == 0
    assert b"".join(chunks) == "".join(f"{i}\n" for i in range(1, 300001)).encode()
    assert (await proc.communicate())[1] == b"err\n"


async def test_iter_lines_keep_newlines(sbx: Session) -> None:
    proc = await sbx.run("printf 'a\\nb\\nc'")
    lines = [line async for line in proc.iter_stdout_lines()]
    assert lines == ["a\n", "b\n", "c"]
    assert await proc.wait() == 0


# -- streaming is live ---------------------------------------------------------------------


async def test_stdout_arrives_while_the_process_runs(sbx: Session, unique: str) -> None:
    """The first line reaches us while the command is blocked waiting for a file that only
    we create: output is streamed, not collected at exit."""
    flag = f"{sbx.work_dir}/{unique}.flag"
    proc = await sbx.run(f"echo ready; while [ ! -e {flag} ]; do sleep 0.02; done; echo done")
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"ready\n"
    assert proc.returncode is None
    await sbx.put_bytes(flag, b"")
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"done\n"
        assert await proc.wait() == 0


async def test_output_back_pressure(sbx: Session, unique: str) -> None:
    """A reader that stops reading stops the writer (bounded buffering), and everything
    arrives once it reads again."""
    size = 100_000_000
    proc = await sbx.run(f"head -c {size} /dev/zero; touch {unique}.done")
    assert proc.stdout is not None
    first = await proc.stdout.read(1 << 16)
    await anyio.sleep(1.0)
    with pytest.raises(FileNotFoundError):
        await sbx.get_bytes(f"{sbx.work_dir}/{unique}.done")  # still blocked writing
    received = len(first)
    while chunk := await proc.stdout.read(1 << 20):
        received += len(chunk)
    assert received == size
    assert await proc.wait() == 0
    assert await sbx.get_bytes(f"{sbx.work_dir}/{unique}.done") == b""


# -- a cancelled read leaves the run usable ------------------------------------------------
#
# Each command writes a first part, then waits for a flag file that the test creates only
# after its read was cancelled (so the read is cancelled while blocked), then writes the
# rest. Nothing may be lost or reordered, and wait() reports the real exit.


def _gated(sbx: Session, unique: str, first: str, rest: str, stream: str = "stdout") -> str:
    flag = f"{sbx.work_dir}/{unique}.go"
    redirect = " >&2" if stream == "stderr" else ""
    return (
        f"{{ printf '{first}'; while [ ! -e {flag} ]; do sleep 0.02; done; "
        f"printf '{rest}'; }}{redirect}"
    )


async def _open_gate(sbx: Session, unique: str) -> None:
    await sbx.put_bytes(f"{sbx.work_dir}/{unique}.go", b"")


async def _exits_cleanly(proc: Any) -> None:
    with anyio.fail_after(30):
        assert await proc.wait() == 0
    assert proc.termination.kind is TerminationKind.EXIT


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_a_cancelled_read_loses_nothing(sbx: Session, unique: str, stream: str) -> None:
    proc = await sbx.run(_gated(sbx, unique, "early\\n", "late\\nend\\n", stream))
    pipe = getattr(proc, stream)
    with anyio.move_on_after(0.5) as scope:
        await pipe.read()  # takes "early", then waits for more
    assert scope.cancelled_caught
    assert proc.returncode is None
    await _open_gate(sbx, unique)
    await _exits_cleanly(proc)
    assert await pipe.read() == b"early\nlate\nend\n"


async def test_a_cancelled_sized_read_loses_nothing(sbx: Session, unique: str) -> None:
    proc = await sbx.run(_gated(sbx, unique, "early\\n", "late\\n"))
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert await proc.stdout.read(100) == b"early\n"
    with anyio.move_on_after(0.5) as scope:
        await proc.stdout.read(100)
    assert scope.cancelled_caught
    await _open_gate(sbx, unique)
    with anyio.fail_after(30):
        assert await proc.stdout.read(100) == b"late\n"
        assert await proc.stdout.read(100) == b""
    await _exits_cleanly(proc)


async def test_a_cancelled_readline_keeps_the_partial_line(sbx: Session, unique: str) -> None:
    proc = await sbx.run(_gated(sbx, unique, "early\\npart", "ial\\nlate\\n"))
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"early\n"
    with anyio.move_on_after(0.5) as scope:
        await proc.stdout.readline()  # has "part", waits for the line's end
    assert scope.cancelled_caught
    await _open_gate(sbx, unique)
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"partial\n"
        assert await proc.stdout.readline() == b"late\n"
    await _exits_cleanly(proc)
    assert await proc.stdout.readline() == b""


async def test_cancelled_line_iteration_resumes(sbx: Session, unique: str) -> None:
    proc = await sbx.run(_gated(sbx, unique, "one\\ntw", "o\\nthree\\n"))
    assert proc.stdout is not None
    lines = []
    with anyio.move_on_after(1.0) as scope:
        async for line in proc.stdout:
            lines.append(line)
    assert scope.cancelled_caught
    assert lines == [b"one\n"]
    await _open_gate(sbx, unique)
    with anyio.fail_after(30):
        lines += [line async for line in proc.stdout]
    assert lines == [b"one\n", b"two\n", b"three\n"]
    await _exits_cleanly(proc)


async def test_reads_cancelled_at_any_point_of_a_flood_lose_nothing(sbx: Session) -> None:
    """Reads of a large output cancelled after varying short delays: some land while a
    chunk of the response is only partly received, some while waiting on the socket."""
    proc = await sbx.run("seq 1 300000; echo err >&2")
    assert proc.stdout is not None
    expected = "".join(f"{i}\n" for i in range(1, 300001)).encode()
    chunks: list[bytes] = []
    cancelled = 0
    with anyio.fail_after(120):
        for attempt in itertools.count():
            with anyio.move_on_after(0.0002 * (attempt % 7)) as scope:
                chunk = await proc.stdout.read(1 << 16 if attempt % 2 else 1000)
            if scope.cancelled_caught:
                cancelled += 1
                continue
            if not chunk:
                break
            chunks.append(chunk)
    assert b"".join(chunks) == expected
    assert cancelled  # the test tested something
    await _exits_cleanly(proc)
    assert (await proc.communicate())[1] == b"err\n"


async def test_a_reader_of_a_chatty_command_lets_other_tasks_run(sbx: Session) -> None:
    # The pipe is never empty, so reads return at once: without checkpoints the reader
    # kept the event loop, and the kill below ran only once the run's timeout ended it.
    proc = await sbx.run('yes "$(printf %1000s)"', timeout_s=10)  # lines of 1001 bytes
    assert proc.stdout is not None
    stdout = proc.stdout

    async def kill_soon() -> None:
        await anyio.sleep(0.2)
        await proc.kill()

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_soon)
        async for _ in stdout:
            pass
    await proc.wait()
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.KILLED


async def test_interactive_stdin(sbx: Session) -> None:
    proc = await sbx.run("read a; echo got $a; read b; echo got $b", stdin=PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    with anyio.fail_after(30):
        await proc.stdin.write(b"one\n")
        assert await proc.stdout.readline() == b"got one\n"
        await proc.stdin.write(b"two\n")
        assert await proc.stdout.readline() == b"got two\n"
        await proc.stdin.aclose()
        assert await proc.wait() == 0


async def test_closing_stdin_of_a_process_that_ended(sbx: Session) -> None:
    # Found by CI: the command exits without reading, and the CLI's stdin pump closes its
    # stdin once the run was released (on the server, while it answered the run's end).
    proc = await sbx.run("exit 3", stdin=PIPE)
    assert proc.stdin is not None
    with anyio.fail_after(30):
        with pytest.raises(BrokenPipeError):
            await _write_until_refused(proc.stdin)
        assert await proc.wait() == 3
        await proc.stdin.aclose()
        assert proc.stdin.closed


async def _write_until_refused(stdin: Any) -> None:
    """Keep writing until a write finds the command gone (raises ``BrokenPipeError``)."""
    while True:
        await stdin.write(b"x" * 4096)
        await anyio.sleep(0.01)


async def test_stdin_of_an_ended_run_reaches_no_later_run(sbx: Session) -> None:
    ended = await sbx.run("true", stdin=PIPE)
    assert ended.stdin is not None
    assert await ended.wait() == 0
    later = await sbx.run("cat", stdin=PIPE)  # its pipe may take the ended run's numbers
    assert later.stdin is not None
    with anyio.fail_after(30):
        with pytest.raises(BrokenPipeError):
            await ended.stdin.write(b"from the ended run\n")
        await ended.stdin.aclose()  # a no-op: it must not close the later run's stdin
        await later.stdin.write(b"mine\n")
        await later.stdin.aclose()
        assert await later.communicate() == (b"mine\n", b"")


async def test_concurrent_stdin_writes_go_whole_one_after_the_other(sbx: Session) -> None:
    proc = await sbx.run("cat > written", stdin=PIPE)
    assert proc.stdin is not None
    stdin = proc.stdin
    size = 1 << 20  # more than a pipe holds: each write waits for the command midway
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for tag in (b"a", b"b"):
                tg.start_soon(stdin.write, tag * size)
        await stdin.aclose()
        assert await proc.wait() == 0
    written = await sbx.get_bytes(f"{sbx.work_dir}/written")
    assert written in (b"a" * size + b"b" * size, b"b" * size + b"a" * size)


async def test_closing_stdin_comes_after_a_write_in_progress(sbx: Session) -> None:
    # The command reads only after a while: the write waits midway when close() comes from
    # another task. It cut the write (BrokenPipeError) and the command got part of it.
    proc = await sbx.run("sleep 0.5; cat > written", stdin=PIPE)
    assert proc.stdin is not None
    stdin = proc.stdin
    size = 4 << 20
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdin.write, b"x" * size)
            await anyio.sleep(0.1)
            await stdin.aclose()
        assert await proc.wait() == 0
    assert len(await sbx.get_bytes(f"{sbx.work_dir}/written")) == size


async def test_stdin_bytes(sbx: Session) -> None:
    proc = await sbx.run("cat; echo", stdin=b"fed through stdin")
    assert await proc.communicate() == (b"fed through stdin\n", b"")


async def test_stdin_defaults_to_devnull(sbx: Session) -> None:
    assert (await sbx.exec("cat")).stdout == ""


# -- cwd, env, scripts ---------------------------------------------------------------------


async def test_cwd(sbx: Session, unique: str) -> None:
    assert (await sbx.exec("pwd")).stdout == f"{sbx.work_dir}\n"
    await sbx.exec(f"mkdir {unique}", check=True)
    assert (await sbx.exec("pwd", cwd=unique)).stdout == f"{sbx.work_dir}/{unique}\n"
    assert (await sbx.exec("pwd", cwd=f"{sbx.work_dir}/{unique}")).stdout == (
        f"{sbx.work_dir}/{unique}\n"
    )


async def test_missing_cwd_is_an_abnormal_termination(sbx: Session, unique: str) -> None:
    proc = await sbx.run("true", cwd=f"{unique}-missing")
    with pytest.raises(ExecutionError, match="No such file or directory") as info:
        await proc.wait()
    assert proc.terminated_abnormally
    assert info.value.backend == "userns"
    assert unique in info.value.reason


async def test_env(sbx: Session) -> None:
    result = await sbx.exec('echo "$FOO|$HOME|$VIRTUAL_ENV"', env={"FOO": "bar baz"})
    foo, home, venv = result.stdout.rstrip("\n").split("|")
    assert foo == "bar baz"
    assert home == sbx.work_dir
    assert venv.startswith(sbx.work_dir)


async def test_python_and_run_code(sbx: Session) -> None:
    assert await sbx.run_code("print(6 * 7)") == "42\n"
    result = await sbx.exec("import sys; print(sys.prefix)", script_type="python")
    assert result.ok
    assert result.stdout.startswith(sbx.work_dir)
    with pytest.raises(CommandError, match="ZeroDivisionError") as info:
        await sbx.run_code("1 / 0")
    assert info.value.result.returncode == 1


async def test_exec_check(sbx: Session) -> None:
    result = await sbx.exec("echo out; echo bad >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr, result.ok) == (
        3,
        "out\n",
        "bad\n",
        False,
    )
    with pytest.raises(CommandError, match="exited with code 3:\nbad"):
        await sbx.exec("echo bad >&2; exit 3", check=True)


async def test_workdir_persists_across_runs(sbx: Session, unique: str) -> None:
    await sbx.exec(f"echo kept > {unique}", check=True)
    assert (await sbx.exec(f"cat {unique}")).stdout == "kept\n"
    assert await sbx.get_bytes(f"{sbx.work_dir}/{unique}") == b"kept\n"


# -- limits, kill, signals, cancellation ---------------------------------------------------


async def test_timeout_kills_without_raising(sbx: Session) -> None:
    started = time.monotonic()
    proc = await sbx.run("sleep 30", timeout_s=0.5)
    assert await proc.wait() == 137
    assert time.monotonic() - started < 20
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.TIMEOUT
    assert not proc.terminated_abnormally


async def test_kill(sbx: Session, unique_sleep: str) -> None:
    proc = await sbx.run(f"sleep {unique_sleep} & sleep {unique_sleep}; wait")
    await _until(lambda: len(host_pids_with(unique_sleep)) >= 2)
    await proc.kill()
    assert await proc.wait() == 137
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.KILLED
    await _until(lambda: not host_pids_with(unique_sleep))


async def test_send_signal(sbx: Session) -> None:
    proc = await sbx.run("trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"ready\n"
        await proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 7
        assert await proc.stdout.read() == b"term\n"


async def test_job_control_and_alarm_signals_reach_the_command(sbx: Session) -> None:
    """Every signal goes to the command's process group: stops and SIGALRM too (never to
    the sandbox's own init, whose timer a SIGALRM would have faked)."""
    proc = await sbx.run(
        'for s in TSTP TTIN TTOU ALRM; do trap "echo $s" $s; done; echo ready; '
        "while :; do sleep 0.05; done",
        timeout_s=30,
    )
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert await proc.stdout.readline() == b"ready\n"
        for signo in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGALRM):
            await proc.send_signal(signo)
            assert await proc.stdout.readline() == signo.name[3:].encode() + b"\n"
        await proc.send_signal(signal.SIGUSR2)
        assert await proc.wait() == 128 + signal.SIGUSR2


async def test_sigstop_does_not_stretch_the_timeout(sbx: Session) -> None:
    proc = await sbx.run("echo ready; sleep 30", timeout_s=1)
    assert proc.stdout is not None
    with anyio.fail_after(20):
        assert await proc.stdout.readline() == b"ready\n"
        await proc.send_signal(signal.SIGSTOP)
        assert await proc.wait() == 137
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.TIMEOUT


@pytest.mark.parametrize(
    ("signo", "error"), [(0, ValueError), (65, ValueError), (-9, ValueError), (True, TypeError)]
)
async def test_send_signal_refuses_what_it_cannot_deliver(
    sbx: Session, signo: Any, error: type[Exception]
) -> None:
    proc = await sbx.run("echo ready; sleep 30")
    with anyio.fail_after(30):
        with pytest.raises(error, match="signal"):
            await proc.send_signal(signo)
        await proc.terminate()
        assert await proc.wait() == 143


async def test_cancelling_a_wait_kills_the_tree(sbx: Session, unique_sleep: str) -> None:
    proc = await sbx.run(f"sleep {unique_sleep}")
    await _until(lambda: bool(host_pids_with(unique_sleep)))
    with anyio.move_on_after(0.3):
        await proc.wait()
    assert proc.terminated_abnormally
    assert proc.termination is not None
    assert proc.termination.kind is TerminationKind.CANCELLED
    with pytest.raises(ExecutionError, match="cancelled"):
        await proc.wait()
    await _until(lambda: not host_pids_with(unique_sleep))


async def test_close_kills_running_commands(
    make_session: Callable[..., Session], unique_sleep: str
) -> None:
    sbx = await make_session().open()
    proc = await sbx.run(f"sleep {unique_sleep}")
    await _until(lambda: bool(host_pids_with(unique_sleep)))
    await sbx.close()
    await _until(lambda: not host_pids_with(unique_sleep))
    with anyio.fail_after(30):
        try:
            await proc.wait()
        except ExecutionError:
            pass
    assert proc.returncode is not None


async def test_concurrent_runs(sbx: Session) -> None:
    await sbx.exec("true")  # the first run starts the supervisor (see the next test)
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await sbx.exec(f"echo {i}")).stdout

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    assert results == {i: f"{i}\n" for i in range(16)}


async def test_release_idle_keeps_the_session_usable(sbx: Session, unique: str) -> None:
    await sbx.exec(f"echo kept > {unique}.txt", check=True)
    assert await sbx.release_idle() >= 1  # that run's init and cgroups were kept
    assert await sbx.release_idle() == 0  # nothing finished since
    assert (await sbx.exec(f"cat {unique}.txt", check=True)).stdout == "kept\n"


async def test_concurrent_first_runs(sbx: Session) -> None:
    """Runs started at once on a fresh session, before its supervisor reported ready."""
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(sbx.exec, "true")


async def test_isolation_report(sbx: Session) -> None:
    proc = await sbx.run("true")
    await proc.wait()
    assert proc.isolation is not None
    assert proc.isolation.backend == "userns"
    assert "net" in proc.isolation.namespaces
    assert proc.isolation.network == "blocked"


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"script_type": "ruby"}, ValueError, "script_type must be 'shell' or 'python'"),
        ({"network_mode": "sometimes"}, ValueError, "network_mode must be"),
        (
            {"network_allowlist": ["pypi.org"]},
            ValueError,
            "only valid with network_mode='allowlist'",
        ),
        ({"timeout_s": -1}, ValueError, "timeout_s must be a positive number"),
        ({"timeout_s": "soon"}, TypeError, "timeout_s must be a number"),
        ({"env": {"A=B": "x"}}, ValueError, "not a valid environment variable name"),
        ({"env": {"A": 1}}, ValueError, "must be a string"),
        ({"stdout": "yes"}, ValueError, "stdout must be True, False"),
        ({"stdin": "text"}, ValueError, "stdin must be None, DEVNULL, PIPE or bytes"),
        ({"argv": []}, TypeError, "argv must be a non-empty list"),
    ],
)
async def test_bad_run_arguments_raise_before_running(
    sbx: Session, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await sbx.run("true", **kwargs)


async def test_cmd_must_be_text(sbx: Session) -> None:
    with pytest.raises(TypeError, match="cmd must be a str"):
        await sbx.run(b"true")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"network_mode": "allowlist"}, "requires network_allowlist"),
        ({"network_mode": "nope"}, "network_mode must be"),
        ({"network_denylist": ["x"]}, "only valid with network_mode='open' or 'allowlist'"),
    ],
)
async def test_bad_session_arguments_raise_at_construction(
    make_session: Callable[..., Session], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_session(**kwargs)


async def test_run_before_open(make_session: Callable[..., Session]) -> None:
    with pytest.raises(RuntimeError, match="session is not open"):
        await make_session().run("true")


# -- files ---------------------------------------------------------------------------------


async def test_put_get_round_trip(sbx: Session, unique: str) -> None:
    data = bytes(range(256)) * 100
    path = f"{sbx.work_dir}/{unique}.bin"
    assert await sbx.put_bytes(path, data, mode=0o600) == len(data)
    assert await sbx.get_bytes(path) == data
    assert (await sbx.exec(f"stat -c %a {unique}.bin")).stdout == "600\n"
    assert await sbx.put_bytes(path, b"new") == 3
    assert await sbx.get_bytes(path) == b"new"
    assert await sbx.put_bytes(path, b"") == 0
    assert await sbx.get_bytes(path) == b""


async def test_large_file_round_trip(sbx: Session, unique: str) -> None:
    data = os.urandom(1 << 20) * 9 + b"tail"
    path = f"{sbx.work_dir}/{unique}.big"
    assert await sbx.put_bytes(path, data) == len(data)
    assert await sbx.get_bytes(path) == data
    assert (await sbx.exec(f"wc -c < {unique}.big")).stdout.strip() == str(len(data))


async def test_put_from_an_async_iterable(sbx: Session, unique: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"chunk{i};".encode() * 1000

    path = f"{sbx.work_dir}/{unique}.stream"
    written = await sbx.put_bytes(path, chunks())
    expected = b"".join(f"chunk{i};".encode() * 1000 for i in range(5))
    assert written == len(expected)
    assert await sbx.get_bytes(path) == expected


async def test_put_refuses_overwrite_when_asked(sbx: Session, unique: str) -> None:
    path = f"{sbx.work_dir}/{unique}"
    await sbx.put_bytes(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        await sbx.put_bytes(path, b"second", overwrite=False)
    assert await sbx.get_bytes(path) == b"first"


async def test_path_rules(sbx: Session, unique: str) -> None:
    work = sbx.work_dir
    with pytest.raises(ValueError, match="path must be absolute"):
        await sbx.put_bytes("relative.txt", b"x")
    with pytest.raises(ValueError, match="path must be absolute"):
        await sbx.get_bytes("relative.txt")
    with pytest.raises(PermissionError, match="not under the session work dir"):
        await sbx.put_bytes("/etc/evil", b"x")
    with pytest.raises(PermissionError, match="not under the session work dir"):
        await sbx.get_bytes(f"{work}/../../etc/passwd")
    with pytest.raises(FileNotFoundError, match="parent directory does not exist"):
        await sbx.put_bytes(f"{work}/{unique}-missing/f", b"x")
    with pytest.raises(FileNotFoundError):
        await sbx.get_bytes(f"{work}/{unique}-missing")
    await sbx.exec(f"mkdir {unique}-dir && ln -s /etc/passwd {unique}-link", check=True)
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.put_bytes(f"{work}/{unique}-link", b"x")
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.get_bytes(f"{work}/{unique}-link")
    with pytest.raises(PermissionError, match="not a regular file"):
        await sbx.get_bytes(f"{work}/{unique}-dir")
    with pytest.raises(PermissionError, match="not a regular file"):
        await sbx.put_bytes(f"{work}/{unique}-dir", b"x")


async def test_get_max_bytes(sbx: Session, unique: str) -> None:
    path = f"{sbx.work_dir}/{unique}"
    await sbx.put_bytes(path, b"0123456789")
    assert await sbx.get_bytes(path, max_bytes=10) == b"0123456789"
    with pytest.raises(ValueError, match="is 10 bytes, exceeds max_bytes=4"):
        await sbx.get_bytes(path, max_bytes=4)
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        await sbx.get_bytes(path, max_bytes=-1)


async def test_bad_put_arguments(sbx: Session, unique: str) -> None:
    with pytest.raises(ValueError, match="mode must be a permission int"):
        await sbx.put_bytes(f"{sbx.work_dir}/{unique}", b"x", mode=0o10000)
    with pytest.raises(TypeError, match="data must be bytes-like"):
        await sbx.put_bytes(f"{sbx.work_dir}/{unique}", "text")  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll ``predicate`` (host process lists: there is no event to wait on)."""
    with anyio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)
