"""Captured output (issue 15): ``communicate()`` of ``head -c <size> /dev/zero`` against
readers of the same output in the same session.

    uv run python tools/bench/bench_streams.py [--backend userns] [--mb 64] [--rounds 5]
        [--json out.json]

Rows, interleaved round by round (GB/s of the best and median round; GB = 10**9 bytes):
- ``communicate()``: what ``wait()`` captures and ``communicate()`` returns;
- baseline: a ``proc.stdout.read(1 MiB)`` loop that drops what it reads (the issue's
  baseline: the pipe, the event loop and the sandbox, and no memory kept);
- baseline: the same loop keeping what it reads (an ``io.BytesIO``): the least a caller that
  keeps the output pays, the first touch of that much memory included;
- ``first_touch``, no sandbox: writing ``size`` bytes from a warm 1 MiB chunk into a fresh
  ``io.BytesIO``, which is what keeping the output adds to a loop that drops it (the
  kernel's page faults and zeroing of memory the process never had, and one copy). No
  capture that returns the output can beat it: ``first_touch / read_loop`` is the ceiling
  of ``communicate() / read_loop``, were the pipe and the memory work fully overlapped.

Not a test: nothing here asserts a figure. Run it by hand on an idle machine.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _common import save_json  # the script's own folder is on sys.path

from union.sandbox.core.on_device import session

MIB = 1 << 20


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    size = args.mb * MIB
    command = f"head -c {size} /dev/zero"
    async with session(backend=args.backend) as sbx:

        async def communicate() -> int:
            proc = await sbx.run(command, stderr=False)
            out, _ = await proc.communicate()
            return len(out)

        async def read_loop() -> int:
            proc = await sbx.run(command, stderr=False)
            assert proc.stdout is not None
            total = 0
            while chunk := await proc.stdout.read(MIB):
                total += len(chunk)
            await proc.wait()
            return total

        async def keeping_loop() -> int:
            proc = await sbx.run(command, stderr=False)
            assert proc.stdout is not None
            kept = io.BytesIO()
            while chunk := await proc.stdout.read(MIB):
                kept.write(chunk)
            await proc.wait()
            return len(kept.getvalue())

        async def first_touch() -> int:
            chunk = bytes(MIB)
            kept = io.BytesIO()
            for _ in range(size // MIB):
                kept.write(chunk)
            return len(kept.getvalue())

        rows: dict[str, Callable[[], Awaitable[int]]] = {
            "communicate": communicate,
            "read_loop": read_loop,
            "read_loop_keeping": keeping_loop,
            "first_touch": first_touch,
        }
        for fn in rows.values():  # warm-up
            assert await fn() == size
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, fn in rows.items():
                start = time.perf_counter()
                assert await fn() == size
                seconds[name].append(time.perf_counter() - start)
    result: dict[str, Any] = {"backend": args.backend, "bytes": size}
    for name, values in seconds.items():
        result[name] = {
            "best_GBps": round(size / min(values) / 1e9, 3),
            "median_GBps": round(size / statistics.median(values) / 1e9, 3),
        }
    best = {name: result[name]["median_GBps"] for name in rows}
    result["communicate_to_read_loop"] = round(best["communicate"] / best["read_loop"], 2)
    result["communicate_to_keeping_loop"] = round(
        best["communicate"] / best["read_loop_keeping"], 2
    )
    # The most any capture could reach against the read loop: writing the output into fresh
    # memory alone, without the pipe (were the two fully overlapped).
    result["first_touch_to_read_loop"] = round(best["first_touch"] / best["read_loop"], 2)
    result["communicate_to_first_touch"] = round(best["communicate"] / best["first_touch"], 2)
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns")
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    result = anyio.run(main_async, args)
    print(f"head -c {args.mb}M /dev/zero, {args.rounds} rounds ({args.backend}), GB/s:")
    for name in ("communicate", "read_loop", "read_loop_keeping", "first_touch"):
        figures = result[name]
        print(f"  {name:<18} median {figures['median_GBps']:.2f}  best {figures['best_GBps']:.2f}")
    print(
        f"  communicate / read loop: {result['communicate_to_read_loop']:.2f} [target >= 0.9]; "
        f"/ keeping loop: {result['communicate_to_keeping_loop']:.2f}"
    )
    print(
        f"  first touch alone / read loop: {result['first_touch_to_read_loop']:.2f} (the "
        "ceiling of any capture that keeps the output); communicate / first touch: "
        f"{result['communicate_to_first_touch']:.2f}"
    )
    print(f"  load average {result['load_average']}")
    save_json(args.json, result)


if __name__ == "__main__":
    main()
