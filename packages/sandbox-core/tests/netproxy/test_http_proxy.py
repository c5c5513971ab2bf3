"""The HTTP proxy with real clients (curl, urllib, raw sockets) against loopback servers.

Loopback is a private range, so the tests allow it the documented way: an explicit CIDR
(``127.0.0.0/8``) in the allow-list.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from union.sandbox.core.netproxy import ProxyHost

LOOPBACK = ["127.0.0.0/8"]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--noproxy", "", *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def status_and_headers(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").splitlines()
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


# ---------------------------------------------------------------------------- curl


@needs_curl
def test_curl_plain_http_is_forwarded(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(LOOPBACK)
    result = curl("-x", proxy.http_url, f"http://127.0.0.1:{origin.port}/hello?x=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"path=/hello?x=1 host=127.0.0.1:{origin.port}"
    method, path, headers = origin.seen[-1]
    assert (method, path) == ("GET", "/hello?x=1")
    assert headers.get("Connection") == "close"
    assert "Proxy-Connection" not in headers
    [entry] = proxy.settled()
    assert (entry.host, entry.port, entry.allowed, entry.protocol) == (
        "127.0.0.1",
        origin.port,
        True,
        "http-forward",
    )
    assert entry.rule == "127.0.0.0/8"
    assert entry.bytes_down > len(result.stdout)


@needs_curl
def test_curl_connect_tunnel(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(LOOPBACK)
    result = curl("-p", "-x", proxy.http_url, f"http://127.0.0.1:{origin.port}/tunnel")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/tunnel")
    assert proxy.log.snapshot()[-1].protocol == "http-connect"


@needs_curl
def test_curl_https_through_connect(serve: Callable[..., Any], tls_origin: Any) -> None:
    proxy = serve(LOOPBACK)
    result = curl("-k", "-x", proxy.http_url, f"https://127.0.0.1:{tls_origin.port}/secure")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/secure")
    [entry] = proxy.log.snapshot()
    assert entry.protocol == "http-connect"
    assert entry.allowed


@needs_curl
def test_curl_https_by_name_resolved_by_the_proxy(
    serve: Callable[..., Any], tls_origin: Any, tls_files: tuple[str, str]
) -> None:
    """The client sends a name; the proxy resolves it (fake DNS: pkg.test -> 127.0.0.1)."""
    proxy = serve(["pkg.test", "127.0.0.1/32"])
    result = curl(
        "--cacert", tls_files[0], "-x", proxy.http_url, f"https://pkg.test:{tls_origin.port}/n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/n host=pkg.test")
    assert proxy.log.snapshot()[-1].rule == "pkg.test"


@needs_curl
def test_curl_refused_connect_is_403_with_reason(serve: Callable[..., Any]) -> None:
    proxy = serve(["pypi.org"])
    result = curl("-p", "-x", proxy.http_url, "-w", "%{http_connect}", "http://example.invalid/")
    assert result.returncode != 0
    assert result.stdout.strip() == "403"
    [entry] = proxy.log.snapshot()
    assert not entry.allowed
    assert "example.invalid:80 is not on the allow-list" in entry.reason


@needs_curl
def test_curl_refused_forward_shows_the_header(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(["pypi.org"])
    result = curl("-i", "-x", proxy.http_url, f"http://127.0.0.1:{origin.port}/")
    head, _, body = result.stdout.partition("\n\n")  # text mode: CRLF became LF
    status, headers = status_and_headers(head.encode())
    assert status == 403
    assert "never by a hostname rule" in headers["x-union-sandbox-refused"]
    assert "refused by the sandbox network policy" in body


@needs_curl
def test_curl_name_resolving_to_loopback_needs_a_cidr(
    serve: Callable[..., Any], origin: Any
) -> None:
    proxy = serve(["pkg.test"])
    result = curl("-i", "-x", proxy.http_url, f"http://pkg.test:{origin.port}/")
    status, headers = status_and_headers(result.stdout.partition("\n\n")[0].encode())
    assert status == 403
    assert "loopback" in headers["x-union-sandbox-refused"]


# ---------------------------------------------------------------------------- urllib


def _opener(proxy_url: str, context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url})
    ]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def test_urllib_http(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(LOOPBACK)
    with _opener(proxy.http_url).open(f"http://127.0.0.1:{origin.port}/u", timeout=20) as r:
        assert r.status == 200
        assert r.read().startswith(b"path=/u")


def test_urllib_post_body_is_forwarded(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(LOOPBACK)
    request = urllib.request.Request(
        f"http://127.0.0.1:{origin.port}/p", data=b"payload-123", method="POST"
    )
    with _opener(proxy.http_url).open(request, timeout=20) as response:
        assert response.read() == b"posted:payload-123"


def test_urllib_https(serve: Callable[..., Any], tls_origin: Any, tls_files: Any) -> None:
    proxy = serve(LOOPBACK)
    context = ssl.create_default_context(cafile=tls_files[0])
    url = f"https://127.0.0.1:{tls_origin.port}/s"
    with _opener(proxy.http_url, context).open(url, timeout=20) as response:
        assert response.read().startswith(b"path=/s")


def test_urllib_refusal_is_readable(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(["127.0.0.0/8:1"])
    with pytest.raises(urllib.error.HTTPError) as caught:
        _opener(proxy.http_url).open(f"http://127.0.0.1:{origin.port}/", timeout=20)
    with caught.value:  # the error is the response: close it
        assert caught.value.code == 403
        assert "not on the allow-list" in caught.value.headers["X-Union-Sandbox-Refused"]


def test_urllib_big_download(serve: Callable[..., Any], origin: Any, net: Any) -> None:
    proxy = serve(LOOPBACK)
    with _opener(proxy.http_url).open(f"http://127.0.0.1:{origin.port}/big", timeout=20) as r:
        assert r.read() == net.BIG_BODY


# ---------------------------------------------------------------------------- raw sockets


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"CONNECT example.org HTTP/1.1\r\n\r\n", 400, "host:port"),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", 400, "unbalanced"),
        (b"CONNECT a:b:c HTTP/1.1\r\n\r\n", 400, "brackets"),
        (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", 400, "invalid port"),
        (b"CONNECT 127.0.0.1:-1 HTTP/1.1\r\n\r\n", 400, "invalid port"),
        (b"CONNECT 127.0.0.1: HTTP/1.1\r\n\r\n", 400, "invalid port"),
        (b"CONNECT user@127.0.0.1:80 HTTP/1.1\r\n\r\n", 400, "user information"),
        (b"CONNECT :80 HTTP/1.1\r\n\r\n", 400, "missing host"),
        (b"CONNECT  127.0.0.1:80 HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"CONNECT 127.0.0.1:80 HTTP/2.0\r\n\r\n", 400, "version"),
        (b"CONNECT 127.0.0.1:80\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "this is a proxy"),
        (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", 400, "CONNECT"),
        (b"GET ftp://127.0.0.1/ HTTP/1.1\r\n\r\n", 400, "only http://"),
        (b"GET http://user:pw@127.0.0.1/ HTTP/1.1\r\n\r\n", 400, "user information"),
        (b"G\x00T http://127.0.0.1/ HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "binary data"),
        (b"\x05\x01\x00", 400, "binary data"),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, "folding"),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nno colon\r\n\r\n", 400, "invalid header"),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "control character"),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n", 400, "ended inside"),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, "larger"),
        (b"\xff\xfe CONNECT", 400, "binary data"),
    ],
)
def test_malformed_requests(
    serve: Callable[..., Any], net: Any, request_bytes: bytes, status: int, reason: str
) -> None:
    proxy = serve(LOOPBACK)
    reply = net.exchange(proxy.http_port, request_bytes)
    got_status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
    assert got_status == status, reply[:300]
    assert reason in headers["x-union-sandbox-error"]
    assert headers["connection"] == "close"
    # Still serving afterwards.
    ok = net.exchange(proxy.http_port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 502")


def test_connect_to_an_unlisted_port_of_an_allowed_host(
    serve: Callable[..., Any], net: Any, echo: Any
) -> None:
    proxy = serve([f"127.0.0.1:{echo.port}"])
    reply = net.exchange(
        proxy.http_port, f"CONNECT 127.0.0.1:{echo.port + 1} HTTP/1.1\r\n\r\n".encode()
    )
    status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
    assert status == 403
    assert "not on the allow-list" in headers["x-union-sandbox-refused"]
    ok = net.exchange(
        proxy.http_port, f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nping".encode()
    )
    assert ok == b"HTTP/1.1 200 Connection established\r\n\r\nping"


@pytest.mark.parametrize(
    "target",
    ["169.254.169.254:80", "2852039166:80", "[::ffff:169.254.169.254]:80", "[fd00:ec2::254]:80"],
)
def test_metadata_is_refused_without_dialling(
    serve: Callable[..., Any], net: Any, target: str
) -> None:
    proxy = serve(["0.0.0.0/0", "::/0"])
    reply = net.exchange(proxy.http_port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
    assert status == 403
    assert "cloud metadata" in headers["x-union-sandbox-refused"]


def test_connect_ipv6_target(serve: Callable[..., Any], net: Any, echo6: Any) -> None:
    proxy = serve(["::1/128"])
    reply = net.exchange(
        proxy.http_port, f"CONNECT [::1]:{echo6.port} HTTP/1.1\r\nHost: x\r\n\r\nhello6".encode()
    )
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\nhello6"
    assert proxy.log.snapshot()[-1].host == "::1"


def test_early_data_after_connect_is_relayed(serve: Callable[..., Any], echo: Any) -> None:
    """Bytes sent right behind the CONNECT head (before the 200) reach the upstream."""
    proxy = serve(LOOPBACK)
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nearly!".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        got = b""
        while len(got) < 6:
            got += sock.recv(64)
        assert got == b"early!"
        sock.sendall(b" and more")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(64):
            rest += chunk
        assert rest == b" and more"
    entry = proxy.settled()[-1]
    assert (entry.bytes_up, entry.bytes_down) == (15, 15)


def test_dial_failure_is_502_and_logged(serve: Callable[..., Any], net: Any) -> None:
    proxy = serve(LOOPBACK)
    port = net.closed_port()
    reply = net.exchange(proxy.http_port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
    assert status == 502
    assert "Connection refused" in headers["x-union-sandbox-error"]
    entry = proxy.log.snapshot()[-1]
    assert entry.allowed  # the policy allowed it; the network said no
    assert "connecting failed" in entry.reason


def test_unresolvable_name_is_502_not_403(serve: Callable[..., Any], net: Any) -> None:
    proxy = serve(["nope.test"])
    reply = net.exchange(proxy.http_port, b"CONNECT nope.test:443 HTTP/1.1\r\n\r\n")
    status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
    assert status == 502
    assert "cannot resolve" in headers["x-union-sandbox-error"]


def test_forward_rewrites_host_and_strips_proxy_headers(
    serve: Callable[..., Any], origin: Any, net: Any
) -> None:
    """The Host the origin sees is the one the policy checked, not one the client chose."""
    proxy = serve(LOOPBACK)
    request = (
        f"GET http://127.0.0.1:{origin.port}/h#frag HTTP/1.1\r\n"
        "Host: evil.example\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\n"
        "Connection: keep-alive, X-Drop-Me\r\n"
        "X-Drop-Me: 1\r\n"
        "X-Keep-Me: 2\r\n\r\n"
    ).encode()
    reply = net.exchange(proxy.http_port, request, half_close=False)
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(f"path=/h host=127.0.0.1:{origin.port}".encode())
    _method, path, headers = origin.seen[-1]
    assert path == "/h"
    assert "Proxy-Authorization" not in headers
    assert "X-Drop-Me" not in headers
    assert headers["X-Keep-Me"] == "2"
    assert headers["Connection"] == "close"


def test_handshake_timeout(net: Any) -> None:
    host = ProxyHost(handshake_timeout=0.3)
    try:
        from union.sandbox.core.netproxy import DecisionLog, RuleSet, make_listeners

        listeners = make_listeners()
        port = dict((k, s.getsockname()[1]) for k, s in listeners)["http"]
        host.serve("t", listeners, RuleSet.parse(LOOPBACK, []), DecisionLog())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n")  # ...and nothing more
            head = net.read_http_head(sock)
        assert head.startswith(b"HTTP/1.1 408")
    finally:
        host.close()


def test_open_mode_with_deny_list(serve: Callable[..., Any], net: Any, echo: Any) -> None:
    """Empty allow-list: anything not denied, loopback included (no private-range backstop
    in ``open`` mode, as published); the deny-list still wins, in every spelling."""
    proxy = serve([], ["127.0.0.2", "169.254.0.0/16"])
    ok = net.exchange(
        proxy.http_port, f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nopen".encode()
    )
    assert ok.endswith(b"\r\n\r\nopen")
    for spelling in ("127.0.0.2", "0x7f.0.0.2", "[::ffff:127.0.0.2]", "2130706434"):
        reply = net.exchange(
            proxy.http_port, f"CONNECT {spelling}:{echo.port} HTTP/1.1\r\n\r\n".encode()
        )
        status, headers = status_and_headers(reply.partition(b"\r\n\r\n")[0])
        assert status == 403, spelling
        assert "deny-list rule '127.0.0.2'" in headers["x-union-sandbox-refused"]
