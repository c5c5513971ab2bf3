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

A run's listeners may outlive the run: an init that serves one run after another keeps its
listeners (a :class:`ListenerGroup`), and the host arms them for each run in turn. Arming and
disarming take a lock the accept loops also take to accept and bind a connection, so every
connection is the run's that was armed when it was accepted (its rules, credentials, log and
share), and none is bound to a run once it is disarmed.

The thread starts on the first :meth:`ProxyHost.serve` (or ``adopt``) and ends with
:meth:`ProxyHost.close`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
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

__all__ = ["ListenerGroup", "ProxyHost", "make_listeners", "proxy_env"]

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


class ListenerGroup:
    """Listening sockets served for one run after another: the proxies of an init that
    serves several runs (:meth:`ProxyHost.adopt`). Opaque to callers but for :attr:`ports`.

    At most one run is armed on it at a time (``current``); a connection is bound to the
    run armed when it is accepted, under the host's bind lock, and one accepted while no run
    is armed is closed unread.
    """

    def __init__(self, listeners: list[tuple[ProxyKind, socket.socket]]) -> None:
        self.listeners = listeners
        self.ports = {kind: int(sock.getsockname()[1]) for kind, sock in listeners}
        self.current: _Run | None = None  # under ProxyHost._bind_lock
        self.released = False  # under ProxyHost._bind_lock
        # Loop side:
        self.scope: anyio.CancelScope | None = None
        self.done: anyio.Event | None = None


class _Run:
    """A run armed on a listener group: its context (rules, log, credentials), and the
    connections it holds (each handler's cancel scope, loop side)."""

    def __init__(self, key: object, ctx: ProxyContext, group: ListenerGroup) -> None:
        self.key = key
        self.ctx = ctx
        self.group = group
        # Loop side:
        self.stopped = False
        self.scopes: set[anyio.CancelScope] = set()
        self.idle: anyio.Event | None = None


