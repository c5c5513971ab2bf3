"""``unionai-sandbox mcp`` on the other sandboxes (``--endpoint`` a running sandbox-server,
``--flyte`` in Flyte's local mode) and ``install_packages`` through the proxy allow-list
(a local PEP 503 index stands in for PyPI)."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from union.sandbox.core.testing import host_pids_with

from .conftest import cli_env, console_script

mcp = pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="Linux backends"),
]

ROOT = Path(__file__).resolve().parents[3]


@asynccontextmanager
async def mcp_client(
    tmp_path: Path, *args: str, env: dict[str, str | None] | None = None, loop: str = "asyncio"
) -> AsyncIterator[Client]:
    script = console_script()
    params = StdioServerParameters(
        command=script[0],
        args=[*script[1:], "mcp", "--event-loop", loop, *args],
        env=cli_env(env),
        cwd=str(tmp_path),
    )
    with open(tmp_path / "server.stderr", "w") as errlog:  # noqa: ASYNC230 - local, once
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


def stdout(result: Any) -> str:
    assert not result.is_error, result.content[0].text
    return str(result.structured_content["stdout"]["text"])


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[Any]:
    testing = pytest.importorskip("union.sandbox.server.testing")
    with testing.spawn_server(backend="userns", token=True) as running:
        yield running


async def test_endpoint(tmp_path: Path, sandbox_server: Any, anyio_backend: str) -> None:
    args = ("--endpoint", sandbox_server.endpoint, "--backend", "userns", "--max-output", "400")
    env = {"UNION_SANDBOX_TOKEN": sandbox_server.token}
    async with mcp_client(tmp_path, *args, env=env, loop=anyio_backend) as client:
        where = await client.call_tool("run_shell", {"command": "echo remote; pwd"})
        assert stdout(where).startswith("remote\n" + sandbox_server.work_dir)
        await client.call_tool("write_file", {"path": "mcp-endpoint/in.txt", "content": "x"})
        read = await client.call_tool("read_file", {"path": "mcp-endpoint/in.txt"})
        assert read.content[0].text == "x"
        flood = await client.call_tool("run_shell", {"command": "seq 1 5000"})
        out = flood.structured_content["stdout"]
        assert out["trimmed"] and out["file"].startswith(".mcp-output/")
        back = await client.call_tool("run_shell", {"command": f"tail -n 1 {out['file']}"})
        assert stdout(back) == "5000\n"
        refused = await client.call_tool("run_shell", {"command": "true", "network": "open"})
        assert refused.is_error and "--network open" in refused.content[0].text
    assert sandbox_server.token not in (tmp_path / "server.stderr").read_text()


# One launch is enough here: both loops of the server are covered by the stdio tests.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_flyte_local_mode(tmp_path: Path, anyio_backend: str) -> None:
    """No Flyte config: the sandbox task runs in Flyte's local mode; the session is
    launched at the first call and its run ends with the server."""
    pytest.importorskip("flyte")
    env = {"HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    async with mcp_client(tmp_path, "--flyte", env=env) as client:
        ran = await client.call_tool("run_shell", {"command": "echo in flyte"})
        assert stdout(ran) == "in flyte\n"
    said = (tmp_path / "server.stderr").read_text()
    name = re.search(r"launching sandbox (sbx-[0-9a-f]{16}) \(Flyte's local mode", said)
    assert name, said
    with anyio.fail_after(30):
        while host_pids_with(name.group(1)):  # noqa: ASYNC110
            await anyio.sleep(0.05)


def _offline_example() -> ModuleType:
    path = ROOT / "examples" / "install_then_run_offline.py"
    if not path.exists():
        pytest.skip("examples/ not in this checkout")
    spec = importlib.util.spec_from_file_location("install_then_run_offline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_install_packages(tmp_path: Path, anyio_backend: str) -> None:
    """With --allow-install the install reaches the package index through the proxy while
    runs stay blocked; the package is then importable by later runs. Without an index
    on the install's allow-list, the proxy refuses it (and says so)."""
    example = _offline_example()
    with example.serve_index(example.build_wheel()) as (index_url, requested):
        env = {"UV_INDEX_URL": index_url, "NO_PROXY": "", "no_proxy": ""}
        operator = [f"--env={key}={value}" for key, value in env.items()]
        # The index (host loopback) is allowed for every run, and installs may use it.
        async with mcp_client(
            tmp_path, "--backend", "userns", "--allow", "127.0.0.1/32", "--allow-install",
            *operator, loop=anyio_backend,
        ) as client:  # fmt: skip
            installed = await client.call_tool("install_packages", {"packages": [example.NAME]})
            data = installed.structured_content
            assert data["exit_code"] == 0, installed.content[0].text
            assert data["network"]["mode"] == "allowlist"
            assert {"pypi.org", "127.0.0.1/32"} <= set(data["network"]["allow"])
            assert any(d["allowed"] and d["host"] == "127.0.0.1" for d in data["network_decisions"])
            code = f"import {example.NAME} as m; print(m.greet('mcp'))"
            greeted = await client.call_tool("run_python", {"code": code})
            assert "hello, mcp" in stdout(greeted)
        assert any("/simple/" in line for line in requested)
        # Runs blocked, installs through sb.PYPI_HOSTS only: the local index is refused.
        del requested[:]
        async with mcp_client(
            tmp_path, "--backend", "userns", "--allow-install", *operator, loop=anyio_backend
        ) as client:
            refused = await client.call_tool("install_packages", {"packages": [example.NAME]})
            data = refused.structured_content
            assert data["exit_code"] != 0
            assert data["network"]["allow"][:2] == ["pypi.org", "files.pythonhosted.org"]
            assert any(
                not d["allowed"] and d["host"] == "127.0.0.1" for d in data["network_decisions"]
            ), refused.content[0].text
            blocked = await client.call_tool("run_shell", {"command": "env"})
            assert "HTTP_PROXY" not in stdout(blocked)
        assert requested == []
