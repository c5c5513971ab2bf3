"""Output capture, exit codes, ``exec()`` / ``run_code()`` and the process metadata
(reference-api §2.6, §2.7, §2.8, §2.13, §2.19)."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import io
import os
import signal
from pathlib import Path

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


def _host_landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, 0, 1))  # landlock_create_ruleset(VERSION)
    return max(abi, 0)


# -- stdout / stderr / exit codes ------------------------------------------------------


async def test_stdout_and_stderr_are_captured_separately(any_sbx) -> None:
    proc = await any_sbx.run("echo out; echo err >&2; echo out2")
    out, err = await proc.communicate()
    assert out == b"out\nout2\n"
    assert err == b"err\n"
    assert proc.returncode == 0
    assert proc.termination_reason == ""
    assert proc.terminated_abnormally is False


async def test_returncode_is_none_until_the_process_exits(any_sbx) -> None:
    proc = await any_sbx.run("sleep 0.3")
    assert proc.returncode is None
    assert proc.termination_reason is None
    assert await proc.wait() == 0
    assert proc.returncode == 0


async def test_nonzero_exit_is_data_not_an_exception(any_sbx) -> None:
    proc = await any_sbx.run("echo partial; exit 5")
    out, err = await proc.communicate()
    assert (out, err) == (b"partial\n", b"")
    assert proc.returncode == 5
    assert proc.termination_reason not in ("", None)
    assert "5" in proc.termination_reason
    assert proc.terminated_abnormally is False


async def test_wait_returns_the_exit_code(any_sbx) -> None:
    proc = await any_sbx.run("exit 42")
    assert await proc.wait() == 42
    # Waiting again is harmless and returns the same code.
    assert await proc.wait() == 42


async def test_self_sigterm_gives_143_and_names_the_signal(any_sbx) -> None:
    proc = await any_sbx.run("kill -TERM $$")
    assert await proc.communicate() == (b"", b"")
    assert proc.returncode == 128 + signal.SIGTERM == 143
    assert "TERM" in proc.termination_reason
    assert proc.terminated_abnormally is False


async def test_self_sigkill_gives_137(any_sbx) -> None:
    proc = await any_sbx.run("kill -KILL $$")
    await proc.communicate()
    assert proc.returncode == 137
    assert "KILL" in proc.termination_reason
    assert proc.terminated_abnormally is False


async def test_runtime_ms_is_measured(any_sbx) -> None:
    proc = await any_sbx.run("sleep 0.2")
    await proc.wait()
    assert proc.runtime_ms is not None
    assert 180 <= proc.runtime_ms < 3000, proc.runtime_ms
    quick = await any_sbx.run("true")
    await quick.wait()
    assert quick.runtime_ms is not None
    assert 0 <= quick.runtime_ms < proc.runtime_ms


async def test_proc_backend_names_the_backend(any_sbx, any_backend: str) -> None:
    proc = await any_sbx.run("true")
    assert proc.backend == any_backend
    await proc.wait()
    assert proc.backend == any_backend


async def test_backend_alias_reports_the_canonical_name() -> None:
    async with sb.on_device.session(backend="bwrap") as sbx:
        proc = await sbx.run("true")
        await proc.wait()
    assert proc.backend == "bubblewrap"
    async with sb.on_device.session(backend="userns-lite") as sbx:
        proc = await sbx.run("true")
        await proc.wait()
    assert proc.backend == "userns"


# -- the isolation report --------------------------------------------------------------


async def test_isolation_report_describes_the_run(sbx, backend: str) -> None:
    proc = await sbx.run("true")
    await proc.wait()
    iso = proc.isolation
    assert iso is not None
    assert iso.backend == backend
    assert {"user", "pid", "mount", "ipc", "uts", "net"} <= set(iso.namespaces)
    assert iso.landlock_abi == _host_landlock_abi()
    assert iso.landlock_abi == 7  # this machine: kernel 6.18
    assert iso.seccomp is True
    assert iso.no_new_privs is True
    assert iso.capabilities_dropped is True
    assert iso.network == "blocked"
    if os.getuid() == 0:
        assert iso.uid == 65534


async def test_isolation_report_matches_what_the_kernel_says(sbx) -> None:
    """The report is not just words: the run's own /proc/self/status agrees with it."""
    result = await sbx.exec("cat /proc/self/status; echo uidmap; cat /proc/self/uid_map")
    assert result.ok, result
    status = dict(
        line.split(":", 1) for line in result.stdout.split("uidmap")[0].splitlines() if ":" in line
    )
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert int(status[cap].strip(), 16) == 0, (cap, status[cap])
    if os.getuid() == 0:
        uid_map = result.stdout.split("uidmap")[1].split()
        # uid 0 inside maps to the unprivileged host uid 65534, and nothing else is mapped.
        assert uid_map == ["0", "65534", "1"]


