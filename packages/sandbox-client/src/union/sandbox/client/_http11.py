"""A lean HTTP/1.1 transport for httpx, for plain ``http://`` endpoints reached without a
proxy (the usual case: a sandbox-server on loopback or in the same cluster).

httpx's default transport (httpcore over h11) costs about 0.6 ms of CPU per Connect call
here: h11's general state machine, a pool that scans and probes every pooled connection for
each request, and a timeout scope around every socket operation. This one keeps only what a
Connect client needs: one request per connection at a time, ``Content-Length`` or chunked
request bodies, ``Content-Length``, chunked or read-to-close response bodies, and a
last-in-first-out pool of idle connections of which only the one about to be used is
probed. Responses are plain :class:`httpx.Response` objects and failures are httpx's own
exceptions, so the code above it is the same for every transport.

What it does not do, and who does it instead: TLS, HTTP/2 and proxies stay with httpx's
default transport (see ``ConnectTransport``).
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import httpx

__all__ = ["Http11Transport", "ResponseBody"]

_READ_SIZE = 1 << 16
# A large chunk whose bytes have not arrived yet is received straight into a bytes object of
# up to this size, without going through the connection's buffer.
_DIRECT_READ_SIZE = 1 << 18
_MAX_HEAD = 64 * 1024
_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_CHUNK_LINE = 4096
_MAX_IDLE = 64
# Idle connections older than this are closed rather than reused (the server's own idle
# timeout is 60 s; something in between may have a shorter one).
_MAX_IDLE_AGE_S = 30.0
# Bodies up to this size are sent in the same write as the request head.
_COALESCE = 1 << 16

Origin = tuple[bytes, str, int]


class _Connection:
    """One TCP connection and the bytes received on it but not yet consumed."""

    __slots__ = ("buffer", "idle_since", "reusable", "sock", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.reusable = True

    async def fill(self, what: str) -> None:
        """Receive more bytes into the buffer; EOF and socket errors become httpx errors
        naming ``what`` was being read."""
        try:
            self.buffer += await self.stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            self.reusable = False
            raise httpx.RemoteProtocolError(f"server closed the connection during {what}") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.reusable = False
            raise httpx.ReadError(f"reading {what}: {_describe(exc)}") from exc

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.reusable = False
            raise httpx.WriteError(f"sending the request: {_describe(exc)}") from exc

    def went_stale(self, now: float) -> bool:
        """Whether this idle connection should not be reused: too old, or readable (an idle
        HTTP/1.1 connection has nothing to read unless the server closed it)."""
        return bool(self.buffer) or now - self.idle_since > _MAX_IDLE_AGE_S or self.readable()

    def readable(self) -> bool:
        """Whether the server sent something (or closed) that is not read yet."""
        fd = self.sock.fileno()
        if fd < 0:
            return True  # closed under us (asyncio closes a socket whose write failed)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        self.reusable = False
        await self.stream.aclose()


class _EarlyResponse(Exception):
    """The server answered while the request body was still being sent."""


def _describe(exc: BaseException) -> str:
    """``Type: message``, with the cause anyio wraps (its stream errors carry no message)."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    cause = exc.__cause__
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _protocol_error(message: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"malformed HTTP/1.1 response: {message}")


