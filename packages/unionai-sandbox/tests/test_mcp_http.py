"""``unionai-sandbox mcp --http``: streamable HTTP behind a bearer token, one sandbox session
per MCP session, through the ``mcp`` SDK's own client (asyncio and trio), on both isolating
backends; and the start-up refusals (no token, ``--no-auth`` off loopback)."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import cli_env, console_script

mcp = pytest.importorskip("mcp")
httpx2 = pytest.importorskip("httpx2")
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backends")

TOKEN_ENV = "UNION_SANDBOX_MCP_TOKEN"
START_TIMEOUT_S = 60


class HttpServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, token: str | None, log: Path):
        self.proc, self.url, self.token, self.log = proc, url, token, log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def start_server(tmp: Path, *args: str, token: str | None) -> HttpServer:
    """``unionai-sandbox mcp --http ...`` with its stderr in a file; waits for its URL."""
    log = tmp / f"mcp-http-{secrets.token_hex(4)}.log"
    env = cli_env({TOKEN_ENV: token})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*console_script(), "mcp", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=tmp,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r"(http://\S+/mcp)", log.read_text())
        if found:
            return HttpServer(proc, found.group(1), token, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module", params=["userns", "bubblewrap"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    token = secrets.token_urlsafe(24)
    tmp = tmp_path_factory.mktemp("mcp-http")
    running = start_server(tmp, "--backend", request.param, "--http", "127.0.0.1:0", token=token)
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log.read_text()
        log = running.log.read_text()
        assert "Traceback" not in log, log


@asynccontextmanager
async def connect(server: HttpServer, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(server.url, http_client=http)) as client,
    ):
        yield client


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, or the exceptions its (nested) groups hold."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        yield exc
        return
    for each in inner:
        yield from _leaves(each)


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


@pytest.mark.anyio
async def test_token_is_required(server: HttpServer) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for headers in ({}, {"Authorization": "Bearer " + "x" * 32}, {"Authorization": "Basic x"}):
            answer = await http.post(server.url, json=body, headers=headers)
            assert answer.status_code == 401
            assert TOKEN_ENV in answer.json()["error_description"]
    for token in (None, "wrong-" + "x" * 20):
        # The SDK's client reports the 401 as an error response of the server.
        with pytest.raises(Exception) as caught:  # noqa: PT011 - checked just below
            async with connect(server, token) as client:
                await client.list_tools()
        assert any(isinstance(e, MCPError) for e in _leaves(caught.value)), caught.value
    async with connect(server, server.token) as client:  # still serving
        assert len((await client.list_tools()).tools) == 7


@pytest.mark.anyio
async def test_a_session_per_connection(server: HttpServer) -> None:
    async with connect(server, server.token) as first:
        assert not first.protocol_version.startswith("2026")  # the session-based protocol
        one = await first.call_tool("run_shell", {"command": "echo one > f; pwd"})
        first_dir = one.structured_content["stdout"]["text"].strip()
        async with connect(server, server.token) as second:
            two = await second.call_tool("run_shell", {"command": "pwd; cat f"})
            data = two.structured_content
            assert data["exit_code"] != 0 and "No such file" in data["stderr"]["text"]
            assert data["stdout"]["text"].strip() != first_dir
            second_dir = data["stdout"]["text"].strip()
        # The second MCP session ended (its DELETE): its sandbox is closed.
        with anyio.fail_after(20):
            while Path(second_dir).exists():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # The first one's state persists across its calls.
        again = await first.call_tool("read_file", {"path": "f"})
        assert text(again) == "one\n"
        seen: list[str | None] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen.append(message)

        ticking = "for i in 1 2 3; do echo tick $i; sleep 0.3; done"
        await first.call_tool("run_shell", {"command": ticking}, progress_callback=progress)
        assert "tick 1" in "".join(m or "" for m in seen), seen
        refused = await first.call_tool("run_shell", {"command": "true", "network": "open"})
        assert refused.is_error and "--network open" in text(refused)
    with anyio.fail_after(20):
        while Path(first_dir).exists():  # noqa: ASYNC110
            await anyio.sleep(0.05)


def _refused_start(tmp_path: Path, *args: str, env: dict[str, str | None]) -> str:
    out = subprocess.run(
        [*console_script(), "mcp", *args], capture_output=True, text=True,
        env=cli_env(env), cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, (out.returncode, out.stderr)
    return out.stderr


def test_refuses_to_serve_without_a_token(tmp_path: Path) -> None:
    err = _refused_start(tmp_path, "--http", "127.0.0.1:0", env={TOKEN_ENV: None})
    assert f"--http needs a bearer token: set ${TOKEN_ENV}" in err
    err = _refused_start(tmp_path, "--http", "127.0.0.1:0", env={TOKEN_ENV: "short"})
    assert "at least 16" in err
    for host in ("0.0.0.0", "192.0.2.1", "[::]"):
        err = _refused_start(tmp_path, "--http", f"{host}:0", "--no-auth", env={TOKEN_ENV: None})
        assert "--no-auth is only allowed on a loopback address" in err
    err = _refused_start(tmp_path, "--no-auth", env={})
    assert "--no-auth goes with --http" in err
    err = _refused_start(tmp_path, "--http", "nowhere", env={TOKEN_ENV: "x" * 20})
    assert "--http takes HOST:PORT" in err


def test_no_auth_on_loopback_keeps_dns_rebinding_protection(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--backend", "userns", "--http", "127.0.0.1:0",
                           "--no-auth", token=None)  # fmt: skip
    try:
        assert "NO authentication (loopback only)" in running.log.read_text()
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream"}
        with httpx2.Client(timeout=30) as http:
            rebound = http.post(running.url, json=body, headers={**accept, "Host": "evil.example"})
            assert rebound.status_code in (403, 421), rebound.status_code
            page = http.post(
                running.url, json=body, headers={**accept, "Origin": "http://evil.example"}
            )
            assert page.status_code == 403, page.status_code
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stopping_the_server_ends_running_commands(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SIGTERM while a call runs: the command's tree is killed, the sessions are closed,
    and the server exits 0 without a traceback."""
    from union.sandbox.core.testing import host_pids_with

    token = secrets.token_urlsafe(24)
    running = start_server(tmp_path, "--backend", "userns", "--http", "127.0.0.1:0", token=token)
    needle = f"mcp-stop-{secrets.token_hex(6)}"
    ended: list[str] = []
    try:
        async with connect(running, token) as client, anyio.create_task_group() as tg:

            async def long_call() -> None:
                command = f"python3 -c 'import time; time.sleep(300)' {needle}"
                result = await client.call_tool("run_shell", {"command": command})
                ended.append(result.structured_content["termination"])

            tg.start_soon(long_call)
            with anyio.fail_after(30):
                while not host_pids_with(needle):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            running.proc.send_signal(signal.SIGTERM)
            exit_code = await anyio.to_thread.run_sync(running.proc.wait, 30)
            tg.cancel_scope.cancel()
    except BaseException as exc:  # the client's own teardown against a stopped server
        if not any(isinstance(e, (OSError, MCPError)) or "connect" in repr(e).lower()
                   for e in _leaves(exc)):  # fmt: skip
            raise
    assert running.proc.wait(30) == 0
    assert exit_code == 0
    assert not host_pids_with(needle)
    # The sessions close as the signal arrives, so the call is answered before the end.
    assert ended == ["killed"]
    assert "Traceback" not in running.log.read_text(), running.log.read_text()
