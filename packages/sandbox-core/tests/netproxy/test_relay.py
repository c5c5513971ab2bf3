"""The byte relay on its own: integrity, half-close, errors, cancellation, counters."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Literal

import anyio
import pytest

from union.sandbox.core.netproxy.relay import PipeGrowth, RelayCounters, relay

pytestmark = pytest.mark.anyio

Method = Literal["splice", "copy"]


@pytest.fixture(params=["splice", "copy"])
def method(request: pytest.FixtureRequest) -> Method:
    if request.param == "splice" and not hasattr(os, "splice"):
        pytest.skip("no os.splice on this platform")
    return request.param  # type: ignore[no-any-return]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


@pytest.fixture
def wires() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(sandbox peer, proxy's client side, proxy's upstream side, upstream peer)."""
    sandbox, client = tcp_pair()
    upstream, server = tcp_pair()
    for sock in (sandbox, server):
        sock.settimeout(20)
    yield sandbox, client, upstream, server
    for sock in (sandbox, client, upstream, server):
        sock.close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_both_directions_at_once_keep_every_byte(
    wires: tuple[socket.socket, ...], method: Method
) -> None:
    sandbox, client, upstream, server = wires
    up_data = os.urandom(3 << 20)
    down_data = os.urandom(5 << 20)
    got: dict[str, bytes] = {}

    def side(name: str, sock: socket.socket, data: bytes) -> None:
        """Write and read at the same time (a writer thread), as a real peer would."""

        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=send)
        thread.start()
        got[name] = read_all(sock)
        thread.join()

    counters = RelayCounters()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, side, "sandbox", sandbox, up_data)
        tg.start_soon(anyio.to_thread.run_sync, side, "server", server, down_data)
        await relay(client, upstream, counters=counters, method=method)
    assert hashlib.sha256(got["server"]).digest() == hashlib.sha256(up_data).digest()
    assert hashlib.sha256(got["sandbox"]).digest() == hashlib.sha256(down_data).digest()
    assert (counters.up, counters.down) == (len(up_data), len(down_data))
    assert client.fileno() == -1
    assert upstream.fileno() == -1


async def test_half_close_request_then_response(
    wires: tuple[socket.socket, ...], method: Method
) -> None:
    """The sandbox sends a request and half-closes; the server still answers in full."""
    sandbox, client, upstream, server = wires

    def origin() -> None:
        request = read_all(server)  # until the sandbox's half-close arrives
        server.sendall(b"response to " + request)
        server.shutdown(socket.SHUT_WR)

    def sandbox_side() -> bytes:
        sandbox.sendall(b"request")
        sandbox.shutdown(socket.SHUT_WR)
        return read_all(sandbox)

    result: list[bytes] = []

    async def run_sandbox() -> None:
        result.append(await anyio.to_thread.run_sync(sandbox_side))

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, origin)
        tg.start_soon(run_sandbox)
        await relay(client, upstream, method=method)
    assert result == [b"response to request"]


async def test_pending_bytes_go_first(wires: tuple[socket.socket, ...], method: Method) -> None:
    sandbox, client, upstream, server = wires
    sandbox.sendall(b"-after")
    sandbox.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    counters = await relay(client, upstream, pending_up=b"before", method=method)
    assert read_all(server) == b"before-after"
    assert counters.up == len(b"before-after")


async def test_upstream_reset_closes_the_sandbox_side(
    wires: tuple[socket.socket, ...], method: Method
) -> None:
    sandbox, client, upstream, server = wires
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST
    with anyio.fail_after(10):
        await relay(client, upstream, method=method)
    try:
        data = sandbox.recv(10)
    except ConnectionResetError:
        data = b""  # a reset is as good as an end of stream here
    assert data == b""
    assert client.fileno() == -1


async def test_cancellation_tears_down_promptly(
    wires: tuple[socket.socket, ...], method: Method
) -> None:
    sandbox, client, upstream, server = wires
    with anyio.move_on_after(0.2):
        await relay(client, upstream, method=method)  # both sides idle: runs until cancelled
    assert client.fileno() == -1
    assert upstream.fileno() == -1
    assert sandbox.recv(10) == b""
    assert server.recv(10) == b""


@pytest.mark.parametrize("budget", [0, 1])
async def test_pipe_growth_is_budgeted(wires: tuple[socket.socket, ...], budget: int) -> None:
    """Bulk transfers grow their splice pipe only within the session's budget (pipe capacity
    is charged to the caller's user) and give it back when they end; without it they still
    relay every byte."""
    if not hasattr(os, "splice"):
        pytest.skip("no os.splice on this platform")
    sandbox, client, upstream, server = wires
    data = os.urandom(8 << 20)
    half = 4 << 20
    growth = PipeGrowth(budget)
    seen: list[int] = []
    first_half_relayed = threading.Event()

    def feed() -> None:
        server.sendall(data[:half])
        # sendall returns once the bytes sit in loopback's socket buffers, possibly before
        # the relay moved any: look at the budget only once the first half came through,
        # while the pump still waits for the second.
        assert first_half_relayed.wait(30), "the relay did not pass the first half on"
        seen.append(growth.available)  # mid-transfer: a grown pipe holds the budget
        server.sendall(data[half:])
        server.shutdown(socket.SHUT_WR)

    def drain() -> bytes:
        sandbox.shutdown(socket.SHUT_WR)
        chunks, got = [], 0
        while chunk := sandbox.recv(1 << 20):
            chunks.append(chunk)
            got += len(chunk)
            if got >= half:
                first_half_relayed.set()
        return b"".join(chunks)

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, feed)
        received: list[bytes] = []

        async def reader() -> None:
            received.append(await anyio.to_thread.run_sync(drain))

        tg.start_soon(reader)
        await relay(client, upstream, method="splice", growth=growth)
    assert received == [data]
    assert seen == [0]
    assert growth.available == budget
