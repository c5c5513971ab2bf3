"""``sb.session()``: check the arguments (all of them, before anything is launched), pick
the launcher (Flyte's remote API, or a local process when Flyte runs locally), submit on the
launcher loop, and hand back the owner's :class:`SandboxSession`."""

from __future__ import annotations

import concurrent.futures
import datetime
import math
import re
import secrets
import warnings
from typing import Any

from union.sandbox.core.constants import DEFAULT_TIMEOUT
from union.sandbox.core.policy import validate_network

from . import _bridge
from ._ceilings import Ceilings, ceilings_for
from ._launch import Launch, LaunchRequest
from ._resolve import EndpointResolver, choose_resolver
from ._serve import TaskSpec
from ._session import SandboxSession
from ._settings import (
    DEFAULT_CPU,
    DEFAULT_ENV_NAME,
    DEFAULT_ENV_NAME_BWRAP,
    DEFAULT_FSIZE_CEILING_MB,
    DEFAULT_MAX_RUNTIME_S,
    DEFAULT_MEMORY,
    HARD_CEILING,
    SANDBOX_MODES,
    TASK_FUNCTION,
)

__all__ = ["session"]

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_NAME = 30  # Flyte's run-name limit


def _local_mode() -> bool:
    """Whether this launch runs locally: inside a task, when the task runs locally (Flyte's
    local mode); outside one, when no Flyte control plane is configured."""
    import flyte

    available = getattr(flyte, "is_control_plane_available", None)
    if available is not None:
        return not available()
    ctx = flyte.ctx()
    if ctx:
        return bool(ctx.mode == "local")
    from flyte._initialize import _get_init_config

    config = _get_init_config()
    return config is None or config.client is None


def _org() -> str:
    """The Flyte org of this process (``""`` when none is configured)."""
    import flyte

    ctx = flyte.ctx()
    if ctx and ctx.action.org:
        return str(ctx.action.org)
    from flyte._initialize import _get_init_config

    config = _get_init_config()
    return str(config.org or "") if config is not None else ""


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be a datetime.timedelta (or seconds), got {value!r}")
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


