"""``sb.on_device``: sandboxed children of the current process (no server, no cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from union.sandbox.core import on_device as _core
from union.sandbox.core.on_device import OnDeviceSession, default_fs_allowlist, session

if TYPE_CHECKING:
    from union.sandbox.core.on_device import available_backends, backend_report

__all__ = [
    "OnDeviceSession",
    "available_backends",
    "backend_report",
    "default_fs_allowlist",
    "session",
]


def __getattr__(name: str) -> Any:
    # The backend probes load on first use, as in the core package.
    if name in ("available_backends", "backend_report"):
        return getattr(_core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
