"""The process handle every transport returns from ``run()``, and ``ExecResult``.

A :class:`Process` is fed by a transport through three small callables (pull a chunk of
stdout, pull a chunk of stderr, wait for the exit record) plus a signal sender, so the
on-device engine and the remote client share one implementation of the reading, capping and
termination rules.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import io
import signal as _signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol

import anyio

from .errors import ExecutionError
from .policy import validate_signal

__all__ = [
    "ExecResult",
    "InputStream",
    "IsolationReport",
    "OutputStream",
    "Process",
    "Termination",
    "TerminationKind",
]

Pull = Callable[[], Awaitable[bytes]]
"""Return the next chunk of a stream; ``b""`` means end of stream."""
Capture = Callable[[bytes], bool]
"""Take a chunk into a captured stream's buffer; ``False``: busy, the chunk is not taken."""


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of ``exec()``: shaped like :class:`subprocess.CompletedProcess`."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0


class TerminationKind(str, enum.Enum):
    """Why a sandboxed process ended. Documented in ``docs/limits.md``."""

    EXIT = "exit"
    """The process exited by itself (any exit code)."""
    SIGNAL = "signal"
    """A signal ended it (sent by itself, another sandboxed process, or ``send_signal``)."""
    TIMEOUT = "timeout"
    """The per-run ``timeout_s`` expired; the whole process tree was killed."""
    KILLED = "killed"
    """``kill()`` was called, or the session closed while it ran."""
    OOM = "oom"
    """The memory limit was hit and the kernel's OOM killer ended it."""
    PIDS_LIMIT = "pids-limit"
    """It could not create more processes (pids limit) and died of it."""
    FSIZE_LIMIT = "fsize-limit"
    """It wrote past the file-size limit (SIGXFSZ)."""
    CANCELLED = "cancelled"
    """The caller's waiting task was cancelled; the tree was killed."""
    SANDBOX_FAILURE = "sandbox-failure"
    """The sandbox could not start or supervise it (spawn failure, lost stream, ...)."""

    @property
    def abnormal(self) -> bool:
        """True when the process never ran to a real exit."""
        return self in (TerminationKind.CANCELLED, TerminationKind.SANDBOX_FAILURE)


@dataclasses.dataclass(frozen=True)
class Termination:
    """How a process ended. ``returncode`` follows the ``128 + signo`` rule for signals."""

    kind: TerminationKind
    returncode: int
    signal: int | None = None
    detail: str = ""
    runtime_ms: int | None = None

    @property
    def reason(self) -> str:
        """The ``termination_reason`` string: ``""`` for a clean exit, else a short reason."""
        kind = self.kind
        if kind is TerminationKind.EXIT:
            return "" if self.returncode == 0 else f"exit={self.returncode}"
        if kind is TerminationKind.SIGNAL and self.signal is not None:
            return f"signal={_signal_name(self.signal)}"
        return f"{kind.value}: {self.detail}" if self.detail else kind.value


def _signal_name(signo: int) -> str:
    try:
        return _signal.Signals(signo).name
    except ValueError:
        return str(signo)


@dataclasses.dataclass(frozen=True)
class IsolationReport:
    """What the backend actually applied to a run, so nobody has to guess."""

    backend: str
    namespaces: tuple[str, ...] = ()
    landlock_abi: int | None = None
    seccomp: bool = False
    no_new_privs: bool = False
    capabilities_dropped: bool = False
    uid: int | None = None
    """Host uid the sandboxed process runs as."""
    limits: dict[str, str] = dataclasses.field(default_factory=dict)
    """Each enforced limit and the mechanism that enforces it (``rlimit``, ``cgroup-v1``...)."""
    fresh_tmp: bool = False
    network: str = "blocked"
    gpus: int = 0
    """NVIDIA devices bound into the sandbox."""


def _prime_malloc() -> None:
    """Free one 4 MiB block, once per process, so that glibc's malloc serves the chunks a
    stream moves (up to a MiB, allocated and freed at the rate of the output) from its heap
    rather than mapping and unmapping each one: glibc raises its mmap threshold to the size
    of the largest mapped block freed so far (``M_MMAP_THRESHOLD``, dynamic by default), so
    without this the threshold stays at 128 KiB until something happens to free a big block,
    and a 256 MiB stream then pays a fresh mapping and its page faults for every chunk
    (measured: remote streaming at ~60% of the speed it has once primed). ``bytes(n)`` of
    this size is a fresh zero mapping (calloc): it costs two system calls, touches no page,
    and allocators other than glibc's ignore it."""
    block = bytes(4 << 20)
    del block


