"""The Connect protocol over ASGI: routing, codecs, compression, envelopes, errors, deadlines.

Unary RPCs take ``application/proto`` or ``application/json`` bodies and answer with the same
codec (errors as JSON with the HTTP status of their code). Streaming RPCs take
``application/connect+proto`` / ``application/connect+json``: enveloped messages, the last
response envelope being the JSON end-of-stream message (which carries any error; the HTTP
status is then 200). gzip is accepted on requests and used on responses when the client
offers it (``Accept-Encoding`` / ``Connect-Accept-Encoding``). ``Connect-Timeout-Ms`` sets a
deadline (``deadline_exceeded``). A client that goes away cancels its handler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.abc

from union.sandbox.core.wire import DecodeError, Message
from union.sandbox.core.wire.connect import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    PROTOCOL_VERSION,
    Code,
    ConnectError,
    EnvelopeReader,
    GzipLimitError,
    MessageTooLarge,
    end_stream,
    envelope_header,
    gunzip,
    gzip,
    parse_timeout_ms,
)

from .logs import log_event

__all__ = [
    "CallContext",
    "ConnectApp",
    "ResponseStream",
    "Rpc",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_COMPRESS_MIN = 1024
_UNARY_TYPES = {"application/proto": "proto", "application/json": "json"}
_STREAM_TYPES = {"application/connect+proto": "proto", "application/connect+json": "json"}


class ClientDisconnected(Exception):
    """The client went away before the call finished."""


@dataclasses.dataclass(frozen=True)
class Rpc:
    """One method of the service."""

    name: str
    kind: str
    """``"unary"``, ``"server_stream"`` or ``"client_stream"``."""
    request: type[Message]
    response: type[Message]
    handler: Callable[..., Awaitable[Any]]
    max_message_bytes: int | None
    """Largest request message (the whole body of a unary call); ``None``: no cap."""
    max_total_bytes: int | None = None
    """Client streams: the most request bytes of all messages together."""
    borrow: bool = False
    """Decode ``bytes`` fields as views of the request body (large payloads, no copy)."""


class Codec:
    def __init__(self, name: str) -> None:
        self.name = name
        self.unary_type = f"application/{name}"
        self.stream_type = f"application/connect+{name}"

    def encode_parts(self, message: Message) -> list[bytes]:
        if self.name == "proto":
            parts: list[bytes] = []
            message._encode_into(parts)
            return parts
        return [message.to_json_bytes()]

    def decode(
        self, cls: type[Message], data: bytes | bytearray | memoryview, borrow: bool
    ) -> Message:
        if self.name == "proto":
            return cls.decode(data, borrow=borrow)
        return cls.from_json_bytes(data)


PROTO = Codec("proto")
JSON = Codec("json")
_CODECS = {"proto": PROTO, "json": JSON}


@dataclasses.dataclass
class CallContext:
    """What a handler may know about its call, and log fields it may add."""

    rpc: Rpc
    codec: Codec
    headers: dict[str, str]
    peer: str
    http_version: str
    request_id: str
    deadline: float | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    disconnected: bool = False


class ResponseStream:
    """The response side of a server-streaming call."""

    def __init__(
        self, send: Send, codec: Codec, compress: bool, headers: list[tuple[bytes, bytes]]
    ):
        self._send = send
        self._codec = codec
        self._compress = compress
        self._headers = headers
        self._started = False
        # Serializes the stdout and stderr pumps' writes. Fast acquire: taking a free lock
        # does not yield to the event loop (a waiter still gets it handed over on release).
        self._lock = anyio.Lock(fast_acquire=True)
        self._tail: list[bytes] = []
        self.messages = 0
        self.bytes_out = 0

    def _frame(self, message: Message) -> list[bytes]:
        parts = self._codec.encode_parts(message)
        size = sum(len(p) for p in parts)
        if self._compress and size >= _COMPRESS_MIN:
            packed = gzip(b"".join(parts))
            return [envelope_header(FLAG_COMPRESSED, len(packed)), packed]
        return [envelope_header(0, size), *parts]

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self._send(
                {"type": "http.response.start", "status": 200, "headers": self._headers}
            )

    async def send(self, message: Message, *, last: bool = False) -> None:
        """Send one message (``last=True``: hold it back and send it together with the
        end-of-stream message, saving a write)."""
        framed = self._frame(message)
        self.messages += 1
        if last:
            self._tail = framed
            return
        body = b"".join(framed)
        self.bytes_out += len(body)
        async with self._lock:
            await self._start()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self, error: ConnectError | None) -> None:
        payload = end_stream(error)
        flags = FLAG_END_STREAM
        if self._compress and len(payload) >= _COMPRESS_MIN:
            payload = gzip(payload)
            flags |= FLAG_COMPRESSED
        body = b"".join([*self._tail, envelope_header(flags, len(payload)), payload])
        self._tail = []
        self.bytes_out += len(body)
        async with self._lock:
            await self._start()
            await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _accepts_gzip(value: str | None) -> bool:
    if not value:
        return False
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() == "gzip":
            q = params.replace(" ", "")
            return q not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class ConnectApp:
    """Serves the methods of one Connect service under ``/<service>/<method>`` (any path
    prefix is allowed, for proxies that forward ``/prefix/<service>/<method>``)."""

    def __init__(
        self,
        service: str,
        rpcs: list[Rpc],
        *,
        token: str | None,
        logger_name: str = "union.sandbox.server",
    ) -> None:
        self.service = service
        self.rpcs = {rpc.name: rpc for rpc in rpcs}
        # Compare digests: constant time, and the token's length does not leak either.
        self._token = hashlib.sha256(token.encode()).digest() if token is not None else None
        self._log = logging.getLogger(logger_name)
        self.watchers: anyio.abc.TaskGroup | None = None
        """Where a call's disconnect watcher runs when the ASGI server is known to send
        ``http.disconnect`` once a response is complete (hypercorn does; ``sandbox-server``
        sets this to a task group that outlives the calls). ``None``: each call gets a task
        group of its own, whose watcher is cancelled when the call ends, which works under
        any ASGI server but costs about 5% of the server's CPU per run."""
        self.watching = 0  # watchers running in ``watchers`` (they must not pile up)

    # -- entry -----------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        parts = path.rstrip("/").rsplit("/", 2)
        rpc = self.rpcs.get(parts[-1]) if len(parts) == 3 and parts[1] == self.service else None
        headers = _headers(scope)
        client = scope.get("client")
        ctx_peer = f"{client[0]}:{client[1]}" if client else "-"
        if rpc is None:
            await _plain_error(
                send, 404, ConnectError(Code.UNIMPLEMENTED, f"no such method: {path}")
            )
            return
        if scope.get("method") != "POST":
            await _plain_error(
                send,
                405,
                ConnectError(Code.UNIMPLEMENTED, f"{rpc.name} takes POST requests"),
                [(b"allow", b"POST")],
            )
            return
        streaming = rpc.kind != "unary"
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        codec_name = (_STREAM_TYPES if streaming else _UNARY_TYPES).get(content_type)
        if codec_name is None:
            accepted = _STREAM_TYPES if streaming else _UNARY_TYPES
            await _plain_error(
                send,
                415,
                ConnectError(
                    Code.INVALID_ARGUMENT,
                    f"{rpc.name} takes Content-Type {' or '.join(accepted)}, got "
                    f"{content_type or 'none'!r}",
                ),
                [(b"accept-post", ", ".join(accepted).encode())],
            )
            return
        ctx = CallContext(
            rpc=rpc,
            codec=_CODECS[codec_name],
            headers=headers,
            peer=ctx_peer,
            http_version=str(scope.get("http_version", "1.1")),
            request_id=secrets.token_hex(6),
        )
        started = time.perf_counter()
        error: ConnectError | None = None
        try:
            if rpc.kind == "unary":
                error = await self._unary(rpc, ctx, receive, send)
            elif rpc.kind == "server_stream":
                error = await self._server_stream(rpc, ctx, receive, send)
            else:
                error = await self._client_stream(rpc, ctx, receive, send)
        finally:
            fields = {
                "rpc": rpc.name,
                "code": "canceled" if ctx.disconnected else (error.code.value if error else "ok"),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "peer": ctx.peer,
                "http": ctx.http_version,
                "codec": ctx.codec.name,
                "request_id": ctx.request_id,
                **ctx.fields,
            }
            if error is not None and not ctx.disconnected:
                fields["error"] = error.message[:500]
            level = (
                logging.WARNING
                if error is not None
                and error.code in (Code.INTERNAL, Code.UNKNOWN, Code.UNAUTHENTICATED)
                else logging.INFO
            )
            log_event("rpc", level, **fields)

    # -- checks shared by every kind -------------------------------------------------------

    def _precheck(self, ctx: CallContext) -> ConnectError | None:
        version = ctx.headers.get("connect-protocol-version")
        if version is not None and version.strip() != PROTOCOL_VERSION:
            return ConnectError(
                Code.INVALID_ARGUMENT,
                f"Connect-Protocol-Version must be {PROTOCOL_VERSION!r}, got {version!r}",
            )
        if self._token is not None:
            supplied = ctx.headers.get("authorization", "")
            scheme, _, credential = supplied.strip().partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                hashlib.sha256(credential.strip().encode("latin-1")).digest(), self._token
            )
            if not ok:
                return ConnectError(
                    Code.UNAUTHENTICATED,
                    "missing bearer token (send 'Authorization: Bearer <token>')"
                    if not supplied
                    else "invalid bearer token",
                )
        try:
            timeout = parse_timeout_ms(ctx.headers.get("connect-timeout-ms"))
        except ValueError as exc:
            return ConnectError(Code.INVALID_ARGUMENT, str(exc))
        if timeout is not None:
            ctx.deadline = anyio.current_time() + timeout
        return None

    def _declared_too_big(
        self, rpc: Rpc, ctx: CallContext, limit: int | None
    ) -> ConnectError | None:
        length = ctx.headers.get("content-length")
        if limit is not None and length is not None and length.isdigit() and int(length) > limit:
            return _too_big(rpc, int(length), limit)
        return None

    # -- unary -----------------------------------------------------------------------------

    async def _unary(
        self, rpc: Rpc, ctx: CallContext, receive: Receive, send: Send
    ) -> ConnectError | None:
        error = self._precheck(ctx)
        encoding = (ctx.headers.get("content-encoding") or "identity").strip().lower()
        if error is None and encoding not in ("identity", "gzip"):
            error = ConnectError(
                Code.UNIMPLEMENTED, f"unsupported Content-Encoding {encoding!r} (use gzip)"
            )
        limit = rpc.max_message_bytes
        error = error or self._declared_too_big(rpc, ctx, limit)
        if error is not None:
            await _unary_error(send, error)
            return error
        try:
            body = await _read_body(receive, limit, rpc)
            if encoding == "gzip":
                try:
                    body = bytearray(gunzip(bytes(body), limit))
                except GzipLimitError:
                    raise _too_big(rpc, None, limit) from None
                except ValueError as exc:
                    raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
            request = _decode(ctx.codec, rpc, body)
            ctx.fields["bytes_in"] = len(body)
            result = await _call_with_watch(ctx, receive, lambda: rpc.handler(request, ctx), self)
        except ClientDisconnected:
            ctx.disconnected = True
            return None
        except ConnectError as exc:
            if not ctx.disconnected:
                await _unary_error(send, exc)
            return exc
        except Exception as exc:
            error = self._internal(ctx, exc)
            await _unary_error(send, error)
            return error
        if ctx.disconnected:
            return None
        payload = b"".join(ctx.codec.encode_parts(result))
        headers = [(b"content-type", ctx.codec.unary_type.encode())]
        if len(payload) >= _COMPRESS_MIN and _accepts_gzip(ctx.headers.get("accept-encoding")):
            payload = gzip(payload)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return None

    # -- server streaming ------------------------------------------------------------------

    def _stream_headers(self, ctx: CallContext, compress: bool) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", ctx.codec.stream_type.encode())]
        if compress:
            headers.append((b"connect-content-encoding", b"gzip"))
        return headers

    def _stream_encoding(self, ctx: CallContext) -> tuple[str, bool, ConnectError | None]:
        encoding = (ctx.headers.get("connect-content-encoding") or "identity").strip().lower()
        compress = _accepts_gzip(ctx.headers.get("connect-accept-encoding"))
        if encoding not in ("identity", "gzip"):
            return (
                encoding,
                compress,
                ConnectError(
                    Code.UNIMPLEMENTED,
                    f"unsupported Connect-Content-Encoding {encoding!r} (use gzip)",
                ),
            )
        return encoding, compress, None

    async def _server_stream(
        self, rpc: Rpc, ctx: CallContext, receive: Receive, send: Send
    ) -> ConnectError | None:
        encoding, compress, error = self._stream_encoding(ctx)
        stream = ResponseStream(send, ctx.codec, compress, self._stream_headers(ctx, compress))
        limit = None if rpc.max_message_bytes is None else rpc.max_message_bytes + 5
        error = self._precheck(ctx) or error or self._declared_too_big(rpc, ctx, limit)
        if error is not None:
            await stream.finish(error)
            return error
        try:
            body = await _read_body(receive, limit, rpc)
            flags, payload = _single_envelope(rpc, body)
            request = _decode(ctx.codec, rpc, _inflate(rpc, flags, payload, encoding))
            ctx.fields["bytes_in"] = len(body)
            await _call_with_watch(ctx, receive, lambda: rpc.handler(request, ctx, stream), self)
        except ClientDisconnected:
            ctx.disconnected = True
            return None
        except ConnectError as exc:
            error = exc
        except Exception as exc:
            error = self._internal(ctx, exc)
        if ctx.disconnected:
            return None
        ctx.fields["messages_out"] = stream.messages
        try:
            await stream.finish(error)
        except OSError:
            ctx.disconnected = True
        return error

    # -- client streaming ------------------------------------------------------------------

    async def _client_stream(
        self, rpc: Rpc, ctx: CallContext, receive: Receive, send: Send
    ) -> ConnectError | None:
        encoding, compress, error = self._stream_encoding(ctx)
        stream = ResponseStream(send, ctx.codec, compress, self._stream_headers(ctx, compress))
        error = self._precheck(ctx) or error
        if error is None and rpc.max_total_bytes is not None:
            error = self._declared_too_big(rpc, ctx, rpc.max_total_bytes + 1024 * 1024)
        if error is not None:
            await stream.finish(error)
            return error
        counter = {"bytes": 0, "ended": False}

        async def messages() -> AsyncGenerator[Message, None]:
            reader = EnvelopeReader(rpc.max_message_bytes)
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    ctx.disconnected = True
                    raise ClientDisconnected
                chunk = event.get("body", b"")
                counter["bytes"] += len(chunk)
                if not event.get("more_body", False):
                    counter["ended"] = True
                try:
                    for flags, payload in reader.feed(chunk):
                        if flags & FLAG_END_STREAM:
                            raise ConnectError(
                                Code.INVALID_ARGUMENT, "requests must not carry end-of-stream"
                            )
                        yield _decode(ctx.codec, rpc, _inflate(rpc, flags, payload, encoding))
                except MessageTooLarge as exc:
                    raise _too_big(rpc, exc.size, exc.limit) from None
                if not event.get("more_body", False):
                    if reader.pending:
                        raise ConnectError(
                            Code.INVALID_ARGUMENT, "the request ended inside a message"
                        )
                    return

        source = messages()
        try:
            result = await _call_with_deadline(ctx, lambda: rpc.handler(source, ctx))
            await stream.send(result, last=True)
        except ClientDisconnected:
            ctx.disconnected = True
        except ConnectError as exc:
            error = exc
        except Exception as exc:
            error = self._internal(ctx, exc)
        finally:
            await source.aclose()
        ctx.fields["bytes_in"] = counter["bytes"]
        if ctx.disconnected:
            return None
        if not counter["ended"]:
            # Let the client finish its upload before it reads the answer: an HTTP/1.1
            # client still sending would otherwise see a reset instead of the error.
            await _discard_body(receive, _DISCARD_LIMIT)
        try:
            await stream.finish(error)
        except OSError:
            ctx.disconnected = True
        return error

    def _internal(self, ctx: CallContext, exc: BaseException) -> ConnectError:
        self._log.error(
            "unexpected error in %s",
            ctx.rpc.name,
            exc_info=exc,
            extra={"fields": {"rpc": ctx.rpc.name, "request_id": ctx.request_id}},
        )
        return ConnectError(
            Code.INTERNAL,
            f"internal error: {type(exc).__name__}: {exc} (request id {ctx.request_id})",
        )


