"""ProxyHost lifecycle, listeners, environment and the decision log."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import anyio
import pytest

from union.sandbox.core.netproxy import (
    DecisionLog,
    NetworkDecision,
    ProxyHost,
    RuleSet,
    make_listeners,
    proxy_env,
)

LOOPBACK = ["127.0.0.0/8"]


def ports_of(listeners: Sequence[tuple[str, socket.socket]]) -> dict[str, int]:
    return {kind: int(sock.getsockname()[1]) for kind, sock in listeners}


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_make_listeners() -> None:
    listeners = make_listeners()
    try:
        assert [kind for kind, _ in listeners] == ["http", "socks5"]
        for _kind, sock in listeners:
            host, port = sock.getsockname()
            assert host == "127.0.0.1"
            assert port > 0
            assert not sock.get_inheritable()
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for _, sock in listeners:
            sock.close()


def test_proxy_env() -> None:
    env = proxy_env(3128, 1080)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://127.0.0.1:3128"
    for name in ("ALL_PROXY", "all_proxy"):
        assert env[name] == "socks5h://127.0.0.1:1080"
    for name in ("NO_PROXY", "no_proxy"):
        assert env[name] == "127.0.0.1,localhost,::1"
    assert len(env) == 8


def test_thread_starts_lazily_and_close_is_idempotent() -> None:
    host = ProxyHost()
    assert not host.running
    host.stop("never-served")  # no-op before start
    listeners = make_listeners()
    host.serve("r", listeners, RuleSet.parse(LOOPBACK, []), DecisionLog())
    assert host.running
    assert any(t.name == "union-sandbox-netproxy" for t in threading.enumerate())
    host.close()
    host.close()
    assert not host.running
    assert all(sock.fileno() == -1 for _, sock in listeners)
    fresh = make_listeners()
    with pytest.raises(RuntimeError, match="closed"):
        host.serve("again", fresh, RuleSet.parse(LOOPBACK, []), DecisionLog())
    assert all(sock.fileno() == -1 for _, sock in fresh)  # ownership taken even on failure


def test_close_without_start() -> None:
    with ProxyHost() as host:
        pass
    assert not host.running


def test_stop_closes_listeners_and_live_connections(
    proxy_host: ProxyHost, echo: Any, net: Any
) -> None:
    listeners = make_listeners()
    ports = ports_of(listeners)
    log = DecisionLog()
    proxy_host.serve("stop-me", listeners, RuleSet.parse(LOOPBACK, []), log)
    tunnel = socket.create_connection(("127.0.0.1", ports["http"]), timeout=10)
    tunnel.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode())
    assert net.read_http_head(tunnel).startswith(b"HTTP/1.1 200")
    tunnel.sendall(b"live")
    assert net.recv_exactly(tunnel, 4) == b"live"
    assert proxy_host.active_connections("stop-me") == 1
    started = time.monotonic()
    proxy_host.stop("stop-me")
    assert time.monotonic() - started < 5
    assert tunnel.recv(10) == b""  # the tunnel was torn down
    tunnel.close()
    assert connect_refused(ports["http"])
    assert connect_refused(ports["socks5"])
    assert proxy_host.active_connections("stop-me") == 0
    assert log.snapshot()[-1].bytes_up == 4
    proxy_host.stop("stop-me")  # twice is fine


def test_duplicate_key_and_unknown_kind_are_refused(proxy_host: ProxyHost) -> None:
    first = make_listeners()
    proxy_host.serve("dup", first, RuleSet.parse(LOOPBACK, []), DecisionLog())
    try:
        second = make_listeners()
        with pytest.raises(ValueError, match="already being served"):
            proxy_host.serve("dup", second, RuleSet.parse(LOOPBACK, []), DecisionLog())
        assert all(sock.fileno() == -1 for _, sock in second)
        third = make_listeners()
        odd: Any = [("ftp", third[0][1])]
        with pytest.raises(ValueError, match="unknown proxy kind"):
            proxy_host.serve("odd", odd, RuleSet.parse([], []), DecisionLog())
        assert third[0][1].fileno() == -1
        third[1][1].close()
    finally:
        proxy_host.stop("dup")


def test_runs_are_isolated(serve: Callable[..., Any], echo: Any, net: Any) -> None:
    """Each run's listeners apply that run's rules and log to that run's log."""
    open_run = serve(LOOPBACK)
    closed_run = serve(["pypi.org"])
    request = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode()
    assert net.exchange(open_run.http_port, request).startswith(b"HTTP/1.1 200")
    assert net.exchange(closed_run.http_port, request).startswith(b"HTTP/1.1 403")
    assert [d.allowed for d in open_run.log.snapshot()] == [True]
    assert [d.allowed for d in closed_run.log.snapshot()] == [False]


