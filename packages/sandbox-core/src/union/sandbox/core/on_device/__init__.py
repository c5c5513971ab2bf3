"""On-device sessions: sandboxed children of the current process (``sb.on_device``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..constants import DEFAULT_RUN_TIMEOUT_S, MAX_CAPTURED_BYTES
from ._session import OnDeviceSession
from .fs import default_fs_allowlist

if TYPE_CHECKING:
    from .availability import available_backends, backend_report

__all__ = [
    "OnDeviceSession",
    "available_backends",
    "backend_report",
    "default_fs_allowlist",
    "session",
]


def session(
    *,
    resources: Any = None,
    default_cwd: str = "",
    client_id: str | None = None,
    network_mode: str = "blocked",
    network_allowlist: Iterable[str] | None = None,
    network_denylist: Iterable[str] | None = None,
    network_proxy_url: str | None = None,
    network_socks_url: str | None = None,
    host_work_dir: str | None = None,
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
    read_only_paths: Iterable[str] | None = None,
    read_write_paths: Iterable[str] | None = None,
    backend: str = "bubblewrap",
    max_output_bytes: int = MAX_CAPTURED_BYTES,
    session_pids: int | None = None,
    best_effort_limits: bool = False,
) -> OnDeviceSession:
    """A new on-device session (not yet open).

    Use ``async with sb.on_device.session(...) as sbx:``, ``sbx = await session(...)`` or
    ``sbx = await session(...).open()``. ``backend`` is explicit (``"bubblewrap"``,
    ``"userns"`` or ``"none"``): a backend that cannot run here makes ``run()`` raise
    :class:`~union.sandbox.core.errors.BackendUnavailableError` naming the host fix; a weaker
    backend is never substituted. Bad arguments raise here, before anything starts.
    ``session_pids`` bounds the processes of all the session's runs together (see
    docs/limits.md). A limit nothing on this host can enforce raises
    :class:`~union.sandbox.core.errors.LimitUnavailableError`; ``best_effort_limits=True``
    runs without it instead, and each run's ``isolation.limits`` says ``"not enforced"``.
    """
    return OnDeviceSession(
        backend=backend,
        resources=resources,
        default_cwd=default_cwd,
        client_id=client_id,
        network_mode=network_mode,
        network_allowlist=network_allowlist,
        network_denylist=network_denylist,
        network_proxy_url=network_proxy_url,
        network_socks_url=network_socks_url,
        host_work_dir=host_work_dir,
        timeout_s=timeout_s,
        read_only_paths=read_only_paths,
        read_write_paths=read_write_paths,
        max_output_bytes=max_output_bytes,
        session_pids=session_pids,
        best_effort_limits=best_effort_limits,
    )


def __getattr__(name: str) -> Any:
    # The backend probes load on first use: a session that only runs needs none of them.
    if name in ("available_backends", "backend_report"):
        from . import availability

        return getattr(availability, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