def _too_big(rpc: Rpc, size: int | None, limit: int | None) -> ConnectError:
    what = f"{size} bytes" if size is not None else "the request"
    return ConnectError(
        Code.RESOURCE_EXHAUSTED,
        f"{rpc.name}: {what} exceeds the server's limit of {limit} bytes per message",
    )


def _single_envelope(rpc: Rpc, body: bytes | bytearray) -> tuple[int, bytes]:
    """The one enveloped message of a server-streaming request."""
    reader = EnvelopeReader(rpc.max_message_bytes)
    try:
        envelopes = list(reader.feed(body))
    except MessageTooLarge as exc:
        raise _too_big(rpc, exc.size, exc.limit) from None
    if len(envelopes) != 1 or reader.pending:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"{rpc.name} takes exactly one enveloped request message, got "
            f"{len(envelopes)}" + (" and a truncated one" if reader.pending else ""),
        )
    return envelopes[0]


def _inflate(rpc: Rpc, flags: int, payload: bytes, encoding: str) -> bytes:
    if not flags & FLAG_COMPRESSED:
        return payload
    if encoding != "gzip":
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            "a compressed message arrived without Connect-Content-Encoding: gzip",
        )
    try:
        return gunzip(payload, rpc.max_message_bytes)
    except GzipLimitError:
        raise _too_big(rpc, None, rpc.max_message_bytes) from None
    except ValueError as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None


