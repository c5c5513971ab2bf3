"""A minimal Connect client over httpx for ``sandbox.v2.SandboxService`` (binary protobuf
codec): unary calls, server streams read incrementally, and client streams sent as they are
produced. Transport failures become :class:`ConnectError` with code ``unavailable``."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
import httpx

from union.sandbox.core.wire import DecodeError, Message
from union.sandbox.core.wire.connect import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    PROTOCOL_VERSION,
    Code,
    ConnectError,
    EnvelopeReader,
    envelope_header,
    gunzip,
    gzip,
    parse_end_stream,
)
from union.sandbox.core.wire.messages import SERVICE

from ._http11 import Http11Transport, ResponseBody

__all__ = ["ConnectTransport", "StreamCall", "StreamCut"]

_M = TypeVar("_M", bound=Message)
_STREAM_TYPE = "application/connect+proto"
_UNARY_TYPE = "application/proto"
_COMPRESS_MIN = 1024
_MAX_RESPONSE_MESSAGE = 256 * 1024 * 1024
_MAX_POOLS = 64


def _direct_http(url: httpx.URL) -> bool:
    """Whether ``url`` is plain http reached without a proxy (httpx would use one named by
    ``HTTP_PROXY`` or ``ALL_PROXY`` unless ``NO_PROXY`` exempts the host)."""
    if url.scheme != "http":
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(url.host))  # reads NO_PROXY


def _nothing() -> None:
    pass


class StreamCut(Exception):
    """A response stream ended without its end-of-stream message (the server died, or the
    connection was dropped on the way)."""


class StreamCall:
    """One server-streaming response, read message by message.

    Over the lean transport, reading is cancel-safe: a :meth:`next` cancelled at any await
    consumed nothing that is lost (the body's framing state and bytes received so far stay
    in the body and the envelope reader), so the caller can go on reading. httpx's own
    transport (TLS, HTTP/2, proxies) reads through async generators that a cancellation
    finishes, closing the connection: the stream then reports a cut, and
    :attr:`cut_by_cancel` says why.
    """

    def __init__(
        self,
        response: httpx.Response,
        response_cls: type[Message],
        *,
        borrow: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._response = response
        self._cls = response_cls
        self._borrow = borrow
        self._on_close = on_close
        body = response.stream
        self._receive: Callable[[], Awaitable[bytes]]
        if isinstance(body, ResponseBody):
            self._receive = body.receive
        else:
            self._raw: AsyncIterator[bytes] = response.aiter_raw()
            self._receive = self._receive_httpx
        self._reader = EnvelopeReader(_MAX_RESPONSE_MESSAGE)
        self._ready: list[tuple[int, bytes]] = []
        self._compressed = response.headers.get("connect-content-encoding", "identity") == "gzip"
        self.finished = False
        self.closed = False
        self.cut_by_cancel = False

    async def _receive_httpx(self) -> bytes:
        """The next bytes of an httpx response body; ``b""`` at its end."""
        try:
            return await self._raw.__anext__()
        except StopAsyncIteration:
            return b""
        except anyio.get_cancelled_exc_class():
            self.cut_by_cancel = True  # httpx closed the connection on the way out
            raise

    async def next(self) -> Message | None:
        """The next message; ``None`` after a successful end of stream. Raises
        :class:`ConnectError` for an error end of stream and :class:`StreamCut` when the
        stream stops without one."""
        if self.finished:
            return None
        while not self._ready:
            try:
                chunk = await self._receive()
            except httpx.HTTPError as exc:
                raise StreamCut(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                raise StreamCut("the stream ended without an end-of-stream message")
            try:
                self._ready.extend(self._reader.feed(chunk))
            except ValueError as exc:
                raise ConnectError(Code.INTERNAL, f"bad response envelope: {exc}") from None
        flags, payload = self._ready.pop(0)
        if flags & FLAG_COMPRESSED:
            if not self._compressed:
                raise ConnectError(Code.INTERNAL, "compressed message without an encoding")
            payload = gunzip(payload, _MAX_RESPONSE_MESSAGE)
        if flags & FLAG_END_STREAM:
            self.finished = True
            error = parse_end_stream(payload)
            if error is not None:
                raise error
            return None
        try:
            return self._cls.decode(payload, borrow=self._borrow)
        except DecodeError as exc:
            raise ConnectError(Code.INTERNAL, f"malformed response: {exc}") from None

    async def aclose(self, *, expect_end: bool = False) -> None:
        """Close the response. A stream that ended (or, with ``expect_end``, whose
        end-of-stream message is due next) is read to the end of its HTTP body first, for
        at most a second, so that its connection goes back to the pool."""
        if self.closed:
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close()
        if self.finished or expect_end:
            with anyio.move_on_after(1):
                if not self.finished:
                    try:
                        await self.next()
                    except Exception:
                        pass  # an error end of stream still finishes it; a cut one does not
                if self.finished:
                    # The chunked-encoding terminator follows the end-of-stream message.
                    try:
                        while await self._receive():
                            pass
                    except httpx.HTTPError:
                        pass
        await self._response.aclose()


class ConnectTransport:
    """Calls ``/<service>/<method>`` on ``endpoint`` with the binary protobuf codec."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None,
        compression: str | None = None,
        http2: bool = False,
        connect_timeout_s: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        if compression not in (None, "gzip"):
            raise ValueError(f"compression must be None or 'gzip', got {compression!r}")
        headers = {"connect-protocol-version": PROTOCOL_VERSION}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.endpoint = endpoint.rstrip("/")
        self._gzip = compression == "gzip"
        self._headers = headers
        # The headers of every streaming call, built once (httpx copies what it is given).
        self._stream_headers = {"content-type": _STREAM_TYPE}
        if self._gzip:
            self._stream_headers["connect-accept-encoding"] = "gzip"
            self._stream_headers["connect-content-encoding"] = "gzip"
        self._http2 = http2
        self._timeout = httpx.Timeout(None, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._base_url = httpx.URL(self.endpoint + "/")
        # Plain HTTP/1.1 without a proxy goes straight to our lean transport (skipping
        # httpx's client layers: cookies, redirects, auth hooks, header merging); TLS,
        # HTTP/2 and proxies go through an httpx client with its own transport.
        self._lean: Http11Transport | None = None
        if not http2 and _direct_http(self._base_url):
            self._lean = Http11Transport(connect_timeout_s=connect_timeout_s)
            self._headers["user-agent"] = "union-sandbox-client"
        # One TLS context for every pool: building one (loading the CA bundle) takes tens
        # of milliseconds.
        self._ssl_context = httpx.create_ssl_context(verify=verify) if self._lean is None else None
        # Many small httpx connection pools rather than one big one: httpx's pool scans all
        # its connections for every request (and probes each idle one with a syscall),
        # which gets slow with dozens of concurrent streams. A pool is added when every pool
        # has a call in flight, up to _MAX_POOLS; each call goes to the least busy pool, so
        # a pool mostly holds the one connection it is about to use. HTTP/2 multiplexes its
        # calls on one connection: one pool.
        self._max_pools = 1 if http2 else _MAX_POOLS
        self._clients = [] if self._lean is not None else [self._new_client()]
        self._load = [0] * len(self._clients)  # calls in flight per httpx pool
        self._urls: dict[str, httpx.URL] = {}

    @property
    def lean(self) -> bool:
        """Whether calls go through the lean HTTP/1.1 transport (plain http, no proxy)."""
        return self._lean is not None

    def _new_client(self) -> httpx.AsyncClient:
        assert self._ssl_context is not None
        return httpx.AsyncClient(
            base_url=self.endpoint,
            headers=self._headers,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            http1=not self._http2,
            http2=self._http2,
            verify=self._ssl_context,
        )

    def _checkout(self) -> int:
        """The index of the least busy pool (a new one if all are busy and there is room),
        counted busier by one until :meth:`_checkin`."""
        load = self._load
        low = min(load)
        if low and len(load) < self._max_pools:
            self._clients.append(self._new_client())
            load.append(0)
            index = len(load) - 1
        else:
            index = load.index(low)
        load[index] += 1
        return index

    def _checkin(self, index: int) -> None:
        self._load[index] -= 1

    def _url(self, method: str) -> httpx.URL:
        """The absolute URL of ``method``, built once: given a relative one, httpx would
        parse it and merge it with the base URL for every request."""
        url = self._urls.get(method)
        if url is None:
            base = self._base_url
            url = base.copy_with(raw_path=base.raw_path + f"{SERVICE}/{method}".encode())
            self._urls[method] = url
        return url

    def _unreachable(self, exc: BaseException) -> ConnectError:
        return ConnectError(
            Code.UNAVAILABLE,
            f"cannot reach sandbox-server at {self.endpoint}: {type(exc).__name__}: {exc}",
        )

    async def unary(
        self,
        method: str,
        request: Message,
        response_cls: type[_M],
        *,
        timeout_s: float | None = None,
    ) -> _M:
        body = request.encode()
        headers = {"content-type": _UNARY_TYPE}
        if self._gzip:
            headers["accept-encoding"] = "gzip"
            if len(body) >= _COMPRESS_MIN:
                body = gzip(body)
                headers["content-encoding"] = "gzip"
        else:
            headers["accept-encoding"] = "identity"
        if timeout_s is not None:
            headers["connect-timeout-ms"] = str(max(1, int(timeout_s * 1000)))
        try:
            response, release = await self._send(method, body, headers)
            try:
                await response.aread()
            finally:
                await response.aclose()
                release()
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        content = response.content  # httpx already inflated a gzip Content-Encoding
        if response.status_code != 200:
            raise ConnectError.from_json_bytes(content, http_status=response.status_code)
        try:
            return response_cls.decode(content)
        except DecodeError as exc:
            raise ConnectError(Code.INTERNAL, f"malformed {method} response: {exc}") from None

    async def _send(
        self, method: str, content: bytes | AsyncIterable[bytes], headers: dict[str, str]
    ) -> tuple[httpx.Response, Callable[[], None]]:
        """POST to ``method``; the response (its body not read yet) and what to call once it
        is closed."""
        url = self._url(method)
        if self._lean is not None:
            request = httpx.Request(
                "POST", url, headers={**self._headers, **headers}, content=content
            )
            return await self._lean.handle_async_request(request), _nothing
        index = self._checkout()
        client = self._clients[index]
        try:
            request = client.build_request("POST", url, content=content, headers=headers)
            response = await client.send(request, stream=True)
        except BaseException:
            self._checkin(index)
            raise
        return response, lambda: self._checkin(index)

    def _frame(self, message: Message) -> bytes:
        """One enveloped message, built with a single copy of its payload."""
        parts: list[bytes] = []
        message._encode_into(parts)
        size = sum(len(part) for part in parts)
        if self._gzip and size >= _COMPRESS_MIN:
            packed = gzip(b"".join(parts))
            return envelope_header(FLAG_COMPRESSED, len(packed)) + packed
        return b"".join([envelope_header(0, size), *parts])

    async def _open_stream(
        self,
        method: str,
        content: bytes | AsyncIterable[bytes],
        response_cls: type[Message],
        extra: dict[str, str] | None = None,
        borrow: bool = False,
    ) -> StreamCall:
        headers = {**self._stream_headers, **extra} if extra else self._stream_headers
        try:
            response, release = await self._send(method, content, headers)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        call = StreamCall(response, response_cls, borrow=borrow, on_close=release)
        if response.status_code != 200:
            try:
                body = await response.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await call.aclose()
            raise ConnectError.from_json_bytes(body, http_status=response.status_code)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith(_STREAM_TYPE):
            await call.aclose()
            raise ConnectError(
                Code.INTERNAL, f"{method}: unexpected response Content-Type {content_type!r}"
            )
        return call

    async def server_stream(
        self,
        method: str,
        request: Message,
        response_cls: type[Message],
        *,
        timeout_s: float | None = None,
        borrow: bool = False,
    ) -> StreamCall:
        """Open a server stream; ``borrow=True`` decodes ``bytes`` fields as memoryviews."""
        extra = {"connect-timeout-ms": str(max(1, int(timeout_s * 1000)))} if timeout_s else None
        return await self._open_stream(method, self._frame(request), response_cls, extra, borrow)

    async def client_stream(
        self,
        method: str,
        requests: AsyncIterable[Message],
        response_cls: type[_M],
        *,
        content_length: int | None = None,
    ) -> _M:
        """Send ``requests`` as they are produced; the single response message."""

        async def body() -> AsyncGenerator[bytes, None]:
            async for message in requests:
                yield self._frame(message)

        # Closed here, whatever happens: a body the server answered early (an error) is
        # left unfinished, and its producer (reading a file, say) must stop now.
        framed = body()
        try:
            call = await self._open_stream(method, framed, response_cls)
        finally:
            with anyio.CancelScope(shield=True):
                await framed.aclose()
                if isinstance(requests, AsyncGenerator):
                    await requests.aclose()
        try:
            result = await call.next()
            if result is None:
                raise ConnectError(Code.INTERNAL, f"{method}: no response message")
            end = await call.next()
            if end is not None:
                raise ConnectError(Code.INTERNAL, f"{method}: more than one response message")
        except StreamCut as exc:
            raise ConnectError(Code.UNAVAILABLE, f"{method}: {exc}") from None
        finally:
            await call.aclose()
        assert isinstance(result, response_cls)
        return result

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        for client in self._clients:
            await client.aclose()
