"""The lean HTTP/1.1 transport against scripted raw-TCP servers on loopback: framing,
keep-alive and its limits, malformed responses, cancellation, and when httpx's own
transport is used instead."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from union.sandbox.client._http11 import Http11Transport
from union.sandbox.client._transport import ConnectTransport, StreamCut
from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import FLAG_END_STREAM, envelope_header

pytestmark = pytest.mark.anyio

Handler = Callable[[anyio.abc.SocketStream, BufferedByteReceiveStream, int], Awaitable[None]]


class Served:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connections = 0
        self.request_lines: list[bytes] = []


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[Served]:
    """A TCP server on 127.0.0.1 that runs ``handler(stream, reader, index)`` for its
    ``index``-th connection and closes the connection when the handler returns."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    served = Served(f"http://127.0.0.1:{port}")

    async def serve(stream: anyio.abc.SocketStream) -> None:
        index = served.connections
        served.connections += 1
        async with stream:
            try:
                await handler(stream, BufferedByteReceiveStream(stream), index)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield served
        tg.cancel_scope.cancel()


async def read_request(
    reader: BufferedByteReceiveStream, served: Served | None = None
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The request line, headers (lower-case names) and body (Content-Length or chunked)."""
    head = await reader.receive_until(b"\r\n\r\n", 1 << 16)
    lines = head.split(b"\r\n")
    if served is not None:
        served.request_lines.append(lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = await reader.receive_exactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while size := int(await reader.receive_until(b"\r\n", 100), 16):
            parts.append(await reader.receive_exactly(size))
            assert await reader.receive_exactly(2) == b"\r\n"
        assert await reader.receive_until(b"\r\n", 100) == b""
        body = b"".join(parts)
    else:
        body = b""
    return lines[0], headers, body


def ok(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@asynccontextmanager
async def lean_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=Http11Transport()) as client:
        yield client


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        while True:
            _line, headers, body = await read_request(reader)
            assert headers[b"host"].startswith(b"127.0.0.1:")
            await stream.send(ok(b"got %d" % len(body)))

    async with raw_server(handler) as served, lean_client() as client:
        for size in (0, 10, 200_000):  # the last one is larger than a coalesced write
            response = await client.post(served.url + "/x?y=1", content=b"a" * size)
            assert (response.status_code, response.content) == (200, b"got %d" % size)
            assert response.http_version == "HTTP/1.1"
        assert served.connections == 1


async def test_a_chunked_response_arrives_as_it_is_sent() -> None:
    first_seen = anyio.Event()

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await first_seen.wait()  # the client must get "first" before the rest exists
        await stream.send(b"6;ext=1\r\nsecond\r\n0\r\nTrailer-Field: x\r\n\r\n")
        await read_request(reader)
        await stream.send(ok(b"again"))

    async with raw_server(handler) as served, lean_client() as client:
        with anyio.fail_after(5):
            async with client.stream("GET", served.url) as response:
                pieces = []
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    first_seen.set()
            assert b"".join(pieces) == b"firstsecond"
            assert pieces[0] == b"first"
            assert (await client.get(served.url)).content == b"again"
        assert served.connections == 1  # read to its end (trailers too), so reused


async def test_a_streaming_request_body_is_sent_chunked() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        _line, headers, body = await read_request(reader)
        assert headers[b"transfer-encoding"] == b"chunked"
        await stream.send(ok(hashlib.sha256(body).hexdigest().encode()))

    parts = [b"a" * 10, b"", b"b" * 300_000, b"c"]

    async def produce() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with raw_server(handler) as served, lean_client() as client:
        response = await client.post(served.url, content=produce())
        assert response.content == hashlib.sha256(b"".join(parts)).hexdigest().encode()


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_large_bodies_arrive_intact(framing: str) -> None:
    data = os.urandom(3 << 20)

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        if framing == "length":
            await stream.send(ok(data))
        elif framing == "chunked":
            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await stream.send(
                chunked(*(data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)))
            )
        else:
            await stream.send(b"HTTP/1.1 200 OK\r\n\r\n" + data)  # ends when the server closes

    async with raw_server(handler) as served, lean_client() as client:
        assert (await client.get(served.url)).content == data


async def test_a_connection_the_response_ends_is_not_reused() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, i: int
    ) -> None:
        await read_request(reader)
        if i == 0:
            await stream.send(ok(b"bye", b"Connection: close"))
            await anyio.sleep(5)  # open, but the client was told it is done
        elif i == 1:
            await stream.send(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold")
            await anyio.sleep(5)  # HTTP/1.0 without keep-alive: done too
        else:
            await stream.send(ok(b"fresh"))

    async with raw_server(handler) as served, lean_client() as client:
        with anyio.fail_after(4):
            assert (await client.get(served.url)).content == b"bye"
            assert (await client.get(served.url)).content == b"old"
            assert (await client.get(served.url)).content == b"fresh"
        assert served.connections == 3


async def test_interim_responses_are_skipped() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))

    async with raw_server(handler) as served, lean_client() as client:
        response = await client.get(served.url)
        assert (response.status_code, response.content) == (200, b"final")


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(ok(b"once"))  # then close: keep-alive ended by the server

    async with raw_server(handler) as served, lean_client() as client:
        assert (await client.get(served.url)).content == b"once"
        await anyio.sleep(0.2)  # the FIN arrives while the connection sits in the pool
        assert (await client.get(served.url)).content == b"once"
        assert served.connections == 2


MALFORMED = {
    "status line": b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "status code": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "header without colon": b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    "folded header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "both framings": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    ),
    "unknown coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "prefixed chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"
    ),
    "bare LF in the head": b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 0\r\n\r\n",
    "status below 100": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    "unasked upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "chunk longer than its size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n"
    ),
    "cut body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "cut chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc",
    "no response": b"",
    "endless head": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000,
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_responses_are_protocol_errors(name: str) -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, i: int
    ) -> None:
        await read_request(reader)
        if i == 0:
            await stream.send(MALFORMED[name])
        else:
            await stream.send(ok(b"fine"))
            await anyio.sleep(5)

    async with raw_server(handler) as served, lean_client() as client:
        with anyio.fail_after(5):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(served.url)
            # The broken connection is not pooled: the next request gets a new one.
            assert (await client.get(served.url)).content == b"fine"
        assert served.connections == 2


async def test_a_cancelled_read_drops_the_connection() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, i: int
    ) -> None:
        await read_request(reader)
        if i == 0:
            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
            await anyio.sleep(10)  # never finishes
        else:
            await stream.send(ok(b"next"))

    async with raw_server(handler) as served, lean_client() as client:
        async with client.stream("GET", served.url) as response:
            chunks = response.aiter_raw()
            assert await chunks.__anext__() == b"hi"
            with anyio.move_on_after(0.1) as scope:
                await chunks.__anext__()
            assert scope.cancelled_caught
        with anyio.fail_after(5):
            assert (await client.get(served.url)).content == b"next"
        assert served.connections == 2


async def test_an_early_answer_beats_a_failed_body_write() -> None:
    """A server that answers (an error) and closes before reading the whole body: the
    client gets that answer, not a write error."""

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await reader.receive_until(b"\r\n\r\n", 1 << 16)
        await stream.send(ok(b"too big", b"Connection: close"))

    async def endless() -> AsyncIterator[bytes]:
        yield b"x" * (1 << 16)
        await anyio.sleep(0.3)  # the server answers and closes meanwhile
        for _ in range(1024):
            yield b"x" * (1 << 20)

    async with raw_server(handler) as served, lean_client() as client:
        with anyio.fail_after(10):
            response = await client.post(served.url, content=endless())
        assert response.content == b"too big"


async def test_header_injection_is_refused() -> None:
    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(ok(b""))

    async with raw_server(handler) as served, lean_client() as client:
        with pytest.raises(httpx.LocalProtocolError, match="CR, LF or NUL"):
            await client.get(served.url, headers={"x-token": "a\r\nx-injected: 1"})


async def test_close_closes_pooled_connections() -> None:
    ended = anyio.Event()

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(ok(b"x"))
        with pytest.raises(anyio.IncompleteRead):  # EOF: the client closed it
            await reader.receive_until(b"\r\n\r\n", 1 << 16)
        ended.set()

    transport = Http11Transport()
    async with raw_server(handler) as served:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(served.url)
        with anyio.fail_after(5):
            await ended.wait()
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", served.url))


async def test_connect_failures_are_connect_errors() -> None:
    with socket_port() as port:
        async with lean_client() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


class socket_port:
    """A loopback port with nothing listening on it (bound, never listened)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_which_transport_an_endpoint_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert ConnectTransport("http://127.0.0.1:1", token=None).lean
    assert not ConnectTransport("http://127.0.0.1:1", token=None, http2=True).lean
    assert not ConnectTransport("https://127.0.0.1:1", token=None).lean
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert not ConnectTransport("http://sandbox.internal:1", token=None).lean
    monkeypatch.setenv("NO_PROXY", "sandbox.internal")
    assert ConnectTransport("http://sandbox.internal:1", token=None).lean


async def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy case goes through httpx's transport, which sends the request to the proxy
    in absolute form."""
    served_box: list[Served] = []

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader, served_box[0])
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: 0"
        await stream.send(response + b"\r\n\r\n")

    async with raw_server(handler) as served:
        served_box.append(served)
        for name in ("no_proxy", "NO_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", served.url)
        transport = ConnectTransport("http://sandbox.invalid:50051", token=None)
        try:
            assert not transport.lean
            await transport.unary("Health", pb.HealthRequest(), pb.HealthResponse)
        finally:
            await transport.aclose()
    assert served.request_lines[0].startswith(b"POST http://sandbox.invalid:50051/sandbox.v2.")


def _connect_stream(*payloads: bytes) -> bytes:
    """A Connect stream body: ``payloads`` as messages, then a successful end of stream."""
    framed = [envelope_header(0, len(p)) + p for p in payloads]
    return b"".join(framed) + envelope_header(FLAG_END_STREAM, 2) + b"{}"


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


async def test_a_cancelled_stream_read_resumes_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads of a Connect stream cancelled again and again while the server sends it a byte
    at a time, so that cancellations land inside a chunk-size line, a chunk's data, a
    chunk's CR LF, an envelope and the trailer: they consume nothing, every message arrives
    in order, and the body is read to its end (its connection is reused)."""
    sizes = (1, 30, 200)
    body = _connect_stream(*(pb.ExecuteResponse(stdout=b"%d" % n * n).encode() for n in sizes))
    # Chunks that cut across the envelopes.
    wire = chunked(body[:3], body[3:40], body[40:41], body[41:])[:-2] + b"X-Trailer: 1\r\n\r\n"

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(_STREAM_HEAD)
        for i in range(len(wire)):
            await stream.send(wire[i : i + 1])
            await anyio.sleep(0.002)
        await read_request(reader)
        await stream.send(ok(b"", b"Content-Type: application/proto"))

    _no_proxy(monkeypatch)
    async with raw_server(handler) as served:
        transport = ConnectTransport(served.url, token=None)
        assert transport.lean
        try:
            with anyio.fail_after(30):
                call = await transport.server_stream(
                    "Execute", pb.ExecuteRequest(), pb.ExecuteResponse
                )
                got: list[bytes] = []
                cancelled = 0
                while True:
                    with anyio.move_on_after(0.001) as scope:
                        message = await call.next()
                    if scope.cancelled_caught:
                        cancelled += 1
                        continue
                    if message is None:
                        break
                    assert isinstance(message, pb.ExecuteResponse)
                    got.append(bytes(message.stdout or b""))
                await call.aclose()
                assert got == [b"%d" % n * n for n in sizes]
                assert cancelled > len(sizes)
                await transport.unary("Health", pb.HealthRequest(), pb.HealthResponse)
        finally:
            await transport.aclose()
    assert served.connections == 1


async def test_a_cancelled_stream_read_through_httpx_cuts_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx's transport (TLS, HTTP/2, proxies) closes the connection when a read is
    cancelled: the stream then reports a cut, and says that a cancelled read made it."""
    message = pb.ExecuteResponse(stdout=b"first").encode()

    async def handler(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream, _: int
    ) -> None:
        await read_request(reader)
        await stream.send(_STREAM_HEAD + chunked(envelope_header(0, len(message)) + message)[:-5])
        await anyio.sleep(10)  # the rest never comes

    async with raw_server(handler) as served:
        _no_proxy(monkeypatch)
        monkeypatch.setenv("HTTP_PROXY", served.url)
        transport = ConnectTransport("http://sandbox.invalid:50051", token=None)
        try:
            assert not transport.lean
            with anyio.fail_after(10):
                call = await transport.server_stream(
                    "Execute", pb.ExecuteRequest(), pb.ExecuteResponse
                )
                first = await call.next()
                assert isinstance(first, pb.ExecuteResponse)
                assert bytes(first.stdout or b"") == b"first"
                with anyio.move_on_after(0.1) as scope:
                    await call.next()
                assert scope.cancelled_caught
                with pytest.raises(StreamCut):
                    await call.next()
                assert call.cut_by_cancel
                await call.aclose()
        finally:
            await transport.aclose()
