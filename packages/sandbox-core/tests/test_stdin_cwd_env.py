"""stdin, working directory and environment of a run (reference-api §2.4, §2.6)."""

from __future__ import annotations

import os
import secrets
import time

import anyio
import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


# -- stdin -----------------------------------------------------------------------------


async def test_default_stdin_is_dev_null(any_sbx) -> None:
    with anyio.fail_after(10):
        start = time.monotonic()
        proc = await any_sbx.run("cat; echo cat-done")
        assert proc.stdin is None
        out, err = await proc.communicate()
    assert (out, err) == (b"cat-done\n", b"")
    assert time.monotonic() - start < 5  # cat did not wait for input


async def test_default_stdin_is_the_null_device(sbx) -> None:
    result = await sbx.exec("readlink /proc/self/fd/0; test -c /dev/stdin && echo chardev")
    assert result.stdout == "/dev/null\nchardev\n", result


async def test_stdin_bytes_are_fed(any_sbx) -> None:
    proc = await any_sbx.run("cat", stdin=b"hello\x00world\n")
    assert await proc.communicate() == (b"hello\x00world\n", b"")


async def test_stdin_bytes_larger_than_a_pipe(any_sbx) -> None:
    data = os.urandom(3_000_000)
    proc = await any_sbx.run("cat", stdin=data)
    out, _ = await proc.communicate()
    assert out == data


async def test_stdin_bytes_ignored_by_the_command(any_sbx) -> None:
    # A command that exits without reading its input must not make the caller fail.
    proc = await any_sbx.run("echo not-reading", stdin=b"x" * 1_000_000)
    out, _ = await proc.communicate()
    assert out == b"not-reading\n"
    assert proc.returncode == 0


async def test_stdin_pipe_write_and_close(any_sbx) -> None:
    with anyio.fail_after(10):
        proc = await any_sbx.run("cat; echo eof-seen", stdin=sb.PIPE)
        assert proc.stdin is not None
        await proc.stdin.write(b"abc")
        await proc.stdin.write(b"def\n")
        await proc.stdin.aclose()
        assert proc.stdin.closed
        out, _ = await proc.communicate()
    assert out == b"abcdef\neof-seen\n"


