"""Which backends can run on this host, found by really trying each one.

A probe opens a session with the backend, runs ``exit 0`` and closes it: the same code path
as a real run, so a backend is reported available exactly when runs will work. Results are
cached for the life of the process.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import warnings

import anyio

from ..errors import BackendUnavailableError
from . import backends

__all__ = ["BackendStatus", "available_backends", "backend_report"]


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and if not, what blocks it and how to fix it."""

    name: str
    available: bool
    problems: tuple[str, ...] = ()


async def _probe(name: str) -> BackendStatus:
    from ._session import OnDeviceSession

    problems = backends.static_problems(name)
    if problems:
        return BackendStatus(name, False, tuple(problems))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = OnDeviceSession(backend=name, timeout_s=20)
        try:
            async with session:
                proc = await session.run("exit 0", stdout=False, stderr=False)
                code = await proc.wait()
        except BackendUnavailableError as exc:
            return BackendStatus(name, False, tuple(exc.problems))
        except Exception as exc:
            return BackendStatus(name, False, (f"probe failed: {exc}",))
    if code != 0:
        return BackendStatus(name, False, (f"a probe run exited with {code}",))
    return BackendStatus(name, True)


@functools.cache
def _status(name: str) -> BackendStatus:
    result: list[BackendStatus] = []

    def target() -> None:
        result.append(anyio.run(_probe, name))

    # A thread of its own lets this sync function work inside or outside an event loop.
    thread = threading.Thread(target=target, name=f"union-sandbox-probe-{name}")
    thread.start()
    thread.join()
    return result[0] if result else BackendStatus(name, False, ("probe crashed",))


def backend_report() -> list[BackendStatus]:
    """Every backend with its availability and, for those that cannot run, the problems."""
    return [_status(name) for name in backends.BACKENDS]


def available_backends() -> list[tuple[str, bool]]:
    """``[(name, available), ...]`` for every backend, probed on this host (cached)."""
    return [(status.name, status.available) for status in backend_report()]
