"""Flyte-layer benchmarks (issue 14 figures), each next to its baseline measured in the same
run.

    uv run python tools/bench/bench_flyte.py [--sessions 5] [--runs 300] [--json out.json]

Figures (target in brackets):
- local mode: ``sb.session()`` to the first completed ``run("true")`` (the task body's
  process, its server, the health check, one run) [<= 2 s]; baseline: the server process
  alone, from its start to its ``listening`` record (``spawn_server``). The first session
  of the process also pays the imports (flyte, pydantic...): reported apart.
- ``run("true")`` + ``communicate()`` p50 through the fake cluster's dataproxy (the test
  suite's reverse proxy, ``integration/flyte/fake_cp.py``) vs straight to the same server
  (its pod address), alternating the two so that load hits both alike.

Not a test: nothing here asserts a time. Run it by hand on an idle machine. Flyte runs with
``DO_NOT_TRACK=1`` and a temporary ``HOME``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "integration" / "flyte"))  # the fake cluster
os.environ.update(DO_NOT_TRACK="1", HOME=tempfile.mkdtemp(prefix="bench-flyte-home-"))

from _common import percentiles, save_json  # noqa: E402 (the script's own folder is on sys.path)

MINUTES = datetime.timedelta(minutes=10)


def server_start(samples: int) -> list[float]:
    """Seconds from starting a sandbox-server process to its ``listening`` record."""
    from union.sandbox.server.testing import spawn_server

    out = []
    for _ in range(samples):
        start = time.perf_counter()
        with spawn_server(backend="userns", token=True):
            out.append(time.perf_counter() - start)
    return out


async def local_session_to_first_run() -> float:
    from union import sandbox as sb

    start = time.perf_counter()
    async with await sb.session(timeout=MINUTES) as sbx:
        proc = await sbx.run("true")
        await proc.communicate()
        elapsed = time.perf_counter() - start
    return elapsed


async def true_round_trip(sbx: Any) -> float:
    start = time.perf_counter()
    proc = await sbx.run("true")
    await proc.communicate()
    return time.perf_counter() - start


async def proxy_vs_direct(runs: int) -> dict[str, Any]:
    import flyte
    from fake_cp import FakeControlPlane  # type: ignore[import-not-found]

    from union import sandbox as sb
    from union.sandbox.flyte import SandboxEnvironment

    cluster = FakeControlPlane()
    try:
        os.environ["UNION_SANDBOX_DATAPROXY_URL"] = cluster.dataplane.url
        cluster.init_flyte()
        env = SandboxEnvironment(name="bench-sandbox", image="example.com/sandbox:bench")
        flyte.deploy(env, version="v1", copy_style="none")
        async with await env.new_session(timeout=MINUTES) as proxied:
            pod = cluster.runs[proxied.name]
            direct = sb.remote.session(endpoint=f"http://{pod.pod_ip}:8080", token=proxied.token)
            async with direct:
                for _ in range(20):  # warm up both paths (connections, init reuse)
                    await true_round_trip(proxied)
                    await true_round_trip(direct)
                through, straight = [], []
                for _ in range(runs):
                    through.append(await true_round_trip(proxied))
                    straight.append(await true_round_trip(direct))
        return {
            "run_true_via_dataproxy": percentiles(through),
            "run_true_direct": percentiles(straight),
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5, help="local sessions to time")
    parser.add_argument("--runs", type=int, default=300, help="run('true') samples per path")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    results: dict[str, Any] = {}
    baseline = server_start(args.sessions)
    results["server_start_baseline"] = percentiles(baseline)
    first = anyio.run(local_session_to_first_run)
    warm = [anyio.run(local_session_to_first_run) for _ in range(args.sessions)]
    results["local_session_to_first_run"] = percentiles(warm)
    results["local_session_to_first_run_cold_s"] = round(first, 3)
    results.update(anyio.run(proxy_vs_direct, args.runs))

    rows = [
        ("server process start alone (baseline)", results["server_start_baseline"], ""),
        ("local sb.session() -> first run()", results["local_session_to_first_run"], "<= 2 s"),
        ("run('true') straight to the server (baseline)", results["run_true_direct"], ""),
        ("run('true') through the fake dataproxy", results["run_true_via_dataproxy"], ""),
    ]
    for label, figures, target in rows:
        print(f"  {label:<48} p50 {figures['p50_ms']:9.2f} ms  p90 {figures['p90_ms']:9.2f} ms"
              f"  {target}")  # fmt: skip
    print(f"  {'first local session of the process (imports)':<48} {first * 1e3:13.2f} ms")
    save_json(args.json, results)


if __name__ == "__main__":
    main()
