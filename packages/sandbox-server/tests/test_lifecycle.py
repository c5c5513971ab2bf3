"""Shutdown, crashes and vanished clients never leave sandboxed processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import anyio
import pytest

from union.sandbox.client import STREAM_CLOSED_REASON, session
from union.sandbox.core.errors import ExecutionError
from union.sandbox.core.process import TerminationKind
from union.sandbox.server.testing import spawn_server

from .conftest import host_pids_with

pytestmark = pytest.mark.anyio


async def _until(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll ``predicate`` (host process lists: there is no event to wait on)."""
    with anyio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_server_killed_mid_run_gives_the_documented_error(unique_sleep: str) -> None:
    with spawn_server() as server:
        async with session(endpoint=server.endpoint) as sbx:
            proc = await sbx.run(f"echo started; sleep {unique_sleep}")
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"started\n"
            server.kill()
            with anyio.fail_after(20), pytest.raises(ExecutionError) as info:
                await proc.communicate()
            assert info.value.reason == STREAM_CLOSED_REASON
            assert proc.terminated_abnormally
            # The sandboxed processes die with their server.
            await _until(lambda: not host_pids_with(unique_sleep))


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
async def test_sigterm_kills_running_commands_and_exits_cleanly(
    unique_sleep: str, worker_class: str
) -> None:
    with spawn_server(worker_class=worker_class) as server:
        async with session(endpoint=server.endpoint) as sbx:
            proc = await sbx.run(f"echo started; sleep {unique_sleep}")
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"started\n"
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await proc.wait() == 137
            assert proc.termination is not None
            assert proc.termination.kind is TerminationKind.KILLED
            assert await anyio.to_thread.run_sync(server.process.wait, 20) == 0
            assert time.monotonic() - started < 15
            assert not host_pids_with(unique_sleep)
            assert any(r.get("msg") == "shutting down" for r in server.logs())


def test_client_killed_mid_stream_leaves_no_orphans(unique_sleep: str) -> None:
    with spawn_server() as server:
        client = textwrap.dedent(
            f"""
            import anyio, sys
            from union.sandbox.client import session
            async def main():
                async with session(endpoint={server.endpoint!r}) as sbx:
                    proc = await sbx.run("echo started; sleep {unique_sleep}")
                    print((await proc.stdout.readline()).decode(), end="", flush=True)
                    await proc.wait()
            anyio.run(main)
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", client], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"started\n"
            assert host_pids_with(unique_sleep)
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            deadline = time.monotonic() + 20
            while host_pids_with(unique_sleep) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not host_pids_with(unique_sleep)
            assert server.alive()
            # The server logs the call once its handler has unwound: give it the time.
            deadline = time.monotonic() + 10
            cancelled = [r for r in server.logs() if r.get("rpc") == "Execute"]
            while not cancelled and time.monotonic() < deadline:
                time.sleep(0.05)
                cancelled = [r for r in server.logs() if r.get("rpc") == "Execute"]
            assert cancelled
            assert cancelled[-1]["code"] == "canceled"
        finally:
            if child.poll() is None:
                child.kill()
