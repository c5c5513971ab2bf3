"""What a run's proxy traffic makes the caller hold: bounded per run and per session, shared
fairly between runs, and released as soon as the runs stop.

Each test plays several runs against one :class:`ProxyHost` (one session), with raw clients
on the listeners the way a run's tools would reach them.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import anyio
import pytest

from union.sandbox.core.netproxy import DecisionLog, ProxyHost, RuleSet, make_listeners
from union.sandbox.core.netproxy.capacity import connection_shares
from union.sandbox.core.netproxy.lookups import blocking_resolver

LOOPBACK = ["127.0.0.0/8"]
Via = Literal["http", "socks5"]


class Run:
    """A run served by ``host``: its ports, log, and the sockets its 'tools' hold open."""

    def __init__(self, host: ProxyHost, rules: RuleSet | None = None) -> None:
        listeners = make_listeners(backlog=512)
        self.ports = {kind: int(sock.getsockname()[1]) for kind, sock in listeners}
        self.log = DecisionLog()
        self.host = host
        self.key = object()
        host.serve(self.key, listeners, rules or RuleSet.parse(LOOPBACK, []), self.log)
        self.held: list[socket.socket] = []

    def connect(self, target: tuple[str, int], via: Via = "http") -> socket.socket | None:
        """A tunnel to ``target`` (checked with one echoed byte), or None if the proxy
        refused it (closed the connection, or answered with an error)."""
        sock = socket.create_connection(("127.0.0.1", self.ports[via]), timeout=10)
        try:
            if open_tunnel(sock, target, via):
                sock.sendall(b"!")
                if sock.recv(1) == b"!":
                    self.held.append(sock)
                    return sock
        except OSError:
            pass
        sock.close()
        return None

    def hold(self, n: int, target: tuple[str, int], via: Via = "http") -> int:
        """Try ``n`` tunnels, keep the ones that opened; how many did."""
        return sum(self.connect(target, via) is not None for _ in range(n))

    def refusals(self) -> list[str]:
        return [d.reason for d in self.log.snapshot() if not d.allowed]

    def release(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()

    def stop(self) -> None:
        self.release()
        self.host.stop(self.key)


def open_tunnel(sock: socket.socket, target: tuple[str, int], via: Via) -> bool:
    host, port = target
    if via == "http":
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                return False
            head += byte
        return head.startswith(b"HTTP/1.1 200")
    sock.sendall(b"\x05\x01\x00")
    if sock.recv(2) != b"\x05\x00":
        return False
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    reply = b""
    while len(reply) < 10:
        chunk = sock.recv(10 - len(reply))
        if not chunk:
            return False
        reply += chunk
    return reply[1] == 0


def eventually(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Runs a test starts; their sockets are closed at the end whatever happened."""
    started: list[Run] = []
    yield started
    for run in started:
        run.release()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_threads_go_back_to_baseline_once_the_runs_stop(
    backend: Literal["asyncio", "trio"], select_echo: Any, runs: list[Run]
) -> None:
    """Three runs holding tunnels hold two threads each; within moments of the runs
    stopping, the caller has the threads it had before (not one idle worker per pump
    until the next proxied connection)."""
    target = ("127.0.0.1", select_echo.port)
    with ProxyHost(backend=backend, idle_thread_s=0.5) as host:
        warm = Run(host)
        runs.append(warm)
        assert warm.hold(1, target) == 1
        warm.stop()
        assert eventually(lambda: host.worker_threads == 0, 5)
        baseline = threading.active_count()
        for _ in range(3):
            run = Run(host)
            runs.append(run)
            assert run.hold(40, target, "http") + run.hold(10, target, "socks5") == 50
        assert threading.active_count() >= baseline + 3 * 50 * 2
        started = time.monotonic()
        for run in runs:
            run.stop()
        assert eventually(lambda: threading.active_count() <= baseline, 3), (
            threading.active_count() - baseline
        )
        assert time.monotonic() - started < 3
        assert host.worker_threads == 0
    assert eventually(lambda: threading.active_count() < baseline, 5)  # the loop thread too


def test_a_run_at_its_share_is_refused_and_another_run_gets_through(
    select_echo: Any, runs: list[Run]
) -> None:
    target = ("127.0.0.1", select_echo.port)
    with ProxyHost(max_connections=8, max_connections_per_run=3) as host:
        greedy, other = Run(host), Run(host)
        runs += [greedy, other]
        assert greedy.hold(2, target, "http") + greedy.hold(3, target, "socks5") == 3
        [*_, last] = greedy.refusals()
        assert "its share of the session's proxies (limit 3)" in last
        assert len(greedy.refusals()) == 2
        assert other.connect(target, "http") is not None
        assert other.connect(target, "socks5") is not None
        assert other.refusals() == []
        # The share is back once the run's tunnels close.
        greedy.release()
        assert eventually(lambda: host.active_connections(greedy.key) == 0, 5)
        assert greedy.hold(3, target) == 3


