"""``unionai-sandbox mcp`` overhead (issue 16): a tool call round trip for ``true`` through
MCP next to ``run("true")`` in-process, same run, same backend.

    uv run python tools/bench/bench_mcp.py [--backend userns] [--runs 200] [--loop asyncio]
        [--json out.json]

Figures (target from issue 16 in brackets):
- in-process ``run("true")`` + ``communicate()``, p50/p90 (the baseline);
- ``run_shell {"command": "true"}`` through the MCP client SDK, stdio and streamable HTTP,
  p50/p90, and what MCP adds at p50 over the baseline [<= 2 ms];
- the MCP round trip alone: ``reset_session`` with no session open (no run at all);
- CPU per call of the client (this process) and of the server process, for each variant
  (one pass of ``runs`` calls each): figures that a busy machine moves far less than
  latencies.

The server is the real ``unionai-sandbox mcp`` subprocess; the client runs in this process.
The samples of the baseline and of each transport are taken in turn, a block of
``runs / 10`` at a time, ten rounds, so that a change of the machine's load hits all of
them alike; the load average is reported. Not a
test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from _common import percentiles, save_json  # the script's own folder is on sys.path
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from union.sandbox.core.on_device import session as on_device_session

Call = Callable[[], Awaitable[Any]]
#: A variant: its call, and the pid of the process that serves it (``None``: in-process).
Variant = tuple[Call, "int | None"]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stdio_server_pid() -> int:
    """The ``unionai-sandbox mcp`` (stdio) child of this process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if parent == os.getpid() and b"mcp" in argv and b"--http" not in argv:
            return int(entry)
    raise RuntimeError("the stdio server is not a child of this process")


def _server_argv(backend: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "union.sandbox._cli", "mcp", "--backend", backend, *extra]


@asynccontextmanager
async def stdio_client(backend: str) -> AsyncIterator[tuple[Client, int]]:
    params = StdioServerParameters(command=sys.executable, args=_server_argv(backend)[1:])
    async with Client(params) as client:
        yield client, _stdio_server_pid()


@asynccontextmanager
async def http_client(backend: str) -> AsyncIterator[tuple[Client, int]]:
    token = secrets.token_urlsafe(24)
    async with await anyio.open_process(
        _server_argv(backend, "--http", "127.0.0.1:0"),
        env={**os.environ, "UNION_SANDBOX_MCP_TOKEN": token},
        stdin=subprocess.DEVNULL,
    ) as server:
        try:
            assert server.stderr is not None
            said = b""
            while b"\n" not in said:  # its first line names the address
                said += await server.stderr.receive()
            found = re.search(r"(http://\S+/mcp)", said.decode())
            assert found, said
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with http, Client(streamable_http_client(found.group(1), http_client=http)) as c:
                yield c, server.pid
        finally:
            server.terminate()
            with anyio.fail_after(30):
                await server.wait()


#: Rounds of sampling: each round takes a block of samples of every variant in turn.
ROUNDS = 10


async def sample(variants: dict[str, Variant], runs: int) -> dict[str, Any]:
    calls = {name: call for name, (call, _) in variants.items()}
    for call in calls.values():  # warm-up: the session opens, the code paths are hot
        for _ in range(20):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    block = max(runs // ROUNDS, 1)
    for _ in range(ROUNDS):
        for name, call in calls.items():
            # A block at a time, not call by call: a run leaves its session's supervisor
            # some work (the next init), which would otherwise land on the next variant.
            await anyio.sleep(0.05)
            for _ in range(block):
                start = time.perf_counter()
                await call()
                samples[name].append(time.perf_counter() - start)
    figures: dict[str, Any] = {name: percentiles(values) for name, values in samples.items()}
    for name, (call, pid) in variants.items():
        client, server = time.process_time(), _cpu_s(pid) if pid else 0.0
        for _ in range(runs):
            await call()
        figures[name]["cpu_ms_per_call"] = {
            "client": round((time.process_time() - client) / runs * 1e3, 3),
            "server": round((_cpu_s(pid) - server) / runs * 1e3, 3) if pid else None,
        }
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    async with (
        on_device_session(backend=args.backend) as sbx,
        stdio_client(args.backend) as (stdio, stdio_pid),
        http_client(args.backend) as (http, http_pid),
    ):

        async def in_process() -> None:
            proc = await sbx.run("true")
            await proc.communicate()

        def tool(client: Client, name: str, arguments: dict[str, Any]) -> Call:
            async def call() -> None:
                result = await client.call_tool(name, arguments)
                assert not result.is_error, result

            return call

        figures = await sample(
            {
                "in_process_run_true": (in_process, None),
                "mcp_stdio_run_shell_true": (
                    tool(stdio, "run_shell", {"command": "true"}),
                    stdio_pid,
                ),
                "mcp_http_run_shell_true": (
                    tool(http, "run_shell", {"command": "true"}),
                    http_pid,
                ),
            },
            args.runs,
        )
        # The protocol alone: a call that runs nothing (no session is open after a reset).
        await stdio.call_tool("reset_session", {})
        await http.call_tool("reset_session", {})
        figures.update(
            await sample(
                {
                    "mcp_stdio_no_run": (tool(stdio, "reset_session", {}), stdio_pid),
                    "mcp_http_no_run": (tool(http, "reset_session", {}), http_pid),
                },
                args.runs,
            )
        )
    base = figures["in_process_run_true"]["p50_ms"]
    for transport in ("stdio", "http"):
        figures[f"mcp_{transport}_adds_p50_ms"] = round(
            figures[f"mcp_{transport}_run_shell_true"]["p50_ms"] - base, 3
        )
    figures["backend"] = args.backend
    figures["loop"] = args.loop
    figures["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return figures


def report(figures: dict[str, Any]) -> None:
    print(f"backend {figures['backend']}, loop {figures['loop']}")
    for name, value in figures.items():
        if isinstance(value, dict) and "p50_ms" in value:
            cpu = value["cpu_ms_per_call"]
            server = f", server {cpu['server']:.2f}" if cpu["server"] is not None else ""
            print(
                f"  {name:<28} p50 {value['p50_ms']:7.3f} ms  p90 {value['p90_ms']:7.3f} ms"
                f"  CPU/call: client {cpu['client']:.2f}{server} ms"
            )
    for transport in ("stdio", "http"):
        print(f"  MCP {transport} adds at p50: {figures[f'mcp_{transport}_adds_p50_ms']:.3f} ms "
              "[target <= 2 ms]")  # fmt: skip
    load = figures["load_average"]
    print(f"  load average before {load['before']}, after {load['after']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--json", default=None, help="also write the figures here")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments, backend=arguments.loop)
    report(result)
    save_json(arguments.json, result)
