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

import datetime
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, PrivateAttr

from union.sandbox.client import RemoteSession
from union.sandbox.core.constants import SERVER_WORK_DIR
from union.sandbox.core.process import Process
from union.sandbox.core.session import SessionBase

from . import _bridge
from ._errors import SandboxRunEnded
from ._launch import Launch, Progress, Stage
from ._settings import (
    HEALTH_DEADLINE_S,
    RESOLVE_DEADLINE_S,
)

__all__ = ["SandboxSession"]

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
