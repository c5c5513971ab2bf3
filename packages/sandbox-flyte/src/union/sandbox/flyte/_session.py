"""``SandboxSession``: the handle of a sandbox launched as a Flyte run (``sb.session()``).

A thin handle over the remote client (:class:`~union.sandbox.client.RemoteSession`, opened on
first use): every method is the client's. What it adds is the run:

- **owner** (the side that called ``sb.session()``): holds the launch, waits for the endpoint
  (``await sbx`` / ``async with``), learns when the run ends (a call afterwards raises
  :class:`SandboxRunEnded`), and aborts the run on ``close()``;
- **reference** (a copy that crossed a task boundary): the serialized fields only; its
  transport opens lazily, and ``close()`` closes that transport and nothing else.

It is a pydantic model, which Flyte carries between tasks, also to a task deployed and called
by name (a dataclass with a ``datetime`` field fails there: flyte-sdk-notes §11). The bearer
token is one of its fields (the receiver needs it), kept out of ``repr()`` and ``str()``.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import math
import re
import secrets
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, PrivateAttr

from union.sandbox.client import RemoteSession
from union.sandbox.core.constants import DEFAULT_TIMEOUT, SERVER_WORK_DIR
from union.sandbox.core.policy import validate_network
from union.sandbox.core.process import Process
from union.sandbox.core.session import SessionBase

from . import _bridge
from ._ceilings import Ceilings, ceilings_for
from ._errors import SandboxRunEnded
from ._launch import Launch, LaunchRequest, Progress, Stage
from ._resolve import EndpointResolver, choose_resolver
from ._serve import TaskSpec
from ._settings import (
    DEFAULT_CPU,
    DEFAULT_ENV_NAME,
    DEFAULT_ENV_NAME_BWRAP,
    DEFAULT_FSIZE_CEILING_MB,
    DEFAULT_MAX_RUNTIME_S,
    DEFAULT_MEMORY,
    HARD_CEILING,
    HEALTH_DEADLINE_S,
    RESOLVE_DEADLINE_S,
    SANDBOX_MODES,
    TASK_FUNCTION,
)

__all__ = ["SandboxSession", "session"]

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_NAME = 30  # Flyte's run-name limit
_PASSED_EARLY = (
    "this SandboxSession was passed on before its endpoint was known: its owner must wait "
    "for the sandbox ('await sbx' or 'async with await sb.session(...) as sbx:') before "
    "passing it to other tasks"
)
_CLOSED = "this sandbox session was closed; start a new one with sb.session(...)"
_ABORT_REASON = "SandboxSession closed"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class SandboxSession(BaseModel, SessionBase):
    """A sandbox running as its own Flyte run (b15: ``sb.SandboxSession``).

    Create it with ``await sb.session(...)``, not directly. Fields: ``name`` (the run's name),
    ``endpoint`` (``""`` until the owner waited for it), ``ip`` (pod IP, best effort),
    ``created_at`` (UTC), the default network posture (``network_mode``,
    ``network_allowlist``, ``network_denylist``), ``work_dir`` (the server's), and the bearer
    ``token`` (hidden from ``repr``). Properties: ``is_owner``, ``url`` (the run in the
    console; owner side), ``phase`` and ``progress`` (owner side).
    """

    name: str
    endpoint: str = ""
    ip: str = ""
    created_at: datetime.datetime = Field(default_factory=_utcnow)
    network_mode: Literal["blocked", "open", "allowlist"] = "blocked"
    network_allowlist: list[str] = Field(default_factory=list)
    network_denylist: list[str] = Field(default_factory=list)
    work_dir: str = SERVER_WORK_DIR
    token: str = Field(default="", repr=False)

    _launch: Launch | None = PrivateAttr(default=None)
    _remote: RemoteSession | None = PrivateAttr(default=None)
    _closed: bool = PrivateAttr(default=False)
    _lock: anyio.Lock | None = PrivateAttr(default=None)

    # -- what the owner knows ------------------------------------------------------------

    @property
    def is_owner(self) -> bool:
        """True on the side that launched the run (only it can abort the run)."""
        return self._launch is not None

    @property
    def url(self) -> str | None:
        """Where to see the run: its console URL (a ``file://`` log in local mode); ``None``
        on the reference side."""
        return self._launch.url if self._launch is not None else None

    @property
    def phase(self) -> str | None:
        """The run's phase and what it is doing (``"QUEUED: ..."``, ``"RUNNING"``,
        ``"FAILED: ..."``), as last seen; ``None`` on the reference side."""
        return self._launch.describe() if self._launch is not None else None

    @property
    def has_ended(self) -> bool:
        """True once the owner saw the run end (its server is gone)."""
        return self._launch is not None and self._launch.ended.done()

    @property
    def progress(self) -> list[Progress]:
        """The launch's steps so far (submitted, queued, pod scheduled, image pulled, server
        ready, ended); empty on the reference side."""
        return self._launch.progress if self._launch is not None else []

    # -- waiting for the sandbox ---------------------------------------------------------

    async def wait_endpoint(self, timeout_s: float | None = RESOLVE_DEADLINE_S) -> SandboxSession:
        """Wait until the sandbox's pod is addressable and fill ``endpoint`` / ``ip`` (no
        health check: that comes with the first call). On the owner side, a run that ends
        first raises :class:`SandboxRunEnded` naming its phase and error, and a run still
        without an endpoint after ``timeout_s`` raises ``TimeoutError`` saying what it is
        doing; either way the run is aborted. A reference copy returns at once."""
        launch = self._launch
        if launch is None:
            if not self.endpoint:
                raise RuntimeError(_PASSED_EARLY)
            return self
        if self.endpoint:
            return self
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        try:
            with anyio.fail_after(timeout_s):
                endpoint = await _bridge.wait(launch.endpoint, cancel=False)
        except TimeoutError:
            doing = launch.describe()
            await self._abort_quietly()
            raise TimeoutError(
                f"sandbox run {self.name!r} did not surface a reachable pod within "
                f"{timeout_s:g} s; it is {doing}. The run was aborted; see {launch.url} and "
                "wait longer (wait_endpoint(timeout_s=...)) if the cluster is just slow"
            ) from None
        except Exception:  # the run ended first (SandboxRunEnded), or no endpoint for it
            await self._abort_quietly()
            raise
        self.endpoint, self.ip, self.work_dir = endpoint.url, endpoint.ip, endpoint.work_dir
        return self

    def __await__(self) -> Generator[Any, None, SandboxSession]:
        return self.wait_endpoint().__await__()

    async def __aenter__(self) -> SandboxSession:
        return await self.wait_endpoint()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the transport -------------------------------------------------------------------

    async def open(self) -> SandboxSession:
        """Wait for the endpoint, health-check the server (retrying with backoff while it
        starts; not for terminal errors) and open the transport. Idempotent; the first call
        of any method does it."""
        await self._transport()
        return self

    async def _transport(self) -> RemoteSession:
        if self._closed:
            raise RuntimeError(_CLOSED)
        launch = self._launch
        if launch is not None and launch.ended.done():
            raise launch.ended.result()
        remote = self._remote
        if remote is not None:
            return remote
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._remote is not None:
                return self._remote
            await self.wait_endpoint()
            remote = RemoteSession(
                endpoint=self.endpoint,
                token=self.token or None,
                network_mode=self.network_mode,
                network_allowlist=self.network_allowlist or None,
                network_denylist=self.network_denylist or None,
                health_deadline_s=HEALTH_DEADLINE_S,
            )
            if launch is None:
                await remote.open()
            else:
                await _open_watching(remote, launch)
                launch.note(Stage.READY, f"{remote.backend} backend at {self.endpoint}")
            self.work_dir = remote.work_dir  # the server's word for it
            self._remote = remote
            return remote

    async def _abort_quietly(self) -> None:
        """Owner: abort the run (after a failed wait: nobody will use it); errors of the
        abort itself are dropped, the run's own error is what the caller gets."""
        launch = self._launch
        if launch is None or launch.ended.done():
            return
        with anyio.CancelScope(shield=True):
            try:
                await _bridge.wait(_bridge.submit(launch.abort(_ABORT_REASON)))
            except Exception:
                pass

    async def close(self) -> None:
        """Close the transport (its running commands are killed); the owner also aborts the
        run, which ends the sandbox. A reference copy leaves the run going. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._remote is not None:
                await self._remote.close()
            launch = self._launch
            if launch is not None and not launch.ended.done():
                await _bridge.wait(_bridge.submit(launch.abort(_ABORT_REASON)))

    # -- the session contract, over the transport ---------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        stdout: Any = True,
        stderr: Any = True,
        stdin: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        network_denylist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        resources: Any = None,
        argv: list[str] | None = None,
    ) -> Process:
        """Start ``cmd`` in the sandbox (see :meth:`RemoteSession.run`); the first call opens
        the transport."""
        remote = await self._transport()
        return await remote.run(
            cmd,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            env=env,
            cwd=cwd,
            script_type=script_type,
            network_mode=network_mode,
            network_allowlist=network_allowlist,
            network_denylist=network_denylist,
            timeout_s=timeout_s,
            resources=resources,
            argv=argv,
        )

    async def put_bytes(
        self,
        path: str,
        data: bytes | bytearray | memoryview | AsyncIterable[bytes],
        *,
        mode: int = 0o644,
        overwrite: bool = True,
    ) -> int:
        """Write ``data`` to ``path`` under the work dir (see :meth:`RemoteSession.put_bytes`)."""
        remote = await self._transport()
        return await remote.put_bytes(path, data, mode=mode, overwrite=overwrite)

    async def get_bytes(self, path: str, *, max_bytes: int = 0) -> bytes:
        """Read ``path`` under the work dir (see :meth:`RemoteSession.get_bytes`)."""
        remote = await self._transport()
        return await remote.get_bytes(path, max_bytes=max_bytes)

    async def iter_bytes(self, path: str, *, max_bytes: int = 0) -> AsyncIterator[bytes]:
        """Stream ``path`` in chunks (see :meth:`RemoteSession.iter_bytes`)."""
        remote = await self._transport()
        async for chunk in remote.iter_bytes(path, max_bytes=max_bytes):
            yield chunk

    async def release_idle(self) -> int:
        """Ask the server to drop what finished runs left for reuse (see
        :meth:`RemoteSession.release_idle`)."""
        remote = await self._transport()
        return await remote.release_idle()

    @property
    def backend(self) -> str | None:
        """The server's backend, once the transport is open."""
        return self._remote.backend if self._remote is not None else None


async def _open_watching(remote: RemoteSession, launch: Launch) -> None:
    """``remote.open()`` (health check with backoff), unless the run ends first: then
    :class:`SandboxRunEnded` naming it, not a health check that runs out its deadline."""
    outcome: dict[str, BaseException | None] = {}
    async with anyio.create_task_group() as tg:

        async def opener() -> None:
            try:
                await remote.open()
                outcome["opened"] = None
            except Exception as exc:
                outcome["error"] = exc
            finally:
                tg.cancel_scope.cancel()

        async def watcher() -> None:
            ended: SandboxRunEnded = await _bridge.wait(launch.ended, cancel=False)
            outcome["ended"] = ended
            tg.cancel_scope.cancel()

        tg.start_soon(opener)
        tg.start_soon(watcher)
    if "opened" in outcome:
        return
    await remote.close()
    error = outcome.get("ended") or outcome.get("error")
    assert error is not None, "one of the two tasks ended the group"
    raise error


# -- sb.session() --------------------------------------------------------------------------


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
    timeout: datetime.timedelta | float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the soft timeout)
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
        "token": secrets.token_urlsafe(32),
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
