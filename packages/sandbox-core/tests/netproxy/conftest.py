"""Fixtures for the netproxy suite: loopback origin servers, a fake resolver, live proxies.

Nothing here sends a packet anywhere but loopback: names resolve through :data:`FAKE_DNS`
(never the system resolver), and every allowed target is a server started here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from union.sandbox.core.netproxy import (
    DecisionLog,
    NetworkDecision,
    ProxyHost,
    RuleSet,
    make_listeners,
)
from union.sandbox.core.testing_net import SelectEchoServer, read_http_head, recv_exactly

#: Test-only DNS. Public addresses appear only in rule decisions, never dialled.
FAKE_DNS: dict[str, list[str]] = {
    "pkg.test": ["127.0.0.1"],
    "pkg6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "private.test": ["10.0.0.5"],
    "ula.test": ["fd12:3456::1"],
    "cgnat.test": ["100.64.0.7"],
    "meta.test": ["169.254.169.254"],
    "meta6.test": ["fd00:ec2::254"],
    "linklocal.test": ["fe80::1%1"],
    "public.test": ["93.184.216.34"],
    "public6.test": ["2606:2800:220:1:248:1893:25c8:1946"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "multicast.test": ["224.0.0.1"],
    "zero.test": ["0.0.0.0"],
    "nat64.test": ["64:ff9b::7f00:1"],
    "a.example.org": ["93.184.216.34"],
    "b.a.example.org": ["93.184.216.34"],
    "example.org": ["93.184.216.34"],
    "bad.example.org": ["93.184.216.34"],
    "evilexample.org": ["93.184.216.34"],
    "pypi.org": ["151.101.0.223"],
    "www.pypi.org": ["151.101.0.223"],
    "evilpypi.org": ["151.101.0.223"],
    "pypi.org.evil.net": ["151.101.0.223"],
    "files.pythonhosted.org": ["151.101.1.63"],
    "metadata.google.internal": ["169.254.169.254"],
}


class FakeResolver:
    """Resolver stand-in: answers from :data:`FAKE_DNS`, counts calls, fails like getaddrinfo."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(FAKE_DNS if table is None else table)
        self.calls: list[str] = []

    async def __call__(self, name: str, port: int) -> list[str]:
        self.calls.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[name])


@pytest.fixture
def fake_resolver() -> FakeResolver:
    return FakeResolver()


def rules(
    allow: Sequence[str], deny: Sequence[str] = (), resolver: FakeResolver | None = None
) -> RuleSet:
    return RuleSet.parse(allow, deny, resolver=resolver or FakeResolver())


@pytest.fixture
def make_rules() -> Callable[..., RuleSet]:
    """``make_rules(allow, deny=(), resolver=None)``: a RuleSet on the fake resolver."""
    return rules


# ---------------------------------------------------------------------------- servers


class _Origin(http.server.BaseHTTPRequestHandler):
    """``GET /path`` -> ``path=<path> host=<Host header>``; ``POST`` echoes the body;
    ``GET /big`` sends 4 MiB. Records request heads on the server object."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/big":
            self._answer(BIG_BODY)
            return
        self._answer(f"path={self.path} host={self.headers.get('Host')}".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._answer(b"posted:" + self.rfile.read(length))

    def log_message(self, format: str, *args: object) -> None:
        pass


BIG_BODY = os.urandom(1 << 16) * 64  # 4 MiB


class OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Origin)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def _running(server: OriginServer) -> Iterator[OriginServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """A plain HTTP origin on 127.0.0.1."""
    with _running(OriginServer(("127.0.0.1", 0))) as server:
        yield server


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[str, str]]:
    """A throwaway self-signed certificate for 127.0.0.1 / pkg.test (needs ``openssl``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tempfile.mkdtemp(prefix="netproxy-tls-")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
            "-days", "1", "-subj", "/CN=pkg.test",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:pkg.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    yield cert, key
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_origin(tls_files: tuple[str, str]) -> Iterator[OriginServer]:
    """An HTTPS origin on 127.0.0.1 with the self-signed certificate."""
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _running(OriginServer(("127.0.0.1", 0), tls=context)) as server:
        yield server


class EchoServer:
    """TCP echo on loopback (IPv4 or IPv6); echoes until the peer half-closes, then closes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def select_echo() -> Iterator[SelectEchoServer]:
    server = SelectEchoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def echo6() -> Iterator[EchoServer]:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = EchoServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    yield server
    server.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- proxies


@dataclasses.dataclass
class LiveProxy:
    """One served run: its two proxy ports and its decision log."""

    host: ProxyHost
    key: object
    http_port: int
    socks_port: int
    log: DecisionLog

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def decisions(self) -> list[tuple[str, int, bool]]:
        return [(d.host, d.port, d.allowed) for d in self.log.snapshot()]

    def settled(self, limit: float = 10.0) -> list[NetworkDecision]:
        """The log once every connection has ended (byte counts are final only then); a
        client can finish reading before the proxy has seen both sides close."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.host.active_connections(self.key) == 0:
                break
            time.sleep(0.01)
        return self.log.snapshot()


@pytest.fixture(scope="module")
def proxy_host() -> Iterator[ProxyHost]:
    """One proxy thread for the module (as one session would have)."""
    host = ProxyHost(handshake_timeout=5.0, connect_timeout=5.0)
    yield host
    host.close()


@pytest.fixture
def serve(proxy_host: ProxyHost) -> Iterator[Callable[..., LiveProxy]]:
    """``serve(allow, deny=(), resolver=None, host=None, credentials=None)``: a run served
    with those rules (and, with ``credentials``, requiring them of its clients)."""
    started: list[LiveProxy] = []

    def start(
        allow: Sequence[str],
        deny: Sequence[str] = (),
        resolver: FakeResolver | None = None,
        host: ProxyHost | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> LiveProxy:
        listeners = make_listeners()
        ports = {kind: int(sock.getsockname()[1]) for kind, sock in listeners}
        log = DecisionLog()
        key = object()
        target = host or proxy_host
        target.serve(key, listeners, rules(allow, deny, resolver), log, credentials=credentials)
        live = LiveProxy(target, key, ports["http"], ports["socks5"], log)
        started.append(live)
        return live

    yield start
    for live in started:
        live.host.stop(live.key)


def exchange(port: int, data: bytes, *, half_close: bool = True, limit: float = 10.0) -> bytes:
    """Send ``data`` to ``127.0.0.1:port``, half-close, and read until EOF (or ``limit`` s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


class NetTools:
    """The helpers above, for test modules (conftest is not importable under importlib)."""

    FakeResolver = FakeResolver
    EchoServer = EchoServer
    SelectEchoServer = SelectEchoServer
    FAKE_DNS = FAKE_DNS
    BIG_BODY = BIG_BODY
    exchange = staticmethod(exchange)
    read_http_head = staticmethod(read_http_head)
    recv_exactly = staticmethod(recv_exactly)
    closed_port = staticmethod(closed_port)
    rules = staticmethod(rules)


@pytest.fixture(scope="session")
def net() -> type[NetTools]:
    return NetTools
