"""Network postures behave the same over both transports: an allow-list run's egress
decisions reach the process handle, on-device and remote alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


async def test_allowlist_decisions_reach_the_handle(make_session: Callable[..., Any]) -> None:
    sbx = make_session(network_mode="allowlist", network_allowlist=["10.255.255.1/32"])
    async with sbx:
        proc = await sbx.run(
            "curl -sS --noproxy '' -o /dev/null -w '%{http_code}' http://10.9.9.9:8080/"
        )
        out, _ = await proc.communicate()
        assert out == b"403"
        decisions = proc.network_decisions
        assert len(decisions) == 1
        refused = decisions[0]
        assert (refused.host, refused.port, refused.allowed) == ("10.9.9.9", 8080, False)
        assert "allow-list" in refused.reason
        assert refused.protocol == "http-forward"


async def test_blocked_runs_have_no_decisions(make_session: Callable[..., Any]) -> None:
    async with make_session() as sbx:
        proc = await sbx.run("curl -sS -m 2 http://10.9.9.9:8080/ || true")
        await proc.communicate()
        assert proc.network_decisions == []