def test_greedy_runs_leave_room_for_a_run_that_starts_later(
    select_echo: Any, runs: list[Run]
) -> None:
    """Capacity 8, share 4: a run's first connection may use the last quarter of the
    session's capacity, its others may not; so runs at their shares cannot shut out a run
    that starts after them, and the session never holds more than its capacity."""
    target = ("127.0.0.1", select_echo.port)
    with ProxyHost(max_connections=8, max_connections_per_run=4) as host:
        first, second, third, fourth, fifth = (Run(host) for _ in range(5))
        runs += [first, second, third, fourth, fifth]
        assert first.hold(5, target) == 4
        assert second.hold(4, target) == 2
        assert "the last 2 of 8 are kept for runs that have none open" in second.refusals()[-1]
        assert third.hold(2, target) == 1
        assert fourth.hold(1, target) == 1
        assert fifth.hold(1, target) == 0
        assert "(limit 8, all runs together)" in fifth.refusals()[-1]


def test_slow_request_heads_use_up_only_their_runs_share(select_echo: Any, runs: list[Run]) -> None:
    """Clients that never finish a request head (slowloris) hold their run's share until
    the handshake timeout, and nothing of another run's."""
    target = ("127.0.0.1", select_echo.port)
    with ProxyHost(max_connections_per_run=4, handshake_timeout=1.0) as host:
        slow, other = Run(host), Run(host)
        runs += [slow, other]
        stalled = []
        for kind, partial in (("http", b"CONNECT 127.0.0.1:"), ("socks5", b"\x05")) * 2:
            sock = socket.create_connection(("127.0.0.1", slow.ports[kind]), timeout=10)
            sock.sendall(partial)
            stalled.append(sock)
        try:
            assert eventually(lambda: host.active_connections(slow.key) == 4, 5)
            assert slow.connect(target) is None
            assert "limit 4" in slow.refusals()[-1]
            assert other.connect(target) is not None
            # The timeout ends them (408 on the HTTP port) and the share comes back.
            assert stalled[0].recv(100).startswith(b"HTTP/1.1 408")
            assert eventually(lambda: host.active_connections(slow.key) == 0, 5)
            assert slow.connect(target) is not None
        finally:
            for sock in stalled:
                sock.close()


class SlowDNS:
    """A blocking resolver: ``fast.test`` answers at once, ``slow*.test`` blocks until
    :meth:`release` (as a name whose servers do not answer would)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self.blocked = 0
        self.most_blocked = 0

    def __call__(self, name: str, port: int) -> list[str]:
        if name.startswith("slow"):
            with self._lock:
                self.blocked += 1
                self.most_blocked = max(self.most_blocked, self.blocked)
            try:
                self.gate.wait(30)
            finally:
                with self._lock:
                    self.blocked -= 1
        return ["127.0.0.1"]

    def release(self) -> None:
        self.gate.set()


def test_slow_lookups_hold_only_their_runs_share(select_echo: Any, runs: list[Run]) -> None:
    """A run resolving names that hang keeps at most its share of lookup threads busy, even
    as its connections give up and come back; another run's lookups go straight through;
    and a lookup that timed out is not cached for anyone."""
    dns = SlowDNS()

    def ruleset() -> RuleSet:
        allow = ["*.test", "127.0.0.0/8"]
        return RuleSet.parse(allow, [], resolver=blocking_resolver(dns), resolve_timeout=0.5)

    port = select_echo.port
    with ProxyHost() as host:
        slow, other = Run(host, ruleset()), Run(host, ruleset())
        runs += [slow, other]
        try:
            for round_ in range(3):  # the connections time out and come back
                done: list[socket.socket | None] = []

                def ask(i: int, done: list[socket.socket | None] = done) -> None:
                    done.append(slow.connect((f"slow{i}.test", port)))

                threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
                for thread in threads:
                    thread.start()
                assert other.connect(("fast.test", port)) is not None, round_
                for thread in threads:
                    thread.join(10)
                assert done == [None] * 8
            assert dns.most_blocked == 4
            assert all("timed out" in reason for reason in slow.refusals())
        finally:
            dns.release()
        assert eventually(lambda: dns.blocked == 0, 5)
        assert slow.connect(("slow0.test", port)) is not None


def test_system_lookups_run_on_the_sessions_threads(select_echo: Any, runs: list[Run]) -> None:
    """The host's resolver (``getaddrinfo``) runs on the session's pool, whose threads go
    when idle, not on the loop's default executor, whose threads stay for the session."""
    with ProxyHost(idle_thread_s=0.3) as host:
        run = Run(host, RuleSet.parse(["localhost", "127.0.0.0/8"], []))
        runs.append(run)
        assert run.connect(("localhost", select_echo.port)) is not None
        before = {t.name for t in threading.enumerate()}
        run.stop()
        assert eventually(lambda: host.worker_threads == 0, 5)
        assert not any("asyncio" in name or "ThreadPool" in name for name in before)


