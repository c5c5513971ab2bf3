"""Proxied runs on a reused init: each run gets exactly its own proxies.

An init that served an ``allowlist`` run (or an ``open`` run with a deny-list) serves the
next proxied run of its session too, keeping its proxy listeners; the host re-arms them for
each run (``docs/design.md``, "Network egress"). Whatever the run before did, a run must be
served with its own rules, its own credentials and its own decision log, and a connection a
run leaves open must be closed when the run ends, never carried into a later run.

How a test sees reuse from inside: a fresh init's command is pid 2 of a new pid namespace;
a reused init's next command gets a later pid (and the same proxy ports).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from union.sandbox.core.testing_net import SOCKET_HELPERS

pytestmark = pytest.mark.anyio

NO_PROXY_CLEARED = {"NO_PROXY": "", "no_proxy": ""}


def connect_through_proxy(targets: list[int], payload: str = "", leave_open: bool = False) -> str:
    """Python for a run: a ``CONNECT 127.0.0.1:<port>`` through ``$HTTP_PROXY`` (with its
    credentials, if any) to each target port; prints ``PID=`` and ``STATUS=`` (a JSON list
    of status codes). On a tunnel that opened it sends ``payload`` (and, unless
    ``leave_open``, reads the echo and closes; else the process exits with it open)."""
    return f"""
import base64, json, os, socket
from urllib.parse import unquote, urlsplit
{SOCKET_HELPERS}
proxy = urlsplit(os.environ["HTTP_PROXY"])
auth = b""
if proxy.username:  # an open run's proxies want its credentials
    pair = ("%s:%s" % (unquote(proxy.username), unquote(proxy.password))).encode()
    auth = b"Proxy-Authorization: Basic " + base64.b64encode(pair) + b"\\r\\n"
print("PID=%d" % os.getpid(), flush=True)
statuses, kept = [], []
for port in {targets!r}:
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n%s\\r\\n" % (port, auth))
    head = read_http_head(s)
    status = int(head.split()[1]) if head else 0
    statuses.append(status)
    if status == 200 and {payload!r}:
        s.sendall({payload!r}.encode())
        if {leave_open!r}:
            kept.append(s)
            continue
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    s.close()
print("STATUS=" + json.dumps(statuses), flush=True)
"""


def fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def run_py(sbx: Any, code: str, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    proc = await sbx.run(
        "python -c " + _quote(code), env={**NO_PROXY_CLEARED, **kwargs.pop("env", {})}, **kwargs
    )
    out, err = await proc.communicate_text()
    assert proc.returncode == 0, (out, err)
    return proc, fields(out)


def _quote(code: str) -> str:
    return "'" + code.replace("'", "'\"'\"'") + "'"


async def pid_and_proxy(sbx: Any, **kwargs: Any) -> tuple[int, str]:
    result = await sbx.exec("echo $$; echo $HTTP_PROXY", check=True, **kwargs)
    pid, proxy = result.stdout.split()
    return int(pid), proxy


@pytest.fixture
def closed_ports() -> Iterator[list[int]]:
    """Ports on the host's 127.0.0.1 that refuse connections (bound, never listening, so
    nothing else takes them while the test runs)."""
    held = []
    for _ in range(8):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    yield [int(sock.getsockname()[1]) for sock in held]
    for sock in held:
        sock.close()


class HoldServer:
    """TCP on the host's ``127.0.0.1`` that reads what each connection sends and never
    closes its side: a tunnel to it stays open until the proxy closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with self._lock:
                    self._conns.append(conn)
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                data += chunk
        with self._lock:
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


@pytest.fixture
def hold_server() -> Iterator[HoldServer]:
    server = HoldServer()
    yield server
    server.close()


