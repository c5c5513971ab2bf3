"""What one proxy front end needs to serve a connection, and the shared tunnel step."""

from __future__ import annotations

import dataclasses
import hmac
import socket
from typing import Literal

from .log import DecisionLog
from .relay import PipeGrowth, RelayCounters, relay
from .rules import RuleSet
from .workers import WorkerPool

__all__ = ["ProxyContext", "tunnel"]


@dataclasses.dataclass(frozen=True)
class ProxyContext:
    """Rules, log and limits of the run a listener belongs to.

    ``handshake_timeout`` bounds reading a request (a slow or silent client cannot hold a
    connection open before it has named a target); ``connect_timeout`` bounds dialling.
    ``credentials`` (user, password), when set, are required of every client: HTTP
    ``Proxy-Authorization: Basic`` or SOCKS5 username/password (RFC 1929). Listeners other
    processes can reach (an ``open`` run's, on the host's loopback) carry them. ``workers``
    and ``growth``: the session's relay threads and pipe-growth budget (see :func:`relay`).
    """

    rules: RuleSet
    decisions: DecisionLog
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    max_head_bytes: int = 16 * 1024
    workers: WorkerPool | None = None
    growth: PipeGrowth | None = None
    relay_method: Literal["splice", "copy"] | None = None
    credentials: tuple[str, str] | None = dataclasses.field(default=None, repr=False)

    def accepts(self, user: bytes, password: bytes) -> bool:
        """Whether a client's credentials are this run's (constant time)."""
        if self.credentials is None:
            return True
        want_user, want_password = self.credentials
        same_user = hmac.compare_digest(user, want_user.encode())
        return hmac.compare_digest(password, want_password.encode()) and same_user


async def tunnel(
    ctx: ProxyContext,
    index: int,
    client: socket.socket,
    upstream: socket.socket,
    pending: bytes,
    *,
    up_limit: int | None = None,
) -> None:
    """Relay ``client`` <-> ``upstream`` to the end (upstream: at most ``up_limit`` bytes),
    then record the byte counts."""
    counters = RelayCounters()
    try:
        await relay(
            client,
            upstream,
            pending_up=pending,
            counters=counters,
            workers=ctx.workers,
            growth=ctx.growth,
            method=ctx.relay_method,
            up_limit=up_limit,
        )
    finally:
        ctx.decisions.update(index, bytes_up=counters.up, bytes_down=counters.down)
