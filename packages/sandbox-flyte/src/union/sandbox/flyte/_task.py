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
from pathlib import Path
from typing import Any

import flyte
from union.sandbox.core.constants import DEFAULT_TIMEOUT

from ._serve import SandboxAborted, TaskSpec, serve_task
from ._settings import (
    ADDR_ENV,
    DEFAULT_FSIZE_CEILING_MB,
    DEFAULT_MAX_RUNTIME_S,
    HARD_CEILING,
    TASK_FUNCTION,
    WORK_DIR_ENV,
)

__all__ = ["SandboxAborted", "SandboxTaskResolver", "TaskSpec", "server_task"]


def _run_settings() -> dict[str, str]:
    """Where the server listens and its work dir: from the run's custom context (a launcher
    or a test's fake cluster running several "pods" in one process sets them per run) or the
    pod's environment; unset in a real pod (0.0.0.0:8080, /tmp/sandbox-work)."""
    settings = {k: os.environ[k] for k in (ADDR_ENV, WORK_DIR_ENV) if os.environ.get(k)}
    ctx = flyte.ctx()
    if ctx:
        custom = ctx.custom_context or {}
        settings.update({k: custom[k] for k in (ADDR_ENV, WORK_DIR_ENV) if custom.get(k)})
    return settings


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
        return await serve_task(
            spec,
            token=token,
            timeout_s=timeout_s,
            network_mode=network_mode,
            max_runtime_s=max_runtime_s,
            cpu_ceiling_milli=cpu_ceiling_milli,
            mem_ceiling_mb=mem_ceiling_mb,
            gpu_ceiling=gpu_ceiling,
            fsize_ceiling_mb=fsize_ceiling_mb,
            settings=_run_settings(),
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
