"""Network posture overhead (issues 4 and 15): ``run("true")`` + ``communicate()`` in
``allowlist`` mode (``network_allowlist=["pypi.org"]``) against ``blocked`` mode, in one
session, interleaved so drift hits both equally [target: allowlist p50 <= blocked + 1 ms].

    uv run python tools/bench/bench_network.py [--backend userns] [--runs 300] [--json out]

Both reuse their run's init (docs/design.md): an allowlist run's init keeps its two proxy
listeners, and the host arms them with the next run's rules, credentials and decision log;
that, and the message saying the listeners were kept, is the whole difference measured
here. Not a test: run it by hand on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import anyio
from _common import percentiles, save_json  # the script's own folder is on sys.path

from union.sandbox.core.on_device import session


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    blocked: list[float] = []
    allowlist: list[float] = []
    async with session(
        backend=args.backend, network_mode="allowlist", network_allowlist=args.allowlist
    ) as sbx:

        async def once(mode: str) -> float:
            start = time.perf_counter()
            proc = await sbx.run("true", network_mode=mode)
            await proc.communicate()
            return time.perf_counter() - start

        for _ in range(20):
            await once("blocked")
            await once("allowlist")
        for _ in range(args.runs):
            blocked.append(await once("blocked"))
            allowlist.append(await once("allowlist"))
    result = {
        "backend": args.backend,
        "load_average": round(os.getloadavg()[0], 2),
        "blocked": percentiles(blocked),
        "allowlist": percentiles(allowlist),
    }
    delta = result["allowlist"]["p50_ms"] - result["blocked"]["p50_ms"]  # type: ignore[index]
    result["allowlist_minus_blocked_p50_ms"] = round(delta, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--allowlist", nargs="+", default=["pypi.org"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    result = anyio.run(main_async, args)
    for mode in ("blocked", "allowlist"):
        figures = result[mode]
        assert isinstance(figures, dict)
        print(
            f"{mode:<10} run(true) p50 {figures['p50_ms']:.2f} ms  p90 {figures['p90_ms']:.2f} ms"
        )
    print(
        f"allowlist - blocked (p50): {result['allowlist_minus_blocked_p50_ms']:+.2f} ms "
        "[target <= 1 ms]"
    )
    save_json(args.json, result)


if __name__ == "__main__":
    main()
