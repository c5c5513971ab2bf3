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
