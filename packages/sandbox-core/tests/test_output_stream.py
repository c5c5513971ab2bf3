"""OutputStream on scripted chunks (lines, pieces of long lines, the captured prefix), and the
"nothing kept after a drop" rule (docs/design.md, Output cap) on a real on-device run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from union import sandbox as sb
from union.sandbox.core.process import OutputStream, Process

pytestmark = pytest.mark.anyio


def scripted(chunks: list[bytes], limit: int) -> OutputStream:
    pending = list(chunks)

    async def pull() -> bytes:
        await anyio.lowlevel.checkpoint()
        return pending.pop(0) if pending else b""

    return OutputStream(pull, limit=limit)


async def test_readline_never_merges_lines_near_the_cap() -> None:
    stream = scripted([b"a\n" + b"b" * 20 + b"\nc"], limit=8)
    assert [line async for line in stream] == [b"a\n", b"b" * 20 + b"\n", b"c"]


async def test_a_line_longer_than_the_cap_comes_in_pieces_without_loss() -> None:
    stream = scripted([b"x" * 5] * 6 + [b"\n"], limit=8)
    pieces = [line async for line in stream]
    assert b"".join(pieces) == b"x" * 30 + b"\n"
    assert not stream.truncated


async def test_what_is_kept_after_an_overflow_is_a_prefix() -> None:
    stream = scripted([b"0000", b"1111", b"2222", b"3333"], limit=6)
    assert await stream.read() == b"000011"  # communicate(): capped
    assert stream.truncated
    assert await stream.read(2) == b""  # the rest is dropped, not served after a gap


async def test_captured_output_follows_what_a_reader_left_in_order() -> None:
    """A reader takes part of a chunk, ``wait()`` captures the rest of the stream: reads
    afterwards give the reader's remainder first, then the captured output, and the cap
    counts both."""
    stream = scripted([b"0000", b"1111", b"2222"], limit=6)
    assert await stream.read(2) == b"00"
    await stream._drain()  # what wait() does while nobody reads
    assert stream.truncated  # 2 + 4 fit, the third chunk does not
    assert await stream.read(3) == b"001"
    assert await stream.read() == b"111"
    assert stream.at_eof()


async def test_captured_output_is_read_as_bytes_whole_or_in_pieces() -> None:
    whole = scripted([b"ab", b"cd\nef", b"\n"], limit=1 << 20)
    await whole._drain()
    data = await whole.read()
    assert type(data) is bytes and data == b"abcd\nef\n"
    pieces = scripted([b"ab", b"cd\nef", b"\n"], limit=1 << 20)
    await pieces._drain()
    assert [line async for line in pieces] == [b"abcd\n", b"ef\n"]
    assert await pieces.read() == b""


# -- on-device: nothing kept after a drop --------------------------------------------------
#
# A real run writes numbered lines in bursts for about two seconds. The caller reads all of
# stdout (``read()``: captured, so capped) under short timeouts until the cap overflowed (a
# piece was dropped), while the run is still writing. Whatever the caller does next
# (reads on in pieces, by lines, or frees some of the buffer and calls ``communicate()``),
# what it gets must continue the prefix it has: output from after the dropped piece is
# dropped too, whichever path takes it (the reader's own pull, a line read, the capture of a
# later ``communicate()`` once there is room again).

CAP = 4096
BURSTS, LINES_PER_BURST = 200, 64
PRODUCER = f"""
import sys, time
n = 0
for burst in range({BURSTS}):
    sys.stdout.write("".join("%07d\\n" % (n + i) for i in range({LINES_PER_BURST})))
    sys.stdout.flush()
    n += {LINES_PER_BURST}
    time.sleep(0.01)
"""
EVERY_LINE = b"".join(b"%07d\n" % i for i in range(BURSTS * LINES_PER_BURST))


async def _read_on(proc: Process) -> bytes:
    assert proc.stdout is not None
    got = bytearray()
    while data := await proc.stdout.read(8):
        got += data
    return bytes(got)


async def _lines_on(proc: Process) -> bytes:
    assert proc.stdout is not None
    return b"".join([line async for line in proc.stdout])


async def _communicate_with_room(proc: Process) -> bytes:
    assert proc.stdout is not None
    freed = await proc.stdout.read(100)  # room in the capture again
    out, _ = await proc.communicate()
    return freed + out


@pytest.mark.parametrize(
    "then",
    [_read_on, _lines_on, _communicate_with_room],
    ids=["read-on", "lines", "communicate-with-room"],
)
async def test_nothing_is_kept_after_a_drop_on_device(
    then: Callable[[Process], Awaitable[bytes]],
) -> None:
    async with sb.on_device.session(backend="bubblewrap", max_output_bytes=CAP) as sbx:
        proc = await sbx.run(PRODUCER, script_type="python")
        assert proc.stdout is not None
        kept = b""
        with anyio.fail_after(30):
            while not proc.stdout_truncated:  # until the capture overflows: a piece is gone
                with anyio.move_on_after(0.1):
                    kept += await proc.stdout.read()  # returns only at the end of the output
        with anyio.fail_after(60):
            received = await then(proc)
            assert await proc.wait() == 0
    assert kept == b""  # the reads were cancelled while the run was still writing
    assert len(received) >= CAP - 100  # what was kept before the drop is still served
    assert EVERY_LINE.startswith(received), (
        f"output from after the dropped piece at byte {_first_difference(received, EVERY_LINE)}"
    )


def _first_difference(got: bytes, expected: bytes) -> int:
    common = min(len(got), len(expected))
    return next((i for i in range(common) if got[i] != expected[i]), common)
