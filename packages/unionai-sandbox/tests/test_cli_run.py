"""``unionai-sandbox run``: exit codes, streaming, options, files in and out, limits, the
``--json`` summary and argument errors."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import cli_env, console_script

ISOLATING = ("bubblewrap", "userns")
SENTINEL = "COMMAND-RAN-7f3a"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backends")


# ------------------------------------------------------------------ exit codes and output


@pytest.mark.parametrize("backend", ISOLATING)
@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_code_propagates(cli: Any, backend: str, code: int) -> None:
    out = cli("run", "--backend", backend, "--", "sh", "-c", f"exit {code}")
    assert out.returncode == code, out.stderr
    assert out.stdout == ""


def test_exit_code_of_a_signalled_command(cli: Any) -> None:
    out = cli("run", "--", "sh", "-c", "kill -TERM $$")
    assert out.returncode == 128 + 15, out.stderr


def test_stdout_and_stderr_go_to_their_own_streams(cli: Any) -> None:
    out = cli("run", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert out.returncode == 3
    assert out.stdout == "to-out\n"
    assert "to-err\n" in out.stderr
    assert "to-out" not in out.stderr


def test_large_output_is_complete(cli: Any) -> None:
    out = cli("run", "--", "python3", "-c", "import sys; sys.stdout.write('x' * 1_000_000)")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "x" * 1_000_000


def test_arguments_reach_the_command_verbatim(cli: Any) -> None:
    """Each argument after ``--`` is one argv entry: no re-splitting, no expansion."""
    args = ["a b", "c'd", "$HOME", "*", 'e"f', ""]
    out = cli(
        "run", "--", "python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == json.dumps(args)


def test_command_without_double_dash(cli: Any) -> None:
    out = cli("run", "echo", "no-dashes")
    assert (out.returncode, out.stdout) == (0, "no-dashes\n")


def test_module_and_console_script_agree(cli: Any) -> None:
    script = cli("run", "--", "sh", "-c", "echo same; exit 5")
    module = cli(
        "run",
        "--",
        "sh",
        "-c",
        "echo same; exit 5",
        prefix=[sys.executable, "-m", "union.sandbox._cli"],
    )
    assert (script.returncode, script.stdout) == (module.returncode, module.stdout) == (5, "same\n")


# ------------------------------------------------------------------ piped stdin


def test_piped_stdin_reaches_the_command(cli: Any) -> None:
    out = cli("run", "--backend", "userns", "--", "sh", "-c", "cat; echo end", input="piped\n")
    assert (out.returncode, out.stdout) == (0, "piped\nend\n"), out.stderr


def test_a_filter_gets_more_input_than_the_pipes_hold(cli: Any) -> None:
    # The command writes while it reads: its output is forwarded while its input is still
    # being copied (both pipes full, waiting on each other, deadlocked the CLI until the
    # run's timeout killed it).
    size = 4 << 20
    out = cli("run", "--backend", "userns", "--timeout", "60", "--", "cat", input="x" * size)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout) == size


def test_a_command_that_ends_before_its_input_does_not_wait_for_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*console_script(), "run", "--backend", "userns", "--", "echo", "done"],
        stdin=subprocess.PIPE,  # kept open: the input never ends
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        returncode = proc.wait(timeout=30)
        assert (returncode, proc.stdout.read()) == (0, b"done\n")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()


def test_output_streams_while_the_command_runs(tmp_path: Path) -> None:
    """The first line reaches the caller while the command is still running: the command
    waits for a file that the test creates only after reading that line (no sleeps or
    timing assumptions; the 60 s deadline inside only bounds a broken run)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    gate.chmod(0o777)  # as root the sandbox runs as uid 65534
    release = gate / "release"
    script = (
        "import os, sys, time\n"
        "print('first', flush=True)\n"
        "print('err-first', file=sys.stderr, flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    if time.monotonic() > deadline: sys.exit(3)\n"
        "    time.sleep(0.02)\n"
        "print('second', flush=True)\n"
    )
    exe = Path(sys.executable).with_name("unionai-sandbox")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "union.sandbox._cli"]
    env = {k: v for k, v in os.environ.items() if k != "UNION_SANDBOX_BWRAP"}
    with subprocess.Popen(
        [*argv, "run", "--ro", str(gate), "--", "python3", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            assert proc.stdout.readline() == "first\n"
            assert proc.poll() is None  # still running: that line was streamed
            err_lines: list[str] = []
            while not err_lines or err_lines[-1] != "err-first\n":
                line = proc.stderr.readline()
                assert line, "stderr closed before the command's first line"
                err_lines.append(line)
            assert proc.poll() is None
            release.touch()
            assert proc.stdout.read() == "second\n"
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_output_reaches_a_terminal(tmp_path: Path) -> None:
    """stdout and stderr attached to a pty (an interactive terminal) receive the output."""
    exe = Path(sys.executable).with_name("unionai-sandbox")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "union.sandbox._cli"]
    env = {k: v for k, v in os.environ.items() if k != "UNION_SANDBOX_BWRAP"}
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*argv, "run", "--", "sh", "-c", "echo tty-out; echo tty-err >&2; exit 4"],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=tmp_path,
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.wait(timeout=120) == 4
    text = b"".join(chunks).decode()
    assert "tty-out" in text
    assert "tty-err" in text


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("backend", ISOLATING)
def test_backend_is_the_one_asked_for(cli: Any, json_summary: Any, backend: str) -> None:
    out = cli("run", "--backend", backend, "--json", "--", "true")
    assert out.returncode == 0, out.stderr
    summary = json_summary(out.stderr)
    assert summary["backend"] == backend
    assert summary["isolation"]["backend"] == backend


