"""The filtering egress of a session's ``allowlist`` runs (and ``open`` runs with a deny-list).

Each such run's init opens an HTTP-proxy and a SOCKS5 listener on ``127.0.0.1`` inside the
run's own network namespace and hands them over a per-run unix socket; this side serves them
from the session's :class:`~union.sandbox.core.netproxy.ProxyHost` (its own thread), dialling
out from the host's namespace. Rule sets are parsed once per policy and shared by every run
with that policy; the proxies of a run stop when the run ends.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import socket
import warnings

import anyio

from ..netproxy import DecisionLog, ProxyHost, ProxyKind, RuleSet, proxy_env
from ..policy import NetworkPolicy

__all__ = ["PROXY_ENV_TEMPLATE", "RunEgress", "SessionEgress", "proxy_env_template"]

_PROXY_USER = "run"
#: Parsed rule sets kept for reuse (the least recently used goes first). A remote server's
#: session outlives its clients, which may send a new list with every run, so the cache is
#: bounded; a live run keeps its own rule set whatever happens to the cache.
_RULESETS_KEPT = 16


def proxy_env_template(credentials: tuple[str, str] | None = None) -> dict[str, str]:
    """The proxy variables, with ``{http}`` and ``{socks}`` for the ports the run's init
    picks (and the run's credentials in the URLs, when its proxies require them: URL-safe
    characters, no braces, so the init's ``str.format`` leaves them as they are)."""
    return proxy_env("{http}", "{socks}", credentials)


#: The variables of proxies only their run can reach (no credentials).
PROXY_ENV_TEMPLATE = proxy_env_template()


@dataclasses.dataclass
class RunEgress:
    """One run's end of the egress: where its listeners arrive, and its decision log."""

    rules: RuleSet
    log: DecisionLog
    host_end: socket.socket
    run_end: socket.socket
    credentials: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    served: bool = False

    @property
    def env_template(self) -> dict[str, str]:
        if self.credentials is None:
            return PROXY_ENV_TEMPLATE
        return proxy_env_template(self.credentials)

    @property
    def run_fd(self) -> int:
        return self.run_end.fileno()


class SessionEgress:
    """Rule sets and the proxy thread of one session; created lazily."""

    def __init__(self) -> None:
        self._rulesets: collections.OrderedDict[
            tuple[tuple[str, ...], tuple[str, ...]], RuleSet
        ] = collections.OrderedDict()
        self._host: ProxyHost | None = None
        self._warned_open = False

    def prepare(self, policy: NetworkPolicy) -> RunEgress:
        """Everything a proxied run needs before it starts."""
        key = (policy.allowlist, policy.denylist)
        rules = self._rulesets.get(key)
        if rules is None:
            rules = self._rulesets[key] = RuleSet.parse(policy.allowlist, policy.denylist)
            if len(self._rulesets) > _RULESETS_KEPT:
                self._rulesets.popitem(last=False)
        else:
            self._rulesets.move_to_end(key)
        if policy.mode == "open" and not self._warned_open:
            self._warned_open = True
            warnings.warn(
                "network_denylist with network_mode='open' is enforced only for clients that "
                "use the proxy variables (HTTP_PROXY, ALL_PROXY): code that ignores them has "
                "the host network. Use network_mode='allowlist' or 'blocked' for a boundary.",
                UserWarning,
                stacklevel=4,
            )
        host_end, run_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host_end.setblocking(False)
        # An open run shares the host's network namespace, so its listeners on 127.0.0.1
        # are reachable by every local process: they require the run's own credentials.
        credentials = (_PROXY_USER, secrets.token_urlsafe(18)) if policy.mode == "open" else None
        return RunEgress(rules, DecisionLog(), host_end, run_end, credentials)

    async def attach(self, egress: RunEgress, run_key: object) -> None:
        """Receive the run's listeners and start serving them. A run whose init failed
        before listening sends nothing (end of file): its failure is reported elsewhere."""
        egress.run_end.close()
        try:
            while True:
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(egress.host_end, 16, 2)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(egress.host_end)
        finally:
            egress.host_end.close()
        if len(fds) != 2:
            for fd in fds:
                socket.close(fd)
            return
        listeners: list[tuple[ProxyKind, socket.socket]] = [
            ("http", socket.socket(fileno=fds[0])),
            ("socks5", socket.socket(fileno=fds[1])),
        ]
        if self._host is None:
            self._host = ProxyHost()
        # Not waiting: connections queue in the listeners' backlog until the thread serves.
        self._host.serve(
            run_key, listeners, egress.rules, egress.log, wait=False, credentials=egress.credentials
        )
        egress.served = True

    async def detach(self, egress: RunEgress, run_key: object) -> None:
        """Stop the run's proxies (its listeners and live tunnels)."""
        egress.host_end.close()
        egress.run_end.close()
        if egress.served and self._host is not None:
            egress.served = False
            self._host.stop(run_key, wait=False)

    async def aclose(self) -> None:
        if self._host is not None:
            host, self._host = self._host, None
            await anyio.to_thread.run_sync(host.close)
