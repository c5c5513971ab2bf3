"""OutputStream on scripted chunks: lines, pieces of long lines, and the captured prefix."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from union.sandbox.core.process import OutputStream

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