def _parse_head(head: bytes) -> tuple[int, bool, list[tuple[bytes, bytes]]]:
    """The status, whether the response is HTTP/1.1 and the header fields of a response
    head (without its final blank line)."""
    bare = head.replace(b"\r\n", b"")
    if b"\n" in bare or b"\r" in bare:
        raise _protocol_error("a CR or LF outside a line ending")
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status_text = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not status_text.isdigit():
        raise _protocol_error(f"bad status line {lines[0][:80]!r}")
    status = int(status_text)
    if status < 100 or (len(rest) > 3 and rest[3:4] != b" "):
        raise _protocol_error(f"bad status line {lines[0][:80]!r}")
    if status == 101:
        raise _protocol_error("101 Switching Protocols to a request that asked for no upgrade")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
            raise _protocol_error(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return status, version == b"HTTP/1.1", headers


class ResponseBody(httpx.AsyncByteStream):
    """The body of one response, read as it arrives. Closing it gives the connection back
    to the pool when the body was read to its end, and closes the connection otherwise."""

    def __init__(
        self,
        transport: Http11Transport,
        origin: Origin,
        conn: _Connection,
        *,
        chunked: bool,
        length: int | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._chunked = chunked
        # Where the framing stands between two reads. Each step changes it only once it has
        # consumed what it stands for, and consumes only after its last await, so a read
        # cancelled at any await leaves the body readable from where it was (see receive).
        # Bytes left in the current chunk (chunked) or in the body (Content-Length);
        # None: read until the server closes the connection.
        self._remaining = 0 if chunked else length
        self._chunk_end_due = False  # the CR LF after a chunk's data is still to be read
        self._in_trailer = False  # the last chunk was read; trailer lines follow
        self._done = length == 0 and not chunked
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self.receive():
            yield data

    async def receive(self) -> bytes:
        """The next bytes of the body as soon as some are there; ``b""`` at its end.

        Cancel-safe, unlike iterating the body (an async generator, which a cancellation
        finishes): a cancelled call consumed nothing, and a part of the framing it received
        stays in the connection's buffer for the next call. The Connect client reads a
        run's output stream with it, so that a caller's cancelled read loses nothing."""
        while not self._done:
            data = await self._next()
            if data:
                return data
        return b""

    async def _next(self) -> bytes:
        if self._remaining is None:
            return await self._read_to_close()
        if self._remaining == 0 and self._chunked:
            await self._start_chunk()
            if self._done:
                return b""
        return await self._take(self._remaining)

    async def _take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body, as soon as some are there."""
        conn = self._conn
        buffer = conn.buffer
        if not buffer:
            if limit > _READ_SIZE:
                data = await self._receive_direct(min(limit, _DIRECT_READ_SIZE))
                self._consumed(len(data))
                return data
            await conn.fill("the response body")
        size = min(limit, len(buffer))
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
        self._consumed(size)
        return data

    async def _receive_direct(self, size: int) -> bytes:
        try:
            return await self._conn.stream.receive(size)
        except anyio.EndOfStream:
            self._conn.reusable = False
            raise httpx.RemoteProtocolError(
                "server closed the connection before the end of the response body"
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._conn.reusable = False
            raise httpx.ReadError(f"reading the response body: {_describe(exc)}") from exc

    def _consumed(self, size: int) -> None:
        assert self._remaining is not None
        self._remaining -= size
        if self._remaining == 0 and not self._chunked:
            self._done = True

    async def _line(self, what: str) -> bytes:
        conn = self._conn
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > _MAX_CHUNK_LINE:
                raise _protocol_error(f"{what} longer than {_MAX_CHUNK_LINE} bytes")
            await conn.fill(what)
        line = bytes(conn.buffer[:end])
        del conn.buffer[: end + 2]
        return line

    async def _start_chunk(self) -> None:
        """Read the end of the previous chunk and the size line of the next; after the last
        chunk, its trailer section. Each line is consumed whole and recorded at once."""
        if self._chunk_end_due:
            if await self._line("a chunk's end"):
                raise _protocol_error("chunk data longer than its size")
            self._chunk_end_due = False
        if not self._in_trailer:
            size_text = (await self._line("a chunk size")).partition(b";")[0].strip(b" \t")
            if not _HEX_SIZE.fullmatch(size_text):
                raise _protocol_error(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size:
                self._remaining = size
                self._chunk_end_due = True
                return
            self._in_trailer = True
        while await self._line("the trailer section"):
            pass  # trailer fields: a Connect client has no use for them
        self._done = True

    async def _read_to_close(self) -> bytes:
        conn = self._conn
        conn.reusable = False
        if conn.buffer:
            data = bytes(conn.buffer)
            conn.buffer.clear()
            return data
        try:
            return await conn.stream.receive(_DIRECT_READ_SIZE)
        except anyio.EndOfStream:
            self._done = True
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise httpx.ReadError(f"reading the response body: {_describe(exc)}") from exc

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        await self._transport._release(self._origin, self._conn, reusable=self._done)


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over plain TCP, with a pool of keep-alive connections per origin."""

    def __init__(self, *, connect_timeout_s: float | None = 10.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"this transport speaks plain http only, not {url.scheme!r}: {url}"
            )
        head = self._request_head(request)
        origin: Origin = (b"http", url.host, url.port or 80)
        conn = await self._take_idle(origin) or await self._connect(origin)
        self._busy.add(conn)
        try:
            status, headers, body = await self._exchange(conn, origin, request, head)
        except BaseException:
            self._busy.discard(conn)
            with anyio.CancelScope(shield=True):
                await conn.aclose()
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    @staticmethod
    def _request_head(request: httpx.Request) -> bytes:
        fields = request.headers.raw
        lines = [request.method.encode(), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in fields:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # One CR LF per line and no NUL: a CR or LF inside a header would start another one.
        breaks = len(fields) + 2
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
            raise httpx.LocalProtocolError("the request line or a header has a CR, LF or NUL in it")
        return head

    async def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.went_stale(now):
                return conn
            with anyio.CancelScope(shield=True):
                await conn.aclose()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise RuntimeError("the transport is closed")
        _, host, port = origin
        try:
            with anyio.fail_after(self._connect_timeout_s):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(stream)

    async def _exchange(
        self, conn: _Connection, origin: Origin, request: httpx.Request, head: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], ResponseBody]:
        stream = request.stream
        try:
            if isinstance(stream, httpx.ByteStream):
                content = request.content
                if len(content) <= _COALESCE:
                    await conn.send(head + content)
                else:
                    await conn.send(head)
                    await conn.send(content)
            elif isinstance(stream, httpx.AsyncByteStream):
                await conn.send(head)
                await self._send_chunked(conn, stream)
            else:
                raise TypeError("an async transport needs an async request body")
        except _EarlyResponse:
            conn.reusable = False  # the rest of the request body was never sent
        except httpx.WriteError:
            # The server may have answered (an error) and closed without reading all of
            # the body: its answer says more than the write error does.
            conn.reusable = False
            try:
                return await self._read_response(conn, origin, request)
            except httpx.HTTPError:
                pass
            raise
        return await self._read_response(conn, origin, request)

    @staticmethod
    async def _send_chunked(conn: _Connection, stream: httpx.AsyncByteStream) -> None:
        """Send a streamed body, stopping (:class:`_EarlyResponse`) when the server answers
        before it has all of it (an error, typically, after which it may close without
        reading the rest: waiting for the write to fail would lose the answer)."""
        async for part in stream:
            if not part:
                continue
            if conn.readable():
                raise _EarlyResponse
            size_line = b"%x\r\n" % len(part)
            if len(part) <= _COALESCE:
                await conn.send(b"".join((size_line, part, b"\r\n")))
            else:
                await conn.send(size_line)
                await conn.send(part)
                await conn.send(b"\r\n")
        await conn.send(b"0\r\n\r\n")

    async def _read_response(
        self, conn: _Connection, origin: Origin, request: httpx.Request
    ) -> tuple[int, list[tuple[bytes, bytes]], ResponseBody]:
        while True:
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                if len(conn.buffer) > _MAX_HEAD:
                    raise _protocol_error(f"response head longer than {_MAX_HEAD} bytes")
                await conn.fill("the response head")
            head = bytes(conn.buffer[:end])
            del conn.buffer[: end + 4]
            status, keep_alive, headers = _parse_head(head)
            if not 100 <= status < 200:
                break
            # An interim response (100 Continue and the like): the real one follows.
        chunked = False
        length: int | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise _protocol_error(f"unsupported Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif lowered == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _protocol_error(f"bad Content-Length {value[:40]!r}")
                length = int(value)
            elif lowered == b"connection" and b"close" in value.lower():
                keep_alive = False
        if chunked and length is not None:
            raise _protocol_error("both Transfer-Encoding and Content-Length")
        if not keep_alive:
            conn.reusable = False
        if request.method == "HEAD" or status in (204, 304):
            chunked, length = False, 0
        body = ResponseBody(self, origin, conn, chunked=chunked, length=length)
        return status, headers, body

    async def _release(self, origin: Origin, conn: _Connection, *, reusable: bool) -> None:
        self._busy.discard(conn)
        if reusable and conn.reusable and not self._closed:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < _MAX_IDLE:
                conn.idle_since = time.monotonic()
                idle.append(conn)
                return
        with anyio.CancelScope(shield=True):
            await conn.aclose()

    async def aclose(self) -> None:
        self._closed = True
        connections = [conn for idle in self._idle.values() for conn in idle]
        connections += self._busy
        self._idle.clear()
        self._busy.clear()
        with anyio.CancelScope(shield=True):
            for conn in connections:
                await conn.aclose()
