"""The session contract: what every transport's session offers, and the helpers built on
``run()`` that every transport shares (``exec``, ``run_code``, ``async with``, ``await``)."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from .errors import CommandError
from .process import ExecResult, Process

__all__ = ["Session", "SessionBase"]

_S = TypeVar("_S", bound="SessionBase")


@runtime_checkable
class Session(Protocol):
    """One live sandbox: open once, ``run()`` many times, move files, close."""

    async def open(self) -> Any: ...

    async def close(self) -> None: ...

    async def run(
        self,
        cmd: str,
        *,
        stdout: Any = True,
        stderr: Any = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        timeout_s: float | None = None,
    ) -> Process: ...

    async def exec(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        check: bool = False,
    ) -> ExecResult: ...

    async def run_code(
        self,
        code: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        timeout_s: float | None = None,
    ) -> str: ...

    async def put_bytes(
        self, path: str, data: bytes, *, mode: int = 0o644, overwrite: bool = True
    ) -> int: ...

    async def get_bytes(self, path: str, *, max_bytes: int = 0) -> bytes: ...


class SessionBase(abc.ABC):
    """Shared implementation of the helpers and the lifecycle sugar."""

    @abc.abstractmethod
    async def open(self: _S) -> _S:
        """Open the session (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session (idempotent): running processes are killed."""

    #: Start ``cmd`` and return its :class:`Process`; each transport documents its keywords.
    #: A ``ClassVar``: every transport defines it as a method, never as instance data (so a
    #: pydantic model deriving from this class does not take it for a field).
    run: ClassVar[Callable[..., Awaitable[Process]]]

    async def __aenter__(self: _S) -> _S:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __await__(self: _S) -> Generator[Any, None, _S]:
        return self.open().__await__()

    async def exec(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        check: bool = False,
        **kwargs: Any,
    ) -> ExecResult:
        """Run ``cmd`` to completion and return its output. ``check=True`` raises
        :class:`~union.sandbox.core.errors.CommandError` on a non-zero exit."""
        proc = await self.run(
            cmd,
            stdout=True,
            stderr=True,
            env=env,
            cwd=cwd,
            script_type=script_type,
            network_mode=network_mode,
            network_allowlist=network_allowlist,
            timeout_s=timeout_s,
            **kwargs,
        )
        out, err = await proc.communicate_text()
        assert proc.returncode is not None
        result = ExecResult(proc.returncode, out, err)
        if check and not result.ok:
            raise CommandError(cmd, result)
        return result

    async def run_code(
        self,
        code: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> str:
        """Run Python ``code`` and return its stdout; a non-zero exit raises
        :class:`~union.sandbox.core.errors.CommandError`."""
        result = await self.exec(
            code,
            env=env,
            cwd=cwd,
            script_type="python",
            network_mode=network_mode,
            network_allowlist=network_allowlist,
            timeout_s=timeout_s,
            check=True,
            **kwargs,
        )
        return result.stdout