def test_the_process_descriptor_budget_bounds_all_sessions(
    select_echo: Any, runs: list[Run]
) -> None:
    """All proxies of a process hold at most half of its RLIMIT_NOFILE, whatever each
    session's own capacity says, so a run can never exhaust the caller's descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # New descriptors take the lowest free numbers: what counts is how many are open.
    in_use = len(os.listdir("/proc/self/fd"))
    limit = 384  # 192 for the proxies (32 connections); the test's own sockets add 2 each
    if in_use > 60:
        pytest.skip(f"this process already has {in_use} descriptors open")
    target = ("127.0.0.1", select_echo.port)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        assert connection_shares().capacity == limit // 2 // 6
        with contextlib.ExitStack() as stack:
            one = stack.enter_context(ProxyHost(max_connections=64, max_connections_per_run=64))
            two = stack.enter_context(ProxyHost(max_connections=64, max_connections_per_run=64))
            first, second = Run(one), Run(two)
            runs += [first, second]
            assert first.hold(20, target) == 20
            assert second.hold(20, target) == limit // 2 // 6 - 20
            assert "half of its descriptor limit" in second.refusals()[-1]
    finally:
        for run in runs:
            run.release()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_capacity_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProxyHost(max_connections=0)
    with pytest.raises(ValueError, match="share of proxy connections must be 1 to"):
        ProxyHost(max_connections_per_run=0)
    shares = connection_shares(512)
    assert (shares.capacity, shares.share, shares.floor, shares.headroom) == (512, 128, 16, 128)


# ------------------------------------------------------------------ the worker pool


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll state other threads change (no event to wait on) for up to ``seconds``."""
    with anyio.move_on_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return predicate()


def _soon() -> Any:
    """The current loop's non-blocking entry from other threads (asyncio or trio)."""
    try:
        import asyncio

        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


@pytest.mark.anyio
async def test_worker_threads_exit_when_idle() -> None:
    from union.sandbox.core.netproxy.workers import WorkerPool

    pool = WorkerPool(_soon(), max_threads=16, spare=2, idle_s=0.3)
    gate = threading.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(pool.run, gate.wait)
        assert await wait_until(lambda: pool.threads == 10)
        gate.set()
    assert await wait_until(lambda: pool.threads <= 2)  # all but the spare ones at once
    assert await wait_until(lambda: pool.threads == 0)  # and those after idle_s
    assert await pool.run(lambda: 42) == 42
    assert pool.close(5)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(lambda: 0)


@pytest.mark.anyio
async def test_worker_budget_and_abandoned_jobs() -> None:
    from union.sandbox.core.netproxy.workers import WorkerPool

    pool = WorkerPool(_soon(), max_threads=1, idle_s=0.2)
    gate = threading.Event()
    returned = anyio.Event()
    with anyio.move_on_after(0.2) as scope:
        await pool.run_abandoning(gate.wait, returned.set)
    assert scope.cancelled_caught  # the caller stopped waiting; the thread did not
    with pytest.raises(RuntimeError, match="budget"):
        await pool.run(lambda: 0)
    gate.set()
    with anyio.fail_after(5):
        await returned.wait()  # told when the thread really returned
    with pytest.raises(ZeroDivisionError):
        await pool.run(lambda: 1 // 0)
    assert pool.close(5)


def test_a_session_keeps_a_bounded_number_of_rule_sets() -> None:
    """A server's session outlives its clients, which may send new lists with every run:
    parsed rule sets (each with its decision cache) are kept for the most recent lists only."""
    from union.sandbox.core.on_device.egress import SessionEgress
    from union.sandbox.core.policy import NetworkPolicy

    egress = SessionEgress()
    prepared = []
    try:
        for i in range(40):
            policy = NetworkPolicy("allowlist", (f"host{i}.test",))
            prepared.append((policy, egress.prepare(policy)))
        recent, first = prepared[-1], prepared[0]
        again = egress.prepare(recent[0])
        prepared.append((recent[0], again))
        assert again.rules is recent[1].rules  # still parsed once
        anew = egress.prepare(first[0])
        prepared.append((first[0], anew))
        assert anew.rules is not first[1].rules  # long forgotten: parsed again
        assert len(egress._rulesets) <= 16
    finally:
        for _policy, run in prepared:
            run.host_end.close()
            run.run_end.close()
