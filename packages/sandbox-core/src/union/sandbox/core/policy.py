"""Network posture and run-argument validation shared by every transport.

Validation happens before anything runs, with the messages of the published API, so a bad
argument never leaves a half-started process behind.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

__all__ = [
    "NETWORK_MODES",
    "SCRIPT_TYPES",
    "NetworkMode",
    "NetworkPolicy",
    "ScriptType",
    "resolve_run_network",
    "validate_env",
    "validate_network",
    "validate_script_type",
    "validate_signal",
    "validate_timeout",
]

NetworkMode = Literal["blocked", "open", "allowlist"]
NETWORK_MODES: tuple[NetworkMode, ...] = get_args(NetworkMode)
ScriptType = Literal["shell", "python"]
SCRIPT_TYPES: tuple[ScriptType, ...] = get_args(ScriptType)


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    """The effective network posture of one run (or the default of a session)."""

    mode: NetworkMode = "blocked"
    allowlist: tuple[str, ...] = ()
    denylist: tuple[str, ...] = ()

    @property
    def needs_network(self) -> bool:
        """True when the posture lets traffic leave the sandbox in any way."""
        return self.mode != "blocked"


def _rule_list(value: Iterable[str] | None, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of strings, got a single {type(value).__name__}: "
            f"wrap it in a list, e.g. {name}=[{value!r}]"
        )
    rules: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{name} entries must be non-empty strings, got {item!r}")
        rules.append(item.strip())
    return tuple(rules)


def validate_network(
    mode: str,
    allowlist: Iterable[str] | None,
    denylist: Iterable[str] | None = None,
) -> NetworkPolicy:
    """Check a ``network_mode`` / ``network_allowlist`` / ``network_denylist`` triple."""
    if mode not in NETWORK_MODES:
        raise ValueError(f"network_mode must be 'blocked', 'open', or 'allowlist'; got {mode!r}")
    allow = _rule_list(allowlist, "network_allowlist")
    deny = _rule_list(denylist, "network_denylist")
    if mode == "allowlist" and not allow:
        raise ValueError("network_mode='allowlist' requires network_allowlist=[...]")
    if mode != "allowlist" and allow:
        raise ValueError("network_allowlist=[...] is only valid with network_mode='allowlist'")
    if deny and mode == "blocked":
        raise ValueError(
            "network_denylist=[...] is only valid with network_mode='open' or 'allowlist'"
        )
    return NetworkPolicy(mode, allow, deny)


def resolve_run_network(
    session: NetworkPolicy,
    mode: str | None,
    allowlist: Iterable[str] | None,
    denylist: Iterable[str] | None = None,
) -> NetworkPolicy:
    """The posture of one ``run()``: per-call arguments over the session default.

    ``mode=None`` inherits the session posture. A per-call ``"allowlist"`` without a list
    reuses the session's allow-list when it has one. The session deny-list always applies
    (deny wins), extended by a per-call one.
    """
    effective_mode = session.mode if mode is None else mode
    allow: Iterable[str] | None = allowlist
    if allow is None and effective_mode == "allowlist":
        allow = session.allowlist or None
    deny = tuple(session.denylist) + _rule_list(denylist, "network_denylist")
    if effective_mode == "blocked":
        deny = ()
    return validate_network(effective_mode, allow, deny)


def validate_script_type(script_type: str) -> ScriptType:
    if script_type not in SCRIPT_TYPES:
        raise ValueError(f"script_type must be 'shell' or 'python'; got {script_type!r}")
    return script_type


def validate_timeout(timeout_s: float | None, default: float) -> float:
    """A positive finite number of seconds (``None`` means the session default)."""
    if timeout_s is None:
        return default
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"timeout_s must be a number of seconds, got {timeout_s!r}")
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def validate_signal(signo: int) -> int:
    """A signal number ``send_signal`` can deliver to a command's process group: 1 to
    ``signal.NSIG - 1`` (real-time signals included)."""
    if isinstance(signo, bool) or not isinstance(signo, int):
        raise TypeError(f"signal must be an int such as signal.SIGTERM, got {signo!r}")
    if signo == 0:
        raise ValueError(
            "signal 0 delivers nothing (it only probes for a process): read the process's "
            "returncode to see whether it still runs"
        )
    if not 0 < signo < signal.NSIG:
        raise ValueError(f"signal must be between 1 and {signal.NSIG - 1}, got {signo}")
    return int(signo)


def validate_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Extra environment variables: string keys without ``=`` or NUL, string values."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, got {type(env).__name__}")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"env key {key!r} is not a valid environment variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"env[{key!r}] must be a string without NUL bytes, got {value!r}")
        out[key] = value
    return out
