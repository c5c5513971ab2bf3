"""``sb.session()`` against a fake Flyte cluster (``fake_cp.py``: flyteidl2's own Connect
services; its runs execute the real task body, so the client reaches a real server).

Deploy (``flyte.deploy``), submit by task name, watch the run until its pod is known, reach
it through the dataproxy route and through the pod IP, health check, abort on close; the
errors for a failed run, an aborted run, a run that never gets a pod, an unknown task and an
unauthenticated control plane; a session handed to a task deployed and called by name.
"""

from __future__ import annotations

import datetime
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import flyte
import flyte.remote
import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with
from union.sandbox.flyte import PodIPResolver, SandboxEnvironment

from .fake_cp import FakeControlPlane
from .samples import importable

pytestmark = pytest.mark.anyio

MINUTES = datetime.timedelta(minutes=5)


@pytest.fixture(scope="module")
def sandbox_env() -> SandboxEnvironment:
    # A plain image reference: deploying it builds nothing.
    return SandboxEnvironment(name="fake-cluster-sandbox", image="example.com/sandbox:test")


@pytest.fixture(scope="module")
def deployed(cluster: FakeControlPlane, sandbox_env: SandboxEnvironment) -> SandboxEnvironment:
    from .conftest import flyte_config

    with flyte_config():
        cluster.init_flyte()
        flyte.deploy(sandbox_env, version="v1", copy_style="none")
    assert ("DeployTask", sandbox_env.task_name, "v1") in cluster.calls
    return sandbox_env


def rpcs(cluster: FakeControlPlane, run: str) -> list[str]:
    return [c[0] for c in cluster.calls if len(c) > 1 and c[1] == run]


