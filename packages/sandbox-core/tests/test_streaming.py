"""Live streaming: output reaches the caller as it is produced, in order, lines intact
(reference-api §2.7; ARCHITECTURE "Streaming is live")."""

from __future__ import annotations

import time

import anyio
import pytest

pytestmark = pytest.mark.anyio

# Generous bounds: the line must arrive long before the 2 s sleep ends, even on a slow,
# loaded 2-core machine.
EARLY = 0.75
SLEEP = 1.5


async def test_readline_gets_a_line_before_the_process_ends(any_sbx) -> None:
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run(f"echo first; sleep {SLEEP}; echo second")
        assert proc.stdout is not None
        first = await proc.stdout.readline()
        first_at = time.monotonic() - start
        assert first == b"first\n"
        assert first_at < EARLY, f"first line took {first_at:.2f}s: output is not live"
        assert proc.returncode is None  # still sleeping
        second = await proc.stdout.readline()
        assert second == b"second\n"
        assert time.monotonic() - start >= SLEEP * 0.9
        assert await proc.stdout.readline() == b""
        assert await proc.wait() == 0


async def test_iter_stdout_lines_is_live_and_keeps_newlines(any_sbx) -> None:
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run(f"echo line1; sleep {SLEEP}; echo line2")
        seen: list[tuple[str, float]] = []
        async for line in proc.iter_stdout_lines():
            seen.append((line, time.monotonic() - start))
        assert [line for line, _ in seen] == ["line1\n", "line2\n"]
        assert seen[0][1] < EARLY, f"first line took {seen[0][1]:.2f}s: output is not live"
        assert seen[1][1] >= SLEEP * 0.9
        assert await proc.wait() == 0


async def test_iter_stderr_lines_is_live(any_sbx) -> None:
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run(f"echo e1 >&2; sleep {SLEEP}; echo e2 >&2")
        times = []
        lines = []
        async for line in proc.iter_stderr_lines():
            lines.append(line)
            times.append(time.monotonic() - start)
        assert lines == ["e1\n", "e2\n"]
        assert times[0] < EARLY
        assert await proc.wait() == 0


async def test_python_flushed_output_is_live(any_sbx) -> None:
    with anyio.fail_after(20):
        proc = await any_sbx.run(
            f"import time\nprint('ready', flush=True)\ntime.sleep({SLEEP})\nprint('done')",
            script_type="python",
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        ready_at = time.monotonic()
        assert proc.returncode is None
        assert await proc.stdout.readline() == b"done\n"
        # "ready" was delivered while the interpreter slept, not together with "done".
        assert time.monotonic() - ready_at >= SLEEP * 0.8
        assert await proc.wait() == 0


async def test_last_line_without_newline_is_yielded(any_sbx) -> None:
    proc = await any_sbx.run("printf 'a\\nb\\n\\nc'")
    lines = [line async for line in proc.iter_stdout_lines()]
    assert lines == ["a\n", "b\n", "\n", "c"]
    assert await proc.wait() == 0


async def test_many_lines_arrive_in_order(any_sbx) -> None:
    proc = await any_sbx.run("i=0; while [ $i -lt 5000 ]; do echo line-$i; i=$((i+1)); done")
    lines = [line async for line in proc.iter_stdout_lines()]
    assert lines == [f"line-{i}\n" for i in range(5000)]
    assert await proc.wait() == 0


async def test_stdout_and_stderr_interleave_in_production_order(any_sbx) -> None:
    """Reading both streams concurrently sees the lines in the order they were written."""
    script = "; ".join(f"echo o{i}; sleep 0.2; echo e{i} >&2; sleep 0.2" for i in range(3))
    order: list[str] = []
    with anyio.fail_after(20):
        proc = await any_sbx.run(script)

        async def pump(lines) -> None:  # type: ignore[no-untyped-def]
            async for line in lines:
                order.append(line.strip())

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, proc.iter_stdout_lines())
            tg.start_soon(pump, proc.iter_stderr_lines())
        assert await proc.wait() == 0
    assert order == ["o0", "e0", "o1", "e1", "o2", "e2"]


async def test_slow_lines_arrive_one_by_one(any_sbx) -> None:
    with anyio.fail_after(20):
        start = time.monotonic()
        proc = await any_sbx.run("for i in 1 2 3; do echo $i; sleep 0.3; done")
        arrivals = []
        async for line in proc.iter_stdout_lines():
            arrivals.append((line, time.monotonic() - start))
        await proc.wait()
    assert [line for line, _ in arrivals] == ["1\n", "2\n", "3\n"]
    # Spread out over time, not delivered in one batch at exit.
    assert arrivals[2][1] - arrivals[0][1] >= 0.45
    assert arrivals[0][1] < EARLY


async def test_partial_read_then_communicate_returns_the_rest(any_sbx) -> None:
    proc = await any_sbx.run("echo one; echo two; echo three; echo err >&2")
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"one\n"
    out, err = await proc.communicate()
    assert out == b"two\nthree\n"
    assert err == b"err\n"


async def test_read_n_bytes(any_sbx) -> None:
    proc = await any_sbx.run("printf abcdef")
    assert proc.stdout is not None
    chunks = []
    while chunk := await proc.stdout.read(2):
        assert len(chunk) <= 2
        chunks.append(chunk)
    assert b"".join(chunks) == b"abcdef"
    assert proc.stdout.at_eof()
    assert await proc.wait() == 0


async def test_utf8_split_across_chunks_is_decoded(any_sbx) -> None:
    # Multi-byte characters written one byte at a time must still decode cleanly.
    proc = await any_sbx.run(
        "import sys, time\n"
        "data = 'héllo wörld ✓\\n'.encode()\n"
        "for b in data:\n"
        "    sys.stdout.buffer.write(bytes([b])); sys.stdout.flush(); time.sleep(0.001)\n",
        script_type="python",
    )
    lines = [line async for line in proc.iter_stdout_lines()]
    assert lines == ["héllo wörld ✓\n"]


async def test_streaming_a_flood_without_reading_does_not_block_exit(any_sbx) -> None:
    """A process writing more than a pipe holds finishes once the caller waits."""
    with anyio.fail_after(30):
        proc = await any_sbx.run("head -c 10000000 /dev/zero; echo done >&2")
        code = await proc.wait()
    assert code == 0