def _decode(codec: Codec, rpc: Rpc, data: bytes | bytearray) -> Message:
    try:
        return codec.decode(rpc.request, data, rpc.borrow)
    except DecodeError as exc:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"malformed {rpc.request.FULL_NAME} ({codec.name}): {exc}"
        ) from None


async def _read_body(receive: Receive, limit: int | None, rpc: Rpc) -> bytearray:
    body = bytearray()
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ClientDisconnected
        body += event.get("body", b"")
        if limit is not None and len(body) > limit:
            raise _too_big(rpc, None, limit)
        if not event.get("more_body", False):
            return body


_DISCARD_LIMIT = 64 * 1024 * 1024


async def _discard_body(receive: Receive, limit: int) -> None:
    """Read and drop the rest of a request body (at most ``limit`` bytes, 30 s)."""
    seen = 0
    with anyio.move_on_after(30):
        while seen <= limit:
            event = await receive()
            if event["type"] == "http.disconnect" or not event.get("more_body", False):
                return
            seen += len(event.get("body", b""))


async def _call_with_deadline(ctx: CallContext, call: Callable[[], Awaitable[Any]]) -> Any:
    if ctx.deadline is None:
        return await call()
    with anyio.move_on_after(max(ctx.deadline - anyio.current_time(), 0)) as scope:
        return await call()
    if scope.cancelled_caught:
        raise ConnectError(Code.DEADLINE_EXCEEDED, "the Connect-Timeout-Ms deadline expired")
    raise AssertionError("unreachable")  # pragma: no cover


