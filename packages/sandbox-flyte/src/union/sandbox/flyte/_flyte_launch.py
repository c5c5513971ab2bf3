"""The Flyte launcher: a run of the deployed ``<env>.sandbox_server`` task on a cluster.

1. ``TaskDetails.get(name=..., project=..., domain=..., version= | auto_version=)``, then
   ``.override(resources=...)`` for a per-launch shape;
2. ``flyte.with_runcontext(mode="remote", name=..., project=..., domain=...).run.aio(task,
   **inputs)``: one new run per session (from inside a task, a run the caller's spawned);
3. the run's action is watched (``WatchActionDetails``, re-opened when a stream ends early)
   until its latest attempt names its pod (``attempts[-1].log_context``), which the
   session's :class:`~._resolve.EndpointResolver` turns into an endpoint; the watch goes on
   until the run ends, so a failure, an abort or the soft timeout reach the session;
4. ``abort()`` aborts the run (Flyte deletes the pod; the task body stops the server on the
   kubelet's SIGTERM).

Everything here runs on the launcher loop (:mod:`._bridge`): the Flyte SDK is asyncio-only.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from union.sandbox.core.constants import SERVER_WORK_DIR

from ._errors import SandboxLaunchError
from ._launch import Endpoint, Launch, LaunchRequest, Stage
from ._resolve import EndpointResolver, PodRef

__all__ = ["FlyteLaunch", "start_flyte"]

#: How long the watch may keep going after an abort without seeing the run end.
_AFTER_ABORT_S = 60.0
_STAGES = {
    "QUEUED": Stage.QUEUED,
    "WAITING_FOR_RESOURCES": Stage.WAITING,
    "INITIALIZING": Stage.POD,
    "RUNNING": Stage.IMAGE,
}


def _phase_name(value: int) -> str:
    from flyteidl2.common import phase_pb2  # type: ignore[import-untyped]

    try:
        return str(phase_pb2.ActionPhase.Name(value)).removeprefix("ACTION_PHASE_")
    except ValueError:
        return f"PHASE_{value}"


def _launch_error(request: LaunchRequest, exc: BaseException) -> SandboxLaunchError:
    """A submission failure, said in terms of what to do about it."""
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError

    from flyte.errors import RemoteTaskNotFoundError

    where = f"project {request.project or '(default)'}, domain {request.domain or '(default)'}"
    if isinstance(exc, RemoteTaskNotFoundError):
        message = (
            f"no deployed task {request.task_name!r} (version {request.task_version!r}) in "
            f"{where}: deploy it once per cluster, with `unionai-sandbox-deploy` for the "
            "built-in environments or `flyte deploy <module> <variable>` for your own"
        )
    elif isinstance(exc, ConnectError) and exc.code in (Code.UNAUTHENTICATED,):
        message = (
            "the Flyte control plane refused to launch the sandbox: not authenticated "
            f"({exc.message}); log in again or check the credentials in your Flyte config "
            "(or FLYTE_API_KEY)"
        )
    elif isinstance(exc, ConnectError) and exc.code is Code.PERMISSION_DENIED:
        message = (
            f"the Flyte control plane refused to launch {request.task_name!r} in {where}: "
            f"permission denied ({exc.message})"
        )
    elif isinstance(exc, ConnectError) and exc.code is Code.ALREADY_EXISTS:
        message = (
            f"a run named {request.name!r} already exists in {where}: pass another name= "
            "(or none, for a random sbx-... name)"
        )
    else:
        message = (
            f"launching the sandbox run {request.name!r} ({request.task_name}, {where}) "
            f"failed: {type(exc).__name__}: {exc}"
        )
    error = SandboxLaunchError(message, run_name=request.name)
    error.__cause__ = exc
    return error


async def start_flyte(request: LaunchRequest, org: str) -> FlyteLaunch:
    """Submit ``request`` as a run of its deployed task; the launch follows it from here."""
    import flyte
    import flyte.remote as fr

    version = request.task_version
    pick: dict[str, Any] = (
        {"auto_version": version} if version in ("latest", "current") else {"version": version}
    )
    try:
        task: Any = await fr.TaskDetails.get(
            name=request.task_name, project=request.project, domain=request.domain, **pick
        ).fetch.aio()
        if request.resources is not None:
            # CreateRun then carries the whole (resized) spec instead of the task's id.
            task = task.override(resources=request.resources)
        runner = flyte.with_runcontext(
            mode="remote", name=request.name, project=request.project, domain=request.domain
        )
        run = await runner.run.aio(task, **request.inputs)
    except Exception as exc:
        raise _launch_error(request, exc) from exc
    try:
        url: str | None = run.url
    except Exception:  # no console configured: the run is there all the same
        url = None
    launch = FlyteLaunch(request.name, run, request.resolver, org, url=url)
    launch.start()
    return launch


class FlyteLaunch(Launch):
    """A run on a cluster, watched until it ends."""

    def __init__(
        self, name: str, run: Any, resolver: EndpointResolver, org: str, *, url: str | None
    ) -> None:
        super().__init__(name, url=url)
        self._run = run
        self._resolver = resolver
        self._org = org
        self._watcher: asyncio.Task[None] | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._pod: PodRef | None = None

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """Follow the run's action until it ends, re-opening the stream when it breaks."""
        delay = 0.2
        while not self.ended.done():
            try:
                async with contextlib.aclosing(self._run.watch()) as updates:
                    async for details in updates:
                        delay = 0.2
                        self._update(details.pb2)
                        if self.ended.done():
                            return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.set_phase(self.phase, f"watch interrupted ({exc}); retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _update(self, details: Any) -> None:
        phase = _phase_name(details.status.phase)
        attempt = details.attempts[-1] if details.attempts else None
        detail = ""
        if attempt is not None and attempt.cluster_events:
            detail = attempt.cluster_events[-1].message
        self.set_phase(phase, detail)
        pod = self._pod_of(attempt)
        if pod is not None and self._pod is None:
            self._pod = pod
            self.note(Stage.POD, f"{pod.namespace}/{pod.pod_name}")
            self._resolving = asyncio.ensure_future(self._resolve(pod))
        if phase in _STAGES and _STAGES[phase] != Stage.POD:
            self.note(_STAGES[phase], detail)
        if phase in ("SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "RECOVERED"):
            self._final(phase, details, attempt)

    def _pod_of(self, attempt: Any) -> PodRef | None:
        if attempt is None:
            return None
        context = attempt.log_context
        for pod in context.pods:
            if pod.pod_name and pod.pod_name == context.primary_pod_name:
                return PodRef(namespace=pod.namespace, pod_name=pod.pod_name, org=self._org)
        return None

    def _final(self, phase: str, details: Any, attempt: Any) -> None:
        if phase == "FAILED":
            reason = details.error_info.message or (attempt.error_info.message if attempt else "")
        elif phase == "ABORTED":
            reason = details.abort_info.reason or "the run was aborted"
        elif phase == "TIMED_OUT":
            reason = "the task's hard ceiling (24 h) ended it"
        else:
            reason = "its server stopped at the session's soft timeout"
        if self._resolving is not None:
            self._resolving.cancel()
        self.finished(phase, reason)

    async def _resolve(self, pod: PodRef) -> None:
        try:
            resolved = await self._resolver.resolve(pod)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = RuntimeError(
                f"cannot find the endpoint of sandbox run {self.name!r} (pod "
                f"{pod.namespace}/{pod.pod_name}) with the {self._resolver.name} resolver: {exc}"
            )
            error.__cause__ = exc
            self.failed_to_resolve(error)
            return
        self.resolved(Endpoint(url=resolved.url, ip=resolved.ip, work_dir=SERVER_WORK_DIR))

    async def abort(self, reason: str) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
        if self.ended.done():
            return
        await self._run.abort.aio(reason=reason)
        if self._watcher is not None:  # it ends with the run; do not let it linger past that
            asyncio.get_running_loop().call_later(_AFTER_ABORT_S, self._watcher.cancel)