class ProxyHost:
    """All proxies of one session, served from a dedicated thread with its own event loop.

    A run's listeners are either its own (:meth:`serve`, closed by :meth:`stop`) or kept
    for the runs after it (:meth:`adopt` them for a first run, :meth:`arm` them for each
    later one, :meth:`disarm` at each run's end, :meth:`release` them at last): the
    listeners of an init that serves run after run. Either way a connection belongs to the
    run armed when it was accepted: that run's rules, credentials, decision log and share.

    Every method is thread-safe and returns quickly; ``stop`` (``wait=True``),
    :meth:`wait_stopped` and ``close`` wait (at most ``join_timeout`` seconds) until the
    connections they end are closed. Connections (handshaking or relaying) cost the caller
    descriptors and threads, so ``max_connections`` bounds the session's (default: 512, or
    what half of the process's ``RLIMIT_NOFILE`` holds) and ``max_connections_per_run`` a
    run's share (default: a quarter of that, at most 128); over either, a new connection is
    closed and recorded in its run's decisions. Idle threads exit within ``idle_thread_s``.
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
        # Which run each group serves, and the runs by key: changed from any thread, read
        # by the accept loops. A connection is accepted and bound to its run under this
        # lock, so once disarm() returns, no connection is ever bound to that run again.
        self._bind_lock = threading.Lock()
        self._runs: dict[object, _Run] = {}
        self._groups: set[ListenerGroup] = set()
        self._own_groups: dict[object, ListenerGroup] = {}  # serve(): closed by stop()
        self._draining: dict[object, _Run] = {}  # disarmed, connections still open
        # Loop-thread state, created by _main:
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
        """Start accepting on ``listeners`` for ``run_key`` alone; takes ownership of the
        sockets. ``credentials`` (user, password): required of every client (see
        ``ProxyContext``).

        The sockets must already be listening. They are closed by :meth:`stop`,
        :meth:`close`, or right here if serving fails (unknown kind, duplicate key, closed
        host). Connections queue in the listeners' backlog until the proxy thread accepts
        them, so ``wait`` changes nothing (kept for callers that pass it).
        """
        del wait
        group = self.adopt(run_key, listeners, rules, decisions, credentials=credentials)
        with self._bind_lock:
            self._own_groups[run_key] = group

    def adopt(
        self,
        run_key: object,
        listeners: Sequence[tuple[ProxyKind, socket.socket]],
        rules: RuleSet,
        decisions: DecisionLog,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> ListenerGroup:
        """Start accepting on ``listeners`` for ``run_key``, and keep them for later runs
        (:meth:`arm`) until :meth:`release`. Takes ownership of the sockets (closed here if
        this fails: unknown kind, duplicate key, closed host)."""
        owned = list(listeners)
        try:
            _check_kinds(owned)
            portal = self._start()
            group = ListenerGroup(owned)
            for _kind, sock in owned:
                sock.setblocking(False)
            # Armed before the accept loops exist: a connection already queued is this run's.
            self._arm(group, run_key, rules, decisions, credentials)
            with self._bind_lock:
                self._groups.add(group)
            try:
                portal.start_task_soon(self._serve_group, group)
            except BaseException:
                self.disarm(run_key)
                with self._bind_lock:
                    self._groups.discard(group)
                raise
        except BaseException:
            for _kind, sock in owned:
                sock.close()
            raise
        return group

    def arm(
        self,
        group: ListenerGroup,
        run_key: object,
        rules: RuleSet,
        decisions: DecisionLog,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """Serve ``group``'s listeners for ``run_key`` from now on: its rules, decision log,
        credentials and share. Immediate (no call into the proxy thread), so a caller that
        arms before letting the run start knows every connection of the run is the run's.
        The group must be disarmed (no run armed) and not released."""
        self._start()
        self._arm(group, run_key, rules, decisions, credentials)

    def _arm(
        self,
        group: ListenerGroup,
        run_key: object,
        rules: RuleSet,
        decisions: DecisionLog,
        credentials: tuple[str, str] | None,
    ) -> None:
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
        with self._bind_lock:
            if self._closed:
                raise RuntimeError("this ProxyHost is closed")
            if run_key in self._runs:
                raise ValueError(f"run {run_key!r} is already being served")
            if group.released:
                raise ValueError("these listeners were released")
            if group.current is not None:
                raise ValueError(f"these listeners already serve run {group.current.key!r}")
            run = _Run(run_key, ctx, group)
            group.current = run
            self._runs[run_key] = run

    def disarm(self, run_key: object) -> int:
        """Stop serving ``run_key``: its listeners accept for no run until armed again, and
        its connections are closed (without waiting: see :meth:`join`). Returns how many
        connections it still held when disarmed (0: nothing of the run is open, and no
        connection is ever bound to it again). Unknown keys are a no-op (0)."""
        with self._bind_lock:
            run = self._runs.pop(run_key, None)
            if run is None:
                return 0
            if run.group.current is run:
                run.group.current = None
            held = self._connections.held(run)
            if held:
                self._draining[run_key] = run
            portal = self._portal
        if held and portal is not None:
            with contextlib.suppress(RuntimeError):  # the host closed meanwhile
                portal.start_task_soon(self._stop_run, run)
        return held

    def join(self, run_key: object) -> None:
        """Wait (at most ``join_timeout``) until the connections of the disarmed run
        ``run_key`` are closed. Blocking: async code awaits :meth:`wait_closed`."""
        with self._bind_lock:
            run = self._draining.get(run_key)
        if run is not None:
            self._wait(run, None)

    async def wait_closed(self, run_key: object) -> None:
        """:meth:`join` for async code, on any event loop, without a thread: the proxy
        thread writes to a pipe this waits on."""
        with self._bind_lock:
            run = self._draining.get(run_key)
            portal = self._portal
        if run is None or portal is None:
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

        def done(_future: object) -> None:  # on the proxy thread (or here, if done)
            try:
                os.write(write_end, b"x")
            except OSError:
                pass  # the waiter is gone
            finally:
                os.close(write_end)

        try:
            try:
                future = portal.start_task_soon(self._await_stopped, run, None)
            except RuntimeError:  # the host closed meanwhile: so did the connections
                os.close(write_end)
                return
            future.add_done_callback(done)
            await anyio.wait_readable(read_end)
        finally:
            os.close(read_end)

    def release(self, group: ListenerGroup) -> None:
        """Close ``group``'s listeners (disarming the run armed on it, whose connections
        are closed too). Idempotent; does not wait."""
        with self._bind_lock:
            if group.released:
                return
            group.released = True
            current = group.current
            portal = self._portal
        if current is not None:
            self.disarm(current.key)
        if portal is not None:
            with contextlib.suppress(RuntimeError):  # closed: the shutdown closed them
                portal.start_task_soon(self._release_group, group)

    def stop(self, run_key: object, *, wait: bool = True) -> None:
        """Stop serving ``run_key``: close its live connections, and its listeners if it
        had them from :meth:`serve`. Unknown keys (and a host that never started or is
        closed) are a no-op. ``wait=False`` returns at once; the proxy thread tears the
        run down on its own."""
        with self._bind_lock:
            run = self._runs.get(run_key)
            group = self._own_groups.pop(run_key, None)
        self.disarm(run_key)
        if group is not None:
            self.release(group)
        if wait and (run is not None or group is not None):
            self._wait(run, group)

    def _wait(self, run: _Run | None, group: ListenerGroup | None) -> None:
        with self._lock:
            portal = self._portal
        if portal is None or (
            self._thread is not None and threading.current_thread() is self._thread
        ):
            return
        with contextlib.suppress(RuntimeError):  # the host closed meanwhile
            portal.call(self._await_stopped, run, group)

    def close(self) -> None:
        """Stop every run and end the thread (joined for at most ``join_timeout``).
        Idempotent; ``serve`` raises afterwards."""
        with self._lock:
            if self._closed:
                return
            if self._thread is not None and threading.current_thread() is self._thread:
                raise RuntimeError("ProxyHost.close() cannot be called from the proxy thread")
            with self._bind_lock:
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

    async def _serve_group(self, group: ListenerGroup) -> None:
        """Accept on ``group``'s listeners until it is released."""
        if group.done is None:
            group.done = anyio.Event()
        try:
            with anyio.CancelScope() as group.scope:
                if group.released:
                    return
                async with anyio.create_task_group() as tg:
                    for kind, sock in group.listeners:
                        tg.start_soon(self._accept_loop, group, kind, sock)
        finally:
            for _kind, sock in group.listeners:
                sock.close()
            with self._bind_lock:
                self._groups.discard(group)
            group.done.set()

    async def _release_group(self, group: ListenerGroup) -> None:
        if group.scope is not None:
            group.scope.cancel()

    async def _stop_run(self, run: _Run) -> None:
        """Close every connection of a disarmed run."""
        run.stopped = True
        for scope in run.scopes:
            scope.cancel()

    async def _await_stopped(self, run: _Run | None, group: ListenerGroup | None) -> None:
        """Wait until ``run`` holds no connection and ``group`` is closed (each if given),
        and until every stop in flight has run (it may still be queued behind this)."""
        with anyio.move_on_after(self._join_timeout):
            if run is not None:
                await self._stop_run(run)  # idempotent; also if its own stop is queued
                while self._connections.held(run):
                    if run.idle is None:
                        run.idle = anyio.Event()
                    await run.idle.wait()
            if group is not None:
                if group.done is None:
                    group.done = anyio.Event()
                await self._release_group(group)
                await group.done.wait()

    async def _shutdown(self) -> None:
        with self._bind_lock:
            runs = [*self._runs.values(), *self._draining.values()]
            groups = list(self._groups)
            self._runs.clear()
            for group in groups:
                group.released = True
                group.current = None
        for run in runs:
            await self._stop_run(run)
        for group in groups:
            await self._release_group(group)
        with anyio.move_on_after(self._join_timeout):
            for run in runs:
                while self._connections.held(run):
                    if run.idle is None:
                        run.idle = anyio.Event()
                    await run.idle.wait()
            for group in groups:
                if group.done is not None:
                    await group.done.wait()
        assert self._stopping is not None
        self._stopping.set()

    async def _accept_loop(
        self, group: ListenerGroup, kind: ProxyKind, listener: socket.socket
    ) -> None:
        handler = _HANDLERS[kind]
        while True:
            await anyio.wait_readable(listener)
            try:
                with self._bind_lock:
                    conn, _peer = listener.accept()
                    run = group.current
                    refusal = self._admit(run) if run is not None else None
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    logger.warning("netproxy: accept failed (%s); retrying", exc)
                    await anyio.sleep(0.1)
                    continue
                logger.warning("netproxy: %s listener failed: %s", kind, exc)
                return
            if run is None:
                conn.close()  # between runs: nobody's connection (see ListenerGroup)
                continue
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
            assert self._tg is not None
            self._tg.start_soon(self._connection, run, handler, conn)

    def _admit(self, run: _Run) -> str | None:
        """Count a new connection of ``run``; or, counting nothing, why it is refused.
        Called under the bind lock."""
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
            with anyio.CancelScope() as scope:
                if run.stopped:  # disarmed before this task ran: close unread
                    scope.cancel()
                run.scopes.add(scope)
                try:
                    with lookups_run_by(functools.partial(self._lookup, run)):
                        await handler(conn, run.ctx)
                finally:
                    run.scopes.discard(scope)
        except Exception:
            logger.exception("netproxy: connection handler failed (connection closed)")
        finally:
            conn.close()
            PROCESS_DESCRIPTORS.give_back(FDS_PER_CONNECTION)
            self._connections.give_back(run)
            if not self._connections.held(run):
                with self._bind_lock:
                    if self._draining.get(run.key) is run:
                        del self._draining[run.key]
                if run.idle is not None:
                    run.idle.set()
                    run.idle = None

    async def _lookup(self, run: _Run, call: Callable[[], _T]) -> _T:
        """A blocking lookup of ``run`` on the session's threads, within the run's share of
        lookups (waiting for a free one; the resolve timeout bounds the wait). The share
        stays taken until the thread returns, even if the connection stopped waiting."""
        assert self._workers is not None
        await self._lookups.acquire(run)
        return await self._workers.run_abandoning(
            call, functools.partial(self._lookups.give_back, run)
        )
