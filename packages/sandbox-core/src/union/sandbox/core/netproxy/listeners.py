"""Listener sockets and the proxy environment of a run. Standard library only.

A run's init calls :func:`make_listeners` inside the run's own network namespace and passes
the sockets to the host over a unix socket (``SCM_RIGHTS``); only processes in that
namespace can connect to them, so only that run can use its proxies.
"""

from __future__ import annotations

import socket
import urllib.parse
from typing import Literal

__all__ = ["ProxyKind", "make_listeners", "proxy_env"]

ProxyKind = Literal["http", "socks5"]


def make_listeners(backlog: int = 128) -> list[tuple[ProxyKind, socket.socket]]:
    """An HTTP-proxy and a SOCKS5 listener, each on ``127.0.0.1`` with a kernel-chosen port."""
    made: list[tuple[ProxyKind, socket.socket]] = []
    try:
        kinds: tuple[ProxyKind, ...] = ("http", "socks5")
        for kind in kinds:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            made.append((kind, sock))
            sock.bind(("127.0.0.1", 0))
            sock.listen(backlog)
    except BaseException:
        for _, sock in made:
            sock.close()
        raise
    return made


def proxy_env(
    http_port: int | str, socks_port: int | str, credentials: tuple[str, str] | None = None
) -> dict[str, str]:
    """Environment variables that point HTTP libraries and TCP clients at the proxies.

    Both spellings of each name are set (curl reads only lower-case ``http_proxy``; others
    only upper-case); ``socks5h://`` makes clients send names, not addresses, so the proxy
    resolves them; loopback stays direct. ``credentials`` go into the URLs (``user:password@``),
    where every common client finds them. A port may be a placeholder (``"{http}"``).
    """
    userinfo = ""
    if credentials is not None:
        user, password = (urllib.parse.quote(part, safe="") for part in credentials)
        userinfo = f"{user}:{password}@"
    http = f"http://{userinfo}127.0.0.1:{http_port}"
    socks = f"socks5h://{userinfo}127.0.0.1:{socks_port}"
    no_proxy = "127.0.0.1,localhost,::1"
    env: dict[str, str] = {}
    for name, value in (
        ("HTTP_PROXY", http),
        ("HTTPS_PROXY", http),
        ("ALL_PROXY", socks),
        ("NO_PROXY", no_proxy),
    ):
        env[name] = value
        env[name.lower()] = value
    return env
