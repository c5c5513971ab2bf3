"""The I/O-free parts of the Connect protocol (https://connectrpc.com/docs/protocol), shared by
``sandbox-server`` and the remote client: error codes and their HTTP statuses, the error JSON,
the streaming envelope (1 flag byte, 4-byte big-endian length, payload), the end-of-stream
message, timeouts and gzip.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from ._proto import DecodeError, Message
from .messages import ErrorDetail

__all__ = [
    "ENVELOPE_HEADER_SIZE",
    "Code",
    "ConnectError",
    "EnvelopeReader",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "GzipLimitError",
    "MessageTooLarge",
    "PROTOCOL_VERSION",
    "code_for_http_status",
    "end_stream",
    "envelope",
    "envelope_header",
    "gunzip",
    "gzip",
    "parse_end_stream",
    "parse_timeout_ms",
]

PROTOCOL_VERSION = "1"
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
ENVELOPE_HEADER_SIZE = _HEADER.size


class Code(str, enum.Enum):
    """Connect error codes, with the HTTP status a unary error response carries."""

    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def code_for_http_status(status: int) -> Code:
    """The code a client infers from an HTTP status without a Connect error body (a proxy
    answered, not the server)."""
    return {
        400: Code.INTERNAL,
        401: Code.UNAUTHENTICATED,
        403: Code.PERMISSION_DENIED,
        404: Code.UNIMPLEMENTED,
        429: Code.UNAVAILABLE,
        502: Code.UNAVAILABLE,
        503: Code.UNAVAILABLE,
        504: Code.UNAVAILABLE,
    }.get(status, Code.UNKNOWN)


class ConnectError(Exception):
    """A Connect RPC failed with ``code``. ``detail`` (``sandbox.v2.ErrorDetail``), when the
    server sent one, names the exception the on-device engine raised for the same input."""

    def __init__(
        self,
        code: Code | str,
        message: str = "",
        *,
        detail: ErrorDetail | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        try:
            self.code = Code(code)
        except ValueError:
            self.code = Code.UNKNOWN
        self.message = message
        self.detail = detail
        self.details = details or []
        super().__init__(f"[{self.code.value}] {message}" if message else f"[{self.code.value}]")

    def to_json(self) -> dict[str, Any]:
        """The Connect error object: ``{"code", "message", "details"}``."""
        out: dict[str, Any] = {"code": self.code.value}
        if self.message:
            out["message"] = self.message
        details = list(self.details)
        if self.detail is not None:
            details.append(
                {
                    "type": ErrorDetail.FULL_NAME,
                    "value": _b64(self.detail.encode()),
                    "debug": self.detail.to_json(),
                }
            )
        if details:
            out["details"] = details
        return out

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, obj: Any, *, http_status: int | None = None) -> ConnectError:
        """Parse an error object; anything malformed becomes a best-effort error that keeps
        what is known (never raises)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
            code = code_for_http_status(http_status) if http_status else Code.UNKNOWN
            return cls(code, f"malformed error from server: {str(obj)[:200]}")
        message = obj.get("message")
        detail = None
        details: list[dict[str, Any]] = []
        raw_details = obj.get("details")
        if isinstance(raw_details, list):
            for item in raw_details:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == ErrorDetail.FULL_NAME and isinstance(item.get("value"), str):
                    try:
                        detail = ErrorDetail.decode(_unb64(item["value"]))
                        continue
                    except (DecodeError, ValueError):
                        pass
                details.append(item)
        return cls(
            obj["code"],
            message if isinstance(message, str) else "",
            detail=detail,
            details=details,
        )

    @classmethod
    def from_json_bytes(cls, data: bytes, *, http_status: int | None = None) -> ConnectError:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            code = code_for_http_status(http_status) if http_status else Code.UNKNOWN
            text = data[:200].decode("utf-8", "replace")
            return cls(code, f"HTTP {http_status}: {text}" if http_status else text)
        return cls.from_json(obj, http_status=http_status)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def envelope_header(flags: int, length: int) -> bytes:
    """The 5-byte prefix of one enveloped message."""
    return _HEADER.pack(flags, length)


