"""``ProxyHost``: every proxy of one session, on one dedicated thread and event loop.

The engine hands it each ``allowlist`` (or ``open`` + deny-list) run's listening sockets,
created inside the run's network namespace; the host accepts on them, applies the run's
:class:`RuleSet`, dials out from the caller's (host) namespace and relays. A private loop
on a private thread means the proxies work whatever loop (asyncio, trio, none) opened the
session, and a busy proxy never stalls the caller's loop; the bulk bytes move in relay
threads (:mod:`.relay`), so the loop only runs handshakes.

The thread starts on the first :meth:`ProxyHost.serve` and ends with :meth:`ProxyHost.close`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

from .context import ProxyContext
from .http_connect import handle_http
from .listeners import ProxyKind, make_listeners, proxy_env
from .log import DecisionLog
from .rules import RuleSet
from .socks5 import handle_socks5

__all__ = ["ProxyHost", "make_listeners", "proxy_env"]

logger = logging.getLogger("union.sandbox.netproxy")

_T = TypeVar("_T")
_Handler = Callable[[socket.socket, ProxyContext], Awaitable[None]]
_HANDLERS: dict[str, _Handler] = {"http": handle_http, "socks5": handle_socks5}
# Accept errors that mean "out of resources for now": back off and keep listening.
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _check_kinds(listeners: Sequence[tuple[str, socket.socket]]) -> None:
    for kind, _sock in listeners:
        if kind not in _HANDLERS:
            raise ValueError(f"unknown proxy kind {kind!r}: expected 'http' or 'socks5'")


class _Run:
    """A served run: its listeners, context, cancel scope and live connection count."""

    def __init__(
        self,
        key: object,
        listeners: list[tuple[ProxyKind, socket.socket]],
        ctx: ProxyContext,
    ) -> None:
        self.key = key
        self.listeners = listeners
        self.ctx = ctx
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.active = 0


class ProxyHost:
    """All proxies of one session, served from a dedicated thread with its own event loop.

    ``serve``, ``stop`` and ``close`` are thread-safe and return quickly; ``stop`` and
    ``close`` wait (at most ``join_timeout`` seconds) until the connections they end are
    closed. ``max_connections_per_run`` bounds what one run can hold open at once (threads
    and descriptors are the caller's); over it, new connections are closed and recorded.
    """

    def __init__(
        self,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        handshake_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_connections_per_run: int = 256,
        relay_method: Literal["splice", "copy"] | None = None,
        join_timeout: float = 5.0,
    ) -> None:
        self._backend = backend
        self._handshake_timeout = handshake_timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections_per_run
        self._relay_method = relay_method
        self._join_timeout = join_timeout
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False
        # Loop-thread state, created by _main:
        self._runs: dict[object, _Run] = {}
        self._tg: TaskGroup | None = None
        self._stopping: anyio.Event | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    # ---------------------------------------------------------------- caller side

    def serve(
        self,
        run_key: object,
        listeners: Sequence[tuple[ProxyKind, socket.socket]],
        rules: RuleSet,
        decisions: DecisionLog,
        *,
        wait: bool = True,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """Start accepting on ``listeners`` for ``run_key``; takes ownership of the sockets.
        ``credentials`` (user, password): required of every client (see ``ProxyContext``).

        The sockets must already be listening. They are closed by :meth:`stop`,
        :meth:`close`, or right here if serving fails (unknown kind, duplicate key, closed
        host). ``wait=False`` hands the work to the proxy thread without waiting for it
        (connections queue in the listeners' backlog meanwhile); a failure is then logged.
        """
        owned = list(listeners)
        try:
            _check_kinds(owned)
            if wait:
                self._call(self._add_run, run_key, owned, rules, decisions, credentials)
            else:
                self._start().start_task_soon(
                    self._add_run_logged, run_key, owned, rules, decisions, credentials
                )
        except BaseException:
            for _kind, sock in owned:
                sock.close()
            raise

    def stop(self, run_key: object, *, wait: bool = True) -> None:
        """Stop serving ``run_key``: close its listeners and its live connections. Unknown
        keys (and a host that never started or is closed) are a no-op. ``wait=False``
        returns at once; the proxy thread tears the run down on its own."""
        with self._lock:
            portal = self._portal
        if portal is None:
            return
        with contextlib.suppress(RuntimeError):  # the host closed meanwhile
            if wait:
                portal.call(self._stop_run, run_key)
            else:
                portal.start_task_soon(self._stop_run, run_key)

    def close(self) -> None:
        """Stop every run and end the thread (joined for at most ``join_timeout``).
        Idempotent; ``serve`` raises afterwards."""
        with self._lock:
            if self._closed:
                return
            if self._thread is not None and threading.current_thread() is self._thread:
                raise RuntimeError("ProxyHost.close() cannot be called from the proxy thread")
            self._closed = True
            portal, thread = self._portal, self._thread
            self._portal = None
        if portal is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            portal.call(self._shutdown)
        thread.join(self._join_timeout)
        if thread.is_alive():
            logger.warning("netproxy thread did not stop within %.1f s", self._join_timeout)

    def __enter__(self) -> ProxyHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def active_connections(self, run_key: object) -> int:
        """Connections of ``run_key`` still open (handshaking or relaying); 0 when unknown.
        A snapshot read from another thread: good for diagnostics and tests."""
        run = self._runs.get(run_key)
        return run.active if run is not None else 0

    @property
    def running(self) -> bool:
        """True while the proxy thread is alive."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def _call(self, func: Callable[..., _T], *args: object) -> _T:
        portal = self._start()
        try:
            return portal.call(func, *args)
        except RuntimeError as exc:
            if self._closed:
                raise RuntimeError("this ProxyHost is closed") from exc
            raise

    def _start(self) -> BlockingPortal:
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProxyHost is closed")
            if self._portal is not None:
                return self._portal
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._thread_main,
                args=(ready, failure),
                name="union-sandbox-netproxy",
                daemon=True,
            )
            thread.start()
            if not ready.wait(30) or failure or self._portal is None:
                cause = failure[0] if failure else None
                raise RuntimeError("the netproxy thread failed to start") from cause
            self._thread = thread
            return self._portal

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            anyio.run(self._main, ready, backend=self._backend)
        except BaseException as exc:
            failure.append(exc)
            logger.exception("netproxy thread failed")
        finally:
            ready.set()

    # ---------------------------------------------------------------- loop side

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = anyio.Event()
        self._limiter = anyio.CapacityLimiter(4096)
        async with BlockingPortal() as portal, anyio.create_task_group() as tg:
            self._tg = tg
            self._portal = portal
            ready.set()
            await self._stopping.wait()
            tg.cancel_scope.cancel()

    def _add_run(
        self,
        key: object,
        listeners: list[tuple[ProxyKind, socket.socket]],
        rules: RuleSet,
        decisions: DecisionLog,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if key in self._runs:
            raise ValueError(f"run {key!r} is already being served")
        assert self._tg is not None
        for _kind, sock in listeners:
            sock.setblocking(False)
        ctx = ProxyContext(
            rules=rules,
            decisions=decisions,
            handshake_timeout=self._handshake_timeout,
            connect_timeout=self._connect_timeout,
            limiter=self._limiter,
            relay_method=self._relay_method,
            credentials=credentials,
        )
        run = _Run(key, listeners, ctx)
        self._runs[key] = run
        self._tg.start_soon(self._run_main, run)

    async def _add_run_logged(
        self,
        key: object,
        listeners: list[tuple[ProxyKind, socket.socket]],
        rules: RuleSet,
        decisions: DecisionLog,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        try:
            self._add_run(key, listeners, rules, decisions, credentials)
        except Exception:
            for _kind, sock in listeners:
                sock.close()
            logger.exception("netproxy could not serve run %r; its proxies refuse everything", key)

    async def _stop_run(self, key: object) -> None:
        run = self._runs.pop(key, None)
        if run is None:
            return
        run.scope.cancel()
        with anyio.move_on_after(self._join_timeout):
            await run.finished.wait()

    async def _shutdown(self) -> None:
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            run.scope.cancel()
        with anyio.move_on_after(self._join_timeout):
            for run in runs:
                await run.finished.wait()
        assert self._stopping is not None
        self._stopping.set()

    async def _run_main(self, run: _Run) -> None:
        try:
            with run.scope:
                async with anyio.create_task_group() as tg:
                    for kind, sock in run.listeners:
                        tg.start_soon(self._accept_loop, run, tg, kind, sock)
        finally:
            for _kind, sock in run.listeners:
                sock.close()
            if self._runs.get(run.key) is run:
                del self._runs[run.key]
            run.finished.set()

    async def _accept_loop(
        self, run: _Run, tg: TaskGroup, kind: ProxyKind, listener: socket.socket
    ) -> None:
        handler = _HANDLERS[kind]
        while True:
            await anyio.wait_readable(listener)
            try:
                conn, _peer = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    logger.warning("netproxy: accept failed (%s); retrying", exc)
                    await anyio.sleep(0.1)
                    continue
                logger.warning("netproxy: %s listener of run %r failed: %s", kind, run.key, exc)
                return
            if run.active >= self._max_connections:
                # Recorded before the close (whoever sees it closed finds the record), and
                # only where every client is the run's (no credentials to check).
                if run.ctx.credentials is None:
                    run.ctx.decisions.record(
                        host="",
                        port=0,
                        allowed=False,
                        rule=None,
                        reason=(
                            f"too many concurrent proxy connections (limit {self._max_connections})"
                        ),
                        protocol="socks5" if kind == "socks5" else "http-connect",
                    )
                conn.close()
                continue
            run.active += 1
            tg.start_soon(self._connection, run, handler, conn)

    @staticmethod
    async def _connection(run: _Run, handler: _Handler, conn: socket.socket) -> None:
        try:
            await handler(conn, run.ctx)
        except Exception:
            logger.exception("netproxy: connection handler failed (connection closed)")
        finally:
            conn.close()
            run.active -= 1
