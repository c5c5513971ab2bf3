"""The HTTP proxy front end: ``CONNECT host:port`` tunnels and absolute-form forwarding.

``HTTPS_PROXY`` users (pip, curl, requests, httpx) send ``CONNECT host:port HTTP/1.1`` and
then speak TLS through the tunnel; ``HTTP_PROXY`` users send ``GET http://host/path
HTTP/1.1``, which is forwarded to the origin in origin-form with ``Connection: close``. Both go
through the same :meth:`RuleSet.decide` check first.

Replies a program can act on: 403 with ``X-Union-Sandbox-Refused: <reason>`` for a policy
refusal; 407 when the proxy requires its run's credentials (``Proxy-Authorization: Basic``,
which every common client takes from the proxy URL) and they are missing or wrong; 400
(malformed request), 408 (request head too slow), 431 (head over the limit), 502 (name did
not resolve, or connecting failed) and 504 (connecting timed out), each with
``X-Union-Sandbox-Error: <reason>``. The request head is parsed strictly (HTTP/1.0 or 1.1,
CRLF line ends, no line folding, no user information in the authority).
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import re
import socket

import anyio

from .context import ProxyContext, tunnel
from .log import Protocol
from .sockio import DialError, Reader, dial, linger_close, send_all

__all__ = [
    "BadRequest",
    "HttpRequest",
    "build_reply",
    "forward_body_length",
    "handle_http",
    "parse_request",
]

REFUSED_HEADER = "X-Union-Sandbox-Refused"
ERROR_HEADER = "X-Union-Sandbox-Error"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    411: "Length Required",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the proxy's own; ``Host`` is rewritten.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
# Never dropped because a Connection header names them: they frame the body we pass on.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class BadRequest(Exception):
    """The request cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    """A parsed request head. ``host`` is as the client wrote it (brackets kept for IPv6),
    ``authority`` is ``host[:port]`` as written, ``path`` the origin-form target (forwarding
    only)."""

    method: str
    version: str
    host: str
    port: int
    authority: str
    path: str
    headers: tuple[tuple[str, str], ...]

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"


def _parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise BadRequest(f"invalid port {text!r}")
    return int(text)


def parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of a CONNECT target or URL; port optional with a default."""
    if not text:
        raise BadRequest("missing host")
    if "@" in text:
        raise BadRequest("user information ('user@') in the target is not allowed")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest("unbalanced '[' in the target")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest(f"unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_raw = text.partition(":")
        if sep and ":" in port_text_raw:
            raise BadRequest("an IPv6 address must be written in brackets: '[2001:db8::1]:443'")
        port_text = port_text_raw if sep else None
    if len(host) < 1 or host == "[]":
        raise BadRequest("missing host")
    if port_text is None or (port_text == "" and default_port is not None):
        if default_port is None:
            raise BadRequest("CONNECT needs a target of the form host:port")
        return host, default_port
    return host, _parse_port(port_text)


def parse_request(head: bytes) -> HttpRequest:
    """Parse a request head (without the final blank line); ``BadRequest`` if malformed."""
    lines = head.split(b"\r\n")
    try:
        line = lines[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the request line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) != 3 or not line.isprintable():
        raise BadRequest("the request line must be 'METHOD target HTTP/1.1'")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest(f"invalid method {method!r}")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"unsupported protocol version {version!r} (HTTP/1.0 or HTTP/1.1)")
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        if not raw or raw[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete header line folding is not accepted")
        name, sep, value = raw.partition(b":")
        name_text = name.decode("latin-1")
        if not sep or not _TOKEN.match(name_text):
            # Names only: a value (a credential, say) never goes into a reply or a record.
            shown = name_text[:40] if sep else "(no colon)"
            raise BadRequest(f"invalid header line {shown!r}")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            raise BadRequest(f"control character in header {name_text!r}")
        headers.append((name_text, value.decode("latin-1").strip(" \t")))
    if method == "CONNECT":
        host, port = parse_authority(target, None)
        return HttpRequest(method, version, host, port, target, "", tuple(headers))
    if target.startswith("/") or target == "*":
        raise BadRequest(
            "this is a proxy: send an absolute URL ('GET http://host/path') or 'CONNECT host:port'"
        )
    scheme, scheme_sep, rest = target.partition("://")
    if not scheme_sep:
        raise BadRequest(f"invalid request target {target[:200]!r}")
    if scheme.lower() != "http":
        raise BadRequest(
            f"only http:// URLs can be forwarded; {scheme[:20]}:// goes through 'CONNECT host:port'"
        )
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    host, port = parse_authority(authority, 80)
    return HttpRequest(method, version, host, port, authority, path, tuple(headers))


def forward_head(request: HttpRequest) -> bytes:
    """The head to send the origin: origin-form target, ``Host`` from the URL (so a request
    cannot name one host to the policy and another to the server), hop-by-hop headers
    dropped, ``Connection: close``."""
    named: set[str] = set()
    for name, value in request.headers:
        if name.lower() in ("connection", "proxy-connection"):
            named.update(token.strip().lower() for token in value.split(","))
    named -= _FRAMING
    lines = [f"{request.method} {request.path} {request.version}", f"Host: {request.authority}"]
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in _HOP_BY_HOP or lowered in named:
            continue
        lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _header_safe(text: str) -> str:
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:1000]


def build_reply(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` reply with ``message`` in the body and a header."""
    phrase = _PHRASES.get(status, "Error")
    header = REFUSED_HEADER if status == 403 else ERROR_HEADER
    prefix = "refused by the sandbox network policy" if status == 403 else "sandbox proxy"
    body = f"{status} {phrase}: {prefix}: {message}\n".encode()
    challenge = 'Proxy-Authenticate: Basic realm="union-sandbox"\r\n' if status == 407 else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"{challenge}"
        f"{header}: {_header_safe(message)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _reply(client: socket.socket, status: int, message: str) -> None:
    try:
        with anyio.move_on_after(5):
            await send_all(client, build_reply(status, message))
    except OSError:
        pass
    await linger_close(client)


