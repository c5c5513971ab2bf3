"""What runs' proxy traffic makes the caller hold: threads go back to where they were once
the runs end, and one run at its share of the session's proxies does not starve another.

The caller is this process (on-device) or a ``sandbox-server`` on loopback (remote: its
session outlives the clients, so whatever runs leave behind would pile up there). The runs
open many tunnels through their proxies (``CONNECT`` or SOCKS5) to a single-thread echo
server on the host's loopback, so every thread the caller gains is the proxies'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core.netproxy.capacity import (
    FDS_PER_CONNECTION,
    MAX_SESSION_CONNECTIONS,
    connection_shares,
)
from union.sandbox.core.testing_net import SOCKET_HELPERS

pytestmark = pytest.mark.anyio

ALLOW_LOOPBACK = {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]}

#: Opens up to N tunnels to the echo server through the run's proxy (VIA: "http" for
#: CONNECT, "socks5"), each checked with an echoed byte, and stops after three refusals in a
#: row; prints ``HELD=<n> REFUSED=<n>``, then holds them until its stdin closes.
HOLD_TUNNELS = (
    """
import os, socket, struct, sys
from urllib.parse import urlsplit
"""
    + SOCKET_HELPERS
    + """
proxy = urlsplit(os.environ["HTTP_PROXY" if VIA == "http" else "ALL_PROXY"])

def tunnel():
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=5)
    try:
        if VIA == "http":
            s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\n" % PORT)
            ok = read_http_head(s).startswith(b"HTTP/1.1 200")
        else:
            s.sendall(b"\\x05\\x01\\x00")
            ok = s.recv(2) == b"\\x05\\x00"
            if ok:
                s.sendall(b"\\x05\\x01\\x00\\x01" + socket.inet_aton("127.0.0.1")
                          + struct.pack(">H", PORT))
                reply = recv_exactly(s, 10)
                ok = len(reply) == 10 and reply[1] == 0
        if ok:
            s.sendall(b"!")
            ok = s.recv(1) == b"!"
    except OSError:
        ok = False
    if not ok:
        s.close()
        return None
    return s

held, refused, in_a_row = [], 0, 0
while len(held) + refused < N and in_a_row < 3:
    s = tunnel()
    if s is None:
        refused += 1
        in_a_row += 1
    else:
        held.append(s)
        in_a_row = 0
