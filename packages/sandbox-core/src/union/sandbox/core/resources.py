"""Resource requests: ``flyte.Resources`` or the plain :class:`Resources`, converted to the
numeric limits the engines enforce (and the wire's ``Resources`` message carries)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = ["ResourceLimits", "Resources", "parse_cpu_milli", "parse_bytes", "to_limits"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "ki": 2**10,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gi": 2**30,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "ti": 2**40,
    "tib": 2**40,
}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Resource limits in the forms ``flyte.Resources`` takes: ``cpu="500m"`` or ``2``,
    ``memory="512Mi"``, ``gpu=1`` or ``"L4:1"``, ``disk="10Gi"``; any of them may be a
    ``(request, limit)`` tuple (the limit is used). Beyond flyte's fields: ``pids`` (most
    processes at once) and ``file_size`` (largest file a run may write)."""

    cpu: Any = None
    memory: Any = None
    gpu: Any = None
    disk: Any = None
    shm: Any = None
    pids: int | None = None
    file_size: Any = None


@dataclasses.dataclass(frozen=True)
class ResourceLimits:
    """Numeric limits; 0 means "no limit"."""

    cpu_milli: int = 0
    memory_bytes: int = 0
    gpu: int = 0
    ephemeral_storage_bytes: int = 0
    pids: int = 0
    file_size_bytes: int = 0

    @property
    def empty(self) -> bool:
        return not any(dataclasses.astuple(self))

    def merged(self, override: ResourceLimits) -> ResourceLimits:
        """These limits with every non-zero field of ``override`` taking precedence."""
        return dataclasses.replace(
            self, **{k: v for k, v in dataclasses.asdict(override).items() if v}
        )


def _limit_of(value: Any) -> Any:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"a resource range must be (request, limit), got {value!r}")
        return value[1] if value[1] is not None else value[0]
    return value


def parse_cpu_milli(value: Any) -> int:
    """``"500m"`` → 500, ``2`` → 2000, ``"1.5"`` → 1500; ``None`` → 0."""
    value = _limit_of(value)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise TypeError(f"cpu must be a number or a string such as '500m', got {value!r}")
    if isinstance(value, (int, float)):
        milli = round(value * 1000)
    elif isinstance(value, str) and value.strip().endswith("m"):
        milli = round(float(value.strip()[:-1]))
    elif isinstance(value, str):
        milli = round(float(value) * 1000)
    else:
        raise TypeError(f"cpu must be a number or a string such as '500m', got {value!r}")
    if milli <= 0:
        raise ValueError(f"cpu must be positive, got {value!r}")
    return int(milli)


def parse_bytes(value: Any, what: str = "memory") -> int:
    """``"512Mi"`` → 536870912, ``"1G"`` → 10**9, ints are bytes; ``None`` → 0."""
    value = _limit_of(value)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise TypeError(f"{what} must be bytes or a string such as '512Mi', got {value!r}")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str):
        match = _QUANTITY.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{what} must look like '512Mi', '2Gi' or '1G', got {value!r}")
        amount = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise TypeError(f"{what} must be bytes or a string such as '512Mi', got {value!r}")
    if amount <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return amount


def _parse_gpu(value: Any) -> int:
    value = _limit_of(value)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        count = value.rsplit(":", 1)[-1]
        if count.isdigit():
            return int(count)
    quantity = getattr(value, "quantity", None)  # a flyte Device
    if isinstance(quantity, int):
        return quantity
    raise ValueError(f"gpu must be a count or 'SKU:count' such as 'L4:1', got {value!r}")


def to_limits(resources: Any) -> ResourceLimits:
    """Convert ``flyte.Resources``, :class:`Resources` or ``None`` to numeric limits."""
    if resources is None:
        return ResourceLimits()
    if isinstance(resources, ResourceLimits):
        return resources
    if not all(hasattr(resources, name) for name in ("cpu", "memory", "gpu")):
        raise TypeError(
            "resources must be flyte.Resources or union.sandbox.Resources, got "
            f"{type(resources).__name__}"
        )
    disk = getattr(resources, "disk", None)
    if disk is None:
        disk = getattr(resources, "ephemeral_storage", None)
    pids = getattr(resources, "pids", None)
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or pids <= 0):
        raise ValueError(f"pids must be a positive int, got {pids!r}")
    return ResourceLimits(
        cpu_milli=parse_cpu_milli(resources.cpu),
        memory_bytes=parse_bytes(resources.memory),
        gpu=_parse_gpu(resources.gpu),
        ephemeral_storage_bytes=parse_bytes(disk, "disk"),
        pids=pids or 0,
        file_size_bytes=parse_bytes(getattr(resources, "file_size", None), "file_size"),
    )