def test_backend_alias(cli: Any, json_summary: Any) -> None:
    out = cli("run", "--backend", "bwrap", "--json", "--", "true")
    assert out.returncode == 0, out.stderr
    assert json_summary(out.stderr)["backend"] == "bubblewrap"


def test_backend_none_warns(cli: Any) -> None:
    out = cli("run", "--backend", "none", "--", "echo", "unisolated")
    assert (out.returncode, out.stdout) == (0, "unisolated\n")
    assert "NO isolation" in out.stderr


@pytest.mark.parametrize("backend", ISOLATING)
def test_env(cli: Any, backend: str) -> None:
    out = cli(
        "run",
        "--backend",
        backend,
        "--env",
        "K=V",
        "--env",
        "EMPTY=",
        "--env",
        "EQ=a=b",
        "--",
        "sh",
        "-c",
        'printf "%s|%s|%s|%s" "$K" "${EMPTY-unset}" "$EQ" "${HOST_ONLY-unset}"',
        env={"HOST_ONLY": "leaked"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "V||a=b|unset"


@pytest.mark.parametrize("backend", ISOLATING)
def test_cwd_absolute(cli: Any, backend: str) -> None:
    out = cli("run", "--backend", backend, "--cwd", "/tmp", "--", "pwd")
    assert (out.returncode, out.stdout) == (0, "/tmp\n"), out.stderr


def test_cwd_in_kept_work_dir(cli: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = cli("run", "--work-dir", str(work), "--", "mkdir", "-p", "sub/deeper")
    assert first.returncode == 0, first.stderr
    out = cli("run", "--work-dir", str(work), "--cwd", "sub/deeper", "--", "pwd")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(work / "sub" / "deeper")


def test_cwd_that_does_not_exist(cli: Any) -> None:
    out = cli("run", "--cwd", "no/such/dir", "--", "echo", SENTINEL)
    assert out.returncode == 125
    assert SENTINEL not in out.stdout
    assert "no/such/dir" in out.stderr
    assert "No such file or directory" in out.stderr


def test_work_dir_is_kept(cli: Any, tmp_path: Path) -> None:
    work = tmp_path / "kept"
    out = cli("run", "--work-dir", str(work), "--", "sh", "-c", "echo kept > out.txt; pwd")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(work)
    assert (work / "out.txt").read_text() == "kept\n"


def test_ro_and_rw_paths(cli: Any, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    rw = tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "in.txt").write_text("readable\n")
    rw.chmod(0o777)  # as root the sandbox runs as uid 65534
    script = f"cat {ro}/in.txt; echo x > {ro}/no.txt || echo ro-refused; echo w > {rw}/yes.txt"
    for backend in ISOLATING:
        out = cli(
            "run", "--backend", backend, "--ro", str(ro), "--rw", str(rw), "--", "sh", "-c", script
        )
        assert out.returncode == 0, (backend, out.stderr)
        assert out.stdout == "readable\nro-refused\n", backend
        assert not (ro / "no.txt").exists()
        assert (rw / "yes.txt").read_text() == "w\n"
        (rw / "yes.txt").unlink()


def test_paths_not_granted_are_out_of_reach(cli: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    secret.chmod(0o644)
    out = cli("run", "--", "cat", str(secret))
    assert out.returncode != 0
    assert "host secret" not in out.stdout


@pytest.mark.parametrize("backend", ISOLATING)
def test_timeout(cli: Any, json_summary: Any, backend: str) -> None:
    out = cli("run", "--backend", backend, "--timeout", "0.5", "--json", "--", "sleep", "5")
    assert out.returncode == 137, out.stderr
    summary = json_summary(out.stderr)
    assert summary["termination"] == "timeout"
    assert summary["returncode"] == 137
    assert "timeout" in summary["reason"]


@pytest.mark.parametrize("backend", ISOLATING)
def test_memory_limit(
    cli: Any, json_summary: Any, host_doctor: dict[str, Any], backend: str
) -> None:
    if "memory" not in (host_doctor["host"]["cgroups"]["controllers"] or []):
        pytest.skip("no memory cgroup controller on this host")
    out = cli(
        "run",
        "--backend",
        backend,
        "--memory",
        "64Mi",
        "--json",
        "--",
        "python3",
        "-c",
        "x = bytearray(1 << 30); print('allocated')",
    )
    assert out.returncode == 137, out.stderr
    assert "allocated" not in out.stdout
    summary = json_summary(out.stderr)
    assert summary["termination"] == "oom"
    assert "memory" in summary["isolation"]["limits"]


def test_pids_limit(cli: Any, json_summary: Any) -> None:
    out = cli("run", "--pids", "64", "--json", "--", "true")
    assert out.returncode == 0, out.stderr
    assert "pids" in json_summary(out.stderr)["isolation"]["limits"]


def test_cpu_limit_accepted(cli: Any) -> None:
    out = cli("run", "--cpu", "500m", "--", "echo", "ok")
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr


# ------------------------------------------------------------------ files in and out


def test_put_get_round_trip(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"hello\x00world\n")
    out = cli(
        "run",
        "--put",
        "in.txt:in.txt",
        "--put",
        f"{tmp_path / 'in.txt'}:copy.txt",
        "--get",
        "out.txt:got.txt",
        "--get",
        f"copy.txt:{tmp_path / 'copy-back.txt'}",
        "--",
        "sh",
        "-c",
        "tr a-z A-Z < in.txt > out.txt; cat in.txt | wc -c",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "12"
    assert (tmp_path / "got.txt").read_bytes() == b"HELLO\x00WORLD\n"
    assert (tmp_path / "copy-back.txt").read_bytes() == b"hello\x00world\n"


def test_get_runs_after_a_failing_command(cli: Any, tmp_path: Path) -> None:
    out = cli(
        "run",
        "--get",
        "partial.txt:partial.txt",
        "--",
        "sh",
        "-c",
        "echo part > partial.txt; exit 9",
    )
    assert out.returncode == 9, out.stderr
    assert (tmp_path / "partial.txt").read_text() == "part\n"


def test_put_into_a_subdirectory_needs_the_parent(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    out = cli("run", "--put", "in.txt:data/in.txt", "--", "echo", SENTINEL)
    assert out.returncode == 2
    assert SENTINEL not in out.stdout
    assert "parent directory does not exist" in out.stderr


def test_put_of_a_missing_local_file(cli: Any) -> None:
    out = cli("run", "--put", "missing.txt:x.txt", "--", "echo", SENTINEL)
    assert out.returncode == 2
    assert SENTINEL not in out.stdout
    assert "missing.txt" in out.stderr


def test_get_of_a_file_the_command_did_not_write(cli: Any, tmp_path: Path) -> None:
    out = cli("run", "--get", "nope.txt:nope.txt", "--", "echo", SENTINEL)
    assert out.returncode != 0
    assert out.stdout == f"{SENTINEL}\n"
    assert "nope.txt" in out.stderr
    assert not (tmp_path / "nope.txt").exists()


def test_put_outside_the_work_dir_is_refused(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    out = cli("run", "--put", "in.txt:../escape.txt", "--", "echo", SENTINEL)
    assert out.returncode != 0
    assert SENTINEL not in out.stdout
    assert out.stderr.startswith("unionai-sandbox: ")


# ------------------------------------------------------------------ --json


@pytest.mark.parametrize("backend", ISOLATING)
def test_json_summary(cli: Any, json_summary: Any, backend: str) -> None:
    out = cli("run", "--backend", backend, "--json", "--", "sh", "-c", "echo body; exit 6")
    assert out.returncode == 6
    assert out.stdout == "body\n"  # the summary stays off stdout
    summary = json_summary(out.stderr)
    assert summary["returncode"] == 6
    assert summary["termination"] == "exit"
    assert summary["backend"] == backend
    assert isinstance(summary["runtime_ms"], int)
    isolation = summary["isolation"]
    assert isolation["backend"] == backend
    assert isolation["network"] == "blocked"
    assert isolation["seccomp"] is True
    assert isolation["no_new_privs"] is True
    assert isolation["landlock_abi"] > 0
    assert "net" in isolation["namespaces"]


def test_json_summary_of_backend_none(cli: Any, json_summary: Any) -> None:
    out = cli("run", "--backend", "none", "--json", "--", "true")
    assert out.returncode == 0
    summary = json_summary(out.stderr)
    assert summary["backend"] == "none"
    assert summary["termination"] == "exit"
    assert "isolation" in summary


# ------------------------------------------------------------------ argument errors


def _clear_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A non-zero exit (2, or 1 from ``SystemExit("message")``), a message naming the
    problem on stderr, no traceback, and the command not run."""
    assert out.returncode in (1, 2), (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert SENTINEL not in out.stdout
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_env_without_value(cli: Any) -> None:
    _clear_error(cli("run", "--env", "novalue", "--", "echo", SENTINEL), "--env", "novalue")


def test_env_without_key(cli: Any) -> None:
    _clear_error(cli("run", "--env", "=v", "--", "echo", SENTINEL), "--env", "KEY=VALUE")


@pytest.mark.parametrize("argv", [["run"], ["run", "--"], ["run", "--json", "--"]])
def test_missing_command(cli: Any, argv: list[str]) -> None:
    _clear_error(cli(*argv), "nothing to run")


def test_put_without_destination(cli: Any) -> None:
    _clear_error(cli("run", "--put", "in.txt", "--", "echo", SENTINEL), "--put", "SOURCE:DEST")


def test_unknown_backend(cli: Any) -> None:
    out = cli("run", "--backend", "bogus", "--", "echo", SENTINEL)
    assert out.returncode == 2
    assert SENTINEL not in out.stdout
    assert 'unknown sandbox backend "bogus"' in out.stderr
    for name in ("bubblewrap", "userns", "none"):
        assert name in out.stderr
    assert "Traceback" not in out.stderr


def test_macos_backend_on_linux(cli: Any) -> None:
    out = cli("run", "--backend", "sandbox-exec", "--", "echo", SENTINEL)
    assert out.returncode == 125
    assert SENTINEL not in out.stdout
    assert "macOS backend" in out.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--network", "bogus"], "invalid choice"),
        (["--timeout", "abc"], "invalid float value"),
        (["--timeout", "-1"], "timeout"),
        (["--memory", "lots"], "memory"),
        (["--pids", "many"], "invalid int value"),
        (["--network", "allowlist"], "allowlist"),
        (["--network", "open", "--allow", "127.0.0.1"], "allowlist"),
        (["--deny", "1.2.3.4"], "denylist"),
        (["--allow", "not a rule!"], "not a rule!"),
    ],
)
def test_bad_option_values(cli: Any, argv: list[str], needle: str) -> None:
    out = cli("run", *argv, "--", "echo", SENTINEL)
    assert out.returncode == 2, (argv, out.stderr)
    assert SENTINEL not in out.stdout
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_no_subcommand(cli: Any) -> None:
    out = cli()
    assert out.returncode == 2
    assert "COMMAND" in out.stderr


def test_unknown_subcommand(cli: Any) -> None:
    out = cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