async def test_isolation_report_for_open_network(sbx) -> None:
    proc = await sbx.run("true", network_mode="open")
    await proc.wait()
    assert proc.isolation is not None
    assert proc.isolation.network == "open"
    assert "net" not in proc.isolation.namespaces


async def test_isolation_report_of_backend_none_claims_nothing() -> None:
    with pytest.warns(UserWarning, match="NO isolation"):
        sbx = await sb.on_device.session(backend="none")
    try:
        proc = await sbx.run("true")
        await proc.wait()
    finally:
        await sbx.close()
    iso = proc.isolation
    assert iso is not None
    assert iso.backend == "none"
    assert iso.namespaces == ()
    assert iso.seccomp is False
    assert iso.landlock_abi in (None, 0)


# -- exec() / ExecResult / run_code() --------------------------------------------------


async def test_exec_returns_an_exec_result(any_sbx) -> None:
    result = await any_sbx.exec("echo hi; echo e >&2; exit 3")
    assert isinstance(result, sb.ExecResult)
    assert result == sb.ExecResult(returncode=3, stdout="hi\n", stderr="e\n")
    assert result.ok is False
    assert (await any_sbx.exec("true")).ok is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.returncode = 0  # type: ignore[misc]


async def test_exec_check_raises_command_error_with_the_result(any_sbx) -> None:
    cmd = "echo some-out; echo boom >&2; exit 4"
    with pytest.raises(sb.SandboxCommandError) as info:
        await any_sbx.exec(cmd, check=True)
    err = info.value
    assert isinstance(err, sb.errors.CommandError)
    assert isinstance(err, RuntimeError)
    assert sb.SandboxCommandError is sb.errors.CommandError
    assert err.cmd == cmd
    assert err.result == sb.ExecResult(4, "some-out\n", "boom\n")
    assert str(err) == "sandbox command exited with code 4:\nboom"


async def test_exec_check_false_command_message(any_sbx) -> None:
    with pytest.raises(sb.SandboxCommandError) as info:
        await any_sbx.exec("false", check=True)
    assert str(info.value) == "sandbox command exited with code 1"
    assert info.value.result.returncode == 1


async def test_exec_check_uses_stdout_when_stderr_is_empty(any_sbx) -> None:
    with pytest.raises(sb.SandboxCommandError) as info:
        await any_sbx.exec("echo '  only stdout  '; exit 2", check=True)
    assert str(info.value) == "sandbox command exited with code 2:\nonly stdout"


async def test_exec_check_success_returns_result(any_sbx) -> None:
    result = await any_sbx.exec("echo fine", check=True)
    assert result == sb.ExecResult(0, "fine\n", "")


async def test_run_code_returns_stdout(any_sbx) -> None:
    assert await any_sbx.run_code("print(2 + 2)") == "4\n"


async def test_run_code_multiline(any_sbx) -> None:
    code = "def f(x):\n    return x * 3\n\nfor i in range(3):\n    print(f(i))\n"
    assert await any_sbx.run_code(code) == "0\n3\n6\n"


async def test_run_code_nonzero_exit_raises_command_error(any_sbx) -> None:
    code = "import sys\nprint('before')\nsys.exit('bad thing')"
    with pytest.raises(sb.errors.CommandError) as info:
        await any_sbx.run_code(code)
    assert isinstance(info.value, sb.SandboxCommandError)
    assert info.value.result.returncode == 1
    assert info.value.result.stdout == "before\n"
    assert info.value.result.stderr == "bad thing\n"
    assert info.value.cmd == code


async def test_run_code_traceback_in_message(any_sbx) -> None:
    with pytest.raises(sb.SandboxCommandError, match="ZeroDivisionError"):
        await any_sbx.run_code("1 / 0")


