"""``unionai-sandbox shell``: lines fed on stdin, one fresh process each, over one session."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

ISOLATING = ("bubblewrap", "userns")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backends")


def _lines(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize("backend", ISOLATING)
def test_shell_session(cli: Any, backend: str) -> None:
    out = cli(
        "shell",
        "--backend",
        backend,
        input=_lines("echo hi > f", "cat f", "cd /tmp", "pwd", "exit", "echo not-reached"),
    )
    assert out.returncode == 0, out.stderr
    assert "hi\n" in out.stdout
    assert "/tmp\n" in out.stdout
    assert "not-reached" not in out.stdout
    assert f"sandbox shell ({backend})" in out.stderr
    assert "Traceback" not in out.stderr


def test_ctrl_d_exits_zero(cli: Any) -> None:
    out = cli("shell", input=_lines("echo before-eof"))
    assert out.returncode == 0, out.stderr
    assert "before-eof\n" in out.stdout


def test_empty_stdin_exits_zero(cli: Any) -> None:
    out = cli("shell", input="")
    assert out.returncode == 0, out.stderr


def test_prompt_shows_last_exit_code(cli: Any) -> None:
    out = cli("shell", input=_lines("sh -c 'exit 4'", "true"))
    assert out.returncode == 0, out.stderr
    # Prompts go to stderr, so that stdout carries only the commands' output.
    assert "sandbox [4]$ " in out.stderr
    assert "sandbox [0]$ " in out.stderr
    assert "sandbox [" not in out.stdout


def test_work_dir_and_cd_persist(cli: Any) -> None:
    out = cli(
        "shell",
        input=_lines(
            "mkdir -p d/e",
            "cd d",
            "echo inside > here.txt",
            "cd e",
            "pwd",
            "cd",
            "cat d/here.txt",
            "ls d",
        ),
    )
    assert out.returncode == 0, out.stderr
    assert "inside\n" in out.stdout
    assert re.search(r"^/\S+/d/e$", out.stdout, re.M), out.stdout  # `pwd` after `cd d`, `cd e`
    assert "here.txt" in out.stdout


def test_cd_to_a_missing_directory_keeps_the_old_one(cli: Any) -> None:
    out = cli("shell", input=_lines("cd /tmp", "cd /no/such/dir", "pwd"))
    assert out.returncode == 0, out.stderr
    assert "/no/such/dir" in out.stderr
    assert "/tmp\n" in out.stdout


def test_tmp_does_not_persist_between_lines(cli: Any) -> None:
    out = cli(
        "shell",
        input=_lines(
            "echo t > /tmp/t.txt", "cat /tmp/t.txt || echo gone", "echo w > w.txt", "cat w.txt"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert "gone\n" in out.stdout
    assert "w\n" in out.stdout


@pytest.mark.parametrize("word", ["exit", "quit", "logout"])
def test_exit_words(cli: Any, word: str) -> None:
    out = cli("shell", input=_lines(word, "echo not-reached"))
    assert out.returncode == 0
    assert "not-reached" not in out.stdout


def test_shell_env_and_network_options(cli: Any) -> None:
    out = cli(
        "shell",
        "--backend",
        "userns",
        "--env",
        "GREETING=hey",
        "--allow",
        "127.0.0.1/32",
        input=_lines('echo "$GREETING"', "env | grep -c '^HTTP_PROXY='"),
    )
    assert out.returncode == 0, out.stderr
    assert "hey\n" in out.stdout
    assert "1\n" in out.stdout


def test_shell_timeout_is_per_line(cli: Any) -> None:
    out = cli("shell", "--timeout", "0.5", input=_lines("sleep 5", "echo after"))
    assert out.returncode == 0, out.stderr
    assert "sandbox [137]$ " in out.stderr
    assert "after\n" in out.stdout


def test_shell_bad_arguments(cli: Any) -> None:
    out = cli("shell", "--env", "novalue", input=_lines("echo not-run"))
    assert out.returncode in (1, 2)
    assert "--env takes KEY=VALUE" in out.stderr
    assert "not-run" not in out.stdout
    out = cli("shell", "--backend", "bogus", input=_lines("echo not-run"))
    assert out.returncode == 2
    assert "unknown sandbox backend" in out.stderr


def test_shell_with_unavailable_backend(cli: Any) -> None:
    out = cli("shell", input=_lines("echo not-run"), env={"UNION_SANDBOX_BWRAP": ""})
    assert out.returncode == 125
    assert "no bwrap binary" in out.stderr
    assert "not-run" not in out.stdout
