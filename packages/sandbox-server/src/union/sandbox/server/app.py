"""The ASGI application: one sandbox session served as ``sandbox.v2.SandboxService``.

Lifecycle: :meth:`SandboxApp.startup` opens the session (the work dir, the session venv, the
supervisor), :meth:`SandboxApp.shutdown` kills running commands and closes it. ASGI
``lifespan`` events call both, so any ASGI server can host the app; the ``sandbox-server``
command calls them itself around hypercorn.

Besides the RPCs, ``GET /healthz`` answers ``ok`` without authentication (for liveness
probes; it reveals nothing about the session).
"""

from __future__ import annotations

import warnings
from typing import Any

from union.sandbox.core.on_device import OnDeviceSession
from union.sandbox.core.wire.messages import SERVICE

from ._connect import ConnectApp, Receive, Scope, Send
from .config import ServerConfig
from .logs import log_event
from .service import SandboxService

__all__ = ["SandboxApp", "create_app"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("unionai-sandbox-server")
    except Exception:
        return "0.0.0"


class SandboxApp:
    """ASGI app serving one :class:`OnDeviceSession`."""

    def __init__(self, config: ServerConfig, session: OnDeviceSession | None = None) -> None:
        self.config = config
        self.version = _version()
        self.session = session or OnDeviceSession(
            backend=config.backend,
            resources=SandboxService.ceiling_limits(config),
            host_work_dir=config.work_dir,
            timeout_s=config.max_runtime_s,
            read_only_paths=list(config.extra_read_only),
            network_mode="blocked",
            best_effort_limits=not config.strict_limits,
            session_pids=config.session_pids or None,
        )
        self.service = SandboxService(config, self.session, self.version)
        self.connect = ConnectApp(SERVICE, self.service.rpcs(), token=config.token)
        self._started = False

    async def startup(self) -> None:
        if self._started:
            return
        with warnings.catch_warnings():
            # backend="none" warns that it isolates nothing; the server logs that instead.
            warnings.simplefilter("ignore", UserWarning)
            await self.session.open()
        self._started = True
        if self.config.backend == "none":
            log_event(
                "backend 'none' applies NO isolation: never serve untrusted code with it",
                level=30,
            )
        log_event(
            "session open",
            backend=self.session.backend,
            work_dir=self.session.work_dir,
            auth="bearer" if self.config.token else "none",
        )

    async def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        running = self.service.running
        await self.service.shutdown()
        await self.session.close()
        log_event("session closed", killed_runs=running)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope.get("path") == "/healthz" and scope.get("method") in ("GET", "HEAD"):
                await _healthz(send)
                return
            await self.connect.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _healthz(send: Send) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"3"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok\n", "more_body": False})


def create_app(config: ServerConfig, **kwargs: Any) -> SandboxApp:
    """The ASGI app for ``config`` (the session opens on ASGI startup or :meth:`startup`)."""
    return SandboxApp(config, **kwargs)
