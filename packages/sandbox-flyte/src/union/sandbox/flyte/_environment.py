"""``SandboxEnvironment``: a ``flyte.TaskEnvironment`` whose ``sandbox_server`` task runs one
sandbox session's ``sandbox-server`` in a pod of its own.

It is a real TaskEnvironment (``flyte deploy`` discovers it, ``depends_on=[env]`` deploys it
with a caller), built only when user code constructs one. Its pod template is derived from
``sandbox_mode`` / ``runtime`` / ``sys_cap_admin`` (see :mod:`._pod`), and a process-wide
registry refuses a second environment that reuses a name with a different shape, since both
would deploy as the same task.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import TYPE_CHECKING, Any

import flyte

from ._ceilings import Ceilings, ceilings_for
from ._image import cached_base_image
from ._pod import sandbox_pod_template
from ._settings import DEFAULT_CPU, DEFAULT_MEMORY, RUNTIMES, SANDBOX_MODES, TASK_FUNCTION
from ._task import TaskSpec, server_task

if TYPE_CHECKING:
    from ._session import SandboxSession

__all__ = ["SandboxEnvironment"]

_SHAPES: dict[str, tuple[Any, ...]] = {}
_SHAPES_LOCK = threading.Lock()


@dataclasses.dataclass(init=True, repr=True)
class SandboxEnvironment(flyte.TaskEnvironment):
    """Spec for the pod a remote sandbox runs in (b15 name: ``Environment``).

    ``sandbox_mode``: the in-pod backend, ``"userns"`` (default) or ``"bwrap"``.
    ``runtime``: ``"container"`` (default) or ``"gvisor"`` (``runtimeClassName: gvisor``).
    ``sys_cap_admin``: ``None`` grants CAP_SYS_ADMIN exactly when ``sandbox_mode="bwrap"``;
    ``True`` always; ``False`` never. ``image`` defaults to ``base_sandbox_image`` (extend it,
    don't replace it), ``resources`` to ``flyte.Resources(cpu="2", memory="2Gi")``; the
    sandbox ceilings are the resources minus a small supervisor reserve. ``pod_template`` is
    derived and must not be set. Warm pools (``reusable``) and ``plugin_config`` are not
    supported.
    """

    sandbox_mode: str = "userns"
    runtime: str = "container"
    sys_cap_admin: bool | None = None

    def __post_init__(self) -> None:
        self._validate_sandbox_fields()
        if self.resources is None:
            self.resources = flyte.Resources(cpu=DEFAULT_CPU, memory=DEFAULT_MEMORY)
        ceilings = ceilings_for(self.resources)  # raises ValueError on unreadable resources
        if ceilings.gpu and self.sandbox_mode != "bwrap":
            warnings.warn(
                f"SandboxEnvironment {self.name!r} requests {ceilings.gpu} GPU(s) with "
                f"sandbox_mode={self.sandbox_mode!r}: GPU sandboxes need sandbox_mode='bwrap' "
                "(the userns backend refuses GPUs: CUDA needs a real device bind), so its "
                "server would refuse to start; use sandbox_mode='bwrap'",
                UserWarning,
                stacklevel=3,
            )
        # The template first: without kubernetes this raises the install hint before any
        # (possibly slow) image work.
        self.pod_template = sandbox_pod_template(
            cap_sys_admin=self.cap_sys_admin, runtime=self.runtime
        )
        if self.image in ("auto", None):
            self.image = cached_base_image()
        shape = self._shape()
        with _SHAPES_LOCK:
            known = _SHAPES.get(self.name)
            if known is not None and known != shape:
                raise ValueError(
                    f"a SandboxEnvironment named {self.name!r} is already registered with a "
                    "different shape (sandbox_mode, runtime, sys_cap_admin, interruptible, "
                    "image or reusable differ): both would deploy as the task "
                    f"{self.task_name!r}. Give this one a unique name, or reuse the existing "
                    "environment"
                )
            super().__post_init__()
            _SHAPES[self.name] = shape
        server_task(
            self,
            TaskSpec(
                env_name=self.name,
                backend=SANDBOX_MODES[self.sandbox_mode],
                cpu_ceiling_milli=ceilings.cpu_milli,
                mem_ceiling_mb=ceilings.mem_mb,
                gpu_ceiling=ceilings.gpu,
            ),
        )

    def _validate_sandbox_fields(self) -> None:
        self._validate_name()  # type: ignore[no-untyped-call]
        if self.pod_template is not None:
            raise ValueError(
                "SandboxEnvironment derives pod_template from sandbox_mode, runtime and "
                "sys_cap_admin; do not set it. Use sandbox_mode='bwrap' (or "
                "sys_cap_admin=True) for CAP_SYS_ADMIN + unconfined AppArmor, and "
                "runtime='gvisor' for gVisor"
            )
        if self.sandbox_mode not in SANDBOX_MODES:
            raise ValueError(f"sandbox_mode must be 'userns' or 'bwrap', got {self.sandbox_mode!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be 'container' or 'gvisor', got {self.runtime!r}")
        if self.sys_cap_admin not in (None, True, False):
            raise ValueError(
                f"sys_cap_admin must be None, True or False, got {self.sys_cap_admin!r}"
            )
        self._validate_secrets()
        if self.reusable is not None:
            raise ValueError(
                "SandboxEnvironment does not support reusable (warm-pool) environments yet: "
                "each sandbox_server run is one session's pod; drop reusable="
            )
        if self.plugin_config is not None:
            raise ValueError(
                "SandboxEnvironment runs its own task type; plugin_config is not supported"
            )

    def _validate_secrets(self) -> None:
        """Secrets reach the pod as environment variables, which the task keeps from the
        server and so from every sandbox. A file-mounted secret would sit under
        ``/etc/flyte/secrets``, and ``/etc`` is readable inside the sandboxes: refuse it."""
        secrets = self.secrets
        if secrets is None:
            return
        for secret in secrets if isinstance(secrets, list) else [secrets]:
            if isinstance(secret, flyte.Secret) and secret.mount is not None:
                raise ValueError(
                    f"SandboxEnvironment {self.name!r}: secret {secret.key!r} is mounted as a "
                    f"file under {secret.mount}, which sandboxed code could read (/etc is "
                    "readable inside the sandbox); pass it as an environment variable "
                    "(flyte.Secret(key=..., group=...), optionally with as_env_var=...), "
                    "which the task keeps from the sandbox"
                )

    def _shape(self) -> tuple[Any, ...]:
        return (
            self.sandbox_mode,
            self.runtime,
            self.cap_sys_admin,
            self.interruptible,
            self.image,
            self.reusable,
        )

    @property
    def cap_sys_admin(self) -> bool:
        """Whether the pod gets CAP_SYS_ADMIN (+ unconfined AppArmor)."""
        if self.sys_cap_admin is None:
            return self.sandbox_mode == "bwrap"
        return bool(self.sys_cap_admin)

    @property
    def task_env(self) -> SandboxEnvironment:
        """The environment itself (kept for code written when it was a separate object)."""
        return self

    @property
    def task_name(self) -> str:
        """``"<name>.sandbox_server"``: the deployed task ``sb.session()`` launches."""
        return f"{self.name}.{TASK_FUNCTION}"

    @property
    def server_task(self) -> Any:
        """The ``sandbox_server`` task of this environment."""
        return self.tasks[self.task_name]

    @property
    def ceilings(self) -> Ceilings:
        """The default sandbox ceilings, derived from ``resources``."""
        return ceilings_for(self.resources)

    async def new_session(self, **kwargs: Any) -> SandboxSession:
        """``await sb.session(environment=self, **kwargs)``: launch a session of this
        environment. Any ``sb.session()`` argument but ``environment`` and ``sandbox_mode``
        (this environment decides both)."""
        for key in ("environment", "sandbox_mode"):
            if key in kwargs:
                raise TypeError(
                    f"new_session() got {key}=, but the environment is this one "
                    f"({self.name!r}); call sb.session({key}=...) to launch another"
                )
        from ._start import session

        return await session(environment=self, **kwargs)

    def clone_with(self, name: str, **overrides: Any) -> SandboxEnvironment:  # type: ignore[override]
        """A new SandboxEnvironment named ``name``, with ``overrides`` applied."""
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.init and f.name not in ("name", "pod_template")
        }
        fields["depends_on"] = list(self.depends_on)
        fields.update(overrides)
        return SandboxEnvironment(name=name, **fields)