def _check_line_start(buffer: bytearray) -> None:
    """Fail fast on bytes that cannot start an HTTP request (TLS or SOCKS sent here)."""
    end = buffer.find(b"\r\n")
    first = buffer if end < 0 else buffer[:end]
    if first.endswith(b"\r"):
        first = first[:-1]
    if any(b < 0x20 or b > 0x7E for b in first):
        raise BadRequest("not an HTTP request (binary data on the HTTP proxy port)")


async def read_head(reader: Reader, limit: int) -> bytes | None:
    """The request head up to the blank line (exclusive), or None if the client left first."""
    start = 0
    while True:
        end = reader.buffer.find(b"\r\n\r\n", start)
        if end >= 0:
            if end > limit:
                raise BadRequest(f"request head is larger than {limit} bytes", 431)
            head = bytes(reader.buffer[:end])
            del reader.buffer[: end + 4]
            return head
        if len(reader.buffer) > limit:
            raise BadRequest(f"request head is larger than {limit} bytes", 431)
        _check_line_start(reader.buffer)
        start = max(0, len(reader.buffer) - 3)
        # Reads no bigger than the head may be: a connection's buffer stays near the limit.
        if not await reader.fill(limit + 4):
            if reader.buffer:
                raise BadRequest("the connection ended inside the request head")
            return None


async def handle_http(client: socket.socket, ctx: ProxyContext) -> None:
    """Serve one connection accepted on an HTTP proxy listener; owns (closes) ``client``."""
    try:
        client.setblocking(False)
        reader = Reader(client)
        try:
            with anyio.fail_after(ctx.handshake_timeout):
                head = await read_head(reader, ctx.max_head_bytes)
                if head is None:
                    return
                request = parse_request(head)
                body_length = 0 if request.is_connect else forward_body_length(request)
        except TimeoutError:
            await _reply(client, 408, "timed out waiting for the request head")
            return
        except BadRequest as exc:
            if ctx.credentials is None:  # else: not known to be the run's, not recorded
                ctx.decisions.record(
                    host="",
                    port=0,
                    allowed=False,
                    rule=None,
                    reason=f"malformed HTTP proxy request: {exc}",
                    protocol="http-connect",
                )
            await _reply(client, exc.status, str(exc))
            return
        if not _authorized(request, ctx):
            # Not this run's client (the run's tools send the credentials of its proxy
            # URLs): answered, but not recorded among the run's decisions.
            await _reply(client, 407, "this proxy belongs to another run")
            return
        await _serve(client, reader, request, ctx, body_length)
    except OSError:
        pass  # the client went away (reset, broken pipe): nothing left to answer
    finally:
        client.close()


def _authorized(request: HttpRequest, ctx: ProxyContext) -> bool:
    if ctx.credentials is None:
        return True
    for name, value in request.headers:
        if name.lower() == "proxy-authorization":
            scheme, _, encoded = value.partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True)
            except ValueError:
                return False
            user, sep, password = decoded.partition(b":")
            return bool(sep) and ctx.accepts(user, password)
    return False


def forward_body_length(request: HttpRequest) -> int:
    """The length of a forwarded request's body: only what ``Content-Length`` frames (or
    nothing) goes to the origin, so a request pipelined after it never does."""
    lengths = {value for name, value in request.headers if name.lower() == "content-length"}
    if any(name.lower() == "transfer-encoding" for name, _ in request.headers):
        raise BadRequest(
            "chunked request bodies are not forwarded to http:// URLs: send Content-Length, "
            "or use https:// (CONNECT)",
            411,
        )
    if not lengths:
        return 0
    if len(lengths) > 1 or not all(v.isascii() and v.isdigit() for v in lengths):
        raise BadRequest(f"invalid Content-Length {sorted(lengths)[0][:20]!r}")
    return int(lengths.pop())


async def _serve(
    client: socket.socket,
    reader: Reader,
    request: HttpRequest,
    ctx: ProxyContext,
    body_length: int = 0,
) -> None:
    protocol: Protocol = "http-connect" if request.is_connect else "http-forward"
    decision = await ctx.rules.decide(request.host, request.port)
    index = ctx.decisions.record(
        host=decision.host,
        port=decision.port,
        allowed=decision.allowed,
        rule=decision.rule,
        reason=decision.reason,
        protocol=protocol,
    )
    if not decision.allowed:
        await _reply(client, 502 if decision.network_error else 403, decision.reason)
        return
    try:
        upstream = await dial(decision.addresses, decision.port, ctx.connect_timeout)
    except DialError as exc:
        ctx.decisions.update(index, reason=f"{decision.reason}; connecting failed: {exc}")
        timed_out = exc.errno == errno.ETIMEDOUT
        await _reply(client, 504 if timed_out else 502, f"connecting failed: {exc}")
        return
    if request.is_connect:
        pending = reader.take_rest()
        try:
            await send_all(client, b"HTTP/1.1 200 Connection established\r\n\r\n")
        except OSError:
            upstream.close()
            return
    else:
        head = forward_head(request)
        pending = head + reader.take_rest()
        await tunnel(ctx, index, client, upstream, pending, up_limit=len(head) + body_length)
        return
    await tunnel(ctx, index, client, upstream, pending)