async def test_script_type_python_runs_with_the_session_interpreter(sbx) -> None:
    proc = await sbx.run(
        "import sys, os\nprint(sys.prefix)\nprint(os.environ['VIRTUAL_ENV'])",
        script_type="python",
    )
    out, err = await proc.communicate_text()
    assert proc.returncode == 0, err
    prefix, venv = out.splitlines()
    assert prefix == venv == os.path.join(sbx.work_dir, ".session-venv")


async def test_long_shell_script_beyond_argv_limits(any_sbx) -> None:
    """A script larger than the argv limit (128 KiB per string) still runs, whole."""
    body = "".join(f"echo line-{i}\n" for i in range(20000))  # ~250 KB
    proc = await any_sbx.run(body)
    out, err = await proc.communicate_text()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 20000
    assert lines[0] == "line-0"
    assert lines[-1] == "line-19999"


async def test_long_python_script_beyond_argv_limits(any_sbx) -> None:
    code = "total = 0\n" + "".join(f"total += {i}\n" for i in range(15000)) + "print(total)\n"
    assert len(code.encode()) > 128 * 1024
    assert await any_sbx.run_code(code) == f"{sum(range(15000))}\n"


# -- stream choices: capture, discard, inherit -----------------------------------------


@pytest.mark.parametrize("choice", [False, None, sb.DEVNULL], ids=["False", "None", "DEVNULL"])
async def test_discarded_streams(any_sbx, choice) -> None:
    proc = await any_sbx.run("echo out; echo err >&2; exit 3", stdout=choice, stderr=choice)
    assert proc.stdout is None
    assert proc.stderr is None
    assert await proc.communicate() == (b"", b"")
    assert proc.returncode == 3
    assert [line async for line in proc.iter_stdout_lines()] == []
    assert [line async for line in proc.iter_stderr_lines()] == []


async def test_pipe_constant_captures(any_sbx) -> None:
    assert (sb.PIPE, sb.INHERIT, sb.DEVNULL) == (-1, -2, -3)
    proc = await any_sbx.run("echo out; echo err >&2", stdout=sb.PIPE, stderr=sb.PIPE)
    assert await proc.communicate() == (b"out\n", b"err\n")


async def test_one_stream_captured_other_discarded(any_sbx) -> None:
    proc = await any_sbx.run("echo out; echo err >&2", stdout=True, stderr=False)
    assert proc.stderr is None
    assert await proc.communicate() == (b"out\n", b"")


async def test_inherit_forwards_to_the_callers_stdio(any_sbx, capsys) -> None:
    proc = await any_sbx.run("echo to-out; echo to-err >&2", stdout=sb.INHERIT, stderr=sb.INHERIT)
    assert proc.stdout is None and proc.stderr is None
    assert await proc.wait() == 0
    captured = capsys.readouterr()
    assert captured.out == "to-out\n"
    assert captured.err == "to-err\n"


async def test_sys_stdout_object_forwards(any_sbx, capsys) -> None:
    import sys

    proc = await any_sbx.run("echo via-sys", stdout=sys.stdout, stderr=sys.stderr)
    assert await proc.wait() == 0
    assert capsys.readouterr().out == "via-sys\n"


