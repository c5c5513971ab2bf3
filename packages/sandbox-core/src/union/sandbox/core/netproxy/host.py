"""``ProxyHost``: every proxy of one session, on one dedicated thread and event loop.

The engine hands it each ``allowlist`` (or ``open`` + deny-list) run's listening sockets,
created inside the run's network namespace; the host accepts on them, applies the run's
:class:`RuleSet`, dials out from the caller's (host) namespace and relays. A private loop
on a private thread means the proxies work whatever loop (asyncio, trio, none) opened the
session, and a busy proxy never stalls the caller's loop; the bulk bytes move in relay
threads (:mod:`.relay`), so the loop only runs handshakes.

What a run's traffic makes this process hold is bounded per run and per session
(:mod:`.capacity`): every connection is admitted against the run's share, the session's
capacity and the process's descriptor budget, or refused and recorded; relay pumps and name
lookups run on the session's own threads (:mod:`.workers`), which exit as soon as they are
idle, so nothing a run started outlives its connections for more than a moment.

The thread starts on the first :meth:`ProxyHost.serve` and ends with :meth:`ProxyHost.close`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

from .capacity import FDS_PER_CONNECTION, PROCESS_DESCRIPTORS, Shares, connection_shares
from .context import ProxyContext
from .http_connect import handle_http
from .listeners import ProxyKind, make_listeners, proxy_env
from .log import DecisionLog
from .lookups import lookups_run_by
from .relay import PipeGrowth
from .rules import RuleSet
from .socks5 import handle_socks5
from .workers import Soon, WorkerPool

__all__ = ["ProxyHost", "make_listeners", "proxy_env"]

logger = logging.getLogger("union.sandbox.netproxy")

_T = TypeVar("_T")
_Handler = Callable[[socket.socket, ProxyContext], Awaitable[None]]
_HANDLERS: dict[str, _Handler] = {"http": handle_http, "socks5": handle_socks5}
# Accept errors that mean "out of resources for now": back off and keep listening.
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Name lookups in flight (each holds a thread until the resolver returns, even after its
# connection gave up): per session, per run, a run's floor, and the headroom kept for floors.
_LOOKUPS = {"capacity": 32, "share": 4, "floor": 1, "headroom": 8}
# Splice pipes of a session that may be grown to 1 MiB at once (16 MiB of pipe capacity).
_GROWN_PIPES = 16


def _check_kinds(listeners: Sequence[tuple[str, socket.socket]]) -> None:
    for kind, _sock in listeners:
        if kind not in _HANDLERS:
            raise ValueError(f"unknown proxy kind {kind!r}: expected 'http' or 'socks5'")


class _Run:
    """A served run: its listeners, context and cancel scope."""

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


class ProxyHost:
    """All proxies of one session, served from a dedicated thread with its own event loop.

    ``serve``, ``stop`` and ``close`` are thread-safe and return quickly; ``stop`` and
    ``close`` wait (at most ``join_timeout`` seconds) until the connections they end are
    closed. Connections (handshaking or relaying) cost the caller descriptors and threads,
    so ``max_connections`` bounds the session's (default: 512, or what half of the
    process's ``RLIMIT_NOFILE`` holds) and ``max_connections_per_run`` a run's share
    (default: a quarter of that, at most 128); over either, a new connection is closed and
    recorded in its run's decisions. Idle threads exit within ``idle_thread_s``.
    """

    def __init__(
        self,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        handshake_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_connections: int | None = None,
        max_connections_per_run: int | None = None,
        relay_method: Literal["splice", "copy"] | None = None,
        join_timeout: float = 5.0,
        idle_thread_s: float = 2.0,
    ) -> None:
        self._backend = backend
        self._handshake_timeout = handshake_timeout
        self._connect_timeout = connect_timeout
        self._connections = connection_shares(max_connections, max_connections_per_run)
        self._lookups = Shares(what="name lookups", **_LOOKUPS)
        self._relay_method = relay_method
        self._join_timeout = join_timeout
        self._idle_thread_s = idle_thread_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False
        # Loop-thread state, created by _main:
        self._runs: dict[object, _Run] = {}
        self._tg: TaskGroup | None = None
        self._stopping: anyio.Event | None = None
        self._workers: WorkerPool | None = None
        self._growth = PipeGrowth(_GROWN_PIPES)

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
        deadline = time.monotonic() + self._join_timeout
        with contextlib.suppress(RuntimeError):
            portal.call(self._shutdown)
        thread.join(self._join_timeout)
        if thread.is_alive():
            logger.warning("netproxy thread did not stop within %.1f s", self._join_timeout)
        workers = self._workers
        if workers is not None and not workers.close(max(0.5, deadline - time.monotonic())):
            logger.warning("netproxy: worker threads still busy after close")

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
        return self._connections.held(run) if run is not None else 0

    @property
    def worker_threads(self) -> int:
        """Relay and lookup threads alive now (busy or about to exit)."""
        workers = self._workers
        return workers.threads if workers is not None else 0

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

    def _soon(self) -> Soon:
        """A non-blocking way back into this loop from another thread."""
        if self._backend == "trio":
            import trio

            return trio.lowlevel.current_trio_token().run_sync_soon
        import asyncio

        return asyncio.get_running_loop().call_soon_threadsafe

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = anyio.Event()
        # Two pumps per connection, the lookups, and the spare threads on their way out.
        most = 2 * self._connections.capacity + self._lookups.capacity + 16
        self._workers = WorkerPool(self._soon(), max_threads=most, idle_s=self._idle_thread_s)
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
            workers=self._workers,
            growth=self._growth,
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
            refusal = self._admit(run)
            if refusal is not None:
                # Recorded before the close (whoever sees it closed finds the record), and
                # only where every client is the run's (no credentials to check).
                if run.ctx.credentials is None:
                    run.ctx.decisions.record(
                        host="",
                        port=0,
                        allowed=False,
                        rule=None,
                        reason=refusal,
                        protocol="socks5" if kind == "socks5" else "http-connect",
                    )
                conn.close()
                continue
            tg.start_soon(self._connection, run, handler, conn)

    def _admit(self, run: _Run) -> str | None:
        """Count a new connection of ``run``; or, counting nothing, why it is refused."""
        refusal = self._connections.take(run)
        if refusal is not None:
            return refusal
        if not PROCESS_DESCRIPTORS.take(FDS_PER_CONNECTION):
            self._connections.give_back(run)
            return (
                "too many concurrent proxy connections in this process: the proxies of all "
                "its sessions may hold at most half of its descriptor limit (RLIMIT_NOFILE)"
            )
        return None

    async def _connection(self, run: _Run, handler: _Handler, conn: socket.socket) -> None:
        try:
            with lookups_run_by(functools.partial(self._lookup, run)):
                await handler(conn, run.ctx)
        except Exception:
            logger.exception("netproxy: connection handler failed (connection closed)")
        finally:
            conn.close()
            PROCESS_DESCRIPTORS.give_back(FDS_PER_CONNECTION)
            self._connections.give_back(run)

    async def _lookup(self, run: _Run, call: Callable[[], _T]) -> _T:
        """A blocking lookup of ``run`` on the session's threads, within the run's share of
        lookups (waiting for a free one; the resolve timeout bounds the wait). The share
        stays taken until the thread returns, even if the connection stopped waiting."""
        assert self._workers is not None
        await self._lookups.acquire(run)
        return await self._workers.run_abandoning(
            call, functools.partial(self._lookups.give_back, run)
        )
