"""``sandbox-server``: serve one sandbox session over HTTP/1.1 and h2c with hypercorn."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

import anyio

from union.sandbox.core.errors import BackendUnavailableError

from .app import SandboxApp, create_app
from .config import ServerConfig, parse_args
from .logs import configure, log_event

__all__ = ["main", "serve"]


def _listen(config: ServerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _hypercorn_config(config: ServerConfig, sock: socket.socket) -> Any:
    from hypercorn.config import Config

    hconfig = Config()
    # hypercorn closes the socket it is given: hand it a duplicate, we close ours.
    hconfig.bind = [f"fd://{os.dup(sock.fileno())}"]
    hconfig.graceful_timeout = config.graceful_timeout_s
    hconfig.keep_alive_timeout = 60
    hconfig.h2_max_inbound_frame_size = 1 << 20
    # hypercorn ends a connection after 1,000 requests by default; on HTTP/2 that GOAWAY cut
    # a client's in-flight runs (every Execute is a stream on one connection).
    hconfig.keep_alive_max_requests = 1 << 62
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


async def _probe(app: SandboxApp) -> None:
    """Fail startup unless the backend really runs here (a weaker one is never used)."""
    proc = await app.session.run("exit 0", stdout=False, stderr=False, timeout_s=30)
    code = await proc.wait()
    if code != 0:
        raise BackendUnavailableError(app.config.backend, [f"a probe run exited with {code}"])


async def serve(
    config: ServerConfig, sock: socket.socket | None = None, app: SandboxApp | None = None
) -> None:
    """Open the session, serve until SIGTERM/SIGINT, kill running commands, close.
    ``app``: an app made with :func:`create_app` from the same config (default: a new one)."""
    sock = sock or _listen(config)
    app = app or create_app(config)
    await app.startup()
    try:
        await _probe(app)
        host, port = sock.getsockname()[:2]
        log_event(
            "listening",
            addr=f"{host}:{port}",
            backend=app.session.backend,
            work_dir=app.session.work_dir,
            version=app.version,
        )
        stop = anyio.Event()

        async def shutdown_trigger() -> None:
            await stop.wait()

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signo in signals:
                    log_event(
                        "shutting down",
                        signal=signal.Signals(signo).name,
                        running=app.service.running,
                    )
                    # Kill the sandboxes first: their streams end with a termination and
                    # hypercorn's graceful wait is short.
                    await app.service.shutdown()
                    stop.set()
                    return

        hconfig = _hypercorn_config(config, sock)
        if config.worker_class == "trio":
            from hypercorn.trio import serve as hypercorn_serve
        else:
            from hypercorn.asyncio import serve as hypercorn_serve  # type: ignore[assignment]
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            # hypercorn sends http.disconnect when a response is complete: calls' disconnect
            # watchers can run here and end by themselves (see ConnectApp.watchers).
            app.connect.watchers = tg
            try:
                await hypercorn_serve(cast(Any, app), hconfig, shutdown_trigger=shutdown_trigger)
            finally:
                app.connect.watchers = None  # the group ends here: later calls watch alone
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await app.shutdown()
            sock.close()


#: Where the server stops raising its descriptor limit: runs inherit it (through the
#: session's supervisor), and some programs loop over every possible descriptor at start.
DESCRIPTOR_LIMIT_CAP = 1 << 16


def raise_descriptor_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` towards the hard limit (at most
    :data:`DESCRIPTOR_LIMIT_CAP`) and return the soft limit now in force. A server holds a
    socket per client and the runs' pipes, and its session's egress proxies may use half of
    the soft limit (``netproxy.capacity``): at the common soft limit of 1,024 that is 85
    proxied connections for all clients together."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = DESCRIPTOR_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    target = min(target, DESCRIPTOR_LIMIT_CAP)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sandbox-server`` command (also ``python -m union.sandbox.server``)."""
    config = parse_args(argv)
    configure(config.log_level)
    raise_descriptor_limit()
    try:
        sock = _listen(config)
    except OSError as exc:
        print(f"sandbox-server: cannot listen on {config.addr}: {exc}", file=sys.stderr)
        return 2
    backend = "trio" if config.worker_class == "trio" else "asyncio"
    options: dict[str, Any] = {}
    if config.worker_class == "uvloop":
        if importlib.util.find_spec("uvloop") is None:
            print(
                "sandbox-server: --worker-class uvloop needs the uvloop package "
                "(pip install uvloop), or use --worker-class asyncio",
                file=sys.stderr,
            )
            return 2
        options["use_uvloop"] = True
    try:
        anyio.run(serve, config, sock, backend=backend, backend_options=options)
    except BackendUnavailableError as exc:
        log_event(
            "backend unavailable",
            level=logging.ERROR,
            backend=config.backend,
            problems=exc.problems,
        )
        print(f"sandbox-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("union.sandbox.server").exception("startup failed")
        print(f"sandbox-server: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