class OutputStream:
    """A captured ``stdout`` / ``stderr``, read live as the process writes.

    Reading applies back-pressure: the sandboxed process blocks when nobody reads. Data
    buffered without being read (``communicate()``, ``wait()``) is capped at ``limit`` bytes;
    the rest is dropped and :attr:`truncated` set, so a flood cannot exhaust the caller.
    Once something was dropped, everything after it is too: reads give a prefix of the
    output, never output with a gap in it.

    Captured output is written once, into a :class:`io.BytesIO` whose buffer becomes the
    ``bytes`` that ``read()`` returns (no second copy, no second allocation of that size):
    what a capture costs beyond reading is one pass over memory the caller keeps anyway.
    """

    #: Whether this process's allocator was primed for output-sized blocks (see
    #: :func:`_prime_malloc`).
    _malloc_primed: ClassVar[bool] = False

    def __init__(self, pull: Pull, *, limit: int) -> None:
        if not OutputStream._malloc_primed:
            OutputStream._malloc_primed = True
            _prime_malloc()
        self._pull = pull
        self._limit = limit
        # Unread data, in order: what a reader pulled and did not take yet (the rest of a
        # chunk, a partial line), then output captured while nobody read.
        self._buf = bytearray()
        self._kept: io.BytesIO | None = None
        self._kept_size = 0
        self._eof = False
        # Fast acquire: an uncontended read takes the lock without a trip through the event
        # loop (a waiter still gets it handed over on release).
        self._lock = anyio.Lock(fast_acquire=True)
        self.truncated = False
        # Reads and pulls since this stream last let other tasks run. Data that is already
        # there (buffered lines, a pipe a chatty command keeps full) is returned without
        # waiting, so a reader would never let another task (a kill(), its own deadline)
        # run; a checkpoint on every read would slow line iteration: one every
        # _STEPS_PER_CHECKPOINT (inline: a coroutine call per line costs too).
        self._steps = 0

    def at_eof(self) -> bool:
        """True when the stream ended and everything buffered was read."""
        return self._eof and not self._buf and not self._kept_size

    async def _fill(self, *, capped: bool = True) -> bool:
        """Pull one chunk into the buffer (``capped``: as captured output, up to the cap);
        False at end of stream."""
        if self._eof:
            return False
        self._steps += 1
        if self._steps >= _STEPS_PER_CHECKPOINT:
            self._steps = 0
            await anyio.sleep(0)  # noqa: ASYNC115 (anyio.lowlevel costs ~2 ms of import)
        chunk = await self._pull()
        if not chunk:
            self._eof = True
            return False
        if capped:
            self._capture(chunk)
        elif not self.truncated:  # see _capture
            self._buf += chunk
        return True

    def _capture(self, chunk: bytes) -> None:
        if self.truncated:
            return  # after a dropped piece nothing is kept: what is kept is a prefix
        room = self._limit - len(self._buf) - self._kept_size
        if room < len(chunk):
            self.truncated = True
            if room <= 0:
                return
            chunk = memoryview(chunk)[:room]  # type: ignore[assignment]
        if self._kept is None:
            self._kept = io.BytesIO()
        self._kept_size += self._kept.write(chunk)

    def _capture_if_idle(self, chunk: bytes) -> bool:
        """Buffer a chunk the driver already pulled, as :meth:`_fill` would; refused
        (``False``) while a reader holds the stream, whose next pull takes it instead."""
        if self._lock.locked():
            return False
        self._capture(chunk)
        return True

    def _unkeep(self) -> None:
        """Move captured output behind a reader's remainder, for a reader that takes it
        piece by piece (rare: a read after ``wait()``)."""
        if self._kept is not None:
            with self._kept.getbuffer() as view:
                self._buf += view
            self._kept, self._kept_size = None, 0

    def _take_all(self) -> bytes:
        """Everything unread, as one ``bytes``; captured output without a copy."""
        kept, self._kept, self._kept_size = self._kept, None, 0
        data = kept.getvalue() if kept is not None else b""
        if self._buf:
            data = bytes(self._buf) + data
            self._buf.clear()
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all of the stream, up to the cap, when ``n < 0``); ``b""`` at
        end of stream."""
        self._steps += 1
        if self._steps >= _STEPS_PER_CHECKPOINT:
            self._steps = 0
            await anyio.sleep(0)  # noqa: ASYNC115 (anyio.lowlevel costs ~2 ms of import)
        async with self._lock:
            if n < 0:
                while await self._fill():
                    pass
                return self._take_all()
            if not self._buf and self._kept is not None:
                # Output captured while nobody read (a remote driver's chunks arrive between
                # reads): hand it over as it is when it fits, else split it once.
                data = self._take_all()
                if len(data) <= n:
                    return data
                self._buf += memoryview(data)[n:]
                return data[:n]
            self._unkeep()
            if not self._buf:
                if self._eof:
                    return b""
                # Fast path: hand a fresh chunk over as-is when it fits.
                chunk = await self._pull()
                while chunk and self.truncated:
                    # Captured output overflowed (wait() took it while nobody read): a
                    # piece is gone, and what follows it is dropped too, as by the capture.
                    chunk = await self._pull()
                if not chunk:
                    self._eof = True
                    return b""
                if len(chunk) <= n:
                    return chunk
                self._buf += chunk
            view = memoryview(self._buf)
            data = bytes(view[:n])
            view.release()
            del self._buf[:n]
            return data

    async def readline(self) -> bytes:
        """One line including its ``\\n`` (the last line may lack it); ``b""`` at the end.
        A line longer than the cap comes out in pieces of about the cap."""
        self._steps += 1
        if self._steps >= _STEPS_PER_CHECKPOINT:
            self._steps = 0
            await anyio.sleep(0)  # noqa: ASYNC115 (anyio.lowlevel costs ~2 ms of import)
        async with self._lock:
            self._unkeep()
            start = 0
            while True:
                index = self._buf.find(b"\n", start)
                if index >= 0:
                    line = bytes(self._buf[: index + 1])
                    del self._buf[: index + 1]
                    return line
                if len(self._buf) >= self._limit:
                    # No line end within the cap: hand this piece out.
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                start = len(self._buf)
                # Not capped: the caller consumes what it reads.
                if not await self._fill(capped=False):
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line

    async def _drain(self) -> None:
        async with self._lock:
            while await self._fill():
                pass


_STEPS_PER_CHECKPOINT = 256


def _capture_of(stream: OutputStream | None) -> Capture | None:
    if stream is None or stream._eof:  # not captured, or read to the end already
        return None
    return stream._capture_if_idle


class InputStream:
    """The writable ``stdin`` of a process started with ``stdin=PIPE``."""

    def __init__(
        self, write: Callable[[bytes], Awaitable[None]], close: Callable[[], Awaitable[None]]
    ):
        self._write = write
        self._close = close
        self._closed = False
        self._lock: anyio.Lock | None = None  # made by the first write

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` (waits while the process is not reading). Writes from
        concurrent tasks go one after the other, each whole."""
        if self._closed:
            raise ValueError("stdin is closed")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"stdin.write() takes bytes, got {type(data).__name__}")
        if self._lock is None:
            self._lock = anyio.Lock(fast_acquire=True)
        async with self._lock:
            await self._write(bytes(data))

    async def aclose(self) -> None:
        """Close stdin: the process reads end-of-file after what writes in progress send
        (it waits for them). Idempotent."""
        if not self._closed:
            self._closed = True
            if self._lock is None:
                await self._close()
            else:
                async with self._lock:
                    await self._close()

    close = aclose

    @property
    def closed(self) -> bool:
        return self._closed


