"""The sandbox ceilings of a pod: its resources minus what the pod keeps for itself.

One function, shared by :class:`SandboxEnvironment` (the task's default inputs) and by a
launcher that overrides a launch's resources, so both derive the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from union.sandbox.core.resources import to_limits

from ._settings import (
    FALLBACK_CPU_CEILING_MILLI,
    FALLBACK_MEM_CEILING_MB,
    SUPERVISOR_CPU_RESERVE_MILLI,
    SUPERVISOR_MEM_RESERVE_MB,
)

__all__ = ["Ceilings", "ceilings_for"]

_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """What one sandboxed run may use at most (``sandbox-server --*-ceiling*``)."""

    cpu_milli: int
    mem_mb: int
    gpu: int


def ceilings_for(resources: Any) -> Ceilings:
    """Ceilings for a pod with ``resources`` (``flyte.Resources`` or ``None``).

    cpu and memory are the pod's limit (or request, when no limit is given) minus the
    supervisor reserve, floored at 1; without a value the server's defaults apply. The GPU
    ceiling is exactly the GPUs requested: a pod without GPUs denies them.
    """
    limits = to_limits(resources)
    cpu = (
        max(limits.cpu_milli - SUPERVISOR_CPU_RESERVE_MILLI, 1)
        if limits.cpu_milli
        else FALLBACK_CPU_CEILING_MILLI
    )
    mem = (
        max(limits.memory_bytes // _MIB - SUPERVISOR_MEM_RESERVE_MB, 1)
        if limits.memory_bytes
        else FALLBACK_MEM_CEILING_MB
    )
    return Ceilings(cpu_milli=cpu, mem_mb=mem, gpu=limits.gpu)
