"""The remote client against real servers: opening, auth, policies, limits, transports."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import anyio
import anyio.abc
import pytest

from union.sandbox.client import Code, ConnectError, RemoteSession, exception_from, session
from union.sandbox.core.errors import (
    ExecutionError,
    SessionPolicyMismatch,
    SessionTemplateMismatch,
)
from union.sandbox.core.testing import host_pids_with
from union.sandbox.core.wire import messages as pb
from union.sandbox.server.testing import RunningServer, spawn_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def token_server() -> Iterator[RunningServer]:
    with spawn_server(token=True) as server:
        yield server


@pytest.fixture(scope="module")
def tight_server() -> Iterator[RunningServer]:
    """No network, 1 MiB file limits, trio event loop."""
    with spawn_server(
        "--force-no-network",
        "--max-put-bytes-mb",
        "1",
        "--max-get-bytes-mb",
        "1",
        worker_class="trio",
    ) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_token_is_sent_and_required(token_server: RunningServer) -> None:
    async with session(endpoint=token_server.endpoint, token=token_server.token) as sbx:
        assert (await sbx.exec("echo ok")).stdout == "ok\n"
    for token in (None, "wrong-token-but-long-enough"):
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await session(endpoint=token_server.endpoint, token=token).open()
        assert info.value.code is Code.UNAUTHENTICATED
        assert time.monotonic() - started < 5  # terminal: not retried


async def test_no_token_means_no_authorization_header() -> None:
    seen: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        seen.append(data)
        body = b'{"code":"unauthenticated","message":"x"}'
        await stream.send(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await stream.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        for token in (None, "secret-token-123456"):
            with pytest.raises(ConnectError):
                await session(endpoint=f"http://127.0.0.1:{port}", token=token).open()
        tg.cancel_scope.cancel()
    assert b"authorization" not in seen[0].lower()
    assert b"authorization: Bearer secret-token-123456" in seen[1]


async def test_health_check_retries_until_the_server_is_up() -> None:
    port = _free_port()
    sbx = session(endpoint=f"http://127.0.0.1:{port}", health_deadline_s=60)
    async with anyio.create_task_group() as tg:
        opened = anyio.Event()

        async def open_it() -> None:
            await sbx.open()
            opened.set()

        tg.start_soon(open_it)
        await anyio.sleep(0.5)
        assert not opened.is_set()
        with spawn_server("--addr", f"127.0.0.1:{port}"):
            with anyio.fail_after(60):
                await opened.wait()
            assert (await sbx.exec("echo up")).stdout == "up\n"
            await sbx.close()


async def test_unreachable_server_fails_after_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await session(endpoint=f"http://127.0.0.1:{_free_port()}", health_deadline_s=0.5).open()
    assert info.value.code is Code.UNAVAILABLE
    assert "not healthy after 0.5 s" in str(info.value)
    assert time.monotonic() - started < 10


async def test_verify_backend(token_server: RunningServer) -> None:
    ok = session(
        endpoint=token_server.endpoint, token=token_server.token, verify_backend="userns-lite"
    )
    async with ok:
        assert ok.backend == "userns"
    with pytest.raises(
        SessionTemplateMismatch, match="server backend='userns', expected 'bubblewrap'"
    ):
        await session(
            endpoint=token_server.endpoint, token=token_server.token, verify_backend="bubblewrap"
        ).open()


async def test_session_asking_for_network_of_a_no_network_server(
    tight_server: RunningServer,
) -> None:
    with pytest.raises(SessionPolicyMismatch, match="--force-no-network"):
        await session(endpoint=tight_server.endpoint, network_mode="open").open()


async def test_file_limits_of_the_server(tight_server: RunningServer) -> None:
    async with session(endpoint=tight_server.endpoint) as sbx:
        path = f"{sbx.work_dir}/limits.bin"
        await sbx.put_bytes(path, b"x" * (1 << 20))
        with pytest.raises(ValueError, match="exceeds the server's limit"):
            await sbx.put_bytes(path, b"x" * ((1 << 20) + 1))

        async def too_much() -> object:
            for _ in range(3):
                yield b"y" * (600 * 1024)

        with pytest.raises(ValueError, match="exceeds the server's limit"):
            await sbx.put_bytes(path, too_much())  # type: ignore[arg-type]
        assert await sbx.get_bytes(path) == b"x" * (1 << 20)  # untouched: uploads are atomic
        await sbx.exec(f"head -c 2000000 /dev/zero > {path}", check=True)
        with pytest.raises(ValueError, match="exceeds max_bytes=1048576"):
            await sbx.get_bytes(path)

        async def stream_all() -> list[bytes]:
            return [chunk async for chunk in sbx.iter_bytes(path)]

        with pytest.raises(ValueError, match="max-get-bytes-mb"):
            await stream_all()


async def test_trio_worker_and_policy(tight_server: RunningServer) -> None:
    async with session(endpoint=tight_server.endpoint) as sbx:
        proc = await sbx.run("echo $((6*7))")
        assert await proc.communicate() == (b"42\n", b"")
        with pytest.raises(SessionPolicyMismatch, match="opened with network_mode='blocked'"):
            await sbx.run("true", network_mode="open")


@pytest.mark.parametrize("options", [{"compression": "gzip"}, {"http2": True}])
async def test_transport_options(token_server: RunningServer, options: dict[str, object]) -> None:
    async with session(endpoint=token_server.endpoint, token=token_server.token, **options) as sbx:  # type: ignore[arg-type]
        out = (await sbx.exec("head -c 300000 /dev/zero | tr '\\0' a")).stdout
        assert out == "a" * 300000
        data = bytes(range(256)) * 20000
        path = f"{sbx.work_dir}/options.bin"
        await sbx.put_bytes(path, data)
        assert await sbx.get_bytes(path) == data


async def test_close_is_idempotent_and_final(token_server: RunningServer) -> None:
    sbx: RemoteSession = await session(endpoint=token_server.endpoint, token=token_server.token)
    await sbx.close()
    await sbx.close()
    with pytest.raises(RuntimeError, match="session is not open"):
        await sbx.run("true")
    with pytest.raises(RuntimeError, match="was closed"):
        await sbx.open()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="endpoint must be a URL"):
        session(endpoint="localhost:50051")
    with pytest.raises(ValueError, match="network_mode='allowlist' requires"):
        session(endpoint="http://x", network_mode="allowlist")
    with pytest.raises(ValueError, match="compression must be"):
        session(endpoint="http://x", compression="br")
    with pytest.raises(ValueError, match="no CR, LF"):
        session(endpoint="http://x", token="abc\r\nx-injected: 1")


def test_exception_mapping() -> None:
    detail = pb.ErrorDetail(
        exception="FileExistsError", message="file exists", errno=17, filename="/w/f"
    )
    exc = exception_from(ConnectError(Code.ALREADY_EXISTS, "x", detail=detail))
    assert isinstance(exc, FileExistsError)
    assert exc.errno == 17
    assert exc.filename == "/w/f"
    exc = exception_from(
        ConnectError(
            Code.PERMISSION_DENIED,
            "x",
            detail=pb.ErrorDetail(exception="SessionPolicyMismatch", message="no"),
        )
    )
    assert isinstance(exc, SessionPolicyMismatch)
    assert isinstance(exception_from(ConnectError(Code.NOT_FOUND, "gone")), FileNotFoundError)
    assert isinstance(exception_from(ConnectError(Code.INVALID_ARGUMENT, "bad")), ValueError)
    # Unknown exception names are not instantiated: the ConnectError stays.
    weird = ConnectError(Code.INTERNAL, "x", detail=pb.ErrorDetail(exception="SystemExit"))
    assert exception_from(weird) is weird
    internal = ConnectError(Code.INTERNAL, "boom")
    assert exception_from(internal) is internal


async def test_a_cancelled_read_over_http2_kills_the_run(token_server: RunningServer) -> None:
    """httpx's transport (here HTTP/2) cannot go on reading after a cancelled read, and
    sends no reset for the stream it abandons: the client has the server kill the run
    rather than lose track of it, and says why."""
    arg = f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"
    async with session(endpoint=token_server.endpoint, token=token_server.token, http2=True) as sbx:
        proc = await sbx.run(f"echo early; sleep {arg}")
        assert proc.stdout is not None
        with anyio.fail_after(30):
            while not host_pids_with(arg):  # noqa: ASYNC110 (host process lists: no event)
                await anyio.sleep(0.02)
        with anyio.move_on_after(0.3) as scope:
            await proc.stdout.read()
        assert scope.cancelled_caught
        with anyio.fail_after(30), pytest.raises(ExecutionError, match="cancelled"):
            await proc.wait()
        assert not host_pids_with(arg)
        assert (await sbx.exec("echo fine")).stdout == "fine\n"