def envelope(payload: bytes | Message, flags: int = 0) -> bytes:
    """One enveloped message (``payload`` already encoded, or a message to encode)."""
    data = payload.encode() if isinstance(payload, Message) else payload
    return _HEADER.pack(flags, len(data)) + data


def end_stream(
    error: ConnectError | None = None, metadata: dict[str, list[str]] | None = None
) -> bytes:
    """The JSON payload of the end-of-stream message."""
    obj: dict[str, Any] = {}
    if error is not None:
        obj["error"] = error.to_json()
    if metadata:
        obj["metadata"] = metadata
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_end_stream(payload: bytes) -> ConnectError | None:
    """The error of an end-of-stream message (``None`` for success)."""
    try:
        obj = json.loads(payload) if payload else {}
    except (ValueError, UnicodeDecodeError):
        return ConnectError(Code.INTERNAL, "malformed end-of-stream message")
    if not isinstance(obj, dict):
        return ConnectError(Code.INTERNAL, "malformed end-of-stream message")
    error = obj.get("error")
    if error is None:
        return None
    return ConnectError.from_json(error)


class GzipLimitError(ValueError):
    """A gzip body inflates past the allowed size."""


def gzip(data: bytes | memoryview, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def gunzip(data: bytes | memoryview, max_size: int | None = None) -> bytes:
    """Inflate ``data``; more than ``max_size`` bytes out raises :class:`GzipLimitError`
    (a decompression bomb never gets allocated)."""
    decompressor = zlib.decompressobj(31)
    limit = 0 if max_size is None else max_size + 1
    try:
        out = decompressor.decompress(data, limit)
    except zlib.error as exc:
        raise ValueError(f"invalid gzip data: {exc}") from None
    if max_size is not None and len(out) > max_size:
        raise GzipLimitError(f"gzip data inflates past {max_size} bytes")
    if not decompressor.eof:
        raise ValueError("invalid gzip data: truncated")
    return out


def parse_timeout_ms(value: str | None) -> float | None:
    """Seconds from a ``Connect-Timeout-Ms`` header (at most 10 digits); ``None`` if absent.
    Raises ``ValueError`` for a malformed value."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        raise ValueError(f"Connect-Timeout-Ms must be 1 to 10 digits, got {value!r}")
    return int(value) / 1000.0


class EnvelopeReader:
    """Split a byte stream into enveloped messages. Feed it chunks; iterate the complete
    ``(flags, payload)`` pairs. A message announcing more than ``max_size`` bytes raises
    :class:`MessageTooLarge` before any of it is buffered. Each payload is copied once (a
    payload inside one chunk is sliced out of it; one spanning chunks is joined)."""

    def __init__(self, max_size: int | None = None) -> None:
        self._chunks: list[bytes | memoryview] = []
        self._size = 0
        self._max = max_size
        self._header: tuple[int, int] | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, bytes]]:
        if data:
            self._chunks.append(data if isinstance(data, bytes) else bytes(data))
            self._size += len(data)
        while True:
            if self._header is None:
                if self._size < ENVELOPE_HEADER_SIZE:
                    return
                flags, length = _HEADER.unpack(self._take(ENVELOPE_HEADER_SIZE))
                if self._max is not None and length > self._max:
                    raise MessageTooLarge(length, self._max)
                self._header = (flags, length)
            flags, length = self._header
            if self._size < length:
                return
            self._header = None
            yield flags, self._take(length)

    def _take(self, n: int) -> bytes:
        if n == 0:
            return b""
        chunks = self._chunks
        self._size -= n
        first = chunks[0]
        if len(first) == n:
            chunks.pop(0)
            return first if isinstance(first, bytes) else bytes(first)
        if len(first) > n:
            view = first if isinstance(first, memoryview) else memoryview(first)
            chunks[0] = view[n:]
            return bytes(view[:n])
        parts: list[bytes | memoryview] = []
        need = n
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.pop(0))
                need -= len(chunk)
            else:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                parts.append(view[:need])
                chunks[0] = view[need:]
                need = 0
        return b"".join(parts)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held back (its header included)."""
        return self._size + (ENVELOPE_HEADER_SIZE if self._header is not None else 0)


class MessageTooLarge(ValueError):
    """An enveloped message longer than the allowed size."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
