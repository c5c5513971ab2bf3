"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

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
