"""The launch seam: what ``sb.session()`` asks a launcher for, and what it gets back.

Two launchers implement it: :mod:`._flyte_launch` (the Flyte remote API: a run of the deployed
``sandbox_server`` task on a cluster) and :mod:`._local_launch` (the same task body in a
process of this machine, for development and tests). Both run on the launcher loop
(:mod:`._bridge`); a :class:`Launch` is shared with the caller's loop through thread-safe
state and :class:`concurrent.futures.Future` objects only.
"""

from __future__ import annotations

import abc
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ._errors import SandboxRunEnded
from ._serve import TaskSpec

__all__ = ["Endpoint", "Launch", "LaunchRequest", "Progress", "Stage"]


class Stage:
    """The steps of a launch, in the order they normally happen."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    WAITING = "waiting for resources"
    POD = "pod scheduled"
    IMAGE = "image pulled"
    READY = "server ready"
    ENDED = "ended"


@dataclass(frozen=True)
class Progress:
    """One step of a launch: ``stage`` (a :class:`Stage` value), a human ``detail``, and the
    seconds since the launch started."""

    stage: str
    detail: str
    elapsed_s: float

    def __str__(self) -> str:
        return f"[{self.elapsed_s:6.2f} s] {self.stage}" + (
            f": {self.detail}" if self.detail else ""
        )


@dataclass(frozen=True)
class Endpoint:
    """Where a launched sandbox answers: its URL, pod IP (``""`` when unknown) and work dir."""

    url: str
    ip: str
    work_dir: str


@dataclass(frozen=True)
class LaunchRequest:
    """One session's launch. ``inputs`` are the ``sandbox_server`` task's inputs (the bearer
    token among them: never log a request). ``spec`` is the environment's task spec when the
    caller has it (needed to run the body locally); ``resources`` the per-launch override."""

    name: str
    task_name: str
    inputs: dict[str, Any] = field(repr=False)
    spec: TaskSpec | None = None
    project: str | None = None
    domain: str | None = None
    task_version: str = "latest"
    resources: Any = None
    resolver: Any = None


class Launch(abc.ABC):
    """A submitted sandbox run, as the launcher loop follows it.

    ``endpoint`` resolves once the sandbox can be reached (or fails with
    :class:`SandboxRunEnded` when the run ends first); ``ended`` resolves, with the
    :class:`SandboxRunEnded` describing the end, when the run reaches a final phase.
    """

    def __init__(self, name: str, *, url: str | None = None) -> None:
        self.name = name
        self.url = url
        self.endpoint: concurrent.futures.Future[Endpoint] = concurrent.futures.Future()
        self.ended: concurrent.futures.Future[SandboxRunEnded] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._progress: list[Progress] = []
        self._phase = "SUBMITTED"
        self._detail = ""
        self.note(Stage.SUBMITTED, name)

    # -- state, readable from any thread ------------------------------------------------

    def note(self, stage: str, detail: str = "") -> None:
        """Record a step (once per stage in a row)."""
        with self._lock:
            if self._progress and self._progress[-1].stage == stage:
                return
            self._progress.append(Progress(stage, detail, time.monotonic() - self._t0))

    def set_phase(self, phase: str, detail: str = "") -> None:
        with self._lock:
            self._phase = phase
            self._detail = detail

    @property
    def phase(self) -> str:
        with self._lock:
            return self._phase

    @property
    def progress(self) -> list[Progress]:
        with self._lock:
            return list(self._progress)

    def describe(self) -> str:
        """What the run is doing now, e.g. ``"QUEUED: waiting for a node"``."""
        with self._lock:
            return self._phase + (f": {self._detail}" if self._detail else "")

    # -- transitions (launcher loop) -----------------------------------------------------

    def resolved(self, endpoint: Endpoint) -> None:
        if not self.endpoint.done():
            self.endpoint.set_result(endpoint)

    def finished(self, phase: str, reason: str) -> None:
        """The run reached ``phase`` (final) for ``reason``: fail a pending endpoint wait."""
        if self.ended.done():
            return
        self.set_phase(phase, reason)
        self.note(Stage.ENDED, f"{phase}" + (f": {reason}" if reason else ""))
        error = SandboxRunEnded(
            f"sandbox run {self.name!r} ended {phase}" + (f": {reason}" if reason else ""),
            run_name=self.name,
            phase=phase,
            reason=reason,
        )
        self.ended.set_result(error)
        if not self.endpoint.done():
            self.endpoint.set_exception(error)

    def failed_to_resolve(self, error: BaseException) -> None:
        if not self.endpoint.done():
            self.endpoint.set_exception(error)

    @abc.abstractmethod
    async def abort(self, reason: str) -> None:
        """End the run (launcher loop): returns once the platform accepted the abort (a
        local launch: once its processes are gone)."""
