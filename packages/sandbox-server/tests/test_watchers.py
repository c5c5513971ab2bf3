"""The server's per-call disconnect watchers under hypercorn, in process: they end by
themselves once each response is complete (none pile up over thousands of keep-alive
calls), and a client that goes away still cancels its run."""

from __future__ import annotations

import os
import signal
import socket

import anyio
import httpx
import pytest
import sniffio

from union.sandbox.client import session
from union.sandbox.core.testing import host_pids_with
from union.sandbox.core.wire import messages as pb
from union.sandbox.server import parse_args
from union.sandbox.server.app import SandboxApp, create_app
from union.sandbox.server.cli import serve

pytestmark = pytest.mark.anyio


async def _serving(tmp: str) -> tuple[SandboxApp, socket.socket, str, object]:
    worker = "trio" if sniffio.current_async_library() == "trio" else "asyncio"
    config = parse_args(
        ["--no-auth", "--addr", "127.0.0.1:0", "--work-dir", tmp, "--worker-class", worker]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return create_app(config), sock, endpoint, config


def _stop() -> None:
    """Stop ``serve`` the way a pod is stopped (it handles SIGTERM in this process)."""
    os.kill(os.getpid(), signal.SIGTERM)


async def _until(predicate: object, limit_s: float = 10.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_watchers_end_with_their_responses(tmp_path: os.PathLike[str], http2: bool) -> None:
    app, sock, endpoint, config = await _serving(os.fspath(tmp_path))
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, config, sock, app)
        async with session(endpoint=endpoint, http2=http2) as sbx:
            assert app.connect.watchers is not None  # the cheap path is the one under test
            for _ in range(100):
                proc = await sbx.run("true")
                assert await proc.wait() == 0
            await sbx.put_bytes(f"{sbx.work_dir}/f", b"x")  # a client stream
            assert await sbx.get_bytes(f"{sbx.work_dir}/f") == b"x"  # a unary call
            await _until(lambda: app.connect.watching == 0)
        _stop()


async def test_a_vanished_client_still_cancels_its_run(
    tmp_path: os.PathLike[str], unique_sleep: str
) -> None:
    app, sock, endpoint, config = await _serving(os.fspath(tmp_path))
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, config, sock, app)
        async with session(endpoint=endpoint):
            pass  # waits for the server to answer Health
        body = pb.ExecuteRequest(
            input=f"echo started; sleep {unique_sleep}".encode(), stream_stdout=True
        ).encode()
        framed = b"\x00" + len(body).to_bytes(4, "big") + body
        async with (
            httpx.AsyncClient() as client,
            client.stream(
                "POST",
                f"{endpoint}/sandbox.v2.SandboxService/Execute",
                content=framed,
                headers={"content-type": "application/connect+proto"},
            ) as response,
        ):
            # Keep the iterator referenced: a dropped one is finalized, which closes the
            # connection early (that too must kill the run, but it is not this test's step).
            chunks = response.aiter_raw()
            await chunks.__anext__()  # the run started
            await _until(lambda: bool(host_pids_with(unique_sleep)))
        # The connection is gone: the watcher cancels the call, which kills the run.
        await _until(lambda: not host_pids_with(unique_sleep))
        await _until(lambda: app.connect.watching == 0)
        _stop()
