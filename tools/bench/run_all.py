"""Run every benchmark named in the issues, with their same-run baselines; print one table,
write the JSON of each and a plot of ``run()`` latency per backend and transport.

    uv run python tools/bench/run_all.py [--out tools/bench/results] [--quick]

Benchmarks (each a script in this folder, runnable on its own):
- ``bench_on_device.py``: run latency per backend vs raw ``bwrap ... true`` and raw
  ``subprocess``; streaming; put/get; open+run+close; leaks; concurrency (issue 3).
- ``bench_netproxy.py``: 256 MiB through the CONNECT and SOCKS5 proxies vs direct (issue 4).
- ``bench_network.py``: ``run("true")`` in allowlist vs blocked mode (issues 4 and 15).
- ``bench_cli.py``: the one-shot ``unionai-sandbox run -- true`` vs ``python -c pass`` and raw
  ``bwrap true`` (issue 15).
- ``bench_streams.py``: ``communicate()`` vs a ``read(1 MiB)`` loop on 64 MiB (issue 15).
- ``bench_limits.py``: timeout-to-tree-gone, bombs, output flood RSS, close() (issue 5).
- ``bench_remote.py``: remote round trip, streaming, put/get, concurrency vs on-device
  (issue 6).
- ``bench_flyte.py``: local-mode ``sb.session()`` to the first run vs the server's start
  alone; ``run("true")`` through the fake cluster's dataproxy vs straight (issue 14).
- ``bench_mcp.py``: a ``run_shell true`` tool call through ``unionai-sandbox mcp`` (stdio and
  streamable HTTP) vs ``run("true")`` in-process (issue 16).

Run it on an idle machine: every figure here is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def run_bench(script: str, out: Path, extra: list[str]) -> dict[str, Any] | None:
    path = HERE / script
    if not path.exists():
        print(f"-- {script}: not present, skipped")
        return None
    target = out / (path.stem + ".json")
    print(f"\n== {script} {' '.join(extra)}", flush=True)
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(path), "--json", str(target), *extra], check=False)
    print(f"-- {script}: exit {result.returncode} in {time.monotonic() - start:.0f} s")
    if result.returncode != 0 or not target.exists():
        return None
    loaded: dict[str, Any] = json.loads(target.read_text())
    return loaded


def latency_series(results: dict[str, Any]) -> dict[str, list[float]]:
    """``run("true")`` samples (ms) per backend/transport found in the results."""
    series: dict[str, list[float]] = {}
    on_device = results.get("bench_on_device") or {}
    for backend in on_device.get("backends", []):
        samples = backend.get("run_true", {}).get("samples_ms")
        if samples:
            series[f"on-device {backend['backend']}"] = samples
    remote = results.get("bench_remote") or {}
    for label, figures in remote.items():
        if isinstance(figures, dict):
            samples = figures.get("run_true", {}).get("samples_ms")
            if samples:
                series[f"{label}"] = samples
    return series


def cdf_svg(series: dict[str, list[float]], title: str) -> str:
    """A cumulative-distribution plot of latencies as a standalone SVG (no plotting deps)."""
    width, height, left, bottom, top, right = 720, 420, 60, 50, 30, 190
    everything = sorted(v for values in series.values() for v in values)
    x_max = everything[int(len(everything) * 0.99)] * 1.1 if everything else 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + min(v, x_max) / x_max * plot_w

    def y(p: float) -> float:
        return top + (1 - p) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left + plot_w}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(1)}" stroke="black"/>',
    ]
    for i in range(6):
        value = x_max * i / 5
        parts.append(
            f'<text x="{x(value)}" y="{y(0) + 16}" text-anchor="middle">{value:.1f}</text>'
        )
        parts.append(f'<text x="{left - 6}" y="{y(i / 5) + 4}" text-anchor="end">{i * 20}%</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
        'run("true") + communicate(), ms</text>'
    )
    for index, (label, values) in enumerate(sorted(series.items())):
        ordered = sorted(values)
        color = COLORS[index % len(COLORS)]
        points = " ".join(
            f"{x(v):.1f},{y((i + 1) / len(ordered)):.1f}" for i, v in enumerate(ordered)
        )
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'
        )
        p50 = ordered[len(ordered) // 2]
        legend_y = top + 16 * index + 8
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{legend_y - 8}" width="10" '
            f'height="10" fill="{color}"/>'
        )
        parts.append(
            f'<text x="{left + plot_w + 26}" y="{legend_y + 1}">{label} (p50 {p50:.2f})</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    device = results.get("bench_on_device")
    if device:
        base = device["baselines"]
        rows.append(
            ("raw bwrap true p50 (baseline)", f"{base['raw_bwrap_true']['p50_ms']:.2f} ms", "")
        )
        rows.append(
            (
                "raw subprocess true p50 (baseline)",
                f"{base['raw_subprocess_true']['p50_ms']:.2f} ms",
                "",
            )
        )
        targets = {"none": 1.5, "userns": 3.0, "bubblewrap": 5.0}
        for b in device["backends"]:
            name = b["backend"]
            rows.append(
                (
                    f"{name}: run(true) p50",
                    f"{b['run_true']['p50_ms']:.2f} ms",
                    f"<= {targets.get(name, '')} ms",
                )
            )
            rows.append(
                (
                    f"{name}: run(true) p50, no init reuse (baseline)",
                    f"{b['run_true_fresh_init']['p50_ms']:.2f} ms",
                    "",
                )
            )
            rows.append(
                (
                    f"{name}: runs/s, 64 at once (no init reuse)",
                    f"{b['runs_per_s_64_at_once']:.0f} "
                    f"({b['runs_per_s_64_at_once_fresh_init']:.0f})",
                    "",
                )
            )
            rows.append(
                (f"{name}: stdout streaming", f"{b['stream_256MiB_GBps']:.2f} GB/s", ">= 1 GB/s")
            )
            rows.append(
                (f"{name}: put+get 16 MiB", f"{b['put_get_16MiB_GBps']:.2f} GB/s", ">= 2 GB/s")
            )
            rows.append(
                (
                    f"{name}: open+first run+close p50",
                    f"{b['open_first_run_close']['p50_ms']:.1f} ms",
                    "<= 50 ms",
                )
            )
    flyte = results.get("bench_flyte")
    if flyte:
        rows.append(
            (
                "server process start (baseline)",
                f"{flyte['server_start_baseline']['p50_ms']:.0f} ms",
                "",
            )
        )
        rows.append(
            (
                "local sb.session() -> first run p50",
                f"{flyte['local_session_to_first_run']['p50_ms']:.0f} ms",
                "<= 2000 ms",
            )
        )
        for key, label in (
            ("run_true_direct", "run(true) p50 straight to the server (baseline)"),
            ("run_true_via_dataproxy", "run(true) p50 via the fake dataproxy"),
        ):
            rows.append((label, f"{flyte[key]['p50_ms']:.2f} ms", ""))
    mcp = results.get("bench_mcp")
    if mcp:
        rows.append(
            (
                "in-process run(true) p50 (baseline)",
                f"{mcp['in_process_run_true']['p50_ms']:.2f} ms",
                "",
            )
        )
        for transport in ("stdio", "http"):
            rows.append(
                (
                    f"MCP {transport}: run_shell true p50",
                    f"{mcp[f'mcp_{transport}_run_shell_true']['p50_ms']:.2f} ms",
                    "",
                )
            )
            rows.append(
                (
                    f"MCP {transport}: adds at p50",
                    f"{mcp[f'mcp_{transport}_adds_p50_ms']:.2f} ms",
                    "<= 2 ms",
                )
            )
    rows += speed_rows(results)
    return rows


def speed_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The three rows of issue 15, each with its same-run baseline."""
    rows: list[tuple[str, str, str]] = []
    network = results.get("bench_network")
    if network:
        rows.append(
            (
                "allowlist run(true) p50 (blocked)",
                f"{network['allowlist']['p50_ms']:.2f} ({network['blocked']['p50_ms']:.2f}) ms",
                "<= blocked + 1 ms",
            )
        )
    cli = results.get("bench_cli")
    if cli:
        rows.append(
            (
                "CLI run -- true (python -c pass)",
                f"{cli['cli_warm_cache']:.0f} ({cli['python_c_pass']:.0f}) ms",
                "<= 150 ms",
            )
        )
    streams = results.get("bench_streams")
    if streams:
        rows.append(
            (
                "communicate() 64 MiB (read loop)",
                f"{streams['communicate']['median_GBps']:.2f} "
                f"({streams['read_loop']['median_GBps']:.2f}) GB/s",
                ">= 0.9x the read loop",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="results folder")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = ["--runs", "100"] if args.quick else []
    plan: list[tuple[str, list[str]]] = [
        ("bench_on_device.py", runs),
        ("bench_network.py", runs),
        ("bench_cli.py", ["--runs", "5"] if args.quick else []),
        ("bench_streams.py", ["--rounds", "3"] if args.quick else []),
        ("bench_netproxy.py", ["--rounds", "2"] if args.quick else []),
        ("bench_remote.py", runs),
        ("bench_flyte.py", ["--runs", "100", "--sessions", "3"] if args.quick else []),
        ("bench_mcp.py", ["--runs", "100"] if args.quick else []),
        # Last: its bombs and 10 GiB flood leave the kernel busy for a while (dying memory
        # cgroups, reclaim), which slowed whatever ran after them by up to a third.
        ("bench_limits.py", ["--runs", "10", "--flood-gib", "2"] if args.quick else []),
    ]
    results: dict[str, Any] = {}
    for script, extra in plan:
        loaded = run_bench(script, out, extra)
        if loaded is not None:
            results[Path(script).stem] = loaded
    (out / "all.json").write_text(json.dumps(results, indent=2))
    series = latency_series(results)
    if series:
        (out / "run_latency.svg").write_text(cdf_svg(series, "run() latency, cumulative"))
    print("\n== summary (full figures in each script's output and in all.json)")
    for label, value, target in summary_rows(results):
        print(f"  {label:<42} {value:>12}  {target}")
    print(f"\nwrote {out / 'all.json'}" + (f" and {out / 'run_latency.svg'}" if series else ""))


if __name__ == "__main__":
    main()
