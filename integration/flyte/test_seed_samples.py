"""The seed deployment page's remote samples (``spec/seed-deployment-page.txt``), verbatim,
against our package: the cluster ones through the fake cluster (``fake_cp.py``), whole
scripts in Flyte's local mode, and the page's ``flyte run`` commands through the real
``flyte`` CLI (``--local``, and against the fake cluster: ``flyte run`` has no dry run).
The on-device samples are in ``integration/spec_samples``; the deploy commands in
``test_deploy.py``.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import flyte
import pytest

from union import sandbox as sb
from union.sandbox.flyte import _environment

from .fake_cp import FakeControlPlane
from .samples import MY_SANDBOXES, importable

FLYTE = Path(sys.executable).with_name("flyte")
UNAME = f"Linux sandbox {os.uname().release} "

# "Remote: one-time deploy, then per-run sessions"
MY_AGENT = """
import flyte
from datetime import timedelta
from union import sandbox as sb

env = flyte.TaskEnvironment(
    name="agent",
    image=flyte.Image.from_debian_base().with_pip_packages(
        "unionai-sandbox[remote]"
    ),
)

@env.task
async def main() -> str:
    async with await sb.session(timeout=timedelta(minutes=30)) as sbx:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        print(sbx.name, sbx.ip, sbx.created_at, sbx.url)
        return out
"""

# "Passing a sandbox between tasks" (with the page's `env` from the sample before it)
PASSING = """
import asyncio
from datetime import timedelta
from union import sandbox as sb
import flyte

env = flyte.TaskEnvironment(name="agent")

@env.task
async def child(sbx: sb.SandboxSession, script: str) -> dict:
    # Reference mode: no `async with` needed. Endpoint round-tripped via
    # serialization; first run() lazily opens the transport.
    proc = await sbx.run(script, stdout=True)
    out, _ = await proc.communicate_text()
    return {"script": script, "stdout": out, "returncode": proc.returncode}

@env.task
async def parent() -> list[dict]:
    # Owner mode: we launched the pod, so we own its lifetime and abort on exit.
    async with await sb.session(timeout=timedelta(minutes=15)) as sbx:
        return await asyncio.gather(
            child(sbx, "echo one"),
            child(sbx, "echo two"),
        )
"""

# "Detached lifetime"
DETACHED = """
import flyte
from datetime import timedelta
from union import sandbox as sb

env = flyte.TaskEnvironment(
    name="long-running-service",
    image=flyte.Image.from_debian_base().with_pip_packages(
        "unionai-sandbox[remote]"
    ),
)

@env.task
async def serve_user_session(user_id: str) -> str:
    sbx = await sb.session(timeout=timedelta(minutes=30))
    await sbx # wait for the pod to surface, fail fast on a bad launch
    try:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        return out
    finally:
        await sbx.close() # closes the transport and aborts the run (owner side)
"""

# "Defining a custom SandboxEnvironment": the caller (my_sandboxes.py is in samples.py)
RUN_INFERENCE = """
import flyte
from union import sandbox as sb
from my_sandboxes import ml_sandbox

env = flyte.TaskEnvironment(
    name="agent",
    image=flyte.Image.from_debian_base().with_pip_packages(
        "unionai-sandbox[remote]"
    ),
)

@env.task
async def run_inference() -> str:
    async with await sb.session(environment=ml_sandbox) as sbx:
        proc = await sbx.run(
            "python -c 'import torch; print(torch.__version__)'",
            stdout=True,
        )
        out, _ = await proc.communicate_text()
        return out
"""


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The samples as files of a project directory, importable by name."""
    root = tmp_path_factory.mktemp("seed")
    files = {
        "my_agent": MY_AGENT,
        "passing": PASSING,
        "detached": DETACHED,
        "my_sandboxes": MY_SANDBOXES,
        "run_inference": RUN_INFERENCE,
    }
    # Other tests of this process may have imported modules of the same names (the docs'
    # my_sandboxes.py) and registered an "ml-sandbox" of another shape: as in a process of
    # its own, these samples start without them.
    shapes = dict(_environment._SHAPES)
    _environment._SHAPES.pop("ml-sandbox", None)
    try:
        with importable(root, files):
            yield root
    finally:
        _environment._SHAPES.clear()
        _environment._SHAPES.update(shapes)


