"""What the ``sandbox_server`` task does, as a plain coroutine that needs no flyte: the task
(:mod:`._task`) wraps it with its Flyte signature, and the local launcher's process
(:mod:`._local_pod`) runs it as it is, so both run the same body.

:class:`TaskSpec` is what a pod (or the local process) needs to rebuild an environment's task:
its name, backend and default ceilings; it travels as the task resolver's loader arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from union.sandbox.core.constants import SERVER_WORK_DIR

from ._body import Ending, ServerOptions, serve_sandbox
from ._settings import ADDR_ENV, DEFAULT_ADDR, WORK_DIR_ENV

__all__ = ["SandboxAborted", "TaskSpec", "serve_task"]


class SandboxAborted(RuntimeError):
    """The pod got SIGTERM (the run was aborted or the pod evicted); the server was stopped."""


@dataclass(frozen=True)
class TaskSpec:
    """What the pod needs to rebuild an environment's task: its name, backend and the default
    ceilings derived from its resources."""

    env_name: str
    backend: str
    cpu_ceiling_milli: int
    mem_ceiling_mb: int
    gpu_ceiling: int

    def loader_args(self) -> list[str]:
        return [
            "env",
            self.env_name,
            "backend",
            self.backend,
            "cpu",
            str(self.cpu_ceiling_milli),
            "mem",
            str(self.mem_ceiling_mb),
            "gpu",
            str(self.gpu_ceiling),
        ]

    @classmethod
    def from_loader_args(cls, args: list[str]) -> TaskSpec:
        pairs = dict(zip(args[::2], args[1::2], strict=False))
        try:
            return cls(
                env_name=pairs["env"],
                backend=pairs["backend"],
                cpu_ceiling_milli=int(pairs["cpu"]),
                mem_ceiling_mb=int(pairs["mem"]),
                gpu_ceiling=int(pairs["gpu"]),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed sandbox task resolver arguments {args!r}") from exc


async def serve_task(
    spec: TaskSpec,
    *,
    token: str,
    timeout_s: float,
    network_mode: str,
    max_runtime_s: float,
    cpu_ceiling_milli: int,
    mem_ceiling_mb: int,
    gpu_ceiling: int,
    fsize_ceiling_mb: int,
    settings: Mapping[str, str],
    on_ready: Callable[[str], None] | None = None,
) -> str:
    """Serve one session until its soft timeout (returns a summary) or a SIGTERM (raises
    :class:`SandboxAborted`, so the run does not count as a success). ``settings`` holds the
    listen address and work dir (``UNION_SANDBOX_ADDR`` / ``UNION_SANDBOX_WORK_DIR``; a pod
    uses ``0.0.0.0:8080`` and ``/tmp/sandbox-work``)."""
    options = ServerOptions(
        backend=spec.backend,
        token=token,
        soft_timeout_s=timeout_s,
        network_mode=network_mode,
        max_runtime_s=max_runtime_s,
        cpu_ceiling_milli=cpu_ceiling_milli,
        mem_ceiling_mb=mem_ceiling_mb,
        gpu_ceiling=gpu_ceiling,
        fsize_ceiling_mb=fsize_ceiling_mb,
        work_dir=settings.get(WORK_DIR_ENV) or SERVER_WORK_DIR,
        addr=settings.get(ADDR_ENV) or DEFAULT_ADDR,
    )
    served = await serve_sandbox(options, on_ready=on_ready)
    if served.ending is Ending.SIGTERM:
        raise SandboxAborted(
            f"sandbox-server stopped after {served.ran_s:.1f} s: the pod got SIGTERM "
            "(run aborted or pod evicted)"
        )
    return (
        f"soft timeout: served {served.ran_s:.1f} s on {served.addr}, "
        f"stopped in {served.stop_s:.2f} s"
    )