def sockets_to(port: int) -> int:
    """Sockets this process holds that are connected to ``127.0.0.1:<port>`` (the proxy's
    upstream ends: the proxy thread runs in this process)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    mine = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                mine += 1
    return mine


# ---------------------------------------------------------------------------------------
# One run after another on the same init
# ---------------------------------------------------------------------------------------


async def test_allowlist_runs_reuse_their_init_and_its_listeners(open_session: Any) -> None:
    async with open_session(network_mode="allowlist", network_allowlist=["pypi.org"]) as sbx:
        first, proxy = await pid_and_proxy(sbx)
        assert first == 2
        for _ in range(2):
            pid, again = await pid_and_proxy(sbx)
            assert pid > first
            assert again == proxy
            first = pid


@pytest.mark.parametrize("order", ["narrow-then-wide", "wide-then-narrow"])
async def test_a_reused_init_serves_the_next_runs_policy_and_log(
    open_session: Any, net: Any, closed_ports: list[int], order: str
) -> None:
    """Policy ``wide`` allows the echo server, ``narrow`` only a closed port. A run with
    one policy hands its init to a run with the other: that run's proxies apply its own
    rules (each target gets the other answer than the first policy would give), and its
    decisions land in its own log only."""
    closed = closed_ports[0]
    wide = [f"127.0.0.1:{net.echo_port}"]
    narrow = [f"127.0.0.1:{closed}"]
    first_policy, second_policy = (narrow, wide) if order == "narrow-then-wide" else (wide, narrow)
    async with open_session(network_mode="allowlist", network_allowlist=wide) as sbx:
        first = await sbx.run("echo $$", network_allowlist=first_policy)
        out, _ = await first.communicate()
        assert int(out) == 2
        token = net.token()
        second, seen = await run_py(
            sbx,
            connect_through_proxy([net.echo_port, closed], payload=token),
            network_allowlist=second_policy,
        )
        assert int(seen["PID"]) > 2  # the first run's init, re-armed
    decisions = [(d.port, d.allowed, d.rule) for d in second.network_decisions]
    if second_policy is wide:
        assert json.loads(seen["STATUS"]) == [200, 403]
        assert decisions == [(net.echo_port, True, wide[0]), (closed, False, None)]
        assert net.echo.recorder.saw(token)
    else:
        assert json.loads(seen["STATUS"]) == [403, 502]  # allowed, nothing listens
        assert decisions == [(net.echo_port, False, None), (closed, True, narrow[0])]
        assert not net.echo.recorder.saw(token)
    assert first.network_decisions == []


async def test_each_run_on_a_reused_init_gets_new_credentials(open_session: Any, net: Any) -> None:
    """``open`` runs with a deny-list reach their proxies on the host's loopback, where any
    process can: the proxies require the run's credentials. A run on a reused init keeps
    the listeners but not the credentials: the previous run's are refused (407, not
    recorded), its own work."""
    async with open_session(network_mode="open", network_denylist=[net.unlisted]) as sbx:
        with pytest.warns(UserWarning, match="enforced only for clients"):
            pid, before = await pid_and_proxy(sbx)
        assert pid == 2
        stale, fresh = net.token(), net.token()
        command = (
            "echo PID=$$; echo PROXY=$HTTP_PROXY; "
            + net.curl(net.http_url(stale), proxy=before)
            + "; "
            + net.curl(net.http_url(fresh))
        )
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    seen = fields(out)
    assert int(seen["PID"]) > 2, out  # the same init
    now = seen["PROXY"]
    assert now.rsplit("@", 1)[1] == before.rsplit("@", 1)[1]  # the same listener...
    assert now != before  # ... with new credentials
    assert [line for line in out.splitlines() if line.startswith("CODE=")] == [
        "CODE=407",
        "CODE=200",
    ], err
    assert not net.reached(stale)
    assert net.reached(fresh)
    assert [(d.host, d.allowed) for d in proc.network_decisions] == [("127.0.0.1", True)]


@pytest.mark.parametrize("mode", ["allowlist", "open"])
async def test_a_connection_a_run_leaves_open_is_closed_when_it_ends(
    open_session: Any, net: Any, hold_server: HoldServer, mode: str
) -> None:
    """A run exits with a tunnel open to a server that never closes its side: by the time
    the run's ``wait()`` returns, the proxy has closed the tunnel, and the next run of the
    session neither sees the tunnel's decision nor sends anything down it."""
    policy: dict[str, Any] = (
        {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]}
        if mode == "allowlist"
        else {"network_mode": "open", "network_denylist": [net.unlisted]}
    )
    token = net.token()
    with contextlib.ExitStack() as stack:
        if mode == "open":
            stack.enter_context(pytest.warns(UserWarning, match="enforced only for clients"))
        async with open_session(**policy) as sbx:
            await sbx.exec("true", check=True)
            left, seen = await run_py(
                sbx,
                connect_through_proxy([hold_server.port], payload=token, leave_open=True),
            )
            assert json.loads(seen["STATUS"]) == [200]
            assert sockets_to(hold_server.port) == 0  # closed before wait() returned
            after, seen_after = await run_py(sbx, connect_through_proxy([net.echo_port]))
            assert json.loads(seen_after["STATUS"]) == [200]
    assert [(d.port, d.allowed) for d in left.network_decisions] == [(hold_server.port, True)]
    assert [d.port for d in after.network_decisions] == [net.echo_port]
    for _ in range(100):  # the server sees the tunnel's end (it read the token first)
        if hold_server.received:
            break
        await anyio.sleep(0.02)
    assert hold_server.received == [token.encode()]


# ---------------------------------------------------------------------------------------
# Interleaved runs with different policies
# ---------------------------------------------------------------------------------------


async def test_interleaved_runs_each_get_exactly_their_own_policy_and_log(
    open_session: Any, net: Any, closed_ports: list[int]
) -> None:
    """Four tasks share one session, each with its own allow-list (the echo server and a
    port of its own); their runs interleave and take each other's idle inits. Each run's
    proxies must answer with its task's policy: its own port allowed (502: nothing
    listens), the next task's refused (403), and its log must hold exactly those
    decisions."""
    tasks = 4
    ports = closed_ports[:tasks]
    reused: list[int] = []

    async def task(i: int) -> None:
        mine, theirs = ports[i], ports[(i + 1) % tasks]
        policy = [f"127.0.0.1:{net.echo_port}", f"127.0.0.1:{mine}"]
        for _ in range(3):
            quiet = await sbx.run("true", network_allowlist=policy)
            assert await quiet.wait() == 0
            assert quiet.network_decisions == []
            proc, seen = await run_py(
                sbx,
                connect_through_proxy([net.echo_port, mine, theirs], payload="x"),
                network_allowlist=policy,
            )
            assert json.loads(seen["STATUS"]) == [200, 502, 403], (i, seen)
            decisions = [(d.port, d.allowed, d.rule) for d in proc.network_decisions]
            assert decisions == [
                (net.echo_port, True, policy[0]),
                (mine, True, policy[1]),
                (theirs, False, None),
            ], (i, decisions)
            reused.append(int(seen["PID"]) > 2)

    async with (
        open_session(
            network_mode="allowlist", network_allowlist=[f"127.0.0.1:{net.echo_port}"]
        ) as sbx,
        anyio.create_task_group() as tg,
    ):
        for i in range(tasks):
            tg.start_soon(task, i)
    assert len(reused) == 3 * tasks
    assert any(reused), "no run was served by a reused init: the test proves nothing"
