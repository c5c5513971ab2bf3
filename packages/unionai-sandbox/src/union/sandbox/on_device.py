"""``sb.on_device``: sandboxed children of the current process (no server, no cluster)."""

from __future__ import annotations

from union.sandbox.core.on_device import (
    OnDeviceSession,
    available_backends,
    backend_report,
    default_fs_allowlist,
    session,
)

__all__ = [
    "OnDeviceSession",
    "available_backends",
    "backend_report",
    "default_fs_allowlist",
    "session",
]
