"""The session behind one MCP connection: opened by the first tool call that needs it,
replaced by ``reset_session``, closed when the connection (or the server) ends.

Opening goes through the CLI's own :func:`~union.sandbox._cli_sessions.open_session`
(on-device, ``--endpoint`` or ``--flyte``), entered on an exit stack that :meth:`close`
unwinds, so a session opened by one tool call's task is closed from another's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .output import Sink

__all__ = ["OUTPUT_DIR", "SessionSlot"]

#: Where trimmed output is kept whole, under the work dir.
OUTPUT_DIR = ".mcp-output"
#: Chunks of an output file in flight to ``put_bytes`` (back-pressure on the run's reader).
_FILE_BUFFER = 8


class SessionSlot:
    """One connection's session, lazily opened (see the module docstring)."""

    def __init__(self, opener: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> None:
        self._opener = opener
        self._lock = anyio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._session: Any = None
        self._calls = 0
        self._output_ready = False
        self._closed = False

    @property
    def session(self) -> Any:
        """The open session, or ``None``."""
        return self._session

    async def get(self) -> Any:
        """The session, opened now if it is not yet (concurrent first calls open one)."""
        session = self._session
        if session is not None:
            return session
        async with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down: no new sandbox session")
            if self._session is None:
                stack = contextlib.AsyncExitStack()
                try:
                    self._session = await stack.enter_async_context(self._opener())
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await stack.aclose()
                    raise
                self._stack = stack
                self._output_ready = False
            return self._session

    async def reset(self) -> bool:
        """Close the session (its runs are killed); the next call opens a fresh one. True
        when one was open."""
        async with self._lock:
            return await self._close_locked()

    async def close(self) -> None:
        """Close for good (idempotent): the connection or the server is ending."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                await self._close_locked()

    async def _close_locked(self) -> bool:
        stack, self._stack, self._session = self._stack, None, None
        if stack is None:
            return False
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        return True

    def next_call(self) -> int:
        """A number for the next run of this connection (names its output files)."""
        self._calls += 1
        return self._calls

    def output_files(
        self, session: Any, call: int, tg: anyio.abc.TaskGroup
    ) -> Callable[[str], Any]:
        """The ``open_file`` of a run's :class:`~.output.Spool`: a file
        ``.mcp-output/<call>-<stream>.txt`` of the work dir, written with ``put_bytes`` by a
        task of ``tg`` as the stream arrives."""

        async def open_file(name: str) -> tuple[Sink, str]:
            await self._ensure_output_dir(session)
            relative = f"{OUTPUT_DIR}/{call}-{name}.txt"
            sink = _PutSink(session, os.path.join(session.work_dir, relative))
            tg.start_soon(sink.run)
            return sink, relative

        return open_file

    async def _ensure_output_dir(self, session: Any) -> None:
        if self._output_ready and session is self._session:
            return
        # Made by a run, so that it is the sandbox's (as every directory of the work dir).
        done = await session.exec(f"mkdir -p {OUTPUT_DIR}", network_mode="blocked", timeout_s=30)
        if not done.ok:
            raise OSError(f"mkdir {OUTPUT_DIR}: {done.stderr.strip() or done.returncode}")
        self._output_ready = session is self._session


class _PutSink:
    """A file of the work dir written as chunks arrive (``put_bytes`` of an async
    iterable): the run's reader waits while the write lags by more than a few chunks."""

    def __init__(self, session: Any, path: str) -> None:
        self._session = session
        self._path = path
        self._send, self._receive = anyio.create_memory_object_stream[bytes](_FILE_BUFFER)
        self._done = anyio.Event()
        self._error: str | None = None

    async def run(self) -> None:
        try:
            await self._session.put_bytes(self._path, self._receive)
        except Exception as exc:
            self._error = f"could not save it to {self._path}: {exc}"
        finally:
            self._receive.close()
            self._done.set()

    async def write(self, data: bytes) -> None:
        await self._send.send(data)

    async def close(self) -> str | None:
        self._send.close()
        await self._done.wait()
        return self._error