print("HELD=%d REFUSED=%d" % (len(held), refused), flush=True)
sys.stdin.read()
"""
)


def hold_tunnels(port: int, n: int, via: str = "http") -> str:
    return f"VIA = {via!r}\nPORT = {port}\nN = {n}\n" + HOLD_TUNNELS


def counts(line: bytes) -> tuple[int, int]:
    fields = dict(part.split("=") for part in line.decode().split())
    return int(fields["HELD"]), int(fields["REFUSED"])


async def start_holding(sbx: Any, port: int, n: int, via: str = "http") -> tuple[Any, int, int]:
    """A run holding up to ``n`` tunnels: (process, held, refused) once it has them."""
    proc = await sbx.run(
        hold_tunnels(port, n, via), script_type="python", stdin=sb.PIPE, timeout_s=120
    )
    with anyio.fail_after(60):
        line = await proc.stdout.readline()
    assert line.startswith(b"HELD="), (line, await proc.stderr.read())
    held, refused = counts(line)
    return proc, held, refused


async def end(proc: Any) -> None:
    """Let a holding run exit (closing its stdin) and wait for it."""
    await proc.stdin.aclose()
    with anyio.fail_after(30):
        await proc.wait()


@dataclasses.dataclass
class Caller:
    """The process whose proxies serve the runs, and how a test sees and sets it up."""

    open_session: Callable[..., contextlib.AbstractAsyncContextManager[Any]]
    threads: Callable[[], int]
    pid: int

    def set_descriptor_limit(self, soft: int) -> None:
        """Must come before the session's first proxied run (the proxies size their share
        then)."""
        _old, hard = resource.prlimit(self.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (soft, hard))


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.fixture(params=["on-device", "remote"])
def caller(request: pytest.FixtureRequest, backend: str, anyio_backend: str) -> Iterator[Caller]:
    """This process with an on-device session of the backend; or a fresh ``sandbox-server``
    of the backend (its proxies do not depend on the client's loop: asyncio only)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if request.param == "on-device":
        factory = request.getfixturevalue("open_session")
        try:
            yield Caller(factory, threading.active_count, os.getpid())
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return
    if anyio_backend != "asyncio":
        pytest.skip("the remote caller's proxies run on the server's loop: asyncio covers it")
    from union.sandbox.server.testing import spawn_server

    with spawn_server(backend=backend, token=True) as server:

        @contextlib.asynccontextmanager
        async def remote(**kwargs: Any) -> AsyncIterator[Any]:
            async with sb.remote.session(
                endpoint=server.endpoint, token=server.token, verify_backend=backend, **kwargs
            ) as session:
                yield session

        pid = int(server.process.pid)
        yield Caller(remote, lambda: thread_count(pid), pid)


async def settled_thread_count(caller: Caller, seconds: float = 15.0, quiet: float = 3.0) -> int:
    """The caller's thread count once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + seconds
    last, since = caller.threads(), time.monotonic()
    while time.monotonic() < deadline:
        await anyio.sleep(0.05)
        now = caller.threads()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


async def eventually(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await anyio.sleep(0.02)
    return predicate()


async def test_threads_return_to_baseline_after_runs_holding_tunnels_end(
    caller: Caller, select_echo: Any
) -> None:
    """Three runs hold 60 tunnels each (two relay threads apiece in the caller); a few
    seconds after they end, the caller has no more threads than before, without any further
    proxy use to reap idle ones."""
    port = select_echo.port
    async with caller.open_session(**ALLOW_LOOPBACK) as sbx:
        # The same shape once, so that whatever the session keeps (the proxy thread, the
        # caller's own worker threads) is in the baseline.
        warm = [await start_holding(sbx, port, 1) for _ in range(3)]
        for proc, _, _ in warm:
            await end(proc)
        baseline = await settled_thread_count(caller)
        runs = []
        for via in ("http", "socks5", "http"):
            proc, held, refused = await start_holding(sbx, port, 60, via)
            runs.append(proc)
            assert (held, refused) == (60, 0)
        assert caller.threads() >= baseline + 300  # two pumps per tunnel
        for proc in runs:
            await end(proc)
        ended = time.monotonic()
        back = await eventually(lambda: caller.threads() <= baseline, 5)
        assert back, (
            f"{caller.threads() - baseline} threads above the baseline "
            f"{time.monotonic() - ended:.1f} s after the runs ended"
        )
        assert await eventually(lambda: select_echo.connections == 0, 5)


#: The soft descriptor limit most desktops and CI runners start a process with.
COMMON_LIMIT = 1024


def share_at(limit: int) -> int:
    """A run's share of the proxies of a caller whose descriptor limit is ``limit``."""
    capacity = min(MAX_SESSION_CONNECTIONS, limit // 2 // FDS_PER_CONNECTION)
    return connection_shares(capacity).share


@pytest.mark.parametrize("via", ["http", "socks5"])
async def test_a_run_at_its_share_does_not_starve_another(
    caller: Caller, net: Any, select_echo: Any, via: str
) -> None:
    """With the common 1024-descriptor limit, one run opens tunnels until it is refused;
    while it holds them, another run of the same session fetches through its own proxy. The
    first run's refusals are in its ``network_decisions``, and the caller keeps descriptors
    for everything else."""
    if len(os.listdir(f"/proc/{caller.pid}/fd")) > 200:
        pytest.skip("the caller already has too many descriptors open")
    caller.set_descriptor_limit(COMMON_LIMIT)
    share = share_at(COMMON_LIMIT)
    async with caller.open_session(**ALLOW_LOOPBACK) as sbx:
        greedy, held, refused = await start_holding(sbx, select_echo.port, 300, via)
        try:
            assert (held, refused) == (share, 3)
            token = net.token()
            other = await sbx.exec(net.curl(net.http_url(token)))
            assert net.field(other.stdout, "CODE") == "200", other.stdout + other.stderr
            assert net.reached(token)
        finally:
            await end(greedy)
    refusals = [d.reason for d in greedy.network_decisions if not d.allowed]
    assert len(refusals) == 3
    assert all(f"its share of the session's proxies (limit {share})" in r for r in refusals)
