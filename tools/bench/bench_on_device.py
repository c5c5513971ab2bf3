"""On-device benchmarks (issue 3 figures), each against a baseline measured in the same run.

    uv run python tools/bench/bench_on_device.py [--backends bubblewrap,userns,none]
        [--runs 300] [--json out.json]

Figures:
- ``run("true")`` + ``communicate()`` latency (p50/p90) per backend; baselines: a raw
  ``bwrap --unshare-all ... true`` spawned with subprocess, and a raw ``subprocess.run(true)``.
- stdout streaming of ``head -c 256M /dev/zero`` (GB/s), read chunk by chunk.
- ``put_bytes`` + ``get_bytes`` of 16 MiB (GB/s).
- open + first run + close (ms).
- 1,000 sequential runs: fd and child-process leaks, RSS growth.
- 32 concurrent runs in one session: all correct, wall time.
- Throughput: 640 runs of ``true``, 64 at a time, in one session (runs/s).
- Init reuse (docs/design.md): ``run("true")`` p50 and the throughput again with
  ``UNION_SANDBOX_RECYCLE=0`` (every run a fresh init), as the same-run baseline.

Not a test: nothing here asserts a time. Run it by hand on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _common import percentiles, raw_bwrap_argv, save_json  # the script's own folder is on sys.path

from union.sandbox.core.on_device import session


def raw_bwrap_true(n: int) -> dict[str, float]:
    argv = raw_bwrap_argv()
    assert argv is not None, "no bwrap"
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def raw_file_round_trip(size: int, rounds: int = 10) -> float:
    """GB/s of writing ``size`` bytes to a new file in a temp dir, renaming it over the old
    one and reading it back: the filesystem's own cost of what put+get do."""
    import tempfile

    payload = os.urandom(size)
    samples = []
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        target = os.path.join(tmp, "blob.bin")
        for i in range(rounds + 3):
            start = time.perf_counter()
            fd = os.open(f"{target}.{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
            os.rename(f"{target}.{i}", target)
            with open(target, "rb") as f:
                f.read()
            if i >= 3:
                samples.append(time.perf_counter() - start)
    return 2 * size / statistics.median(samples) / 1e9


def raw_python_start(n: int = 10) -> dict[str, Any]:
    """A bare ``python -I -S`` start and exit: the floor of starting a session supervisor."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def raw_subprocess_true(n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_count() -> int:
    me = str(os.getpid())
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        count += 1
            except OSError:
                pass
    return count


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fresh_init_session(backend: str) -> Any:
    """A session whose runs never reuse an init (the setting is read when it is created)."""
    os.environ["UNION_SANDBOX_RECYCLE"] = "0"
    try:
        return session(backend=backend)
    finally:
        del os.environ["UNION_SANDBOX_RECYCLE"]


async def throughput(sbx: Any, total: int = 640, at_once: int = 64) -> float:
    limiter = anyio.Semaphore(at_once)

    async def one() -> None:
        async with limiter:
            proc = await sbx.run("true")
            assert await proc.wait() == 0

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(total):
            tg.start_soon(one)
    return total / (time.perf_counter() - start)


async def bench_backend(backend: str, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend}

    # open + first run + close
    cold = []
    for _ in range(10):
        start = time.perf_counter()
        async with session(backend=backend) as sbx:
            proc = await sbx.run("true")
            await proc.communicate()
        cold.append(time.perf_counter() - start)
    out["open_first_run_close"] = percentiles(cold)

    async with session(backend=backend) as sbx:

        async def one() -> None:
            proc = await sbx.run("true")
            await proc.communicate()

        await timed(one, 20)  # warm-up
        out["run_true"] = percentiles(await timed(one, runs))
        out["runs_per_s_64_at_once"] = await throughput(sbx)

        # stdout streaming
        size = 256 * 1024 * 1024
        proc = await sbx.run("head -c 268435456 /dev/zero", stderr=False)
        assert proc.stdout is not None
        start = time.perf_counter()
        total = 0
        while chunk := await proc.stdout.read(1 << 20):
            total += len(chunk)
        await proc.wait()
        elapsed = time.perf_counter() - start
        assert total == size, total
        out["stream_256MiB_GBps"] = size / elapsed / 1e9

        # put + get 16 MiB
        payload = os.urandom(16 * 1024 * 1024)
        path = f"{sbx.work_dir}/blob.bin"
        samples = []
        for _ in range(10):
            start = time.perf_counter()
            await sbx.put_bytes(path, payload)
            got = await sbx.get_bytes(path)
            samples.append(time.perf_counter() - start)
            assert got == payload
        out["put_get_16MiB_GBps"] = 2 * len(payload) / statistics.median(samples) / 1e9

        # leaks over 1,000 sequential runs
        fds0, rss0 = fd_count(), rss_mb()
        for _ in range(1000):
            proc = await sbx.run("echo x")
            await proc.communicate()
        out["leak_1000_runs"] = {
            "fd_delta": fd_count() - fds0,
            "children_after": child_count() - 1,  # the supervisor itself
            "rss_growth_mb": rss_mb() - rss0,
        }

        # 32 concurrent runs
        results: dict[int, str] = {}

        async def worker(i: int) -> None:
            result = await sbx.exec(f"echo {i}; sleep 0.1")
            results[i] = result.stdout

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(worker, i)
        out["concurrent_32"] = {
            "all_correct": all(results[i] == f"{i}\n" for i in range(32)),
            "wall_ms": (time.perf_counter() - start) * 1e3,
        }

    async with fresh_init_session(backend) as sbx:

        async def fresh() -> None:
            proc = await sbx.run("true")
            await proc.communicate()

        await timed(fresh, 20)
        out["run_true_fresh_init"] = percentiles(await timed(fresh, runs))
        out["runs_per_s_64_at_once_fresh_init"] = await throughput(sbx)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release},
        "baselines": {
            "raw_bwrap_true": raw_bwrap_true(args.runs),
            "raw_subprocess_true": raw_subprocess_true(args.runs),
            "raw_file_put_get_16MiB_GBps": raw_file_round_trip(16 * 1024 * 1024),
            "raw_python_start": raw_python_start(),
        },
        "backends": [],
    }
    for backend in args.backends.split(","):
        report["backends"].append(await bench_backend(backend, args.runs))
    return report


def print_table(report: dict[str, Any]) -> None:
    base = report["baselines"]
    print(f"baseline raw bwrap true:      p50 {base['raw_bwrap_true']['p50_ms']:.2f} ms")
    print(f"baseline raw subprocess true: p50 {base['raw_subprocess_true']['p50_ms']:.2f} ms")
    raw_file = base["raw_file_put_get_16MiB_GBps"]
    print(f"baseline raw file write+rename+read 16 MiB: {raw_file:.2f} GB/s")
    print(f"baseline bare python -I -S start: p50 {base['raw_python_start']['p50_ms']:.1f} ms")
    for b in report["backends"]:
        print(f"\n[{b['backend']}]")
        print(
            f"  run(true)+communicate p50 {b['run_true']['p50_ms']:.2f} ms "
            f"p90 {b['run_true']['p90_ms']:.2f} ms "
            f"(x{b['run_true']['p50_ms'] / base['raw_bwrap_true']['p50_ms']:.2f} of raw bwrap)"
        )
        print(
            f"  without init reuse: p50 {b['run_true_fresh_init']['p50_ms']:.2f} ms "
            f"p90 {b['run_true_fresh_init']['p90_ms']:.2f} ms"
        )
        print(
            f"  runs/s, 64 at once: {b['runs_per_s_64_at_once']:.0f} "
            f"(without init reuse {b['runs_per_s_64_at_once_fresh_init']:.0f})"
        )
        print(f"  open+first run+close p50 {b['open_first_run_close']['p50_ms']:.1f} ms")
        print(f"  stdout streaming {b['stream_256MiB_GBps']:.2f} GB/s")
        print(f"  put+get 16 MiB {b['put_get_16MiB_GBps']:.2f} GB/s")
        print(f"  1000 runs: {b['leak_1000_runs']}")
        print(f"  32 concurrent: {b['concurrent_32']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="bubblewrap,userns,none")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--backend-loop", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    import warnings

    warnings.simplefilter("ignore")
    report = anyio.run(main_async, args, backend=args.backend_loop)
    print_table(report)
    save_json(args.json, report)


if __name__ == "__main__":
    sys.exit(main())
