"""Regression tests for CLI defects found while writing the CLI suite: bad arguments exit 2
before anything runs, `--get` errors, shell `cd`/`exit` handling, piped stdin, and the docs'
synopsis."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

SENTINEL = "COMMAND-RAN-7f3a"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backends")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--env", "novalue", "--", "echo", SENTINEL],
        ["run", "--put", "in.txt", "--", "echo", SENTINEL],
        ["run", "--"],
        ["shell", "--env", "novalue"],
    ],
    ids=["env", "put", "no-command", "shell-env"],
)
def test_bad_arguments_exit_2(cli: Any, argv: list[str]) -> None:
    out = cli(*argv)
    assert out.returncode == 2, out.stderr


def test_shell_cd_then_command_on_one_line(cli: Any) -> None:
    # Only a plain `cd DIR` line moves the shell; a compound line runs in its own process
    # like any other command (documented in docs/cli.md) and must not break the session.
    out = cli("shell", input="mkdir d\ncd d && echo moved\ncd d\npwd\n")
    assert "moved\n" in out.stdout
    assert re.search(r"/d\n", out.stdout), out.stdout
    assert "terminated abnormally" not in out.stderr


def test_shell_exit_with_status(cli: Any) -> None:
    out = cli("shell", input="exit 3\necho still-here\n")
    assert "still-here" not in out.stdout
    assert out.returncode == 3


def test_docs_synopsis_has_the_network_lists() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
    if not docs.exists():
        pytest.skip("docs/ not in this checkout")
    text = docs.read_text()
    assert "allowlist" in text
    assert "--allow" in text
    assert "--deny" in text
