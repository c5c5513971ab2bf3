"""Remote sessions: attach to a running ``sandbox-server`` over HTTP (``sb.remote``).
Depends on core and httpx only: no server, no flyte.

    from union.sandbox.client import session

    async with session(endpoint="http://127.0.0.1:50051", token=token) as sbx:
        proc = await sbx.run("echo hi")
        out, err = await proc.communicate()
"""

from __future__ import annotations

from union.sandbox.core.wire.connect import Code, ConnectError

from ._process import CANCELLED_REASON, STREAM_CLOSED_REASON
from ._session import HealthInfo, RemoteSession, exception_from, session

__all__ = [
    "CANCELLED_REASON",
    "STREAM_CLOSED_REASON",
    "Code",
    "ConnectError",
    "HealthInfo",
    "RemoteSession",
    "exception_from",
    "session",
]
