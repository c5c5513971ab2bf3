"""``sb.remote``: attach to a running ``sandbox-server`` over HTTP.

Needs ``unionai-sandbox[remote]`` (the ``unionai-sandbox-client`` distribution).
"""

from __future__ import annotations

try:
    from union.sandbox.client import (
        ConnectError,
        HealthInfo,
        RemoteSession,
        session,
    )
except ImportError as exc:  # pragma: no cover - exercised by the install-shape suite
    raise ImportError(
        "sb.remote needs the remote client: pip install 'unionai-sandbox[remote]'"
    ) from exc

__all__ = ["ConnectError", "HealthInfo", "RemoteSession", "session"]
