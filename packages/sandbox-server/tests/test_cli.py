"""Command line: flags, auth defaults, strict backend check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from union.sandbox.server import parse_args


def test_defaults_need_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("UNION_SANDBOX_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])
    assert "a bearer token is required" in capsys.readouterr().err
    monkeypatch.setenv("UNION_SANDBOX_TOKEN", "x" * 20)
    config = parse_args([])
    assert (config.backend, config.host, config.port) == ("bubblewrap", "0.0.0.0", 50051)
    assert config.token == "x" * 20
    assert (config.max_put_bytes, config.max_get_bytes) == (64 << 20, 64 << 20)
    assert (config.max_runtime_s, config.mem_ceiling_mb, config.cpu_ceiling_milli) == (
        300.0,
        1024,
        4000,
    )
    assert (config.gpu_ceiling, config.fsize_ceiling_mb, config.work_dir) == (0, 4096, "/work")


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNION_SANDBOX_TOKEN", raising=False)
    config = parse_args(
        [
            "--no-auth",
            "--backend",
            "bwrap",
            "--addr",
            "127.0.0.1:8080",
            "--work-dir",
            "/tmp/w/",
            "--max-put-bytes-mb",
            "0",
            "--max-get-bytes-mb",
            "2",
            "--force-no-network",
            "--extra-read-only",
            "/opt/a, /opt/b",
            "--gpu-ceiling",
            "1",
        ]
    )
    assert config.token is None
    assert config.no_auth
    assert config.backend == "bubblewrap"
    assert (config.host, config.port, config.work_dir) == ("127.0.0.1", 8080, "/tmp/w")
    assert (config.max_put_bytes, config.max_get_bytes) == (0, 2 << 20)
    assert config.force_no_network
    assert config.gpu_ceiling == 1
    assert config.extra_read_only == ("/opt/a", "/opt/b")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no-auth", "--backend", "docker"], "unknown sandbox backend"),
        (["--no-auth", "--addr", "nowhere"], "--addr must be HOST:PORT"),
        (["--no-auth", "--work-dir", "rel"], "--work-dir must be an absolute path"),
        (["--no-auth", "--work-dir", "/tmp/"], "--work-dir '/tmp' is a system directory"),
        (["--no-auth", "--max-put-bytes-mb", "-1"], "must be >= 0"),
        (["--token", "short"], "at least 16 characters"),
        (["--no-auth", "--token", "x" * 20], "not allowed with argument"),
        (["--no-auth", "--extra-read-only", "rel"], "absolute paths"),
        (["--no-auth", "--python", "/usr/bin/false"], "--python must be the interpreter"),
    ],
)
def test_bad_flags(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UNION_SANDBOX_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_unavailable_backend_aborts_startup(tmp_path: os.PathLike[str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "union.sandbox.server",
            "--no-auth",
            "--backend",
            "sandbox-exec",
            "--addr",
            "127.0.0.1:0",
            "--work-dir",
            os.fspath(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "not available in this environment" in result.stderr
    assert "downgrading to a weaker backend is refused" in result.stderr


def test_uvloop_worker_without_uvloop_says_what_to_install(tmp_path: os.PathLike[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("uvloop") is not None:
        pytest.skip("uvloop is installed here: the worker class is available")
    result = subprocess.run(
        [sys.executable, "-m", "union.sandbox.server", "--no-auth", "--worker-class", "uvloop"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "needs the uvloop package (pip install uvloop)" in result.stderr


def test_console_script_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "union.sandbox.server", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("sandbox-server ")


def test_server_raises_its_descriptor_limit() -> None:
    """A server started at a soft limit of 1,024 lifts it towards the hard limit (its
    proxies may use half of it), capped so that runs do not inherit a huge one."""
    import resource

    from union.sandbox.server.cli import DESCRIPTOR_LIMIT_CAP
    from union.sandbox.server.testing import spawn_server

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard descriptor limit is 1,024 or less: nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with (
            spawn_server(backend="userns", token=True) as server,
            open(f"/proc/{server.process.pid}/limits") as f,
        ):
            line = next(line for line in f if line.startswith("Max open files"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server_soft = int(line.split()[3])
    expected = DESCRIPTOR_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    assert server_soft == min(expected, DESCRIPTOR_LIMIT_CAP)
