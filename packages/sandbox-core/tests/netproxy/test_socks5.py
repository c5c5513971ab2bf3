"""The SOCKS5 proxy with curl and a raw client, against loopback servers (RFC 1928 codes)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from union.sandbox.core.testing_net import recv_exactly

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


def ipv4_request(port: int, command: int = 1, host: str = "127.0.0.1") -> bytes:
    return bytes((5, command, 0, 1)) + socket.inet_aton(host) + port.to_bytes(2, "big")


def domain_request(name: bytes, port: int, command: int = 1) -> bytes:
    return bytes((5, command, 0, 3, len(name))) + name + port.to_bytes(2, "big")


def socks_session(port: int, request: bytes, payload: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Greeting, request, optional payload; returns (method reply, request reply, rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        method = sock.recv(2)
        sock.sendall(request + payload)
        reply = recv_exactly(sock, 10)
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        return method, reply, rest


@needs_curl
def test_curl_socks5_hostname(serve: Callable[..., Any], origin: Any) -> None:
    """``socks5h://``: curl sends the name; the proxy resolves it (fake DNS)."""
    proxy = serve(["pkg.test", "127.0.0.1/32"])
    result = curl(
        "--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", f"http://pkg.test:{origin.port}/s5"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"path=/s5 host=pkg.test:{origin.port}"
    [entry] = proxy.settled()
    assert (entry.host, entry.protocol, entry.rule) == ("pkg.test", "socks5", "pkg.test")
    assert entry.bytes_up > 0
    assert entry.bytes_down > len(result.stdout)


@needs_curl
def test_curl_socks5_ipv4(serve: Callable[..., Any], origin: Any) -> None:
    proxy = serve(LOOPBACK)
    result = curl("--socks5", f"127.0.0.1:{proxy.socks_port}", f"http://127.0.0.1:{origin.port}/4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/4")


@needs_curl
def test_curl_socks5_https(serve: Callable[..., Any], tls_origin: Any) -> None:
    proxy = serve(LOOPBACK)
    result = curl(
        "-k",
        "-x",
        f"socks5h://127.0.0.1:{proxy.socks_port}",
        f"https://127.0.0.1:{tls_origin.port}/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/ ")


@needs_curl
def test_curl_socks5_refused(serve: Callable[..., Any]) -> None:
    proxy = serve(["pypi.org"])
    result = curl("--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", "http://example.invalid/")
    assert result.returncode == 97  # curl: proxy handshake error
    assert "(2)" in result.stderr  # SOCKS5 reply 0x02: not allowed by ruleset
    [entry] = proxy.log.snapshot()
    assert not entry.allowed
    assert entry.protocol == "socks5"


def test_ipv4_connect_with_pipelined_payload(serve: Callable[..., Any], echo: Any) -> None:
    proxy = serve(LOOPBACK)
    method, reply, rest = socks_session(proxy.socks_port, ipv4_request(echo.port), b"pipelined")
    assert method == b"\x05\x00"
    assert reply == b"\x05\x00\x00\x01" + bytes(6)
    assert rest == b"pipelined"
    assert proxy.settled()[-1].bytes_up == len(b"pipelined")


def test_ipv6_connect(serve: Callable[..., Any], echo6: Any) -> None:
    proxy = serve(["::1"])
    request = b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1")
    request += echo6.port.to_bytes(2, "big")
    _method, reply, rest = socks_session(proxy.socks_port, request, b"six")
    assert reply[1] == 0
    assert rest == b"six"


@pytest.mark.parametrize(
    ("request_bytes_of", "code", "reason"),
    [
        (lambda port: ipv4_request(port, command=2), 0x07, "command 0x02 not supported"),
        (lambda port: ipv4_request(port, command=3), 0x07, "command 0x03 not supported"),
        (lambda port: ipv4_request(port, command=9), 0x07, "not supported"),
        (lambda port: bytes((5, 1, 0, 5, 1, 2, 3, 4)), 0x08, "address type 0x05"),
        (lambda port: bytes((5, 1, 0, 3, 0, 0, 80)), 0x01, "empty domain"),
        (lambda port: bytes((4, 1, 0, 1, 127, 0, 0, 1, 0, 80)), 0x01, "request version"),
        (lambda port: domain_request("bücher.test".encode(), port), 0x02, "invalid host"),
        (lambda port: domain_request(b"evil\x00.test", port), 0x02, "invalid host"),
        (lambda port: domain_request(b"example.invalid", port), 0x02, "not on the allow-list"),
        (lambda port: ipv4_request(port, host="10.0.0.1"), 0x02, "not on the allow-list"),
        (lambda port: ipv4_request(0), 0x02, "invalid port"),
    ],
)
def test_rejected_requests(
    serve: Callable[..., Any],
    echo: Any,
    request_bytes_of: Callable[[int], bytes],
    code: int,
    reason: str,
) -> None:
    proxy = serve(["127.0.0.0/8"])
    method, reply, _rest = socks_session(proxy.socks_port, request_bytes_of(echo.port))
    assert method == b"\x05\x00"
    assert reply[:2] == bytes((5, code))
    entry = proxy.log.snapshot()[-1]
    assert not entry.allowed
    assert reason in entry.reason


def test_name_resolving_to_loopback_is_refused(serve: Callable[..., Any], echo: Any) -> None:
    proxy = serve(["pkg.test"])
    _method, reply, _ = socks_session(proxy.socks_port, domain_request(b"pkg.test", echo.port))
    assert reply[1] == 0x02
    assert "loopback" in proxy.log.snapshot()[-1].reason


def test_unresolvable_is_host_unreachable(serve: Callable[..., Any]) -> None:
    proxy = serve(["nope.test"])
    _method, reply, _ = socks_session(proxy.socks_port, domain_request(b"nope.test", 443))
    assert reply[1] == 0x04


def test_connection_refused(serve: Callable[..., Any], net: Any) -> None:
    proxy = serve(LOOPBACK)
    _method, reply, _ = socks_session(proxy.socks_port, ipv4_request(net.closed_port()))
    assert reply[1] == 0x05
    assert "connecting failed" in proxy.log.snapshot()[-1].reason


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [
        (b"\x05\x01\x02", b"\x05\xff"),  # username/password only
        (b"\x05\x00", b"\x05\xff"),  # no methods at all
        (b"\x05\x02\x01\x02", b"\x05\xff"),
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),  # SOCKS4: closed, no reply
        (b"GET / HTTP/1.1\r\n\r\n", b""),
        (b"\x05", b""),  # truncated
        (b"\x05\x05\x00", b""),  # fewer methods than announced
        (b"", b""),
    ],
)
def test_bad_greetings_are_closed(
    serve: Callable[..., Any], net: Any, echo: Any, greeting: bytes, expected: bytes
) -> None:
    proxy = serve(LOOPBACK)
    assert net.exchange(proxy.socks_port, greeting) == expected
    # ...and the proxy keeps serving.
    _method, reply, rest = socks_session(proxy.socks_port, ipv4_request(echo.port), b"ok")
    assert (reply[1], rest) == (0, b"ok")
