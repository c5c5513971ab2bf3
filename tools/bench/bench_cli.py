"""One-shot CLI start (issue 15): ``unionai-sandbox run --backend userns -- true``, the whole
process, against baselines measured in the same run.

    uv run python tools/bench/bench_cli.py [--backend userns] [--runs 10] [--json out.json]
        [--baseline-checkout DIR]

Figures (median of ``--runs``, interleaved so that drift hits every row alike):
- the CLI with the bytecode cache warm (how an installed package runs), and cold
  (``PYTHONDONTWRITEBYTECODE`` set and no cache: every module compiled);
- baselines: ``python -c pass`` (the interpreter's own start) and a raw
  ``bwrap --unshare-all ... /bin/true`` (the cost of a sandbox with nothing of ours);
  with ``--baseline-checkout DIR``, also the CLI of another checkout (its ``.venv``, synced:
  an older commit in a ``git worktree``), bytecode cache warm, in the same rounds;
- what the command imports (``python -X importtime`` on the command itself: the total and
  each package's share), to see what a one-shot run pays for at import.

Not a test: nothing here asserts a time. Run it by hand on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import raw_bwrap_argv, save_json  # the script's own folder is on sys.path

BIN = Path(sys.executable).parent


def cli_argv(backend: str, bin_dir: Path = BIN) -> list[str]:
    script = bin_dir / "unionai-sandbox"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "union.sandbox._cli"]
    return [*prefix, "run", "--backend", backend, "--", "true"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_profile(backend: str, env: dict[str, str], top: int = 10) -> dict[str, Any]:
    """What the command imports, from ``python -X importtime`` on the command itself: the
    total and each package's share (its modules' own import time, summed), heaviest first."""
    command = [sys.executable, "-X", "importtime", "-m", "union.sandbox._cli"]
    lines = subprocess.run(
        [*command, *cli_argv(backend)[-5:]],  # run --backend B -- true
        env=env,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stderr.splitlines()
    packages: collections.Counter[str] = collections.Counter()
    for line in lines:
        if not line.startswith("import time:") or line.endswith("| imported package"):
            continue
        own, _cumulative, name = (part.strip() for part in line.split("|"))
        name_parts = name.split(".")
        package = ".".join(name_parts[:4] if name.startswith("union.") else name_parts[:1])
        packages[package] += int(own.split(":")[-1])
    return {
        "total_us": sum(packages.values()),
        "heaviest": [[p, us] for p, us in packages.most_common(top)],
    }


def cold_cache(warm: str) -> str:
    """A copy of the bytecode cache ``warm`` without our packages' modules: the CLI as it
    starts right after an install that compiled nothing of ours."""
    cold = tempfile.mkdtemp(prefix="bench-cli-cold-")
    shutil.copytree(warm, cold, dirs_exist_ok=True)
    for top, dirs, _files in os.walk(cold):
        if top.endswith(os.path.join("union", "sandbox")):
            shutil.rmtree(top)
            dirs.clear()
    return cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--baseline-checkout",
        default=None,
        metavar="DIR",
        help="another checkout whose CLI (DIR/.venv) runs as a baseline row",
    )
    args = parser.parse_args()
    # Bytecode caches of our own, so that the rows neither read nor disturb the checkout's.
    warm_cache = tempfile.mkdtemp(prefix="bench-cli-warm-")
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    warm = {**base, "PYTHONPYCACHEPREFIX": warm_cache}
    caches = [warm_cache]
    try:
        timed(cli_argv(args.backend), warm)  # fills the warm cache
        caches.append(cold_cache(warm_cache))
        cold = {**warm, "PYTHONPYCACHEPREFIX": caches[-1], "PYTHONDONTWRITEBYTECODE": "1"}
        rows: dict[str, tuple[list[str], dict[str, str]]] = {
            "cli_warm_cache": (cli_argv(args.backend), warm),
            "cli_cold_cache": (cli_argv(args.backend), cold),
            "python_c_pass": ([sys.executable, "-c", "pass"], warm),
        }
        bwrap = raw_bwrap_argv()
        if bwrap is not None:
            rows["raw_bwrap_true"] = (bwrap, warm)
        if args.baseline_checkout:
            other_bin = Path(args.baseline_checkout, ".venv", "bin")
            caches.append(tempfile.mkdtemp(prefix="bench-cli-baseline-"))
            rows["cli_baseline_checkout"] = (
                cli_argv(args.backend, other_bin),
                {**base, "PYTHONPYCACHEPREFIX": caches[-1]},
            )
        for argv, env in rows.values():  # warm-up
            timed(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, (argv, env) in rows.items():
                samples[name].append(timed(argv, env))
        imports = import_profile(args.backend, warm)
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
    result: dict[str, Any] = {
        name: round(statistics.median(values) * 1e3, 1) for name, values in samples.items()
    }
    result["ratio_to_python"] = round(result["cli_warm_cache"] / result["python_c_pass"], 2)
    result["imports"] = imports
    result["load_average"] = round(os.getloadavg()[0], 2)
    print(f"unionai-sandbox run --backend {args.backend} -- true, median of {args.runs}:")
    print(f"  bytecode cached   {result['cli_warm_cache']:7.1f} ms  [target <= 150 ms]")
    print(f"  not cached        {result['cli_cold_cache']:7.1f} ms")
    print(f"  python -c pass    {result['python_c_pass']:7.1f} ms (baseline)")
    if "raw_bwrap_true" in result:
        print(f"  raw bwrap true    {result['raw_bwrap_true']:7.1f} ms (baseline)")
    if "cli_baseline_checkout" in result:
        result["ratio_to_baseline_checkout"] = round(
            result["cli_warm_cache"] / result["cli_baseline_checkout"], 2
        )
        print(
            f"  baseline checkout {result['cli_baseline_checkout']:7.1f} ms "
            f"({args.baseline_checkout}; ratio {result['ratio_to_baseline_checkout']:.2f})"
        )
    print(f"  ratio to python -c pass: {result['ratio_to_python']:.1f}")
    imports = result["imports"]
    print(f"  imports of the command: {imports['total_us'] / 1e3:.1f} ms (-X importtime)")
    for name, us in imports["heaviest"]:
        print(f"    {name:<40} {us / 1e3:6.1f} ms (its modules' own time)")
    print(f"  load average {result['load_average']}")
    save_json(args.json, result)


if __name__ == "__main__":
    main()
