"""The filtering egress of a session's ``allowlist`` runs (and ``open`` runs with a deny-list).

Each such run's init opens an HTTP-proxy and a SOCKS5 listener on ``127.0.0.1`` inside the
run's own network namespace and hands them over a per-run unix socket; this side serves them
from the session's :class:`~union.sandbox.core.netproxy.ProxyHost` (its own thread), dialling
out from the host's namespace. Rule sets are parsed once per policy and shared by every run
with that policy.

An init that serves several runs keeps its listeners (a
:class:`~union.sandbox.core.netproxy.ListenerGroup`, kept with the run's slot): each run arms
them with its own rules, credentials and decision log before it starts, and disarms them
when it ends. The init is kept for the next run only if the run holds no proxy connection
then; else its connections are closed before its ``wait()`` returns and its listeners
with it.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import socket
import warnings
from typing import TYPE_CHECKING

import anyio

from ..netproxy.listeners import ProxyKind, proxy_env
from ..netproxy.log import DecisionLog
from ..netproxy.rules import RuleSet
from ..policy import NetworkPolicy

if TYPE_CHECKING:
    from ..netproxy.host import ListenerGroup, ProxyHost

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


@dataclasses.dataclass(eq=False)
class RunEgress:
    """One run's end of the egress: where its listeners arrive, the listeners serving it,
    and its decision log. The object is the run's key in the proxy host."""

    rules: RuleSet
    log: DecisionLog
    host_end: socket.socket
    run_end: socket.socket
    credentials: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    group: ListenerGroup | None = None

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

    def prepare(self, policy: NetworkPolicy, kept: ListenerGroup | None = None) -> RunEgress:
        """Everything a proxied run needs before it starts. ``kept``: the listeners of the
        idle init the run is handed to, armed for this run here (before the run can
        connect to them)."""
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
        # are reachable by every local process: they require the run's own credentials,
        # new for every run (an init's kept listeners included).
        credentials = (_PROXY_USER, secrets.token_urlsafe(18)) if policy.mode == "open" else None
        egress = RunEgress(rules, DecisionLog(), host_end, run_end, credentials)
        if kept is not None:
            try:
                self._proxy_host().arm(kept, egress, rules, egress.log, credentials=credentials)
            except BaseException:
                host_end.close()
                run_end.close()
                raise
            egress.group = kept
        return egress

    async def attach(self, egress: RunEgress) -> None:
        """Learn from the run's init what serves the run: the listeners it kept ("K": the
        ones armed in :meth:`prepare`), new ones ("L" and two sockets, served from now on),
        or nothing (end of file: its init failed before listening, reported elsewhere)."""
        egress.run_end.close()
        try:
            while True:
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(egress.host_end, 16, 2)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(egress.host_end)
        finally:
            egress.host_end.close()
        if msg == b"K" and not fds and egress.group is not None:
            return
        if egress.group is not None:
            # Armed on listeners the run's init does not have (the idle init it was meant
            # for is gone: a fresh one served it): they serve nobody again.
            self.release(egress.group)
            egress.group = None
        if msg != b"L" or len(fds) != 2:
            for fd in fds:
                socket.close(fd)
            return
        listeners: list[tuple[ProxyKind, socket.socket]] = [
            ("http", socket.socket(fileno=fds[0])),
            ("socks5", socket.socket(fileno=fds[1])),
        ]
        # Not waiting: connections queue in the listeners' backlog until the thread serves.
        egress.group = self._proxy_host().adopt(
            egress, listeners, egress.rules, egress.log, credentials=egress.credentials
        )

    async def detach(self, egress: RunEgress, *, keep: bool) -> ListenerGroup | None:
        """End the run's proxies: its connections are closed (waited for, when it held any)
        and its listeners either kept for the next run of its init (``keep``, and the run
        holds no connection: returned) or closed."""
        egress.host_end.close()
        egress.run_end.close()
        group, egress.group = egress.group, None
        host = self._host
        if host is None:
            return None
        held = host.disarm(egress)
        if held:
            # Shielded (and bounded by the host's join timeout): the slot's bookkeeping after
            # this must not be cut short by a cancelled waiter.
            with anyio.CancelScope(shield=True):
                await host.wait_closed(egress)
        if keep and not held and group is not None:
            return group
        if group is not None:
            host.release(group)
        return None

    def release(self, group: ListenerGroup) -> None:
        """Close kept listeners (their init is gone, or goes)."""
        if self._host is not None:
            self._host.release(group)

    def _proxy_host(self) -> ProxyHost:
        if self._host is None:
            # Imported here: its thread portal and sockets are for sessions that proxy.
            from ..netproxy.host import ProxyHost

            self._host = ProxyHost()
        return self._host

    async def aclose(self) -> None:
        if self._host is not None:
            host, self._host = self._host, None
            await anyio.to_thread.run_sync(host.close)