def _count(value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _target(
    environment: Any, sandbox_mode: str | None
) -> tuple[str, str | None, TaskSpec | None, Ceilings | None]:
    """(task name, sandbox mode when known, task spec when known, the pod's ceilings when
    known) of what ``sb.session()`` launches."""
    from ._environment import SandboxEnvironment

    if environment is not None and sandbox_mode is not None:
        warnings.warn(
            f"sb.session() got both environment= and sandbox_mode={sandbox_mode!r}: the "
            "environment decides the backend, sandbox_mode is ignored",
            UserWarning,
            stacklevel=4,
        )
    if isinstance(environment, SandboxEnvironment):
        ceilings = environment.ceilings
        spec = TaskSpec(
            env_name=environment.name,
            backend=SANDBOX_MODES[environment.sandbox_mode],
            cpu_ceiling_milli=ceilings.cpu_milli,
            mem_ceiling_mb=ceilings.mem_mb,
            gpu_ceiling=ceilings.gpu,
        )
        return environment.task_name, environment.sandbox_mode, spec, ceilings
    if isinstance(environment, str):
        if not _NAME.fullmatch(environment):
            raise ValueError(
                f"environment must be a SandboxEnvironment or the name of a deployed one, got "
                f"{environment!r}"
            )
        defaults = {DEFAULT_ENV_NAME: "userns", DEFAULT_ENV_NAME_BWRAP: "bwrap"}
        if environment not in defaults:
            return f"{environment}.{TASK_FUNCTION}", None, None, None
        sandbox_mode = defaults[environment]
    elif environment is not None:
        raise TypeError(
            "environment must be a SandboxEnvironment (or the name of a deployed one), got "
            f"{type(environment).__name__}"
        )
    mode = "userns" if sandbox_mode is None else sandbox_mode
    if mode not in SANDBOX_MODES:
        raise ValueError(f"sandbox_mode must be 'userns' or 'bwrap', got {mode!r}")
    name = DEFAULT_ENV_NAME if mode == "userns" else DEFAULT_ENV_NAME_BWRAP
    import flyte

    ceilings = ceilings_for(flyte.Resources(cpu=DEFAULT_CPU, memory=DEFAULT_MEMORY))
    spec = TaskSpec(name, SANDBOX_MODES[mode], ceilings.cpu_milli, ceilings.mem_mb, ceilings.gpu)
    return f"{name}.{TASK_FUNCTION}", mode, spec, ceilings


def _ceiling_inputs(
    resources: Any,
    pod: Ceilings | None,
    mode: str | None,
    cpu_ceiling_milli: int | None,
    mem_ceiling_mb: int | None,
) -> dict[str, int]:
    """The ceiling inputs of the task: derived from a resources override, or explicit, or
    none (the deployed task's defaults: its environment's resources)."""
    inputs: dict[str, int] = {}
    if resources is not None:
        pod = ceilings_for(resources)
        inputs = {
            "cpu_ceiling_milli": pod.cpu_milli,
            "mem_ceiling_mb": pod.mem_mb,
            "gpu_ceiling": pod.gpu,
        }
    if pod is not None and pod.gpu and mode is not None and mode != "bwrap":
        raise ValueError(
            f"this sandbox asks for {pod.gpu} GPU(s) with sandbox_mode={mode!r}: GPU sandboxes "
            "need the bubblewrap backend (CUDA's cuInit fails under the userns backend). Use "
            "sandbox_mode='bwrap' (or an environment with sandbox_mode='bwrap')"
        )
    for key, value, limit in (
        ("cpu_ceiling_milli", cpu_ceiling_milli, pod.cpu_milli if pod else None),
        ("mem_ceiling_mb", mem_ceiling_mb, pod.mem_mb if pod else None),
    ):
        if value is None:
            continue
        _count(value, key, minimum=1)
        if limit is not None and value > limit:
            raise ValueError(
                f"{key}={value} is more than the sandbox pod has ({limit}, its resources minus "
                "the server's reserve): lower it, or raise resources="
            )
        inputs[key] = value
    return inputs


def _run_name(name: str | None) -> str:
    if name is None:
        return f"sbx-{secrets.token_hex(8)}"
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise ValueError(
            f"name must be 1-{_MAX_NAME} lowercase letters, digits and dashes (a Flyte run "
            f"name), starting and ending with a letter or digit, got {name!r}"
        )
    return name


async def session(
    *,
    environment: Any = None,
    sandbox_mode: str | None = None,
    name: str | None = None,
    timeout: datetime.timedelta | float = DEFAULT_TIMEOUT,
    project: str | None = None,
    domain: str | None = None,
    resources: Any = None,
    network_mode: str = "blocked",
    network_allowlist: list[str] | None = None,
    network_denylist: list[str] | None = None,
    max_runtime_s: float = DEFAULT_MAX_RUNTIME_S,
    mem_ceiling_mb: int | None = None,
    cpu_ceiling_milli: int | None = None,
    fsize_ceiling_mb: int = DEFAULT_FSIZE_CEILING_MB,
    task_version: str = "latest",
    resolver: EndpointResolver | str | None = None,
) -> SandboxSession:
    """Launch a sandbox as its own Flyte run and return its (owner) handle once the run is
    submitted; ``await sbx`` or ``async with`` waits for its endpoint, and the first call
    health-checks it.

    ``environment``: a :class:`SandboxEnvironment` (or the name of a deployed one) whose
    ``<name>.sandbox_server`` task runs; without it, ``sandbox_mode`` (``"userns"``, default,
    or ``"bwrap"``) picks a built-in one by name. ``name``: the run's name (default
    ``sbx-<16 hex>``). ``timeout``: the soft timeout (at most 24 h). ``project`` / ``domain``:
    where the run goes (default: the caller's). ``resources``: a per-launch pod shape, which
    also sizes the sandbox ceilings (the pod minus a small reserve). ``network_mode`` /
    ``network_allowlist`` / ``network_denylist``: the session's default posture; ``"blocked"``
    also starts the server with no network at all. ``max_runtime_s``: per-run cap;
    ``cpu_ceiling_milli`` / ``mem_ceiling_mb``: narrower ceilings than the pod's;
    ``fsize_ceiling_mb``: largest file a run may write. ``task_version``: ``"latest"``,
    ``"current"`` or an exact version. ``resolver``: how the endpoint is found
    (``"dataproxy"``, ``"pod-ip"`` or an :class:`EndpointResolver`; see the docs).

    When Flyte runs locally (Flyte's local mode, or no control plane configured), the task's
    body runs in a process of this machine instead, reached over loopback; ``project``,
    ``domain``, ``task_version`` and ``resolver`` then do not apply. Bad arguments raise
    before anything is launched.
    """
    run_name = _run_name(name)
    task_name, mode, spec, pod = _target(environment, sandbox_mode)
    timeout_s = _seconds(timeout, "timeout")
    if timeout_s > HARD_CEILING.total_seconds():
        raise ValueError(
            f"timeout must be at most the sandbox task's hard ceiling of {HARD_CEILING}, got "
            f"{timeout!r}"
        )
    policy = validate_network(network_mode, network_allowlist, network_denylist)
    inputs: dict[str, Any] = {
        # Hex, not urlsafe: a token that starts with "-" cannot follow `--token` on a
        # command line (argparse takes it for an option). 256 bits either way.
        "token": secrets.token_hex(32),
        "timeout_s": timeout_s,
        "network_mode": policy.mode,
        "max_runtime_s": _seconds(max_runtime_s, "max_runtime_s"),
        "fsize_ceiling_mb": _count(fsize_ceiling_mb, "fsize_ceiling_mb", minimum=0),
        **_ceiling_inputs(resources, pod, mode, cpu_ceiling_milli, mem_ceiling_mb),
    }
    if not isinstance(task_version, str) or not task_version:
        raise ValueError(
            f"task_version must be 'latest', 'current' or a version, got {task_version!r}"
        )
    for key, value in (("project", project), ("domain", domain)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key} must be a non-empty string or None, got {value!r}")
    local = _local_mode()
    if local:
        if spec is None:
            raise ValueError(
                f"environment {environment!r} is only a name: running locally (no Flyte "
                "cluster configured, or Flyte's local mode) needs the SandboxEnvironment "
                "object itself, to know its backend"
            )
        chosen: EndpointResolver | None = None  # the ceiling inputs override the spec's
    else:
        chosen = choose_resolver(resolver, _org())
    request = LaunchRequest(
        name=run_name,
        task_name=task_name,
        inputs=inputs,
        spec=spec,
        project=project,
        domain=domain,
        task_version=task_version,
        resources=resources,
        resolver=chosen,
    )
    launch = await _start(request, local)
    sbx = SandboxSession(
        name=run_name,
        network_mode=policy.mode,
        network_allowlist=list(policy.allowlist),
        network_denylist=list(policy.denylist),
        token=inputs["token"],
    )
    sbx._launch = launch
    return sbx


async def _start(request: LaunchRequest, local: bool) -> Launch:
    """Submit on the launcher loop. If the caller is cancelled meanwhile, a launch that
    still gets through is aborted (nobody holds its handle)."""
    if local:
        from ._local_launch import start_local

        future: concurrent.futures.Future[Any] = _bridge.submit(start_local(request))
    else:
        from ._flyte_launch import start_flyte

        future = _bridge.submit(start_flyte(request, _org()))
    try:
        launch: Launch = await _bridge.wait(future, cancel=False)
    except BaseException:
        future.add_done_callback(_abort_orphan)
        raise
    return launch


def _abort_orphan(future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    _bridge.submit(future.result().abort("the caller of sb.session() was cancelled"))