def sample(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def defaults_deployed(cluster: FakeControlPlane) -> FakeControlPlane:
    """The built-in ``union-sandbox`` environment, as ``unionai-sandbox-deploy`` leaves it."""
    cluster.deploy(sb.DEFAULT_SANDBOX_ENV.server_task)
    return cluster


def flyte_cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "NO_COLOR": "1"}
    env.update(COLUMNS="250", TERM="dumb")
    return subprocess.run(
        [str(FLYTE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip


def cluster_home(cluster: FakeControlPlane, home: Path) -> Path:
    (home / ".flyte").mkdir(parents=True, exist_ok=True)
    (home / ".flyte" / "config.yaml").write_text(
        f"admin:\n  endpoint: {cluster.endpoint}\n  insecure: true\n"
        "  authType: ExternalCommand\n  command: [echo, tok]\n"
        "task:\n  project: p\n  domain: development\n  org: o\n"
    )
    return home


def test_flyte_run_main_on_the_cluster(
    remote: FakeControlPlane, defaults_deployed: FakeControlPlane, samples: Path, tmp_path: Path
) -> None:
    """``flyte run --project my-project --domain development my_agent.py main``: the caller
    task runs in a pod (``a0``), where ``sb.session()`` launches the deployed sandbox task as
    a run of its own and reaches it through the dataproxy."""
    remote.code_root = samples
    remote.executor = "process"  # main runs as a pod does; the sandbox task in-process
    remote.executors["union-sandbox.sandbox_server"] = "thread"
    remote.pod_env["UNION_SANDBOX_DATAPROXY_URL"] = remote.dataplane.url
    try:
        home = cluster_home(remote, tmp_path / "home")
        args = ["run", "--copy-style", "none", "--version", "v1"]
        args += ["--project", "my-project", "--domain", "development", "my_agent.py", "main"]
        out = flyte_cli(args, samples, home)
        assert out.returncode == 0, out.stdout + out.stderr
        main = re.search(r"Created Run: (\S+)", out.stdout)
        assert main, out.stdout
        run = main.group(1)
        phase = remote.wait_phase(run, {"SUCCEEDED", "FAILED"}, 120)
        assert phase == "SUCCEEDED", remote.runs[run].details.error_info.message
        log = (remote.runs[run].root / "pod.log").read_text()  # type: ignore[operator]
        printed = re.search(r"^(sbx-[0-9a-f]{16})  (\S+ \S+) (http://\S+/runs/sbx-\S+)$", log, re.M)
        assert printed, log  # name, ip ("": the dataproxy does not tell), created_at, url
        sandbox = remote.runs[printed.group(1)]
        assert sandbox.details.id.run.project == "my-project"  # inherited from the caller
        assert remote.wait_phase(sandbox.name, {"ABORTED"}) == "ABORTED"
        assert remote.runs[run].outputs is not None
    finally:
        remote.pod_env.clear()


@pytest.mark.usefixtures("no_cluster")
def test_flyte_run_local_main(samples: Path, tmp_path: Path) -> None:
    """``flyte run --local my_agent.py main``: the same file, nothing else, on a laptop."""
    out = flyte_cli(["run", "--local", "my_agent.py", "main"], samples, tmp_path / "home")
    assert out.returncode == 0, out.stdout + out.stderr
    assert UNAME in out.stdout


@pytest.mark.usefixtures("no_cluster")
def test_passing_a_sandbox_between_tasks(samples: Path) -> None:
    parent = sample("passing").parent
    outputs = flyte.with_runcontext(mode="local").run(parent).outputs()[0]
    assert outputs == [
        {"script": "echo one", "stdout": "one\n", "returncode": 0},
        {"script": "echo two", "stdout": "two\n", "returncode": 0},
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_detached_lifetime_on_the_cluster(
    remote: FakeControlPlane, defaults_deployed: FakeControlPlane, samples: Path
) -> None:
    # Outside a Flyte run, calling a task calls its function: here, under trio.
    out = await sample("detached").serve_user_session("user-1")
    assert out.startswith(UNAME)
    (name,) = [c[1] for c in remote.calls if c[0] == "CreateRun"][-1:]
    assert remote.wait_phase(name, {"ABORTED"}) == "ABORTED"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_custom_environment(remote: FakeControlPlane, samples: Path) -> None:
    """The page's ``ml_sandbox`` asks for a GPU with ``sandbox_mode="userns"``, which GPU
    sandboxes cannot use: launching it fails before anything is submitted. With
    ``sandbox_mode="bwrap"`` it deploys and launches; its server then refuses to start on
    this machine (no GPU), and that surfaces as the run's failure, named."""
    with pytest.warns(UserWarning, match="GPU sandboxes need sandbox_mode='bwrap'"):
        inference = sample("run_inference")
    created = len([c for c in remote.calls if c[0] == "CreateRun"])
    with pytest.raises(ValueError, match="GPU sandboxes need the bubblewrap backend"):
        await inference.run_inference()
    assert len([c for c in remote.calls if c[0] == "CreateRun"]) == created
    bwrap = sample("my_sandboxes").ml_sandbox.clone_with("ml-sandbox-bwrap", sandbox_mode="bwrap")
    remote.deploy(bwrap.server_task)
    with pytest.raises(sb.SandboxRunEnded, match="0 NVIDIA device node") as caught:
        async with await sb.session(environment=bwrap) as sbx:
            await sbx.exec("nvidia-smi")
    assert caught.value.phase == "FAILED" and caught.value.run_name.startswith("sbx-")
