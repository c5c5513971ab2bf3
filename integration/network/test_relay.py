"""What goes through a run's proxies: bytes arrive intact both ways, many connections at
once are fine, bad requests get a reply a program can read, and nothing outlives the run
(tunnels) or the session (the proxy thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio

ALLOW_LOOPBACK = {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]}

VIAS = ["http-forward", "http-connect", "socks5-http", "socks5-https"]


def fetch_options(net: Any, via: str, path: str) -> tuple[str, dict[str, str]]:
    """(url, curl keyword arguments) that reach ``path`` on a host server through ``via``."""
    if via == "http-forward":
        return f"http://127.0.0.1:{net.http_port}{path}", {}
    if via == "http-connect":
        return f"https://127.0.0.1:{net.https_port}{path}", {}
    scheme, port = ("http", net.http_port) if via == "socks5-http" else ("https", net.https_port)
    return f"{scheme}://127.0.0.1:{port}{path}", {"proxy": '"$ALL_PROXY"'}


@pytest.mark.parametrize("via", VIAS)
async def test_download_is_byte_exact(open_session: Any, net: Any, via: str) -> None:
    url, options = fetch_options(net, via, "/blob")
    command = net.curl(url, "-o", "/tmp/blob", **options) + "; sha256sum /tmp/blob"
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    assert net.field(out, "CODE") == "200", err
    assert f"{net.blob_sha256}  /tmp/blob" in out
    [decision] = proc.network_decisions
    assert decision.allowed
    assert decision.bytes_down >= net.blob_size


@pytest.mark.parametrize("via", VIAS)
async def test_upload_is_byte_exact(open_session: Any, net: Any, via: str) -> None:
    size = 4 * 1024 * 1024
    url, options = fetch_options(net, via, "/upload")
    command = (
        f"head -c {size} /dev/urandom > /tmp/up && sha256sum /tmp/up | cut -d' ' -f1 && "
        + net.curl(url, "--data-binary", "@/tmp/up", "-H", "Expect:", **options)
    )
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    assert net.field(out, "CODE") == "200", err
    sent_digest = out.splitlines()[0]
    assert f"posted {size} {sent_digest}" in out
    [decision] = proc.network_decisions
    assert decision.bytes_up >= size


async def test_many_connections_at_once(open_session: Any, net: Any) -> None:
    tokens = [net.token() for _ in range(24)]
    parts = []
    for i, token in enumerate(tokens):
        proxy = '"$ALL_PROXY"' if i % 3 == 0 else ""
        url = net.https_url(token) if i % 3 == 1 else net.http_url(token)
        parts.append(f"( {net.curl(url, proxy=proxy)} ) > /tmp/out.{i} 2>&1 &")
    command = " ".join(parts) + " wait; cat /tmp/out.*"
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    codes = [line for line in out.splitlines() if line.startswith("CODE=")]
    assert codes == ["CODE=200"] * len(tokens), out[-3000:] + err
    for token in tokens:
        assert net.reached(token)
    decisions = proc.network_decisions
    assert len(decisions) == len(tokens)
    assert all(d.allowed for d in decisions)
    assert {d.protocol for d in decisions} == {"http-forward", "http-connect", "socks5"}


async def test_one_client_several_requests(open_session: Any, net: Any) -> None:
    """curl with several URLs (it would reuse the proxy connection; the forwarding proxy
    closes after each response, and curl must cope)."""
    tokens = [net.token() for _ in range(3)]
    urls = [net.http_url(t) for t in tokens]
    command = net.curl(urls[0]).replace(urls[0], " ".join(urls))
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    for token in tokens:
        assert f"hello {token} via http" in out, err
    assert len(proc.network_decisions) == 3


async def test_bad_requests_get_a_readable_reply(open_session: Any, net: Any) -> None:
    code = """
import os, socket
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["HTTP_PROXY"])
END = b"\\r\\n\\r\\n"
for name, request in [
    ("origin-form", b"GET /hello HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"),
    ("huge-head", b"GET http://127.0.0.1:1/ HTTP/1.1\\r\\nX-Big: " + b"a" * 40000 + END),
    ("tls-bytes", b"\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03\\r\\n\\r\\n"),
    ("ftp-url", b"GET ftp://127.0.0.1/x HTTP/1.1\\r\\n\\r\\n"),
]:
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    try:
        s.sendall(request)
    except OSError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    head = data.split(b"\\r\\n\\r\\n")[0].decode("latin-1")
    status = head.split(" ")[1] if head.startswith("HTTP/1.1 ") else "none"
    error = ""
    for line in head.split("\\r\\n"):
        if line.lower().startswith("x-union-sandbox-error:"):
            error = line.split(":", 1)[1].strip()
    print("%s=%s|%s" % (name.upper(), status, error))
