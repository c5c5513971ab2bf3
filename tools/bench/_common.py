"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any


def percentiles(samples: list[float]) -> dict[str, Any]:
    """p50/p90/min in milliseconds of ``samples`` (seconds), plus the raw samples (ms) for
    the latency plot of ``run_all.py``."""
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1e3, 3),
        "min_ms": round(ordered[0] * 1e3, 3),
        "samples_ms": [round(s * 1e3, 4) for s in samples],
    }


def save_json(path: str | None, result: Any) -> None:
    """Write ``result`` as indented JSON to ``path`` (the scripts' ``--json``), if given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def raw_bwrap_argv(command: str = "/bin/true") -> list[str] | None:
    """A bare ``bwrap`` around ``command`` with every namespace unshared and a minimal root:
    the baseline for a sandbox start (``None`` without bwrap)."""
    from union.sandbox.core.on_device.backends import bwrap_binary

    bwrap = bwrap_binary()
    if not bwrap:
        return None
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in ("/usr", "/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += ["--ro-bind", path, path]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", command]