async def _call_with_watch(
    ctx: CallContext,
    receive: Receive,
    call: Callable[[], Awaitable[Any]],
    app: ConnectApp,
) -> Any:
    """Run ``call`` while watching for the client to go away (which cancels it). With
    ``app.watchers`` set the watcher runs there and ends by itself at the
    ``http.disconnect`` that follows the response."""
    watchers = app.watchers
    if watchers is not None:
        with anyio.CancelScope() as scope:
            watch = _Watch(ctx, scope)
            watchers.start_soon(watch.run, receive, app)
            try:
                return await _call_with_deadline(ctx, call)
            finally:
                watch.done = True
        raise ClientDisconnected  # only the watcher cancels that scope
    outcome: list[Any] = []
    failure: list[Exception] = []

    async def watch_here(scope: anyio.CancelScope) -> None:
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                ctx.disconnected = True
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_here, tg.cancel_scope)
        try:
            outcome.append(await _call_with_deadline(ctx, call))
        except Exception as exc:
            failure.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if ctx.disconnected:
        raise ClientDisconnected
    if failure:
        raise failure[0]
    return outcome[0]


class _Watch:
    """A disconnect watcher that outlives its call: after the call it only waits for the
    server's ``http.disconnect`` (sent once the response is complete) and returns."""

    def __init__(self, ctx: CallContext, scope: anyio.CancelScope) -> None:
        self.ctx = ctx
        self.scope = scope  # the call's: cancelled when the client goes away
        self.done = False

    async def run(self, receive: Receive, app: ConnectApp) -> None:
        app.watching += 1
        try:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    break
        except Exception:
            return  # the server broke the channel: nothing left to watch
        finally:
            app.watching -= 1
        if not self.done:
            self.ctx.disconnected = True
            self.scope.cancel()


async def _unary_error(send: Send, error: ConnectError) -> None:
    await _plain_error(send, error.code.http_status, error)


async def _plain_error(
    send: Send, status: int, error: ConnectError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error.to_json(), separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    if error.code is Code.UNAUTHENTICATED:
        headers.append((b"www-authenticate", b'Bearer realm="sandbox-server"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
