"""The stdio transport: the SDK's ``stdio_server`` framing over the process's standard
input and output, read and written on the event loop instead of through worker threads.

Why: the SDK wraps stdin and stdout in ``anyio.wrap_file``, one thread hop per line read
and two per message written; on this machine class that is about 1.2 ms of a tool call's
round trip, most of the MCP overhead over an in-process ``run()``. When stdin and stdout
are pipes or sockets (as every MCP client starts a server), they are read and written here
with non-blocking calls and ``anyio.wait_readable`` / ``wait_writable``; anything else (a
terminal, a file) goes the SDK's way.

Either way the descriptors are claimed as the SDK claims them: the protocol moves to
private duplicates, fd 0 reads ``/dev/null`` and fd 1 goes to stderr, so nothing the
server or a library prints, and no process it starts, can write into the protocol stream
or hold the client's pipe open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server

__all__ = ["stdio_transport"]

_READ = 1 << 16


@contextlib.asynccontextmanager
async def stdio_transport() -> AsyncIterator[tuple[Any, Any]]:
    """``(read_stream, write_stream)`` for :meth:`mcp.server.Server.run`."""
    if not (_pollable(0) and _pollable(1)):
        async with stdio_server() as streams:
            yield streams
        return
    with _claimed(0, os.O_RDONLY) as fd_in, _claimed(1, os.O_WRONLY) as fd_out:
        reader, writer = _Lines(fd_in), _Writer(fd_out)
        async with stdio_server(stdin=cast(Any, reader), stdout=cast(Any, writer)) as streams:
            yield streams


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.contextmanager
def _claimed(fd: int, diversion: int) -> Any:
    """A private non-blocking duplicate of ``fd``; ``fd`` itself points at ``/dev/null``
    (stdin) or stderr (stdout) meanwhile. Restored on exit, flags included (the open file
    description may be shared with the process that started us)."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    flags = fcntl.fcntl(private, fcntl.F_GETFL)
    target = os.open(os.devnull, os.O_RDONLY) if diversion == os.O_RDONLY else os.dup(2)
    try:
        os.dup2(target, fd)
    finally:
        os.close(target)
    try:
        os.set_blocking(private, False)
        yield private
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(private, fcntl.F_SETFL, flags)
            os.dup2(private, fd)
        os.close(private)


class _Lines:
    """``async for line in reader`` over a non-blocking descriptor (what the SDK's framing
    reads), decoded as UTF-8 as the SDK's own wrapper does."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._eof = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line.decode("utf-8", "replace")
            if self._eof:
                if not self._buffer:
                    raise StopAsyncIteration
                line = bytes(self._buffer)
                self._buffer.clear()
                return line.decode("utf-8", "replace")
            try:
                chunk = os.read(self._fd, _READ)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True


class _Writer:
    """``write`` / ``flush`` of a text file over a non-blocking descriptor: a message is
    written whole before the next one (the SDK writes from one task)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except BrokenPipeError:
                # The client is gone: the SDK's writer ends quietly on this, and the server
                # ends with the client's end of stdin.
                raise anyio.ClosedResourceError from None
            data = data[written:]

    async def flush(self) -> None:
        pass  # nothing is buffered here
