"""The ``sandbox_server`` task: its inputs, its body, and how a pod finds it again.

Each :class:`SandboxEnvironment` gets its own task object, built here (no module-level task:
nothing is registered at import). Flyte's default resolver finds a task as a module-level
attribute, which ours is not, so the task carries :class:`SandboxTaskResolver`: the deployed
container's arguments name it plus the environment's name, backend and default ceilings, and
in the pod it rebuilds the same task from those, importing nothing of the user's code (and
so needing neither ``kubernetes`` nor the module that defined the environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flyte
from union.sandbox.core.constants import DEFAULT_TIMEOUT, SERVER_WORK_DIR

from ._body import Ending, ServerOptions, serve_sandbox
from ._settings import (
    ADDR_ENV,
    DEFAULT_ADDR,
    DEFAULT_FSIZE_CEILING_MB,
    DEFAULT_MAX_RUNTIME_S,
    HARD_CEILING,
    TASK_FUNCTION,
    WORK_DIR_ENV,
)

__all__ = ["SandboxAborted", "SandboxTaskResolver", "TaskSpec", "server_task"]


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


class SandboxTaskResolver:
    """Flyte task resolver for ``sandbox_server`` tasks (``--resolver`` in the pod's args)."""

    import_path = "union.sandbox.flyte._task.SandboxTaskResolver"

    def __init__(self, spec: TaskSpec | None = None) -> None:
        self.spec = spec

    def loader_args(self, task: Any, root_dir: Path | None) -> list[str]:
        assert self.spec is not None, "a resolver attached to a task knows its spec"
        return self.spec.loader_args()

    def load_task(self, loader_args: list[str]) -> Any:
        spec = TaskSpec.from_loader_args(list(loader_args))
        # A plain environment is enough in the pod: image, resources and pod template are
        # the deployed spec's business there; only the body and its inputs matter.
        return server_task(flyte.TaskEnvironment(name=spec.env_name), spec)


def _task_function(spec: TaskSpec) -> Any:
    """The body, with this environment's default ceilings as the inputs' defaults."""

    # Flyte builds the task's inputs from this signature; callers pass them by keyword.
    async def sandbox_server(  # noqa: PLR0917
        token: str,
        timeout_s: float = DEFAULT_TIMEOUT.total_seconds(),
        network_mode: str = "blocked",
        max_runtime_s: float = DEFAULT_MAX_RUNTIME_S,
        cpu_ceiling_milli: int = spec.cpu_ceiling_milli,
        mem_ceiling_mb: int = spec.mem_ceiling_mb,
        gpu_ceiling: int = spec.gpu_ceiling,
        fsize_ceiling_mb: int = DEFAULT_FSIZE_CEILING_MB,
    ) -> str:
        """Serve one unionai-sandbox session (sandbox-server) until its soft timeout
        (``timeout_s``) or until the run is aborted. ``token`` is the bearer token clients
        must send (``Authorization: Bearer <token>``)."""
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
            work_dir=os.environ.get(WORK_DIR_ENV) or SERVER_WORK_DIR,
            addr=os.environ.get(ADDR_ENV) or DEFAULT_ADDR,
        )
        served = await serve_sandbox(options)
        if served.ending is Ending.SIGTERM:
            raise SandboxAborted(
                f"sandbox-server stopped after {served.ran_s:.1f} s: the pod got SIGTERM "
                "(run aborted or pod evicted)"
            )
        return (
            f"soft timeout: served {served.ran_s:.1f} s on {served.addr}, "
            f"stopped in {served.stop_s:.2f} s"
        )

    assert sandbox_server.__name__ == TASK_FUNCTION
    return sandbox_server


def server_task(env: flyte.TaskEnvironment, spec: TaskSpec) -> Any:
    """Register ``sandbox_server`` on ``env``: 24 h hard ceiling, no retries (a retry would be
    a new, empty sandbox behind the same name), never cached."""
    decorate = env.task(
        timeout=HARD_CEILING,
        retries=0,
        cache="disable",
        task_resolver=SandboxTaskResolver(spec),
    )
    return decorate(_task_function(spec))
