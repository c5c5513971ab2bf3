"""The ``sandbox_server`` task as a pod runs it: the real ``a0`` entrypoint, with the deployed
spec's arguments and our task resolver, as PID 1 of its own PID namespace (see ``pod.py``).

Figures (printed; ``-s`` shows them): SIGTERM to ``a0`` until the last process of the pod is
gone, and the soft timeout's expiry until ``a0`` has exited.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with
from union.sandbox.flyte import SandboxEnvironment
from union.sandbox.flyte.testing import free_port

from .pod import Pod

SECRET = "AKIA" + secrets.token_hex(8).upper()  # stands in for the pod's cloud credentials


@pytest.fixture(scope="module")
def env() -> SandboxEnvironment:
    return SandboxEnvironment(name="pod-test-sandbox", env_vars={"HF_HOME": "/tmp/hf"})


def make_pod(env: SandboxEnvironment, root: Path, **inputs: object) -> tuple[Pod, str, str]:
    port, token = free_port(), secrets.token_urlsafe(24)
    pod = Pod(
        env.server_task,
        {"token": token, **inputs},
        root=root,
        env={
            "UNION_SANDBOX_ADDR": f"127.0.0.1:{port}",
            "UNION_SANDBOX_WORK_DIR": str(root / "work"),
            # What a pod's environment may hold and a sandbox must never see.
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "FLYTE_SECRETS_DEFAULT_DIR": "/etc/flyte/secrets",
        },
    )
    return pod, f"http://127.0.0.1:{port}", token


def test_abort_is_sigterm_to_pid1_and_leaves_nothing(
    env: SandboxEnvironment, tmp_path: Path
) -> None:
    pod, endpoint, token = make_pod(env, tmp_path, timeout_s=300.0)
    sleep = f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"
    pod.start()
    try:

        async def use() -> tuple[float, float]:
            async with sb.remote.session(endpoint=endpoint, token=token) as sbx:
                result = await sbx.exec("echo hello from a0; env; cat /proc/*/environ")
                assert result.stdout.startswith("hello from a0\n")
                assert SECRET not in result.stdout and "AWS_SECRET" not in result.stdout
                await sbx.run(f"sleep {sleep}", stdout=False, stderr=False)
                with anyio.fail_after(10):
                    while not host_pids_with(sleep):  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                # a0, the server, its supervisor, the run's init and the sleep
                assert len(pod.processes()) >= 4, pod.log()
                return await anyio.to_thread.run_sync(pod.abort)

        tree, seconds = anyio.run(use)
        print(
            f"\n[figure] SIGTERM to a0 (PID 1) -> server and sandboxes gone: {tree:.3f} s, "
            f"last process of the pod (a0) gone: {seconds:.3f} s"
        )
        assert tree < 5  # well before the 10 s SIGKILL escalation: the server stopped on SIGTERM
        assert seconds < pod.grace_s
        assert pod.wait(10) is not None
    finally:
        pod.kill()
    assert host_pids_with(sleep) == []
    log = pod.log()
    assert "[sandbox_server] ready: sandbox-server listening on 127.0.0.1:" in log
    assert "SIGTERM (run aborted or pod evicted): stopping" in log
    assert "0 still alive" in log
    assert pod.error_written() and not pod.outputs_written()  # not a success
    assert SECRET not in log


def test_soft_timeout_in_the_pod(env: SandboxEnvironment, tmp_path: Path) -> None:
    """The soft timeout ends the pod by itself: the server goes, ``a0`` writes the task's
    output and exits 0 (the run succeeds)."""
    pod, _, _ = make_pod(env, tmp_path, timeout_s=2.0)
    pod.start()
    try:
        assert pod.wait(60) == 0, pod.log()
    finally:
        pod.kill()
    log = pod.log()
    assert "[sandbox_server] ready: sandbox-server listening on 127.0.0.1:" in log
    assert "soft timeout of 2 s expired: stopping" in log
    assert "0 still alive" in log
    assert pod.outputs_written() and not pod.error_written()
    assert pod.processes() == []