async def test_forward_to_a_file_object(any_sbx, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with target.open("w") as f:
        proc = await any_sbx.run("echo into-file; echo two", stdout=f)
        assert await proc.wait() == 0
    assert target.read_text() == "into-file\ntwo\n"
    text = io.StringIO()
    proc = await any_sbx.run("echo into-stringio", stdout=False, stderr=text)
    await proc.wait()
    proc = await any_sbx.run("echo err-into-stringio >&2", stdout=False, stderr=text)
    await proc.wait()
    assert text.getvalue() == "err-into-stringio\n"


async def test_invalid_stream_choice_is_rejected(any_sbx) -> None:
    with pytest.raises(ValueError, match="stdout"):
        await any_sbx.run("true", stdout="yes please")


# -- volume ----------------------------------------------------------------------------

_PATTERN = b"0123456789abcdef\n"


def _expected(size: int, pattern: bytes = _PATTERN) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


async def test_big_output_arrives_intact(any_sbx) -> None:
    size = 50_000_000
    err_size = 20_000_000
    # Both streams at once: neither may block the other.
    proc = await any_sbx.run(
        f"(yes EEEEEEE | head -c {err_size} >&2) & yes 0123456789abcdef | head -c {size}; wait"
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0
    assert len(out) == size
    assert hashlib.sha256(out).digest() == hashlib.sha256(_expected(size)).digest()
    assert len(err) == err_size
    assert err == _expected(err_size, b"EEEEEEE\n")
    assert not proc.stdout_truncated
    assert not proc.stderr_truncated


async def test_binary_output_is_not_mangled(any_sbx) -> None:
    proc = await any_sbx.run(
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4)", script_type="python"
    )
    out, _ = await proc.communicate()
    assert out == bytes(range(256)) * 4


async def test_output_cap_truncates_and_flags(backend: str) -> None:
    cap = 1_000_000
    async with sb.on_device.session(backend=backend, max_output_bytes=cap) as sbx:
        proc = await sbx.run("yes 0123456789abcdef | head -c 5000000; echo small >&2")
        out, err = await proc.communicate()
        assert proc.returncode == 0  # the producer was not blocked forever
        assert proc.stdout_truncated is True
        assert len(out) == cap
        assert out == _expected(cap)
        assert proc.stderr_truncated is False
        assert err == b"small\n"

        proc = await sbx.run("yes 0123456789abcdef | head -c 3000000 >&2")
        out, err = await proc.communicate()
        assert proc.stderr_truncated is True
        assert proc.stdout_truncated is False
        assert len(err) == cap
        assert out == b""


async def test_output_under_the_cap_is_not_flagged(backend: str) -> None:
    async with sb.on_device.session(backend=backend, max_output_bytes=1_000_000) as sbx:
        proc = await sbx.run("head -c 1000000 /dev/zero")
        out, _ = await proc.communicate()
    assert len(out) == 1_000_000
    assert proc.stdout_truncated is False


# -- edge cases ------------------------------------------------------------------------


async def test_exit_code_255(any_sbx) -> None:
    proc = await any_sbx.run("exit 255")
    assert await proc.wait() == 255


async def test_closing_stdout_early_does_not_end_the_wait(any_sbx) -> None:
    proc = await any_sbx.run("echo before; exec >&- 2>&-; sleep 0.3; exit 3")
    out, err = await proc.communicate()
    assert (out, err) == (b"before\n", b"")
    assert proc.returncode == 3
    assert proc.runtime_ms is not None and proc.runtime_ms >= 250


async def test_unicode_commands_and_env(any_sbx) -> None:
    result = await any_sbx.exec('echo "héllo ✓ $GREETING"', env={"GREETING": "grüß dich"})
    assert result.stdout == "héllo ✓ grüß dich\n"
    assert await any_sbx.run_code("print('ünïcode ✓')") == "ünïcode ✓\n"


async def test_invalid_utf8_output_is_replaced_not_raised(any_sbx) -> None:
    result = await any_sbx.exec("printf 'ok\\377\\376end\\n'")
    assert result.stdout == "ok\ufffd\ufffdend\n"
    proc = await any_sbx.run("printf 'ok\\377end\\n'")
    out, _ = await proc.communicate()
    assert out == b"ok\xffend\n"


async def test_cwd_that_is_a_file_is_a_sandbox_failure(any_sbx) -> None:
    await any_sbx.exec("echo x > plainfile", check=True)
    proc = await any_sbx.run("pwd", cwd="plainfile")
    with pytest.raises(sb.SandboxExecutionError, match="plainfile"):
        await proc.communicate()


async def test_run_code_and_exec_take_cwd_and_env(any_sbx) -> None:
    await any_sbx.exec("mkdir -p sub", check=True)
    out = await any_sbx.run_code(
        "import os; print(os.getcwd()); print(os.environ['X'])", cwd="sub", env={"X": "y"}
    )
    assert out == f"{any_sbx.work_dir}/sub\ny\n"


async def test_many_small_writes_arrive_complete(any_sbx) -> None:
    proc = await any_sbx.run(
        "import sys\nfor i in range(20000):\n    sys.stdout.write(f'{i},'); sys.stdout.flush()",
        script_type="python",
    )
    out, _ = await proc.communicate()
    assert out == "".join(f"{i}," for i in range(20000)).encode()
