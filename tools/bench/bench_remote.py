"""Remote-transport benchmarks (issue 6 figures) over loopback, each next to the on-device
figure measured in the same run, with the same backend and the same limits as the server.

    uv run python tools/bench/bench_remote.py [--backend userns] [--runs 300]
        [--stream-mb 256] [--file-mb 64] [--concurrency 64] [--concurrent-runs 640]
        [--worker-class asyncio] [--loop asyncio] [--json out.json]

Figures (targets from issue 6 in brackets):
- ``run("true")`` + ``communicate()`` round trip, p50/p90 [remote p50 <= 5 ms].
- stdout streaming of ``head -c <stream-mb>M /dev/zero``, read chunk by chunk [>= 500 MB/s].
- ``put_bytes`` then ``get_bytes`` of a <file-mb> MiB file: MB/s of each, and of both
  together counted as the bytes moved (2 x size) over the total time [>= 300 MB/s].
- <concurrent-runs> runs of ``true``, <concurrency> at a time, after one warm-up batch of
  <concurrency> [>= 500 runs/s].

The server is a real ``sandbox-server`` subprocess on 127.0.0.1 (``--no-auth``); the client
runs in this process. MB is 10**6 bytes. Not a test: nothing here asserts a time. Run it by
hand on an idle machine (client and server compete for the same cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _common import percentiles  # the script's own folder is on sys.path

from union.sandbox.client import session as remote_session
from union.sandbox.core.on_device import session as on_device_session
from union.sandbox.core.resources import ResourceLimits
from union.sandbox.server.testing import spawn_server

MIB = 1 << 20
# The server's default ceilings (sandbox-server --help): every remote run gets them.
SERVER_LIMITS = ResourceLimits(cpu_milli=4000, memory_bytes=1024 * MIB, file_size_bytes=4096 * MIB)


async def bench_session(sbx: Any, args: argparse.Namespace, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def true_round_trip() -> None:
        proc = await sbx.run("true")
        await proc.communicate()

    for _ in range(20):
        await true_round_trip()
    samples = []
    for _ in range(args.runs):
        start = time.perf_counter()
        await true_round_trip()
        samples.append(time.perf_counter() - start)
    out["run_true"] = percentiles(samples)

    size = args.stream_mb * MIB
    proc = await sbx.run(f"head -c {size} /dev/zero")
    start = time.perf_counter()
    received = 0
    while chunk := await proc.stdout.read(1 << 20):
        received += len(chunk)
    await proc.wait()
    elapsed = time.perf_counter() - start
    assert received == size, (received, size)
    out["stream_MBps"] = round(size / elapsed / 1e6, 1)

    data = os.urandom(args.file_mb * MIB)
    path = f"{sbx.work_dir}/bench-{label}.bin"
    start = time.perf_counter()
    await sbx.put_bytes(path, data)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    back = await sbx.get_bytes(path)
    get_s = time.perf_counter() - start
    assert back == data
    del back
    out["put_MBps"] = round(len(data) / put_s / 1e6, 1)
    out["get_MBps"] = round(len(data) / get_s / 1e6, 1)
    out["put_get_MBps"] = round(2 * len(data) / (put_s + get_s) / 1e6, 1)
    await sbx.exec(f"rm -f bench-{label}.bin")

    limiter = anyio.Semaphore(args.concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with limiter:
            proc = await sbx.run("true")
            if await proc.wait() != 0:
                failures += 1

    # Warm-up: one batch at full concurrency first, as the sequential figure warms up with
    # 20 runs (the first runs at a new concurrency level start fresh inits and cgroups).
    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrency):
            tg.start_soon(one)
    failures = 0
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrent_runs):
            tg.start_soon(one)
    elapsed = time.perf_counter() - start
    out["concurrent_runs_per_s"] = round(args.concurrent_runs / elapsed, 1)
    out["concurrent_failures"] = failures
    return out


async def timed(label: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    print(f"... {label}", file=sys.stderr, flush=True)
    return await fn()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"backend": args.backend, "loop": args.loop}

    async def on_device() -> dict[str, Any]:
        async with on_device_session(backend=args.backend, resources=SERVER_LIMITS) as sbx:
            return await bench_session(sbx, args, "on-device")

    results["on_device"] = await timed("on-device (same backend and limits)", on_device)
    with spawn_server(backend=args.backend, worker_class=args.worker_class) as server:

        async def remote() -> dict[str, Any]:
            async with remote_session(endpoint=server.endpoint) as sbx:
                return await bench_session(sbx, args, "remote")

        results["remote"] = await timed(f"remote ({server.endpoint})", remote)
    return results


def report(results: dict[str, Any]) -> str:
    rows = [
        ("run('true') p50 ms", "run_true", "p50_ms", "<= 5"),
        ("run('true') p90 ms", "run_true", "p90_ms", ""),
        ("stdout streaming MB/s", "stream_MBps", None, ">= 500"),
        ("put_bytes MB/s", "put_MBps", None, ""),
        ("get_bytes MB/s", "get_MBps", None, ""),
        ("put+get MB/s (2 x size / total)", "put_get_MBps", None, ">= 300"),
        ("concurrent runs/s", "concurrent_runs_per_s", None, ">= 500"),
    ]
    lines = [f"{'figure':34} {'on-device':>10} {'remote':>10}  target (remote)"]
    for title, key, sub, target in rows:
        values = []
        for side in ("on_device", "remote"):
            value = results[side][key]
            values.append(value[sub] if sub else value)
        lines.append(f"{title:34} {values[0]:>10} {values[1]:>10}  {target}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--stream-mb", type=int, default=256)
    parser.add_argument("--file-mb", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--concurrent-runs", type=int, default=640)
    parser.add_argument("--worker-class", default="asyncio", choices=("asyncio", "uvloop", "trio"))
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--json", default=None, help="also write the figures here")
    arguments = parser.parse_args()
    figures = anyio.run(main, arguments, backend=arguments.loop)
    print(report(figures))
    if arguments.json:
        with open(arguments.json, "w") as f:
            json.dump(figures, f, indent=2)
