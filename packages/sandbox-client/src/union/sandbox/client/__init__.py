"""Remote sessions: attach to a running ``sandbox-server`` over HTTP (``sb.remote``).
Depends on core and httpx only: no server, no flyte."""

from __future__ import annotations

__all__: list[str] = []
