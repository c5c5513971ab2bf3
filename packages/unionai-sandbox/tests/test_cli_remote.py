"""``unionai-sandbox run|shell --endpoint URL`` against a running ``sandbox-server``, and
``--flyte`` in Flyte's local mode (no Flyte config): the same commands, another sandbox."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import cli_env, console_script

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backends")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    testing = pytest.importorskip("union.sandbox.server.testing")
    with testing.spawn_server(backend="userns", token=True) as running:
        yield running


def test_run_against_an_endpoint(cli: Any, server: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    out = cli(
        "run",
        "--endpoint",
        server.endpoint,
        "--put",
        "in.txt:in.txt",
        "--get",
        "in.txt:back.txt",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        'echo "$GREETING"; cat in.txt; exit 3',
        env={"UNION_SANDBOX_TOKEN": server.token},
    )
    assert out.returncode == 3, out.stderr
    assert out.stdout == "hi\nfrom the host\n"
    assert (tmp_path / "back.txt").read_text() == "from the host\n"
    assert server.token not in out.stdout + out.stderr


def test_shell_against_an_endpoint(cli: Any, server: Any) -> None:
    out = cli(
        "shell",
        "--endpoint",
        server.endpoint,
        "--token",
        server.token,
        "--backend",
        "userns",
        input="echo remote > f\ncat f\nexit 5\n",
    )
    assert out.returncode == 5, out.stderr
    assert out.stdout == "remote\n"
    assert "sandbox shell (userns)" in out.stderr


def test_endpoint_errors(cli: Any, server: Any) -> None:
    wrong = cli("run", "--endpoint", server.endpoint, "--token", "x" * 20, "--", "true")
    assert wrong.returncode == 125
    assert "invalid bearer token" in wrong.stderr and "Traceback" not in wrong.stderr
    backend = cli(
        "run", "--endpoint", server.endpoint, "--backend", "bubblewrap", "--", "true",
        env={"UNION_SANDBOX_TOKEN": server.token},
    )  # fmt: skip
    assert backend.returncode == 125 and "expected 'bubblewrap'" in backend.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "http://x:1", "--ro", "/etc"], "--ro sets up a sandbox on this machine"),
        (["--endpoint", "http://x:1", "--work-dir", "w"], "--work-dir sets up a sandbox"),
        (["--endpoint", "http://x:1", "--flyte"], "pick one"),
        (["--endpoint", "x:1"], "--endpoint takes a URL"),
        (["--token", "t" * 20], "--token goes with --endpoint or --flyte"),
        (["--flyte", "--token", "t" * 20], "--token goes with --endpoint"),
        (["--endpoint", "http://x:1", "--project", "p"], "--project / --domain go with --flyte"),
        (["--env", "NAME"], "a bare NAME picks the sandbox environment, with --flyte only"),
        (["--flyte", "--env", "a", "--env", "b"], "one sandbox environment"),
    ],
)
def test_bad_combinations(cli: Any, args: list[str], message: str) -> None:
    out = cli("run", *args, "--", "true")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_shell_flyte_local_mode(cli: Any, tmp_path: Path) -> None:
    """No Flyte config: Flyte's local mode runs the sandbox task's body on this machine; the
    launch's steps show on stderr, and leaving the shell ends the run."""
    env = {"HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    out = cli("shell", "--flyte", input="echo launched\nexit\n", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "launched\n"
    name = re.search(
        r"launching sandbox (sbx-[0-9a-f]{16}) \(Flyte's local mode, log file://", out.stderr
    )
    assert name, out.stderr
    for step in ("submitted", "pod scheduled", "server ready"):
        assert re.search(rf"\[ *[0-9.]+ s\] {step}", out.stderr), (step, out.stderr)
    assert "sandbox shell (userns)" in out.stderr


def test_a_server_gone_while_stdin_is_copied_is_a_sandbox_failure(tmp_path: Path) -> None:
    # The stdin copy runs beside the wait: its error must come out as the CLI's exit 125
    # with the transport's message, not as a traceback of an exception group.
    testing = pytest.importorskip("union.sandbox.server.testing")
    with testing.spawn_server(backend="userns") as running:
        cli = subprocess.Popen(
            [*console_script(), "run", "--endpoint", running.endpoint, "--", "sleep", "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
            cwd=tmp_path,
        )
        assert cli.stdin is not None
        stdin = cli.stdin.fileno()
        os.set_blocking(stdin, False)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # feed it until its run is there, and then
                try:  # until the pipes are full (the command does not read)
                    os.write(stdin, b"y\n" * 4096)
                    continue
                except BlockingIOError:
                    if _running_commands("sleep 30"):
                        break
                time.sleep(0.05)
            os.killpg(running.process.pid, signal.SIGKILL)
            _out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    assert cli.returncode == 125, err
    assert b"Traceback" not in err and b"cannot reach sandbox-server" in err


def _running_commands(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").strip() == needle.encode():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found
