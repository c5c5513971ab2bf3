"""Filtering egress proxies for ``allowlist`` runs (and ``open`` runs with a deny-list).

A run in ``allowlist`` mode has its own network namespace with only loopback; its way out is
an HTTP proxy (``CONNECT`` tunnels and ``http://`` forwarding, for ``HTTP(S)_PROXY``) and a
SOCKS5 proxy (for ``ALL_PROXY=socks5h://``), both listening on the run's own ``127.0.0.1``
and served from the host by :class:`ProxyHost`. Both apply one :class:`RuleSet`: deny-list
first, then allow-list; the proxy resolves names itself, refuses private and special
addresses unless a CIDR names them, and fails closed.

This constrains cooperative clients only: code that ignores the proxy variables simply has
no route out of an ``allowlist`` run, and in ``open`` mode it has the host network. The
hard boundary is ``network_mode="blocked"``.

Modules, one job each: :mod:`.addresses` (canonical hosts, special ranges), :mod:`.rules`
(parsing and decisions), :mod:`.http_connect` and :mod:`.socks5` (the two front ends),
:mod:`.relay` (zero-copy byte relay), :mod:`.log` (per-run decision log), :mod:`.host`
(thread, loop and listeners of a session), :mod:`.listeners` (stdlib-only helpers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .host import ListenerGroup, ProxyHost
    from .listeners import ProxyKind, make_listeners, proxy_env
    from .log import DecisionLog, NetworkDecision
    from .rules import Decision, Resolver, RuleSet

# Loaded on first use: the proxy host pulls in a thread portal, logging and sockets, which a
# session whose runs have no proxies (and a process that only reads a decision) never needs.
_HOME = {
    "Decision": "rules",
    "DecisionLog": "log",
    "ListenerGroup": "host",
    "NetworkDecision": "log",
    "ProxyHost": "host",
    "ProxyKind": "listeners",
    "Resolver": "rules",
    "RuleSet": "rules",
    "make_listeners": "listeners",
    "proxy_env": "listeners",
}

__all__ = [
    "Decision",
    "DecisionLog",
    "ListenerGroup",
    "NetworkDecision",
    "ProxyHost",
    "ProxyKind",
    "Resolver",
    "RuleSet",
    "make_listeners",
    "proxy_env",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
