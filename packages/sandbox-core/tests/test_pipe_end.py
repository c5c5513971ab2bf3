"""The host's ends of a run's pipes (``PipeEnd``): once closed, a reader or writer never
touches the descriptor number again, and one waiting on it is woken, not left hanging."""

from __future__ import annotations

import os

import anyio
import pytest

from union.sandbox.core.on_device.engine import PipeEnd

pytestmark = pytest.mark.anyio


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    return read_end, write_end


async def test_a_waiting_reader_gets_end_of_file_when_closed() -> None:
    read_end, write_end = _pipe()  # the write end stays open: no end of file from the kernel
    end = PipeEnd(read_end)
    got: list[bytes] = []
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    got.append(await end.read())

                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                await end.aclose()
    finally:
        os.close(write_end)
    assert got == [b""]
    assert end.fd == -1


async def test_a_waiting_writer_gets_broken_pipe_when_closed() -> None:
    read_end, write_end = _pipe()  # nobody reads: the writer fills the pipe and waits
    end = PipeEnd(write_end)
    raised: list[BaseException] = []
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def write() -> None:
                    try:
                        await end.write_all(b"x" * (4 << 20))
                    except BrokenPipeError as exc:
                        raised.append(exc)

                tg.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                await end.aclose()
    finally:
        os.close(read_end)
    assert len(raised) == 1


async def test_a_closed_end_never_reaches_a_descriptor_that_reuses_its_number() -> None:
    old_read, old_write = _pipe()
    reader, writer = PipeEnd(old_read), PipeEnd(old_write)
    await reader.aclose()
    await writer.aclose()
    await writer.aclose()  # idempotent
    new_read, new_write = _pipe()  # the kernel hands out the lowest free numbers again
    try:
        assert (new_read, new_write) == (old_read, old_write)
        os.write(new_write, b"theirs")
        assert await reader.read() == b""  # not their data
        with pytest.raises(BrokenPipeError):
            await writer.write_all(b"into somebody else's pipe")
        assert os.read(new_read, 100) == b"theirs"  # nothing taken, nothing added
        os.fstat(new_read)
        os.fstat(new_write)  # and neither was closed by the old ends
    finally:
        os.close(new_read)
        os.close(new_write)


async def test_a_wait_on_the_reused_number_is_not_dropped_by_the_woken_one() -> None:
    # anyio's asyncio backend unregisters a woken wait by descriptor number when its task
    # resumes: if the number was reused and waited on meanwhile, that wait was dropped and
    # never woke. aclose() returns only once the woken task has left its wait.
    read_end, write_end = _pipe()
    end = PipeEnd(read_end)
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(end.read)
                await anyio.wait_all_tasks_blocked()
                await end.aclose()
                new_read, new_write = _pipe()
                try:
                    assert new_read == read_end
                    os.write(new_write, b"ready")
                    await anyio.wait_readable(new_read)  # hung here before
                finally:
                    os.close(new_read)
                    os.close(new_write)
    finally:
        os.close(write_end)