class NetworkLog(Protocol):
    """Where a transport records a run's egress decisions."""

    def snapshot(self) -> Sequence[Any]: ...


class ProcessDriver(Protocol):
    """What a transport provides to drive one :class:`Process`."""

    backend: str

    async def wait_exit(self) -> Termination:
        """Wait for the process to end; never raises for a sandbox failure (it returns a
        ``SANDBOX_FAILURE`` termination instead)."""

    async def send_signal(self, signo: int) -> None:
        """Deliver ``signo`` to the process (and its process group)."""

    async def kill(self, kind: TerminationKind) -> None:
        """Kill the whole process tree now, recording why."""

    async def release(self) -> None:
        """Free transport resources once the process ended and its streams were read."""


class CapturingDriver(ProcessDriver, Protocol):
    """A driver that can take a process's output itself while waiting (both streams come
    on one channel), so that :meth:`Process.wait` needs no drain task per stream."""

    async def wait_exit_capturing(
        self, stdout: Capture | None, stderr: Capture | None
    ) -> Termination:
        """:meth:`wait_exit`, handing each chunk it pulls to ``stdout`` / ``stderr`` (a
        capture that returns ``False`` is busy: the chunk stays for that stream's next
        pull, in order)."""


class Process:
    """A running sandboxed command: a subset of :class:`asyncio.subprocess.Process`.

    ``returncode`` stays ``None`` until the process ends; signals show as ``128 + signo``. A
    non-zero exit is data, never an exception: only :meth:`wait` / :meth:`communicate` raise,
    with :class:`~union.sandbox.core.errors.ExecutionError`, when the process never ran to a real
    exit (:attr:`terminated_abnormally`). Cancelling a waiting task kills the process tree.
    """

    def __init__(
        self,
        driver: ProcessDriver,
        *,
        stdout: OutputStream | None,
        stderr: OutputStream | None,
        stdin: InputStream | None = None,
        isolation: IsolationReport | None = None,
        forward: list[tuple[Pull, Any]] | None = None,
        stdin_data: bytes | None = None,
        network_log: NetworkLog | None = None,
    ) -> None:
        self._driver = driver
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.isolation = isolation
        self.backend: str | None = driver.backend
        self.termination: Termination | None = None
        self._forward = forward or []
        self._stdin_data = stdin_data
        self._network_log = network_log
        self._wait_lock = anyio.Lock(fast_acquire=True)  # see OutputStream._lock

    # -- results -------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """Exit code (``128 + signo`` for signals); ``None`` while running."""
        return None if self.termination is None else self.termination.returncode

    @property
    def termination_reason(self) -> str | None:
        """``""`` for a clean exit, else why it ended (see :class:`TerminationKind`)."""
        return None if self.termination is None else self.termination.reason

    @property
    def runtime_ms(self) -> int | None:
        """Wall-clock run time in milliseconds, measured by the sandbox."""
        return None if self.termination is None else self.termination.runtime_ms

    @property
    def terminated_abnormally(self) -> bool:
        """True when the process never ran to a real exit."""
        return self.termination is not None and self.termination.kind.abnormal

    @property
    def stdout_truncated(self) -> bool:
        """True when captured stdout exceeded the cap and the excess was dropped."""
        return self.stdout is not None and self.stdout.truncated

    @property
    def stderr_truncated(self) -> bool:
        """True when captured stderr exceeded the cap and the excess was dropped."""
        return self.stderr is not None and self.stderr.truncated

    @property
    def network_decisions(self) -> list[Any]:
        """What the run's egress proxies allowed and refused (host, port, allowed, rule or
        reason, bytes), so a policy block can be told from a network failure. Empty for runs
        without proxies (``blocked``, plain ``open``)."""
        return [] if self._network_log is None else list(self._network_log.snapshot())

    # -- control -------------------------------------------------------------------------

    async def send_signal(self, signo: int) -> None:
        """Send ``signo`` (any of 1 to ``signal.NSIG - 1``) to the process group of the
        command; ``SIGKILL`` kills the whole tree. No-op once it ended. The sandbox's own
        processes never receive it: a ``SIGSTOP`` stops the command, not its deadline."""
        signo = validate_signal(signo)
        if self.termination is None:
            await self._driver.send_signal(signo)

    async def terminate(self) -> None:
        """Send SIGTERM."""
        await self.send_signal(_signal.SIGTERM)

    async def kill(self) -> None:
        """Kill the whole process tree (descendants included). No-op once it ended."""
        if self.termination is None:
            await self._driver.kill(TerminationKind.KILLED)

    # -- waiting -------------------------------------------------------------------------

    async def _finish(self) -> Termination:
        """Drain captured streams (so the process never blocks on a full pipe), forward
        inherited ones, and wait for the exit record. Cancellation kills the tree."""
        async with self._wait_lock:
            if self.termination is not None:
                return self.termination
            try:
                capturing = getattr(self._driver, "wait_exit_capturing", None)
                termination: Termination
                if capturing is not None and not self._forward and self._stdin_data is None:
                    termination = await capturing(
                        _capture_of(self.stdout), _capture_of(self.stderr)
                    )
                else:
                    termination = await self._wait_draining()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._driver.kill(TerminationKind.CANCELLED)
                    self.termination = await self._driver.wait_exit()
                    await self._driver.release()
                raise
            self.termination = termination
            await self._driver.release()
            return termination

    async def _wait_draining(self) -> Termination:
        """Wait for the exit while tasks drain the captured streams, forward the inherited
        ones and feed ``stdin_data``."""
        async with anyio.create_task_group() as tg:
            for stream in (self.stdout, self.stderr):
                if stream is not None and not stream._eof:  # read to the end already
                    tg.start_soon(stream._drain)
            for pull, sink in self._forward:
                tg.start_soon(_forward, pull, sink)
            if self._stdin_data is not None and self.stdin is not None:
                tg.start_soon(_feed, self.stdin, self._stdin_data)
                self._stdin_data = None
            termination = await self._driver.wait_exit()
        return termination

    def _check(self) -> None:
        termination = self.termination
        assert termination is not None
        if termination.kind.abnormal:
            raise ExecutionError(
                termination.detail or termination.kind.value,
                backend=self.backend,
                runtime_ms=termination.runtime_ms,
            )

    async def wait(self) -> int:
        """Wait for the process to end and return its exit code. Captured output is kept
        (up to the cap) for a later :meth:`communicate`."""
        await self._finish()
        self._check()
        returncode = self.returncode
        assert returncode is not None
        return returncode

    async def communicate(self) -> tuple[bytes, bytes]:
        """Wait for the end and return ``(stdout, stderr)`` (``b""`` for a stream not
        captured). Raises :class:`ExecutionError` only on abnormal termination.

        Each stream keeps at most the session's ``max_output_bytes``
        (:data:`~union.sandbox.core.constants.MAX_CAPTURED_BYTES`, 256 MiB, by default):
        past it the rest is read and dropped (the command never blocks on it),
        :attr:`stdout_truncated` / :attr:`stderr_truncated` are set, and what is returned
        is the first ``max_output_bytes`` bytes, never output with a gap. The result is the
        capture buffer itself (no copy): a flood on both streams holds about twice the cap
        of the caller's memory until the result is dropped. Read the streams live to avoid
        holding it (reading is never truncated)."""
        await self._finish()
        out = await self.stdout.read() if self.stdout is not None else b""
        err = await self.stderr.read() if self.stderr is not None else b""
        self._check()
        return out, err

    async def communicate_text(
        self, *, encoding: str = "utf-8", errors: str = "replace"
    ) -> tuple[str, str]:
        """:meth:`communicate`, decoded."""
        out, err = await self.communicate()
        return out.decode(encoding, errors), err.decode(encoding, errors)

    async def iter_stdout_lines(
        self, *, encoding: str = "utf-8", errors: str = "replace"
    ) -> AsyncIterator[str]:
        """Yield stdout lines as they arrive, each with its trailing ``\\n``."""
        async for line in _decoded_lines(self.stdout, encoding, errors):
            yield line

    async def iter_stderr_lines(
        self, *, encoding: str = "utf-8", errors: str = "replace"
    ) -> AsyncIterator[str]:
        """Yield stderr lines as they arrive, each with its trailing ``\\n``."""
        async for line in _decoded_lines(self.stderr, encoding, errors):
            yield line

    def __repr__(self) -> str:
        state = "running" if self.termination is None else f"returncode={self.returncode}"
        return f"<Process backend={self.backend} {state}>"


async def _decoded_lines(
    stream: OutputStream | None, encoding: str, errors: str
) -> AsyncIterator[str]:
    if stream is None:
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    async for line in stream:
        yield decoder.decode(line)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


async def _feed(stdin: InputStream, data: bytes) -> None:
    """Write ``stdin=`` bytes, then close; a process that exits without reading is fine."""
    try:
        await stdin.write(data)
    except BrokenPipeError:
        pass
    finally:
        await stdin.aclose()


async def _forward(pull: Pull, sink: Any) -> None:
    """Copy a stream to a caller's file (``INHERIT``) as it arrives."""
    buffer = getattr(sink, "buffer", None)
    while chunk := await pull():
        if buffer is not None:
            buffer.write(chunk)
            buffer.flush()
        else:
            sink.write(chunk.decode("utf-8", "replace"))
            sink.flush()


def default_sink(fd: int) -> Any:
    """The caller's current ``sys.stdout`` (1) or ``sys.stderr`` (2)."""
    return sys.stdout if fd == 1 else sys.stderr