def test_connection_cap(net: Any, echo: Any) -> None:
    with ProxyHost(max_connections_per_run=2) as host:
        listeners = make_listeners()
        ports = ports_of(listeners)
        log = DecisionLog()
        host.serve("cap", listeners, RuleSet.parse(LOOPBACK, []), log)
        held = [socket.create_connection(("127.0.0.1", ports["socks5"])) for _ in range(2)]
        try:
            deadline = time.monotonic() + 5
            while host.active_connections("cap") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert net.exchange(ports["socks5"], b"\x05\x01\x00") == b""
            assert "too many concurrent" in log.snapshot()[-1].reason
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_proxy_loop_backends(backend: Literal["asyncio", "trio"], echo: Any, net: Any) -> None:
    """The handlers are anyio code: the private loop may be asyncio or trio."""
    with ProxyHost(backend=backend) as host:
        listeners = make_listeners()
        ports = ports_of(listeners)
        host.serve("b", listeners, RuleSet.parse(LOOPBACK, []), DecisionLog())
        connect = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nhi".encode()
        assert net.exchange(ports["http"], connect).endswith(b"\r\n\r\nhi")
        socks = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + echo.port.to_bytes(2, "big")
        assert (
            net.exchange(ports["socks5"], socks + b"yo")
            == b"\x05\x00\x05\x00\x00\x01" + bytes(6) + b"yo"
        )


@pytest.mark.anyio
async def test_usable_from_inside_a_running_loop(proxy_host: ProxyHost, echo: Any) -> None:
    """Called from the caller's own event loop (asyncio or trio), the host never blocks it:
    an async client on that same loop talks through the proxy."""
    listeners = make_listeners()
    ports = ports_of(listeners)
    proxy_host.serve("in-loop", listeners, RuleSet.parse(LOOPBACK, []), DecisionLog())
    try:
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp("127.0.0.1", ports["http"])
            async with stream:
                await stream.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode())
                received = b""
                while not received.endswith(b"\r\n\r\n"):
                    received += await stream.receive(1)
                assert received.startswith(b"HTTP/1.1 200")
                await stream.send(b"async")
                echoed = b""
                while len(echoed) < 5:
                    echoed += await stream.receive()
                assert echoed == b"async"
    finally:
        proxy_host.stop("in-loop")


def test_decision_log_is_bounded_and_thread_safe() -> None:
    log = DecisionLog(max_entries=100)

    def writer() -> None:
        for i in range(60):
            index = log.record(
                host="h", port=i, allowed=True, rule=None, reason="r", protocol="socks5"
            )
            log.update(index, bytes_up=1, bytes_down=2)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = log.snapshot()
    assert len(entries) == 100
    assert log.dropped == 140
    assert all(isinstance(e, NetworkDecision) and e.bytes_down == 2 for e in entries)
    log.update(-1, bytes_up=5)  # a dropped entry's index: ignored


def test_decision_reasons_are_clipped() -> None:
    """A reason can list every address a name resolved to: what a run's 10,000 entries can
    hold in the caller stays small."""
    log = DecisionLog()
    long = "; ".join(f"10.0.{i // 256}.{i % 256}:443: Connection refused" for i in range(4000))
    index = log.record(host="h", port=1, allowed=True, rule=None, reason=long, protocol="socks5")
    assert len(log.snapshot()[index].reason) <= 500
    log.update(index, reason="connecting failed: " + long)
    [entry] = log.snapshot()
    assert entry.reason.startswith("connecting failed: 10.0.0.0:443")
    assert entry.reason.endswith("(clipped)")
    assert len(entry.reason) <= 500
