"""Limits and termination figures (issue 5), each next to a baseline measured in the same run.

    uv run python tools/bench/bench_limits.py [--backends bubblewrap,userns,none]
        [--flood-gib 10] [--runs 30] [--json out.json]

Figures:
- Output flood: ``yes | head -c <N>GiB`` in a *default* session (default output cap), drained
  with ``communicate()``: caller RSS growth (peak, via ``/proc/self/clear_refs`` and
  ``VmHWM``), bytes kept, ``stdout_truncated``, throughput. Baseline: the same flood from a raw
  subprocess whose pipe is read and discarded.
- Time from ``timeout_s`` expiry to the whole tree gone (a run that leaves ``setsid`` and
  double-forked sleepers behind), p50/p90 over ``--runs``. Baseline: a raw subprocess in its
  own process group, killed with ``killpg`` at the same timeout.
- Fork bomb (``pids=64`` and default limits) and memory bomb (``memory=128Mi``): the reason
  the run ended, and whether the session is usable afterwards.
- ``close()`` with 50 running processes: duration, and processes left when it returns and 1 s
  later.

Not a test: nothing here asserts a figure. Run it by hand on an idle machine (the 10 GiB flood
takes tens of seconds per backend).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import anyio
from _common import save_json  # the script's own folder is on sys.path

from union.sandbox.core.on_device import session
from union.sandbox.core.resources import Resources

GiB = 1 << 30


def rss(key: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def host_pids_with(needle: str) -> list[int]:
    found, raw = [], needle.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if raw in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def kill_tagged(needle: str) -> None:
    for pid in host_pids_with(needle):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tag() -> str:
    return f"1000.{secrets.randbelow(10**12):012d}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


# -- baselines ------------------------------------------------------------------------


def baseline_flood(nbytes: int) -> dict[str, Any]:
    reset_peak()
    before = rss()
    start = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", f"yes | head -c {nbytes}"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - start
    return {
        "bytes": total,
        "GBps": total / elapsed / 1e9,
        "peak_rss_growth_MB": (rss("VmHWM") - before) / 1e6,
    }


def baseline_timeout(timeout: float, runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t = tag()
        proc = subprocess.Popen(
            ["sh", "-c", f"setsid sleep {t} & (sleep {t} &) & sleep {t}"],
            start_new_session=True,
        )
        time.sleep(timeout)
        expiry = time.perf_counter()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        samples.append(time.perf_counter() - expiry)
        kill_tagged(t)  # a process group does not hold setsid'd children: clean up
    return percentiles(samples)


# -- sandbox figures --------------------------------------------------------------------


async def flood(backend: str, nbytes: int) -> dict[str, Any]:
    async with session(backend=backend) as sbx:
        await sbx.exec("true")
        peak_ok = reset_peak()
        before = rss()
        start = time.perf_counter()
        proc = await sbx.run(f"yes | head -c {nbytes}", timeout_s=3600)
        out, _ = await proc.communicate()
        elapsed = time.perf_counter() - start
        growth = (rss("VmHWM") if peak_ok else rss()) - before
    return {
        "bytes": nbytes,
        "kept": len(out),
        "stdout_truncated": proc.stdout_truncated,
        "GBps": nbytes / elapsed / 1e9,
        "peak_rss_growth_MB": growth / 1e6,
    }


async def timeout_to_gone(backend: str, timeout_s: float, runs: int) -> dict[str, Any]:
    samples, leftovers = [], 0
    async with session(backend=backend) as sbx:
        for _ in range(runs):
            t = tag()
            script = (
                f"setsid sleep {t} >/dev/null 2>&1 & (sleep {t} >/dev/null 2>&1 &) & "
                f"nohup sleep {t} >/dev/null 2>&1 & exec >/dev/null 2>&1; sleep {t}"
            )
            start = time.perf_counter()
            proc = await sbx.run(script, timeout_s=timeout_s)
            await proc.wait()
            samples.append(time.perf_counter() - start - timeout_s)
            left = host_pids_with(t)
            leftovers += len(left)
            kill_tagged(t)
    return {**percentiles(samples), "leftover_processes": leftovers}


async def bombs(backend: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, resources in (
        ("fork_bomb_pids_64", Resources(pids=64)),
        ("fork_bomb_default", None),
    ):
        t = tag()
        async with session(backend=backend, resources=resources) as sbx:
            start = time.perf_counter()
            proc = await sbx.run(f"while :; do sleep {t} & done", timeout_s=120)
            await proc.communicate()
            out[label] = {
                "reason": proc.termination_reason,
                "seconds": time.perf_counter() - start,
                "leftovers": len(host_pids_with(t)),
                "usable": (await sbx.exec("echo ok")).stdout == "ok\n",
            }
        kill_tagged(t)
    async with session(backend=backend, resources=Resources(memory="128Mi")) as sbx:
        proc = await sbx.run(
            "b = []\nwhile True:\n    b.append(bytearray(8 << 20))\n",
            script_type="python",
            timeout_s=120,
        )
        await proc.communicate()
        out["memory_bomb_128Mi"] = {
            "reason": proc.termination_reason,
            "usable": (await sbx.exec("echo ok")).stdout == "ok\n",
        }
    return out


async def close_with_50(backend: str) -> dict[str, Any]:
    t = tag()
    sbx = await session(backend=backend).open()
    script = f"for i in 1 2 3 4 5 6 7 8 9 10; do sleep {t} & done; echo ready; wait"
    procs = [await sbx.run(script) for _ in range(5)]
    for proc in procs:
        assert proc.stdout is not None
        await proc.stdout.readline()
    for _ in range(1000):
        if len(host_pids_with(t)) >= 55:  # 50 sleeps and 5 shells carry the tag
            break
        await anyio.sleep(0.01)
    running = len(host_pids_with(t))
    start = time.perf_counter()
    await sbx.close()
    closed = time.perf_counter() - start
    left_now = len(host_pids_with(t))
    await anyio.sleep(1)
    left_1s = len(host_pids_with(t))
    kill_tagged(t)
    return {
        "running": running,
        "close_ms": closed * 1e3,
        "left_at_return": left_now,
        "left_after_1s": left_1s,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    nbytes = int(args.flood_gib * GiB)
    report: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release},
        "baselines": {
            "flood_raw_subprocess": baseline_flood(nbytes),
            "timeout_raw_killpg": baseline_timeout(args.timeout, args.runs),
        },
        "backends": [],
    }
    for backend in args.backends.split(","):
        entry: dict[str, Any] = {"backend": backend}
        entry["flood"] = await flood(backend, nbytes)
        entry["timeout_to_gone"] = await timeout_to_gone(backend, args.timeout, args.runs)
        entry["bombs"] = await bombs(backend)
        entry["close_with_50"] = await close_with_50(backend)
        report["backends"].append(entry)
    return report


def print_table(report: dict[str, Any], args: argparse.Namespace) -> None:
    base = report["baselines"]
    fl = base["flood_raw_subprocess"]
    print(
        f"baseline flood {args.flood_gib:g} GiB, raw subprocess: {fl['GBps']:.2f} GB/s, "
        f"peak RSS +{fl['peak_rss_growth_MB']:.1f} MB"
    )
    to = base["timeout_raw_killpg"]
    print(
        f"baseline timeout -> killpg done: p50 {to['p50_ms']:.1f} ms p90 {to['p90_ms']:.1f} ms "
        "(setsid'd children survive a process-group kill)"
    )
    for b in report["backends"]:
        f, t, c = b["flood"], b["timeout_to_gone"], b["close_with_50"]
        print(f"\n[{b['backend']}]")
        print(
            f"  flood {args.flood_gib:g} GiB, default cap: peak RSS +{f['peak_rss_growth_MB']:.1f} "
            f"MB, kept {f['kept']} B, truncated {f['stdout_truncated']}, {f['GBps']:.2f} GB/s"
        )
        print(
            f"  timeout -> whole tree gone: p50 {t['p50_ms']:.1f} ms p90 {t['p90_ms']:.1f} ms "
            f"max {t['max_ms']:.1f} ms, leftovers {t['leftover_processes']}"
        )
        for name, fig in b["bombs"].items():
            print(f"  {name}: {fig}")
        print(
            f"  close() with {c['running']} tagged processes: {c['close_ms']:.0f} ms, "
            f"left at return {c['left_at_return']}, after 1 s {c['left_after_1s']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="bubblewrap,userns,none")
    parser.add_argument("--flood-gib", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=0.2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    report = anyio.run(main_async, args, backend=args.loop)
    print_table(report, args)
    save_json(args.json, report)


if __name__ == "__main__":
    sys.exit(main())