"""
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(code, script_type="python")
        out, err = await proc.communicate_text()
        # The proxy is still there for the next request.
        after = await sbx.run(net.curl(net.http_url(net.token())))
        after_out, _ = await after.communicate_text()
    expected = {"ORIGIN-FORM": "400", "HUGE-HEAD": "431", "TLS-BYTES": "400", "FTP-URL": "400"}
    for name, status in expected.items():
        got_status, _, error = net.field(out, name).partition("|")
        assert got_status == status, (name, out, err)
        assert error, name
    decisions = proc.network_decisions
    assert len(decisions) == len(expected)
    for decision in decisions:
        assert not decision.allowed
        assert decision.host == ""
        assert decision.reason.startswith("malformed HTTP proxy request")
    assert net.field(after_out, "CODE") == "200"


SOCKS_BAD = """
import os, socket, struct
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["ALL_PROXY"])
REQ = b"\\x05\\x01\\x00"
TARGET = b"\\x01\\x7f\\x00\\x00\\x01" + struct.pack(">H", PORT)
for name, data in [
    ("auth-only", b"\\x05\\x01\\x02"),
    ("bind", REQ + b"\\x05\\x02\\x00" + TARGET),
    ("udp", REQ + b"\\x05\\x03\\x00" + TARGET),
    ("bad-atyp", REQ + b"\\x05\\x01\\x00\\x09" + bytes(6)),
    ("socks4", b"\\x04\\x01" + struct.pack(">H", PORT) + b"\\x7f\\x00\\x00\\x01user\\x00"),
    ("http-on-socks", b"GET http://127.0.0.1/ HTTP/1.1\\r\\n\\r\\n"),
]:
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    s.sendall(data)
    reply = b""
    while True:
        try:
            chunk = s.recv(64)
        except OSError:
            break
        if not chunk:
            break
        reply += chunk
    s.close()
    print("%s=%s" % (name.upper(), reply.hex()))
"""


async def test_bad_socks_requests_get_the_rfc_codes(open_session: Any, net: Any) -> None:
    code = f"PORT = {net.echo_port}\n" + SOCKS_BAD
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(code, script_type="python")
        out, err = await proc.communicate_text()
        after = await sbx.run(net.curl(net.http_url(net.token()), proxy='"$ALL_PROXY"'))
        after_out, _ = await after.communicate_text()
    method_ok = "0500"
    expected = {
        "AUTH-ONLY": "05ff",  # no acceptable method
        "BIND": method_ok + "05070001" + "00" * 6,  # command not supported
        "UDP": method_ok + "05070001" + "00" * 6,
        "BAD-ATYP": method_ok + "05080001" + "00" * 6,  # address type not supported
        "SOCKS4": "",  # not SOCKS5: closed without a reply
        "HTTP-ON-SOCKS": "",
    }
    for name, reply in expected.items():
        assert net.field(out, name) == reply, (name, out, err)
    assert not net.echo.recorder.saw("user")
    decisions = proc.network_decisions
    assert decisions
    for decision in decisions:
        assert not decision.allowed
        assert decision.reason.startswith("malformed SOCKS5 request")
    assert net.field(after_out, "CODE") == "200"


HOLD = """
import os, socket, struct, sys, time
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["ALL_PROXY"])
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
s.sendall(b"\\x05\\x01\\x00")
assert s.recv(2) == b"\\x05\\x00"
s.sendall(b"\\x05\\x01\\x00\\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", PORT))
assert s.recv(10)[1] == 0
s.sendall(TOKEN.encode())
print(s.recv(100).decode(), flush=True)
time.sleep(120)
"""


async def test_a_killed_runs_tunnels_close(open_session: Any, net: Any) -> None:
    token = net.token()
    code = f"PORT = {net.echo_port}\nTOKEN = {token!r}\n" + HOLD
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc = await sbx.run(code, script_type="python", timeout_s=60)
        assert await eventually(lambda: net.echo.is_open(token), 10), "no tunnel opened"
        await proc.kill()
        await proc.wait()
        start = time.monotonic()
        closed = await eventually(lambda: not net.echo.is_open(token), 5)
        closed_after = time.monotonic() - start
        assert closed, "the tunnel outlived its run"
    assert closed_after < 2, closed_after
    [decision] = proc.network_decisions
    assert decision.allowed
    assert decision.bytes_up == len(token)


async def eventually(predicate: Callable[[], bool], seconds: float) -> bool:
    """Poll ``predicate`` (host-side state kept by server threads) for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.01) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        await anyio.sleep(0.01)
    return predicate()


def proxy_threads() -> list[threading.Thread]:
    """The proxy loop's thread and its relay and lookup workers."""
    return [t for t in threading.enumerate() if "netproxy" in t.name]


async def test_the_proxies_stop_with_the_session(open_session: Any, net: Any) -> None:
    before = set(proxy_threads())
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        await sbx.exec(net.curl(net.http_url(net.token())))
        await sbx.exec(net.curl(net.http_url(net.token())))
        during = set(proxy_threads()) - before
        loops = [t for t in during if t.name == "union-sandbox-netproxy"]
        assert len(loops) == 1, "one proxy thread per session, started by its first proxied run"
    stopped = await eventually(lambda: not set(proxy_threads()) & during, 5)
    assert stopped, "the proxy thread (or a worker) outlived the session"
