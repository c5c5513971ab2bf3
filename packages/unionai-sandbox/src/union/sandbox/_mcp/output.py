"""A run's output as a model should see it: the head and the tail, with what was cut said
plainly, and the whole stream kept in a file of the work dir once it outgrows that.

A :class:`Spool` takes one stream's chunks as they arrive. Until the stream is longer than
``head + tail`` bytes it keeps all of it in memory; past that it keeps the first ``head``
bytes, a rolling ``tail``, counts what goes between, and starts a file writer (the caller's
``open_file``) that receives the whole stream from its first byte, up to ``file_cap`` bytes.
So the server's memory per stream is bounded by ``head + tail`` whatever the run prints,
and a run that prints a little costs no file at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = [
    "FileSink",
    "Sink",
    "Spool",
    "StreamText",
    "utf8_end",
    "utf8_head",
    "utf8_start",
    "utf8_tail",
]


class Sink(Protocol):
    """Where an overflowing stream's bytes go (see :class:`.slot.SessionSlot`)."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> str | None:
        """Finish the file; an error text if it could not be written whole."""


#: Opens the file a stream overflows into: ``(stream name) -> (sink, path shown to the model)``.
FileSink = Callable[[str], Awaitable[tuple[Sink, str]]]


def utf8_end(data: bytes) -> int:
    """Where ``data`` ends without a multi-byte UTF-8 character cut in two."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < need:
                end -= back
            break
    return end


def utf8_start(data: bytes) -> int:
    """Where ``data`` starts without the end of a character cut in two (at most 3 bytes)."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1
    return start


def utf8_head(data: bytes) -> str:
    """``data`` decoded, without a multi-byte character cut at its end."""
    return data[: utf8_end(data)].decode("utf-8", "replace")


def utf8_tail(data: bytes) -> str:
    """``data`` decoded, without a multi-byte character cut at its start."""
    return data[utf8_start(data) :].decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class StreamText:
    """One stream as reported: the text shown (trimmed), its size, and where the whole of
    it is (``file``, relative to the work dir) when it was trimmed."""

    name: str
    text: str
    total_bytes: int
    total_lines: int
    trimmed: bool
    file: str | None = None
    file_note: str | None = None

    def structured(self) -> dict[str, object]:
        out: dict[str, object] = {
            "text": self.text,
            "bytes": self.total_bytes,
            "lines": self.total_lines,
            "trimmed": self.trimmed,
        }
        if self.file is not None:
            out["file"] = self.file
        if self.file_note:
            out["file_note"] = self.file_note
        return out


class Spool:
    """One output stream of a run (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        head: int,
        tail: int,
        file_cap: int,
        open_file: FileSink | None,
        live: int = 2048,
    ) -> None:
        self.name = name
        self._head_limit = head
        self._tail_limit = tail
        self._file_cap = file_cap
        self._open_file = open_file
        self._live_limit = live
        self._kept = bytearray()  # everything, until it outgrows head + tail
        self._head = b""
        self._tail = bytearray()
        self._live = bytearray()  # what arrived since the last progress report
        self._live_dropped = False
        self.total = 0
        self.lines = 0
        self._overflowed = False
        self._sink: Sink | None = None
        self._file: str | None = None
        self._file_written = 0
        self._file_error: str | None = None

    async def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the stream (waits while the file writer catches up)."""
        self.total += len(chunk)
        self.lines += chunk.count(b"\n")
        self._remember_live(chunk)
        if not self._overflowed:
            self._kept += chunk
            if len(self._kept) <= self._head_limit + self._tail_limit:
                return
            self._overflowed = True
            everything = bytes(self._kept)
            self._kept = bytearray()
            self._head = everything[: self._head_limit]
            self._tail = bytearray(everything[-self._tail_limit :] if self._tail_limit else b"")
            await self._start_file(everything)
            return
        if self._tail_limit:
            self._tail += chunk
            if len(self._tail) > 2 * self._tail_limit:  # trim in batches, not per chunk
                del self._tail[: len(self._tail) - self._tail_limit]
        await self._to_file(chunk)

    def _remember_live(self, chunk: bytes) -> None:
        self._live += chunk
        if len(self._live) > 2 * self._live_limit:
            del self._live[: len(self._live) - self._live_limit]
            self._live_dropped = True

    def take_live(self) -> str:
        """The output that arrived since the last call (its latest part when it was long)."""
        if not self._live:
            return ""
        data = bytes(self._live[-self._live_limit :])
        cut = self._live_dropped or len(self._live) > self._live_limit
        self._live.clear()
        self._live_dropped = False
        return ("..." if cut else "") + (utf8_tail(data) if cut else utf8_head(data))

    async def _start_file(self, everything: bytes) -> None:
        if self._open_file is None:
            return
        try:
            self._sink, self._file = await self._open_file(self.name)
        except Exception as exc:  # the file is a convenience: the run goes on without it
            self._file_error = f"could not save the full {self.name}: {exc}"
            return
        await self._to_file(everything)

    async def _to_file(self, data: bytes) -> None:
        if self._sink is None or self._file_written >= self._file_cap:
            return
        data = data[: self._file_cap - self._file_written]
        self._file_written += len(data)
        try:
            await self._sink.write(data)
        except Exception as exc:
            self._file_error = f"could not save the full {self.name}: {exc}"
            self._sink = None

    async def finish(self) -> StreamText:
        """The stream as reported, once it ended (closes the file, if any)."""
        note = self._file_error
        if self._sink is not None:
            error = await self._sink.close()
            note = note or error
            if self._file_written < self.total and not error:
                note = (
                    f"the file holds the first {self._file_written:,} bytes; the remaining "
                    f"{self.total - self._file_written:,} were not saved (over the "
                    f"{self._file_cap:,}-byte cap)"
                )
        if not self._overflowed:
            text = utf8_head(bytes(self._kept)) if self._kept else ""
            return StreamText(self.name, text, self.total, self.lines, False)
        tail = bytes(self._tail[-self._tail_limit :]) if self._tail_limit else b""
        head_text, tail_text = utf8_head(self._head), utf8_tail(tail)
        cut_bytes = self.total - len(self._head) - len(tail)
        cut_lines = self.lines - self._head.count(b"\n") - tail.count(b"\n")
        saved = self._file if self._file is not None and self._file_error is None else None
        where = (
            f"; the whole {self.name} is in the file {saved} (read_file with offset, or "
            f"run_shell with grep / sed -n on it)"
            if saved
            else ""
        )
        marker = (
            f"\n[... {cut_bytes:,} bytes ({max(cut_lines, 0):,} line breaks) cut from the "
            f"middle of {self.name}: {self.total:,} bytes in all, the first "
            f"{len(self._head):,} and the last {len(tail):,} are shown{where} ...]\n"
        )
        return StreamText(
            self.name,
            head_text + marker + tail_text,
            self.total,
            self.lines,
            True,
            saved,
            note,
        )
