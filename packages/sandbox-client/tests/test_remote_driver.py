"""The remote process driver against scripted response streams: wait() beside readers keeps
output in order and without gaps, and never deadlocks on messages larger than the buffer."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from union.sandbox.client._process import RemoteDriver
from union.sandbox.core.process import OutputStream, Process
from union.sandbox.core.wire import messages as pb

pytestmark = pytest.mark.anyio


class ScriptedCall:
    """Stands in for a StreamCall: the given messages, one per read, each after a yield."""

    def __init__(self, messages: list[pb.ExecuteResponse]) -> None:
        self._messages = messages
        self.closed = False

    async def next(self) -> pb.ExecuteResponse | None:
        await anyio.lowlevel.checkpoint()
        return self._messages.pop(0) if self._messages else None

    async def aclose(self, *, expect_end: bool = False) -> None:
        self.closed = True


class NoSession:
    def __init__(self) -> None:
        self._live: set[Any] = set()


def scripted(messages: list[pb.ExecuteResponse], *, buffer_bytes: int, cap: int) -> Process:
    exit_message = pb.ExecuteResponse(
        termination=pb.Termination(kind=pb.TerminationKind.TERMINATION_KIND_EXIT)
    )
    driver = RemoteDriver(
        NoSession(),  # type: ignore[arg-type]
        ScriptedCall([*messages, exit_message]),  # type: ignore[arg-type]
        backend="scripted",
        execution_id="run",
        buffer_bytes=buffer_bytes,
    )
    return Process(
        driver,
        stdout=OutputStream(driver.pull_stdout, limit=cap),
        stderr=OutputStream(driver.pull_stderr, limit=cap),
    )


async def test_wait_beside_a_reader_keeps_a_prefix() -> None:
    """A reader takes turns with wait(), whose capture overflows the cap: the reader then
    gets a prefix of the output, not the output with a piece cut out of its middle."""
    pieces = [(str(i % 10) * 4).encode() for i in range(20)]
    proc = scripted([pb.ExecuteResponse(stdout=p) for p in pieces], buffer_bytes=1 << 20, cap=10)
    assert proc.stdout is not None
    stdout = proc.stdout
    got: list[bytes] = []

    async def read_in_turns() -> None:
        while data := await stdout.read(2):
            got.append(data)
            await anyio.lowlevel.checkpoint()  # wait() gets its turns

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_in_turns)
            assert await proc.wait() == 0
    received = b"".join(got)
    assert b"".join(pieces).startswith(received), received
    assert proc.stdout_truncated


async def test_messages_larger_than_the_buffer_do_not_deadlock_wait() -> None:
    big = b"e" * 20  # each message alone fills the 10-byte buffer
    messages = [
        pb.ExecuteResponse(stderr=big),
        pb.ExecuteResponse(stderr=big),
        pb.ExecuteResponse(stdout=b"out"),
    ]
    proc = scripted(messages, buffer_bytes=10, cap=1 << 20)
    assert proc.stdout is not None
    stdout = proc.stdout
    read: list[bytes] = []

    async def read_stdout() -> None:
        while data := await stdout.read(1):
            read.append(data)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stdout)
            assert await proc.wait() == 0
        _, err = await proc.communicate()
    assert b"".join(read) == b"out"
    assert err == big + big
