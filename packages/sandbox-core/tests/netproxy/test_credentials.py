"""Proxies that require their run's credentials (an ``open`` run's, on the host's loopback):
curl with the credentials in the proxy URL gets through; any other local client is refused
before a target is named, and nothing it tries lands in the run's decisions."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from union.sandbox.core.netproxy import proxy_env

LOOPBACK = ["127.0.0.0/8"]
CREDENTIALS = ("run", "s3cret-token_x")

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl_env(env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    """curl as a run's tool: it finds the proxy (credentials included) in its environment."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", url],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            **{k: v for k, v in env.items() if "no_proxy" not in k.lower()},
        },
    )


def http_exchange(port: int, head: str) -> bytes:
    """Send ``head``, half-close, and read until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@needs_curl
@pytest.mark.parametrize("variable", ["http_proxy", "ALL_PROXY"])
def test_the_runs_own_tools_get_through(
    serve: Callable[..., Any], origin: Any, variable: str
) -> None:
    proxy = serve(LOOPBACK, credentials=CREDENTIALS)
    env = proxy_env(proxy.http_port, proxy.socks_port, CREDENTIALS)
    assert f"{CREDENTIALS[0]}:{CREDENTIALS[1]}@" in env["HTTP_PROXY"]
    only = {variable: env[variable]}
    result = curl_env(only, f"http://127.0.0.1:{origin.port}/through")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("path=/through")
    assert [d.port for d in proxy.log.snapshot()] == [origin.port]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic " + base64.b64encode(b"run:wrong").decode(),
        "Bearer s3cret-token_x",
        "Basic %%%",
    ],
    ids=["none", "wrong password", "other scheme", "not base64"],
)
def test_http_clients_without_the_credentials_are_refused(
    serve: Callable[..., Any], origin: Any, authorization: str | None
) -> None:
    proxy = serve(LOOPBACK, credentials=CREDENTIALS)
    seen_before = len(origin.seen)  # the origin serves the whole module
    extra = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
    for head in (
        f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
        f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
    ):
        reply = http_exchange(proxy.http_port, head)
        assert reply.startswith(b"HTTP/1.1 407 "), reply[:80]
        assert b'Proxy-Authenticate: Basic realm="union-sandbox"' in reply
    assert len(origin.seen) == seen_before
    assert proxy.log.snapshot() == []  # not the run's: not in its decisions


def test_socks5_requires_username_and_password(serve: Callable[..., Any], echo: Any) -> None:
    proxy = serve(LOOPBACK, credentials=CREDENTIALS)
    request = bytes((5, 1, 0, 1)) + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big")

    def session(greeting: bytes, auth: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", proxy.socks_port), timeout=10) as sock:
            sock.sendall(greeting)
            reply = sock.recv(2)
            if reply != b"\x05\x02":
                return reply
            sock.sendall(auth)
            status = sock.recv(2)
            if status != b"\x01\x00":
                return status
            sock.sendall(request + b"ping")
            return status + sock.recv(10)

    def userpass(user: bytes, password: bytes) -> bytes:
        return bytes((1, len(user))) + user + bytes((len(password),)) + password

    assert session(b"\x05\x01\x00", b"") == b"\x05\xff"  # "no authentication" only: refused
    assert session(b"\x05\x01\x02", userpass(b"run", b"wrong")) == b"\x01\x01"
    assert session(b"\x05\x01\x02", userpass(b"other", CREDENTIALS[1].encode())) == b"\x01\x01"
    assert proxy.log.snapshot() == []
    through = session(b"\x05\x02\x00\x02", userpass(b"run", CREDENTIALS[1].encode()))
    assert through[:4] == b"\x01\x00\x05\x00", through
    assert [d.port for d in proxy.log.snapshot()] == [echo.port]


def test_garbage_from_other_clients_leaves_no_record(serve: Callable[..., Any]) -> None:
    """Malformed requests cannot be attributed to the run when the proxy is reachable by
    others: they are answered but not recorded (they would crowd out the run's own)."""
    proxy = serve(LOOPBACK, credentials=CREDENTIALS)
    reply = http_exchange(proxy.http_port, "GARBAGE /x HTTP/1.1\r\nbad header\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", proxy.socks_port), timeout=10) as sock:
        sock.sendall(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")  # SOCKS4
        sock.recv(16)
    assert proxy.log.snapshot() == []


def test_the_env_template_keeps_the_credentials_through_the_port_fill() -> None:
    from union.sandbox.core.on_device.egress import proxy_env_template

    # A token that contains digits like ports must survive the init's str.format.
    credentials = ("run", "41001-41002_x")
    filled = {
        key: value.format(http=5, socks=6) for key, value in proxy_env_template(credentials).items()
    }
    assert filled["HTTP_PROXY"] == "http://run:41001-41002_x@127.0.0.1:5"
    assert filled["ALL_PROXY"] == "socks5h://run:41001-41002_x@127.0.0.1:6"


def test_a_pipelined_request_does_not_reach_the_origin_as_sent(
    serve: Callable[..., Any], echo: Any
) -> None:
    proxy = serve(LOOPBACK, credentials=CREDENTIALS)
    auth = "Proxy-Authorization: Basic " + base64.b64encode(b"run:s3cret-token_x").decode()
    first = f"GET http://127.0.0.1:{echo.port}/a HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n"
    second = f"GET http://127.0.0.1:{echo.port}/b HTTP/1.1\r\nHost: vhost.test\r\n{auth}\r\n\r\n"
    received = http_exchange(proxy.http_port, first + second)  # the echo origin's view
    assert received.startswith(b"GET /a HTTP/1.1\r\n")  # the first, cleaned
    assert b"Proxy-Authorization" not in received  # the token stays here
    assert b"vhost.test" not in received  # a host the policy never checked: not named


def test_a_forwarded_body_goes_as_framed_and_chunked_is_refused(
    serve: Callable[..., Any], echo: Any
) -> None:
    proxy = serve(LOOPBACK)
    body = "x" * 70000
    head = f"POST http://127.0.0.1:{echo.port}/p HTTP/1.1\r\nHost: x\r\nContent-Length: "
    received = http_exchange(proxy.http_port, f"{head}{len(body)}\r\n\r\n{body}EXTRA")
    assert received.endswith(body.encode())  # the body whole, the bytes after it dropped
    chunked = (
        f"POST http://127.0.0.1:{echo.port}/p HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert http_exchange(proxy.http_port, chunked).startswith(b"HTTP/1.1 411 ")
