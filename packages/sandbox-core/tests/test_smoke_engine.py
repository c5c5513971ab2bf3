from __future__ import annotations

import pytest

from union.sandbox.core.on_device import session

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
async def test_echo(backend: str) -> None:
    async with session(backend=backend) as sbx:
        result = await sbx.exec("echo hi")
    assert result.stdout == "hi\n"
