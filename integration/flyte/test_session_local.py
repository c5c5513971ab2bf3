"""``sb.session()`` in local mode (no Flyte cluster configured, or Flyte's local mode): the
real ``sandbox_server`` task body in a process of this machine, reached over loopback, under
asyncio and trio.

Figures (printed; ``-s`` shows them): ``sb.session()`` to the first completed ``run()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import flyte
import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_cluster")]

env = flyte.TaskEnvironment(name="local-session-tests")


@env.task
async def use_and_close(sbx: sb.SandboxSession, script: str) -> dict[str, str]:
    """A second task given the session: reference mode, then its close()."""
    result = await sbx.exec(script)
    await sbx.close()
    return {"owner": str(sbx.is_owner), "stdout": result.stdout, "endpoint": sbx.endpoint}


async def run_task(task: object, **inputs: object) -> object:
    """Run ``task`` through Flyte's local executor (asyncio-only: from trio, in a thread)."""

    def blocking() -> object:
        run = flyte.with_runcontext(mode="local").run(task, **inputs)
        return run.outputs()[0]

    return await anyio.to_thread.run_sync(blocking)


async def gone(name: str) -> None:
    with anyio.fail_after(30):
        while host_pids_with(name):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_end_to_end(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "AKIA" + os.urandom(8).hex().upper()  # the caller's credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    t0 = time.monotonic()
    sbx = await sb.session(timeout=datetime.timedelta(minutes=5))
    assert sbx.is_owner and sbx.endpoint == "" and sbx.name.startswith("sbx-")
    async with sbx:
        assert sbx.endpoint.startswith("http://127.0.0.1:") and sbx.ip == "127.0.0.1"
        proc = await sbx.run("echo hello from $(uname -n)", stdout=True)
        out, _ = await proc.communicate_text()
        first_run = time.monotonic() - t0
        assert out == "hello from sandbox\n"
        seen = await sbx.exec("env; cat /proc/*/environ; ls -a ..", timeout_s=30)
        assert secret not in seen.stdout and sbx.token not in seen.stdout
        assert await sbx.put_bytes(f"{sbx.work_dir}/in.txt", b"data") == 4
        assert await sbx.get_bytes(f"{sbx.work_dir}/in.txt") == b"data"
        # A second task given the session: a reference, whose close() leaves the run going.
        done = await run_task(use_and_close, sbx=sbx, script=f"cat {sbx.work_dir}/in.txt")
        assert done == {"owner": "False", "stdout": "data", "endpoint": sbx.endpoint}
        assert not sbx.has_ended
        assert (await sbx.exec("echo still here")).stdout == "still here\n"
        stages = [p.stage for p in sbx.progress]
        assert stages == ["submitted", "pod scheduled", "server ready"], stages
        assert host_pids_with(sbx.name)
    # The owner's exit aborted the run: its process, the server and the sandboxes are gone.
    assert sbx.has_ended and sbx.phase is not None and sbx.phase.startswith("ABORTED")
    await gone(sbx.name)
    with pytest.raises(RuntimeError, match="closed"):
        await sbx.exec("true")
    print(f"\n[figure] local mode ({anyio_backend}): sb.session() -> first run {first_run:.2f} s")
    # The token travels in the session, never in a log or a repr.
    assert sbx.token and sbx.token not in caplog.text
    assert sbx.token not in repr(sbx) and sbx.token not in str(sbx)
    assert sbx.token not in repr(sbx._launch) and sbx.token not in str(sbx.progress)


async def test_detached_lifetime(anyio_backend: str) -> None:
    sbx = await sb.session(timeout=datetime.timedelta(minutes=5))
    await sbx  # the pod (here: the local process) is addressable
    try:
        result = await sbx.exec("echo detached")
    finally:
        await sbx.close()  # closes the transport and aborts the run (owner side)
    assert result.stdout == "detached\n"
    assert sbx.phase == "ABORTED: SandboxSession closed"
    await gone(sbx.name)
    await sbx.close()  # idempotent


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_soft_timeout_ends_the_session() -> None:
    async with await sb.session(timeout=datetime.timedelta(seconds=2)) as sbx:
        assert (await sbx.exec("echo up")).ok
        with anyio.fail_after(30):
            while not sbx.has_ended:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        with pytest.raises(sb.SandboxRunEnded, match="soft timeout") as caught:
            await sbx.exec("true")
        assert caught.value.phase == "SUCCEEDED" and caught.value.run_name == sbx.name
        await gone(sbx.name)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_passed_before_its_endpoint_is_known() -> None:
    sbx = await sb.session(timeout=datetime.timedelta(minutes=5))
    try:
        early = sb.SandboxSession.model_validate_json(sbx.model_dump_json())
        assert not early.is_owner and early.endpoint == ""
        with pytest.raises(RuntimeError, match="owner must wait for the sandbox"):
            await early.exec("true")
        await sbx
        late = sb.SandboxSession.model_validate_json(sbx.model_dump_json())
        assert (await late.exec("echo late")).stdout == "late\n"
        await late.close()
        assert not sbx.has_ended
    finally:
        await sbx.close()
    await gone(sbx.name)


def test_owner_process_death_ends_the_run(tmp_path: Path) -> None:
    """The owner dies without closing: the local run stops by itself (its lifeline), and
    leaves no process."""
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, datetime, json, os, sys
            from union import sandbox as sb

            async def main():
                sbx = await sb.session(timeout=datetime.timedelta(minutes=5))
                await sbx
                await sbx.exec("true")
                print(json.dumps({"name": sbx.name}), flush=True)
                os._exit(9)  # no close(), no cleanup

            asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 9, done.stderr
    name = json.loads(done.stdout.strip().splitlines()[-1])["name"]
    anyio.run(gone, name)