async def test_stdin_pipe_is_interactive(any_sbx) -> None:
    """Write a line, read the answer, write another: a live conversation."""
    with anyio.fail_after(10):
        proc = await any_sbx.run('while read -r l; do echo "got:$l"; done', stdin=sb.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.write(b"one\n")
        assert await proc.stdout.readline() == b"got:one\n"
        await proc.stdin.write(b"two\n")
        assert await proc.stdout.readline() == b"got:two\n"
        await proc.stdin.aclose()
        assert await proc.wait() == 0


async def test_stdin_write_after_close_is_an_error(any_sbx) -> None:
    proc = await any_sbx.run("cat", stdin=sb.PIPE)
    assert proc.stdin is not None
    await proc.stdin.aclose()
    await proc.stdin.aclose()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        await proc.stdin.write(b"late")
    await proc.wait()


async def test_invalid_stdin_is_rejected(any_sbx) -> None:
    with pytest.raises(ValueError, match="stdin"):
        await any_sbx.run("cat", stdin="text is not bytes")


# -- cwd -------------------------------------------------------------------------------


async def test_default_cwd_is_the_work_dir(any_sbx) -> None:
    result = await any_sbx.exec("pwd; echo $PWD")
    assert result.stdout == f"{any_sbx.work_dir}\n{any_sbx.work_dir}\n"


async def test_absolute_cwd_under_the_work_dir(any_sbx) -> None:
    sub = os.path.join(any_sbx.work_dir, "sub", "deeper")
    await any_sbx.exec(f"mkdir -p {sub}", check=True)
    result = await any_sbx.exec("pwd; echo $PWD", cwd=sub)
    assert result.stdout == f"{sub}\n{sub}\n"


async def test_relative_cwd_resolves_under_the_work_dir(any_sbx) -> None:
    await any_sbx.exec("mkdir -p rel/dir && echo marker > rel/dir/m.txt", check=True)
    result = await any_sbx.exec("pwd; cat m.txt", cwd="rel/dir")
    assert result.stdout == f"{any_sbx.work_dir}/rel/dir\nmarker\n"


async def test_missing_cwd_is_a_sandbox_failure_naming_it(any_sbx, any_backend: str) -> None:
    missing = os.path.join(any_sbx.work_dir, "does-not-exist")
    proc = await any_sbx.run("pwd", cwd=missing)
    with pytest.raises(sb.SandboxExecutionError) as info:
        await proc.communicate()
    err = info.value
    assert isinstance(err, sb.errors.ExecutionError)
    assert isinstance(err, RuntimeError)
    assert missing in str(err)
    assert missing in err.reason
    assert err.returncode == -1
    assert err.backend == any_backend
    assert str(err).startswith("sandbox process terminated abnormally: ")
    assert proc.terminated_abnormally is True
    # wait() raises too, and the session is still usable.
    with pytest.raises(sb.SandboxExecutionError):
        await proc.wait()
    assert (await any_sbx.exec("echo still-fine")).stdout == "still-fine\n"


async def test_missing_relative_cwd_names_the_resolved_path(any_sbx) -> None:
    proc = await any_sbx.run("pwd", cwd="nope/nested")
    with pytest.raises(sb.SandboxExecutionError, match="nope/nested"):
        await proc.communicate()


async def test_default_cwd_relative(backend: str) -> None:
    async with sb.on_device.session(backend=backend, default_cwd="proj") as sbx:
        os.makedirs(os.path.join(sbx.work_dir, "proj"))
        os.chown(os.path.join(sbx.work_dir, "proj"), *(sbx.sandbox_owner or (-1, -1)))
        assert (await sbx.exec("pwd")).stdout == f"{sbx.work_dir}/proj\n"
        # An explicit cwd wins over the session default.
        assert (await sbx.exec("pwd", cwd=sbx.work_dir)).stdout == f"{sbx.work_dir}\n"


async def test_default_cwd_absolute(backend: str, public_tmp: str) -> None:
    work = os.path.join(public_tmp, "work")
    async with sb.on_device.session(
        backend=backend, host_work_dir=work, default_cwd=f"{work}/app"
    ) as sbx:
        await sbx.exec(f"mkdir {work}/app", cwd=work, check=True)
        assert (await sbx.exec("pwd")).stdout == f"{work}/app\n"


# -- environment -----------------------------------------------------------------------


async def test_caller_env_is_passed(any_sbx) -> None:
    result = await any_sbx.exec(
        'echo "$FOO|$WITH_SPACES"', env={"FOO": "bar", "WITH_SPACES": "a b  c"}
    )
    assert result.stdout == "bar|a b  c\n"


async def test_host_environment_is_not_inherited(sbx, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"UNION_SBX_SECRET_{secrets.token_hex(4).upper()}"
    value = f"leak-{secrets.token_hex(8)}"
    monkeypatch.setenv(name, value)
    result = await sbx.exec("env")
    assert result.ok
    assert value not in result.stdout
    assert name not in result.stdout
    # Nor through the python runtime.
    out = await sbx.run_code(f"import os; print(os.environ.get({name!r}, 'absent'))")
    assert out == "absent\n"


async def test_host_environment_set_before_open_is_not_inherited(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = f"leak-{secrets.token_hex(8)}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", value)
    async with sb.on_device.session(backend=backend) as sbx:
        result = await sbx.exec("env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert value not in result.stdout
    assert "AWS_SECRET_ACCESS_KEY" not in result.stdout


async def test_home_and_virtual_env(any_sbx) -> None:
    result = await any_sbx.exec('echo "$HOME"; echo "$VIRTUAL_ENV"; echo "$PATH"')
    home, venv, path = result.stdout.splitlines()
    assert home == any_sbx.work_dir
    assert venv == os.path.join(any_sbx.work_dir, ".session-venv")
    entries = path.split(":")
    assert entries[0] == os.path.join(venv, "bin")
    for std in ("/usr/local/bin", "/usr/bin", "/bin"):
        assert std in entries
    assert os.path.join(any_sbx.work_dir, ".local", "bin") in entries


async def test_caller_path_wins(any_sbx) -> None:
    result = await any_sbx.exec('echo "$PATH"', env={"PATH": "/usr/bin:/bin"})
    assert result.stdout == "/usr/bin:/bin\n"


async def test_caller_virtual_env_and_home_win(any_sbx) -> None:
    result = await any_sbx.exec(
        'echo "$VIRTUAL_ENV|$HOME"', env={"VIRTUAL_ENV": "/elsewhere", "HOME": "/h"}
    )
    assert result.stdout == "/elsewhere|/h\n"


async def test_env_is_per_run(any_sbx) -> None:
    await any_sbx.exec("true", env={"ONLY_ONCE": "1"})
    result = await any_sbx.exec('echo "[$ONLY_ONCE]"')
    assert result.stdout == "[]\n"


@pytest.mark.parametrize(
    "env",
    [{"A=B": "x"}, {"": "x"}, {"K": "nul\0byte"}, {"K": 1}],
    ids=["equals-in-key", "empty-key", "nul-in-value", "non-str-value"],
)
async def test_invalid_env_is_rejected_before_running(any_sbx, env) -> None:
    with pytest.raises(ValueError, match="env"):
        await any_sbx.run("true", env=env)
