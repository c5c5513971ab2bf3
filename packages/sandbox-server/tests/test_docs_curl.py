"""The ``curl`` examples of docs/protocol.md work, verbatim, against a real server."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from union.sandbox.server.testing import RunningServer, spawn_server

DOC = Path(__file__).parents[3] / "docs" / "protocol.md"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if "curl" in b and "$SANDBOX_URL" in b]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with spawn_server(token=True) as running:
        with open(os.path.join(running.work_dir, "hello.txt"), "w") as f:
            f.write("hello from the work dir\n")
        os.chmod(os.path.join(running.work_dir, "hello.txt"), 0o644)
        yield running


def run(block: str, server: RunningServer, extra: str = "") -> str:
    assert server.token is not None
    env = {
        **os.environ,
        "SANDBOX_URL": server.endpoint,
        "UNION_SANDBOX_TOKEN": server.token,
        "SANDBOX_WORK_DIR": server.work_dir,
    }
    if extra:
        block = block.replace("curl ", f"curl {extra} ", 1)
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", block],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_there_are_three_examples() -> None:
    assert len(curl_blocks()) == 3


@pytest.mark.parametrize("extra", ["", "--http2-prior-knowledge"])
def test_health(server: RunningServer, extra: str) -> None:
    health = json.loads(run(curl_blocks()[0], server, extra))
    assert health["backend"] == "userns"
    assert health["workDir"] == server.work_dir


def test_execute(server: RunningServer) -> None:
    lines = run(curl_blocks()[1], server).splitlines()
    objects = [json.loads(line) for line in lines]
    assert "sessionInfo" in objects[0]
    assert {"stdout": base64.b64encode(b"hello\n").decode()} in objects
    termination = objects[-2]["termination"]
    assert termination["exitCode"] == 3
    assert termination["reason"] == "exit=3"
    assert objects[-1] == {}


def test_get_bytes(server: RunningServer) -> None:
    reply = json.loads(run(curl_blocks()[2], server))
    assert base64.b64decode(reply["data"]) == b"hello from the work dir\n"
    assert reply["bytesRead"] == str(len(b"hello from the work dir\n"))


def test_without_the_token_curl_gets_unauthenticated(server: RunningServer) -> None:
    block = curl_blocks()[0].replace('-H "Authorization: Bearer $UNION_SANDBOX_TOKEN"', "")
    env = {**os.environ, "SANDBOX_URL": server.endpoint}
    result = subprocess.run(
        ["bash", "-c", block], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode != 0
    assert json.loads(result.stdout)["code"] == "unauthenticated"
