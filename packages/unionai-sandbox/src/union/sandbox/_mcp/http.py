"""The streamable HTTP transport: the SDK's Starlette app behind a bearer-token check,
served by uvicorn (asyncio) on one address.

Authentication: every request must carry ``Authorization: Bearer <token>`` (compared in
constant time); anything else gets ``401`` before it reaches MCP. The token is required:
``--no-auth`` turns the check off only on a loopback address (local development, e.g. an
inspector), where the SDK's DNS-rebinding protection (``Host`` / ``Origin`` checks) stays
on, so a web page cannot reach the server through the browser. Never unauthenticated on a
non-loopback address.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio
from mcp.server import Server
from mcp.server.transport_security import TransportSecuritySettings

from .cli import is_loopback

__all__ = ["MCP_PATH", "bind", "serve_http"]

MCP_PATH = "/mcp"
#: Largest request body: a ``write_file`` of the tool's largest content, base64, fits.
MAX_BODY = 24 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BearerAuth:
    """ASGI middleware: HTTP requests without the token get ``401``."""

    def __init__(self, app: App, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    given = bytes(value)
                    break
            if not hmac.compare_digest(given, self._expected):
                await _unauthorized(send, "missing" if not given else "invalid")
                return
        await self._app(scope, receive, send)


async def _unauthorized(send: Send, what: str) -> None:
    body = json.dumps(
        {
            "error": "unauthorized",
            "error_description": f"{what} bearer token: send 'Authorization: Bearer <token>' "
            "with the token the server was started with ($UNION_SANDBOX_MCP_TOKEN)",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="unionai-sandbox"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _security(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection on a loopback address (a browser on this machine must not
    reach the server by a name that resolves here); elsewhere the token guards it."""
    if not is_loopback(host):
        return None
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    hosts = dict.fromkeys([f"{shown}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"])
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(hosts),
        allowed_origins=[f"http://{h}" for h in hosts],
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound before serving, so that port 0 can be reported)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


async def serve_http(
    server: Server[Any],
    sock: socket.socket,
    *,
    token: str | None,
    max_sessions: int,
    idle_timeout_s: float,
    on_stop: Callable[[], Awaitable[None]],
) -> None:
    """Serve ``server`` on ``sock`` until SIGINT / SIGTERM; ``on_stop`` runs as soon as the
    signal arrives (it closes the sandboxes, so that the calls they hold end and answer
    before uvicorn's graceful shutdown gives up on them)."""
    import uvicorn

    host = sock.getsockname()[0]
    app: App = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=_security(host),
        host=host,
        max_sessions=max_sessions,
        session_idle_timeout=idle_timeout_s,
        max_request_body_size=MAX_BODY,
    )
    if token is not None:
        app = BearerAuth(app, token)
    # Once the sandboxes are closed every tool call has its answer; what is left open is
    # the clients' standalone event streams, which never end by themselves.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)

    class Uvicorn(uvicorn.Server):
        # Signals are ours (below): uvicorn's own handling re-raises the signal once it has
        # shut down, which would end the process before our sessions are closed.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    served = Uvicorn(config)
    quiet = _QuietStop()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, served, on_stop, quiet)
            await served.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)


class _QuietStop(logging.Filter):
    """Drops uvicorn's errors about the event streams it cancels once a stop was asked
    for: they are expected then, and a traceback would read like a crash."""

    stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.stopping and record.levelno >= logging.ERROR)


async def _stop_on_signals(
    served: Any, on_stop: Callable[[], Awaitable[None]], quiet: _QuietStop
) -> None:
    """First SIGINT / SIGTERM / SIGHUP: close the sandboxes (their calls get answered),
    then let uvicorn shut down; a second SIGINT: now, whatever is still closing."""

    async def stop() -> None:
        quiet.stopping = True
        await on_stop()
        served.should_exit = True

    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signo in signals:
                if not quiet.stopping:
                    tg.start_soon(stop)
                elif signo == signal.SIGINT:
                    served.should_exit = served.force_exit = True
