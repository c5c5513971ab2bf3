"""The ``sandbox_server`` task in Flyte's local mode (``flyte.with_runcontext(mode="local")``):
the Flyte runtime calls the real task body in this process, on its own asyncio loop.

The listen address and work dir come from ``UNION_SANDBOX_ADDR`` / ``UNION_SANDBOX_WORK_DIR``
(a pod uses 0.0.0.0:8080 and /tmp/sandbox-work).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import flyte
import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with
from union.sandbox.flyte import SandboxEnvironment
from union.sandbox.flyte.testing import free_port


@pytest.fixture(scope="module")
def env() -> SandboxEnvironment:
    return SandboxEnvironment(name="local-mode-sandbox", sandbox_mode="bwrap")


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    port = free_port()
    monkeypatch.setenv("UNION_SANDBOX_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("UNION_SANDBOX_WORK_DIR", str(tmp_path / "work"))
    return f"http://127.0.0.1:{port}"


async def wait_gone(needle: str, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while host_pids_with(needle):
        assert time.monotonic() - t0 < timeout, f"still alive: {host_pids_with(needle)}"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def test_run_then_cancel_leaves_nothing(
    env: SandboxEnvironment, endpoint: str, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    sleep = f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"

    async def main() -> float:
        runner = flyte.with_runcontext(mode="local", name=f"sbx-{secrets.token_hex(4)}")
        run = asyncio.create_task(runner.run.aio(env.server_task, token=token, timeout_s=120.0))
        async with sb.remote.session(endpoint=endpoint, token=token) as sbx:
            result = await sbx.exec("echo local; cat /proc/self/status | grep CapEff")
            assert result.stdout.startswith("local\nCapEff:\t0000000000000000")
            await sbx.run(f"sleep {sleep}", stdout=False, stderr=False)
            while not host_pids_with(sleep):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            assert host_pids_with(str(tmp_path))  # the server and its supervisor
            run.cancel()  # as a local launcher aborts: the body sees CancelledError
            with pytest.raises(asyncio.CancelledError):
                await run
            # Flyte's local mode returns at once; the body stops the server on its own loop.
            return await wait_gone(str(tmp_path))

    seconds = asyncio.run(main())
    print(f"\n[figure] local mode: cancel -> server tree gone: {seconds:.3f} s")
    assert host_pids_with(sleep) == []


def test_soft_timeout_ends_the_run(env: SandboxEnvironment, endpoint: str, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)

    async def main() -> str:
        runner = flyte.with_runcontext(mode="local", name=f"sbx-{secrets.token_hex(4)}")
        run = await runner.run.aio(env.server_task, token=token, timeout_s=3.0)
        outputs = await run.outputs.aio()
        return str(outputs[0])

    started = time.monotonic()
    out = asyncio.run(main())
    assert out.startswith("soft timeout: served 3.0 s on 127.0.0.1:"), out
    assert time.monotonic() - started < 10
    assert host_pids_with(str(tmp_path)) == []