async def test_dataproxy_end_to_end(
    remote: FakeControlPlane,
    deployed: SandboxEnvironment,
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sbx = await deployed.new_session(timeout=MINUTES)
    assert (
        sbx.url == f"http://127.0.0.1:{remote.port}/v2/domain/development/project/p/runs/{sbx.name}"
    )
    run = remote.runs[sbx.name]
    async with sbx:
        assert sbx.endpoint == f"{remote.dataplane.url}/dataplane/pod/v1/{run.namespace}/{run.pod}"
        forwarded = remote.dataplane.forwarded
        result = await sbx.exec("echo through the dataproxy")
        assert result.stdout == "through the dataproxy\n"
        assert remote.dataplane.forwarded > forwarded  # Health, Execute
        await sbx.put_bytes(f"{sbx.work_dir}/f", b"x" * 3_000_000)
        assert len(await sbx.get_bytes(f"{sbx.work_dir}/f")) == 3_000_000
        stages = [p.stage for p in sbx.progress]
        assert stages == ["submitted", "pod scheduled", "image pulled", "server ready"], stages
    assert remote.wait_phase(sbx.name, {"ABORTED"}) == "ABORTED"
    assert run.details.abort_info.reason == "SandboxSession closed"
    assert [c for c in rpcs(remote, sbx.name) if c != "GetRunDetails"] == [
        "CreateRun",
        "WatchActionDetails",
        "Abort",
    ]
    assert ("GetTaskDetails", deployed.task_name, "v1") in remote.calls  # latest = v1
    # The token went to the task as an input, and nowhere else.
    assert sbx.token not in caplog.text and sbx.token not in repr(sbx)
    assert [i for i in remote.runs[sbx.name].inputs.literals if i.name == "token"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pod_ip_resolver_and_resources(
    remote: FakeControlPlane, deployed: SandboxEnvironment, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(remote.dataplane.sa_token)
    resolver = PodIPResolver(api_url=remote.dataplane.url, token_path=str(token))
    resources = flyte.Resources(cpu="1", memory="1Gi")
    async with await deployed.new_session(resolver=resolver, resources=resources) as sbx:
        run = remote.runs[sbx.name]
        assert (sbx.endpoint, sbx.ip) == (f"http://{run.pod_ip}:8080", run.pod_ip)
        forwarded = remote.dataplane.forwarded
        assert (await sbx.exec("nproc")).ok
        assert remote.dataplane.forwarded == forwarded  # straight to the pod
        assert remote.runs[sbx.name].details.task.task_template.id.name == deployed.task_name
        limits = sbx._remote.health.resource_ceiling  # type: ignore[union-attr]
        assert (limits.cpu_milli, limits.memory_bytes) == (800, 768 * 2**20)
    # The override went as a whole spec with the new pod shape.
    assert ("CreateRun", sbx.name, "task_spec") in remote.calls


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pod_ip_resolver_without_rbac(
    remote: FakeControlPlane, deployed: SandboxEnvironment, tmp_path: Path
) -> None:
    resolver = PodIPResolver(api_url=remote.dataplane.url, token_path=str(tmp_path / "none"))
    sbx = await deployed.new_session(resolver=resolver)
    with pytest.raises(RuntimeError, match="needs 'get' on pods") as caught:
        await sbx
    assert "pod-ip resolver" in str(caught.value) and sbx.name in str(caught.value)
    assert remote.wait_phase(sbx.name, {"ABORTED"}) == "ABORTED"  # nobody could use it


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_abort_reaches_a_pod(remote: FakeControlPlane, deployed: SandboxEnvironment) -> None:
    """The real pod entrypoint (``a0`` as PID 1 of its own PID namespace): close() aborts
    the run, the kubelet's SIGTERM stops the server, and nothing of the pod is left."""
    remote.executor, remote.pid1 = "process", True
    sbx = await deployed.new_session(timeout=MINUTES)
    async with sbx:
        await sbx.run("sleep 3600", stdout=False, stderr=False)
        assert host_pids_with(sbx.name)
    assert remote.wait_phase(sbx.name, {"ABORTED", "FAILED"}) == "ABORTED"
    with anyio.fail_after(20):
        while host_pids_with(sbx.name):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    log = (remote.runs[sbx.name].root / "pod.log").read_text()  # type: ignore[operator]
    assert "SIGTERM (run aborted or pod evicted): stopping" in log
    assert sbx.token not in log  # the pod's log: the task runtime's, the body's, the server's


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_failed_run(remote: FakeControlPlane, deployed: SandboxEnvironment) -> None:
    remote.break_pods = True  # the body refuses the pod's listen address and fails
    sbx = await deployed.new_session()
    with pytest.raises(sb.SandboxRunEnded) as caught:
        async with sbx:
            await sbx.exec("true")
    error = caught.value
    assert (error.run_name, error.phase) == (sbx.name, "FAILED")
    assert "listen address must be HOST:PORT" in str(error) and sbx.name in str(error)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aborted_while_waiting(
    remote: FakeControlPlane, deployed: SandboxEnvironment
) -> None:
    remote.hold_pods = True
    sbx = await deployed.new_session()

    async def abort_later() -> None:
        await anyio.sleep(0.3)
        remote.abort(sbx.name, "someone aborted it in the console")

    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_later)
        with pytest.raises(sb.SandboxRunEnded, match="someone aborted it") as caught:
            await sbx
    assert caught.value.phase == "ABORTED"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_never_gets_a_pod(remote: FakeControlPlane, deployed: SandboxEnvironment) -> None:
    remote.hold_pods = True
    sbx = await deployed.new_session()
    with pytest.raises(TimeoutError) as caught:
        await sbx.wait_endpoint(timeout_s=1.0)
    message = str(caught.value)
    assert sbx.name in message and "within 1 s" in message
    assert "QUEUED: 0/3 nodes are available: 3 Insufficient cpu" in message
    assert remote.wait_phase(sbx.name, {"ABORTED"}) == "ABORTED"  # not left queued


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unknown_task(remote: FakeControlPlane) -> None:
    with pytest.raises(sb.SandboxLaunchError, match="unionai-sandbox-deploy") as caught:
        await sb.session(environment="never-deployed", name="sbx-unknown-task")
    assert "no deployed task 'never-deployed.sandbox_server'" in str(caught.value)
    assert "sbx-unknown-task" not in remote.runs


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unauthenticated(remote: FakeControlPlane, deployed: SandboxEnvironment) -> None:
    remote.token = "the-right-one"
    remote.init_flyte(command_token="a-wrong-one")
    with pytest.raises(sb.SandboxLaunchError, match="not authenticated"):
        await deployed.new_session(name="sbx-unauthenticated")
    assert "sbx-unauthenticated" not in remote.runs
    assert any(c[0] == "Unauthenticated" for c in remote.calls)


AGENT = """
import flyte
from union import sandbox as sb

env = flyte.TaskEnvironment(name="agent-by-name")


@env.task
async def child(sbx: sb.SandboxSession, script: str) -> dict:
    # Reference mode: no `async with` needed; the first run() opens the transport.
    proc = await sbx.run(script, stdout=True)
    out, _ = await proc.communicate_text()
    await sbx.close()  # a reference closes its transport only
    return {"stdout": out, "owner": sbx.is_owner, "returncode": proc.returncode}
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with importable(tmp_path_factory.mktemp("agent"), {"agent_by_name": AGENT}):
        yield importlib.import_module("agent_by_name")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_session_to_a_task_called_by_name(
    remote: FakeControlPlane, deployed: SandboxEnvironment, agent: Any
) -> None:
    """The session goes, as an input, to a task deployed and called by name, which runs in
    a pod of its own (``a0``): there it is a reference; its close() leaves the run going."""
    remote.code_root = Path(agent.__file__).parent
    remote.deploy(agent.child)
    remote.executors["agent-by-name.child"] = "process"
    async with await deployed.new_session(timeout=MINUTES) as sbx:
        await sbx.put_bytes(f"{(await sbx.open()).work_dir}/note", b"for the child")
        child = flyte.remote.TaskDetails.get(
            name="agent-by-name.child", project="p", domain="development", version="v1"
        )
        run = await anyio.to_thread.run_sync(
            lambda: flyte.run(child, sbx=sbx, script=f"cat {sbx.work_dir}/note")
        )
        assert remote.wait_phase(run.name, {"SUCCEEDED", "FAILED"}, 60) == "SUCCEEDED", (
            remote.runs[run.name].root / "pod.log"
        ).read_text()  # type: ignore[operator]
        outputs = await anyio.to_thread.run_sync(lambda: run.outputs()[0])
        assert outputs == {"stdout": "for the child", "owner": False, "returncode": 0}
        assert remote.runs[sbx.name].phase == "RUNNING"
        assert (await sbx.exec("echo owner again")).stdout == "owner again\n"
    assert remote.wait_phase(sbx.name, {"ABORTED"}) == "ABORTED"
