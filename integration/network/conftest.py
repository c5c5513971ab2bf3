"""Real servers on the host's loopback, and real clients in sandbox runs.

Every server the network tests need is started here, on the host's ``127.0.0.1`` only (no
other address, no internet): a plain HTTP server (also a PEP 503 simple index serving a wheel
built by hand), an HTTPS server with a self-signed certificate made in the test, and a raw TCP
echo server. Each records what reached it, so a test can show that a refused request never
got there. The fixtures are module-scoped and synchronous (threads), so asyncio and trio
tests share them.

Test modules run with ``--import-mode=importlib`` and cannot import each other: the shared
helpers live on the :class:`Net` object of the ``net`` fixture.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import html
import http.server
import io
import ipaddress
import json
import os
import shlex
import socketserver
import ssl
import subprocess
import threading
import uuid
import warnings
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from union import sandbox as sb
from union.sandbox.core.testing_net import SOCKET_HELPERS, SelectEchoServer

BACKENDS = ("bubblewrap", "userns")

#: The wheel the local index serves (a name no real index or site-packages has).
PKG_NAME = "union-nettest-pkg"
PKG_MODULE = "union_nettest_pkg"
PKG_VERSION = "1.0"
PKG_VALUE = "served-by-the-local-index"

#: An address nothing listens on and no rule of these tests names (TEST-NET would also do;
#: nothing is ever dialled there: the proxy refuses first, a blocked run has no route).
UNLISTED = "10.9.9.9"

#: Random bytes served at ``/blob`` (HTTP and HTTPS), to check that relays are byte-exact.
BLOB = os.urandom(8 * 1024 * 1024)
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[str] = []

    def add(self, item: str) -> None:
        with self._lock:
            self._seen.append(item)

    def saw(self, needle: str) -> bool:
        with self._lock:
            return any(needle in item for item in self._seen)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def do_POST(self) -> None:
        self.server.recorder.add(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        digest = hashlib.sha256(body).hexdigest()
        self._send(200, "text/plain", f"posted {len(body)} {digest}\n".encode())

    def do_GET(self) -> None:
        self.server.recorder.add(self.path)
        path = self.path.split("?", 1)[0]
        routes: dict[str, tuple[str, bytes]] = self.server.routes
        if path.startswith("/hello/"):
            token = path[len("/hello/") :]
            self._send(200, "text/plain", f"hello {token} via {self.server.label}\n".encode())
        elif path in routes:
            content_type, body = routes[path]
            self._send(200, content_type, body)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, label: str, routes: dict[str, tuple[str, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.label = label
        self.routes = routes
        self.recorder = _Recorder()


class _TLSHTTPServer(_HTTPServer):
    """HTTPS: the handshake runs in the handler thread, so a silent client blocks nobody."""

    def __init__(
        self, label: str, routes: dict[str, tuple[str, bytes]], context: ssl.SSLContext
    ) -> None:
        super().__init__(label, routes)
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True), addr


class _EchoHandler(socketserver.BaseRequestHandler):
    server: _EchoServer

    def handle(self) -> None:
        self.request.settimeout(120)
        first = ""
        try:
            with contextlib.suppress(OSError):
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        break
                    if not first:
                        first = data.decode("latin-1")
                        self.server.recorder.add(first)
                        self.server.open_tunnels.add(first)
                    self.request.sendall(b"echo:" + data)
        finally:
            self.server.open_tunnels.discard(first)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.recorder = _Recorder()
        #: First payloads of the connections still open (the server has not seen EOF).
        self.open_tunnels: set[str] = set()

    def is_open(self, token: str) -> bool:
        return any(token in first for first in list(self.open_tunnels))


@pytest.fixture(scope="module")
def select_echo() -> Iterator[SelectEchoServer]:
    server = SelectEchoServer()
    yield server
    server.close()


def _serve(server: socketserver.BaseServer) -> None:
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``127.0.0.1`` and ``localhost``: with ``cryptography`` when it
    imports, else with the ``openssl`` command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-keyout", str(key),
                "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def build_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel, assembled with ``zipfile``: (file name, bytes)."""
    dist_info = f"{PKG_MODULE}-{PKG_VERSION}.dist-info"
    files = {
        f"{PKG_MODULE}/__init__.py": f"VALUE = {PKG_VALUE!r}\n".encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {PKG_NAME}\nVersion: {PKG_VERSION}\n"
            "Summary: a wheel served by the network integration tests\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: union-sandbox-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)}\n" for name, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return f"{PKG_MODULE}-{PKG_VERSION}-py3-none-any.whl", buffer.getvalue()


def _index_routes() -> dict[str, tuple[str, bytes]]:
    """PEP 503: ``/simple/`` lists the project, ``/simple/<name>/`` links the wheel with its
    hash, ``/files/<wheel>`` serves it."""
    wheel_name, wheel = build_wheel()
    digest = hashlib.sha256(wheel).hexdigest()
    project = (
        "<!DOCTYPE html><html><body>"
        f'<a href="/files/{wheel_name}#sha256={digest}">{html.escape(wheel_name)}</a>'
        "</body></html>\n"
    ).encode()
    root = (
        f'<!DOCTYPE html><html><body><a href="/simple/{PKG_NAME}/">{PKG_NAME}</a></body></html>\n'
    )
    page = "text/html; charset=utf-8"
    return {
        "/simple/": (page, root.encode()),
        "/simple": (page, root.encode()),
        f"/simple/{PKG_NAME}/": (page, project),
        f"/simple/{PKG_NAME}": (page, project),
        f"/files/{wheel_name}": ("application/octet-stream", wheel),
    }


# ---------------------------------------------------------------------------------------
# The shared object: servers, clients, checks
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Net:
    """The host servers of a module, and the client commands the tests run in sandboxes."""

    http: _HTTPServer
    https: _TLSHTTPServer
    echo: _EchoServer

    unlisted = UNLISTED
    pkg_name = PKG_NAME
    pkg_module = PKG_MODULE
    pkg_value = PKG_VALUE
    pkg_version = PKG_VERSION
    blob_size = len(BLOB)
    blob_sha256 = BLOB_SHA256

    @property
    def http_port(self) -> int:
        return int(self.http.server_address[1])

    @property
    def https_port(self) -> int:
        return int(self.https.server_address[1])

    @property
    def echo_port(self) -> int:
        return int(self.echo.server_address[1])

    @property
    def index_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/simple"

    @staticmethod
    def token() -> str:
        return uuid.uuid4().hex[:16]

    def http_url(self, token: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.http_port}/hello/{token}"

    def https_url(self, token: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.https_port}/hello/{token}"

    def reached(self, token: str) -> bool:
        """Did a request carrying ``token`` arrive at any of the servers?"""
        return any(s.recorder.saw(token) for s in (self.http, self.https, self.echo))

    # -- commands run in the sandbox ------------------------------------------------------

    @staticmethod
    def curl(
        url: str, *options: str, noproxy: str = "", proxy: str = "", max_time: float = 10
    ) -> str:
        """curl printing ``CODE=<http code>`` and ``CONNECT=<proxy CONNECT code>`` lines
        after the body, its verbose log (every header the proxy sent) on stderr, and
        ``RC=<exit status>`` last. ``proxy`` is shell text for ``-x`` (``"$ALL_PROXY"``);
        without it curl takes the proxy variables of the run."""
        parts = ["curl", "-sS", "-v", "-k", "--noproxy", noproxy, "--max-time", str(max_time)]
        parts += [*options, "-w", "\\nCODE=%{http_code}\\nCONNECT=%{http_connect}\\n", url]
        command = shlex.join(parts)
        if proxy:
            command = command.replace("curl ", f"curl -x {proxy} ", 1)
        return command + "; echo RC=$?"

    @staticmethod
    def py(code: str) -> str:
        """A shell command running Python ``code`` with the session venv's interpreter."""
        return "python -c " + shlex.quote(code)

    def socks_exchange(self, host: str, port: int, payload: str, atyp: str = "auto") -> str:
        """Python that speaks SOCKS5 itself to ``$ALL_PROXY`` (CONNECT ``host:port``), prints
        ``REPLY=<code>`` and, on success, sends ``payload`` and prints what came back."""
        return f"""
import ipaddress, os, socket, struct, sys
from urllib.parse import urlsplit
{SOCKET_HELPERS}
proxy = urlsplit(os.environ["ALL_PROXY"])
assert proxy.scheme == "socks5h", proxy
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
s.sendall(b"\\x05\\x01\\x00")
greeting = s.recv(2)
assert greeting == b"\\x05\\x00", greeting
host, port, atyp = {host!r}, {port}, {atyp!r}
try:
    ip = ipaddress.ip_address(host)
except ValueError:
    ip = None
if ip is not None and atyp != "domain":
    target = (b"\\x01" if ip.version == 4 else b"\\x04") + ip.packed
else:
    target = b"\\x03" + bytes([len(host)]) + host.encode()
s.sendall(b"\\x05\\x01\\x00" + target + struct.pack(">H", port))
head = recv_exactly(s, 4)
print("REPLY=%d" % head[1], flush=True)
if len(head) == 4 and head[1] == 0:
    if head[3] == 1:
        recv_exactly(s, 4 + 2)
    elif head[3] == 4:
        recv_exactly(s, 16 + 2)
    else:
        recv_exactly(s, recv_exactly(s, 1)[0] + 2)
    s.sendall({payload!r}.encode())
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    print("ECHO=" + out.decode(), flush=True)
"""

    def urllib_get(self, url: str) -> str:
        """Python ``urllib`` with the proxies from the environment, TLS unverified."""
        return f"""
import ssl, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler(),
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
)
print("PROXIES=" + repr(sorted(urllib.request.getproxies())), flush=True)
try:
    response = opener.open({url!r}, timeout=10)
    print("STATUS=%d" % response.status)
    print(response.read().decode(), end="")
except urllib.error.HTTPError as exc:
    print("STATUS=%d" % exc.code)
    print("REFUSED=" + str(exc.headers.get("X-Union-Sandbox-Refused")))
except urllib.error.URLError as exc:
    print("URLERROR=" + str(exc.reason))
"""

    @staticmethod
    def connect_probe(targets: list[tuple[str, int]]) -> str:
        """Python that dials each target directly (no proxy), and prints a JSON list of
        ``[outcome, seconds]``."""
        return f"""
import errno, json, socket, time
out = []
for host, port in {targets!r}:
    start = time.monotonic()
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host, port))
        outcome = "connected"
    except socket.timeout:
        outcome = "timeout"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
    out.append([outcome, time.monotonic() - start])
print("PROBE=" + json.dumps(out))
"""

    @staticmethod
    def field(text: str, name: str) -> str:
        """The value of the last ``NAME=value`` line of ``text`` (``""`` if none)."""
        value = ""
        for line in text.splitlines():
            if line.startswith(name + "="):
                value = line[len(name) + 1 :]
        return value

    def probe_result(self, text: str) -> list[tuple[str, float]]:
        return [(str(o), float(t)) for o, t in json.loads(self.field(text, "PROBE"))]

    @staticmethod
    def header(verbose: str, name: str) -> str:
        """A response header from curl's ``-v`` log (``< Name: value``)."""
        prefix = f"< {name.lower()}:"
        for line in verbose.splitlines():
            if line.lower().startswith(prefix):
                return line.split(":", 1)[1].strip()
        return ""

    @staticmethod
    def proxy_vars(env_output: str) -> dict[str, str]:
        names = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        found = {}
        for line in env_output.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.lower() in names:
                found[key] = value
        return found


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    routes = {**_index_routes(), "/blob": ("application/octet-stream", BLOB)}
    servers: list[socketserver.BaseServer] = [
        _HTTPServer("http", routes),
        _TLSHTTPServer("https", routes, context),
        _EchoServer(),
    ]
    for server in servers:
        _serve(server)
    try:
        yield Net(*servers)  # type: ignore[arg-type]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


SessionFactory = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


@pytest.fixture
def open_session(backend: str) -> SessionFactory:
    """``async with open_session(network_mode=..., ...) as sbx:`` on the test's backend.

    Opening must not warn (an isolating backend says nothing at open); warnings that runs
    emit are the tests' business."""

    @contextlib.asynccontextmanager
    async def factory(**kwargs: Any) -> AsyncIterator[Any]:
        session = sb.on_device.session(backend=backend, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await session.open()
        try:
            yield session
        finally:
            await session.close()

    return factory


def pytest_report_header() -> list[str]:
    return [f"network integration: backends {', '.join(BACKENDS)}; servers on 127.0.0.1 only"]
