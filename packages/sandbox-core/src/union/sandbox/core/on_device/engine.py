"""Host side of the per-session supervisor: start it, hand it runs, read their results.

One supervisor process per session (see ``_supervisor.py``). A run costs one message on a
SOCK_SEQPACKET socket carrying the request and the run's pipe ends; the command writes its
stdout/stderr straight into pipes this process reads, and its exit record arrives on a
per-run status pipe, so concurrent runs never contend for a shared reader.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import importlib.machinery
import importlib.util
import marshal
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ..errors import BackendUnavailableError
from ..process import Pull, Termination, TerminationKind

__all__ = ["PipeEnd", "RunChannel", "Supervisor", "SupervisorSpec", "pipe_pull"]

SUPERVISOR_PATH = os.path.join(os.path.dirname(__file__), "_supervisor.py")
# The supervisor runs on this very interpreter, so it can take our compiled code object
# (marshal) instead of compiling its source at every session start (~9 ms here).
_BOOTSTRAP = (
    "# union-sandbox supervisor (its code arrives compiled, on the fd named last)\n"
    "import marshal, os, sys\n"
    "fd = int(sys.argv.pop())\n"
    "code = marshal.loads(os.pread(fd, os.fstat(fd).st_size, 0))\n"
    "os.close(fd)\n"
    "exec(code)\n"
)


def _supervisor_code() -> bytes:
    """The supervisor's compiled code, marshalled. Straight from its bytecode cache when the
    cache is current for the source (the check the import system makes of a timestamp-based
    ``.pyc``): no unmarshalling and marshalling again at every session start. Else through
    the import system's loader, which compiles it and writes the cache, as for any module."""
    cache = importlib.util.cache_from_source(SUPERVISOR_PATH)
    try:
        source = os.stat(SUPERVISOR_PATH)
        with open(cache, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    else:
        current = struct.pack(
            "<4sIII",
            importlib.util.MAGIC_NUMBER,
            0,  # flags: timestamp-based
            int(source.st_mtime) & 0xFFFFFFFF,
            source.st_size & 0xFFFFFFFF,
        )
        if data[:16] == current:
            return data[16:]
    loader = importlib.machinery.SourceFileLoader("_union_sandbox_supervisor", SUPERVISOR_PATH)
    return marshal.dumps(loader.get_code("_union_sandbox_supervisor"))


@functools.lru_cache(maxsize=1)
def _supervisor_code_fd() -> int:
    """A sealed memfd holding the supervisor's compiled code, made once per process."""
    fd = os.memfd_create("union-sandbox-supervisor", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, _supervisor_code())
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


_CHUNK = 1 << 20
# Every record is final: init reports once, and "R" comes only when init died unreported.
_FINAL_RECORDS = (b"E", b"T", b"X", b"R")
_F_SETPIPE_SZ = 1031


@dataclasses.dataclass
class SupervisorSpec:
    """How to start one session's supervisor."""

    backend: str
    argv_prefix: list[str]
    """``bwrap ... --`` for bubblewrap, empty otherwise."""
    python: str
    config: dict[str, Any]
    pass_fds: Sequence[int] = ()
    diagnose: Any = None
    """``callable(detail) -> list[str]``: turn a setup error into host problems and fixes."""
    complete_config: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    """``callable(config, pid) -> config``: what depends on the started process's pid (the
    session's accounting uid)."""
    first_cgroups: Sequence[int] = ()
    """The ``cgroup.procs`` of the session's first run (the caller keeps and closes them):
    the init the supervisor prepares at startup joins them ahead of that run."""


class Waits:
    """The tasks waiting on one descriptor that another task may close. anyio's waits on a
    descriptor that gets closed hang (the event loop stops watching it), and its asyncio
    backend unregisters a woken wait by descriptor number when the task resumes, which would
    drop a later wait on the same number, taken meanwhile, that then never wakes. So whoever
    closes it calls :meth:`release` first: the waiters are woken (``False`` from
    :meth:`wait`) and have left before the number can be reused."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    async def wait(self, wait: Callable[[Any], Awaitable[None]], obj: Any) -> bool:
        """``wait(obj)``; False if :meth:`release` ended it."""
        self.count += 1
        try:
            await wait(obj)
        except anyio.ClosedResourceError:
            return False
        finally:
            self.count -= 1
        return True

    async def release(self, obj: Any) -> None:
        """Wake the waiters on ``obj`` and return once they have left; close it next."""
        if self.count:
            anyio.notify_closing(obj)
            with anyio.CancelScope(shield=True):
                # Polled: each pass lets the woken tasks run; there is nothing to signal
                # (anyio.lowlevel.checkpoint() would import ~2 ms more at start-up).
                while self.count:  # noqa: ASYNC110
                    await anyio.sleep(0)  # noqa: ASYNC115


class PipeEnd:
    """The host's end of one of a run's pipes. Readers and writers reach the descriptor
    only through this object, so once the run is released (:meth:`aclose`) they get end of
    file or :class:`BrokenPipeError`: never the pipe or socket of a later run that took the
    same descriptor number, and never ``EBADF``. A task still waiting on it is woken."""

    __slots__ = ("_waits", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        """The descriptor; -1 once closed."""
        self._waits = Waits()

    async def read(self) -> bytes:
        """The next chunk (``b""``: end of file, or the pipe was closed here)."""
        while True:
            fd = self.fd  # looked up again after every wait: aclose() may have run meanwhile
            if fd < 0:
                return b""
            try:
                return os.read(fd, _CHUNK)
            except BlockingIOError:
                if not await self._waits.wait(anyio.wait_readable, fd):
                    return b""

    async def write_all(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the pipe is full."""
        view = memoryview(data)
        while view:
            fd = self.fd
            if fd < 0:
                raise BrokenPipeError(errno.EPIPE, "the process has ended")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if not await self._waits.wait(anyio.wait_writable, fd):
                    raise BrokenPipeError(errno.EPIPE, "the process has ended") from None

    async def aclose(self) -> None:
        """Close the descriptor (idempotent; from the event loop's thread), a task waiting
        on it woken first (see :class:`Waits`)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            await self._waits.release(fd)
            os.close(fd)

    def __del__(self) -> None:
        # Dropped unclosed (a process nobody waited for): nothing can be waiting on it.
        if self.fd >= 0:
            os.close(self.fd)


def pipe_pull(end: PipeEnd) -> Pull:
    """An async chunk reader over the read end of a run's non-blocking pipe."""
    return end.read


def _nonblocking_pipe(big: bool = False) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_end, False)
    if big:
        # A 1 MiB pipe lets the command write in large chunks: fewer wake-ups per GB.
        try:
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _CHUNK)
        except OSError:
            pass
    return read_end, write_end


def _send_config(sock: socket.socket, config: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Hand the supervisor its session configuration in a memfd: any number of granted
    paths fits (a message on the control socket is bounded by its send buffer). ``fds``
    travel with it (the first run's cgroup.procs: ``SupervisorSpec.first_cgroups``)."""
    fd = os.memfd_create("union-sandbox-config", os.MFD_CLOEXEC)
    try:
        os.write(fd, marshal.dumps(config))
        socket.send_fds(sock, [b"config"], [fd, *fds])
    finally:
        os.close(fd)


class Supervisor:
    """A started per-session supervisor process."""

    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self.facts: dict[str, Any] = {}
        self._ready = False
        self._ready_lock: anyio.Lock | None = None  # made on first use: see ready()
        self._failure: RuntimeError | None = None
        self._next_id = 0
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = host
        self._sock_waits = Waits()
        self._send_lock: anyio.Lock | None = None  # made on first use, as _ready_lock
        self._stopped = False
        """:meth:`aclose` ran (the session was closed, or setup failed)."""
        code_fd = _supervisor_code_fd()
        argv = [
            *spec.argv_prefix,
            spec.python,
            "-I",
            "-S",
            "-c",
            _BOOTSTRAP,
            str(child.fileno()),
            str(code_fd),
        ]
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv,
                pass_fds=(child.fileno(), code_fd, *spec.pass_fds),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                # bwrap creates missing mount points with the umask, and runs inherit it.
                umask=0o022,
            )
        except OSError as exc:
            self._proc = None
            self._failure = BackendUnavailableError(
                spec.backend, [f"cannot start {argv[0]!r}: {exc.strerror}"]
            )
        finally:
            child.close()
            for fd in spec.pass_fds:
                os.close(fd)
        if self._proc is not None:
            config = spec.config
            if spec.complete_config is not None:
                config = spec.complete_config(config, self._proc.pid)
            try:
                _send_config(host, config, spec.first_cgroups)
            except OSError:
                pass  # it died at once; ready() reports why from its stderr
        host.setblocking(False)

    async def ready(self) -> dict[str, Any]:
        """Wait for the supervisor's setup; raise :class:`BackendUnavailableError` with the
        host feature to fix when it failed."""
        if self._ready:
            return self.facts
        if self._failure is not None:
            raise self._failure
        # Made here, not at start: a session started before its event loop (the CLI) has
        # its supervisor spawned before anyio's synchronisation code is even imported.
        if self._ready_lock is None:
            self._ready_lock = anyio.Lock()
        async with self._ready_lock:  # concurrent first runs: one reads the handshake
            if self._ready:
                return self.facts
            if self._failure is not None:
                raise self._failure
            return await self._handshake()

    async def _handshake(self) -> dict[str, Any]:
        msg = await self._recv()
        if msg.startswith(b"ready "):
            abi, host_uid, seccomp = msg[6:].split()
            self.facts = {
                "landlock_abi": int(abi),
                "host_uid": int(host_uid),
                "seccomp": seccomp == b"1",
            }
            self._ready = True
            return self.facts
        if msg.startswith(b"refused "):
            # Not the host's fault (a granted path changed under the session, say): said as
            # it is, not as a backend to give up on.
            self._failure = RuntimeError(msg[8:].decode("utf-8", "replace"))
            await self.aclose()
            raise self._failure
        detail = msg[6:].decode("utf-8", "replace") if msg.startswith(b"error ") else ""
        stderr = await anyio.to_thread.run_sync(self._collect_stderr)
        problems = (
            self.spec.diagnose(detail, stderr)
            if self.spec.diagnose
            else [detail or stderr or "the sandbox supervisor exited during setup"]
        )
        self._failure = BackendUnavailableError(self.spec.backend, problems)
        await self.aclose()
        raise self._failure

    def _collect_stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None:
            return ""
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        return self._proc.stderr.read().decode("utf-8", "replace").strip()

    async def _recv(self) -> bytes:
        """The supervisor's one message (``ready ...`` or ``error ...``); ``b""`` if it died."""
        while True:
            try:
                return self._sock.recv(1 << 16)
            except BlockingIOError:
                if self._stopped or not await self._sock_waits.wait(
                    anyio.wait_readable, self._sock
                ):
                    raise _stopped_meanwhile() from None
            except OSError:
                if self._stopped:
                    raise _stopped_meanwhile() from None
                return b""

    async def _send(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = marshal.dumps(msg)
        if self._send_lock is None:
            self._send_lock = anyio.Lock(fast_acquire=True)
        # One sender at a time: a full socket (the supervisor busy or stopped) would have a
        # second sender wait on it too, which anyio refuses (BusyResourceError).
        async with self._send_lock:
            await self._send_now(data, fds)

    async def _send_now(self, data: bytes, fds: Sequence[int]) -> None:
        while True:
            try:
                socket.send_fds(self._sock, [data], list(fds))
                return
            except BlockingIOError:
                # Not after aclose() began: its release of the waiters may be under way.
                if self._stopped or not await self._sock_waits.wait(
                    anyio.wait_writable, self._sock
                ):
                    raise _stopped_meanwhile() from None
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    # Sessions check a run's sizes first (request_size.py); this is the
                    # socket's own bound, on a host whose net.core.wmem_default is small.
                    raise ValueError(
                        f"this run's request is {len(data)} bytes, more than the sandbox "
                        "supervisor's control socket takes in one message on this host "
                        "(net.core.wmem_default); pass large data through stdin or a file"
                    ) from None
                if self._stopped:
                    raise _stopped_meanwhile() from None
                raise RuntimeError(
                    "the session's sandbox supervisor has died (its runs were killed with "
                    f"it: {exc.strerror}); close this session and open a new one"
                ) from None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start_run(
        self,
        request: dict[str, Any],
        *,
        stdin: int | bytes | None,
        capture_stdout: bool,
        capture_stderr: bool,
        script: bytes | None = None,
        proxy_fd: int | None = None,
        cgroup_fds: Sequence[int] = (),
    ) -> RunChannel:
        """Send one run; return the host ends of its pipes. ``cgroup_fds`` (the run's
        ``cgroup.procs`` files) travel with it; the caller keeps and closes them."""
        await self.ready()
        self._next_id += 1
        run_id = self._next_id
        theirs: list[int] = []
        mine: dict[str, int] = {}
        try:
            if stdin == -1:  # PIPE
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(write_end, False)
                theirs.append(read_end)
                mine["stdin"] = write_end
            else:
                theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for name, wanted in (("stdout", capture_stdout), ("stderr", capture_stderr)):
                if wanted:
                    read_end, write_end = _nonblocking_pipe(big=name == "stdout")
                    theirs.append(write_end)
                    mine[name] = read_end
                else:
                    theirs.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
            status_r, status_w = _nonblocking_pipe()
            theirs.append(status_w)
            mine["status"] = status_r
            if script is not None:
                memfd = os.memfd_create("union-sandbox-script", os.MFD_CLOEXEC)
                os.write(memfd, script)
                theirs.append(memfd)
            if proxy_fd is not None:
                theirs.append(os.dup(proxy_fd))
            await self._send(
                {
                    **request,
                    "op": "run",
                    "id": run_id,
                    "script": script is not None,
                    "cgroups": len(cgroup_fds),
                },
                [*theirs, *cgroup_fds],
            )
        except BaseException:
            for fd in mine.values():
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        ends = {name: PipeEnd(fd) for name, fd in mine.items()}
        return RunChannel(self, run_id, ends, time.monotonic())

    async def signal(self, run_id: int, signo: int) -> None:
        if self.alive:
            await self._send({"op": "signal", "id": run_id, "signal": signo})

    async def kill(self, run_id: int) -> None:
        if self.alive:
            await self._send({"op": "kill", "id": run_id})

    async def retire(self, init_serial: int) -> None:
        """Let an idle init (kept for a later run) exit."""
        if self.alive:
            await self._send({"op": "retire", "slot": init_serial})

    async def aclose(self) -> None:
        """Stop the supervisor: it kills every run (their trees die with their pid
        namespaces) and exits. Bounded: SIGKILL after 5 s."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        self._stopped = True
        # A run starting in another task may wait on the socket: it is woken and gone
        # before the socket's number is free for the pidfd below (see Waits).
        await self._sock_waits.release(self._sock)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with anyio.CancelScope(shield=True):
            if proc.poll() is None:
                try:
                    pidfd = os.pidfd_open(proc.pid)
                except ProcessLookupError:
                    pidfd = -1
                if pidfd >= 0:
                    try:
                        with anyio.move_on_after(5):
                            # A pidfd turns readable when the process exits.
                            await anyio.wait_readable(pidfd)
                    finally:
                        os.close(pidfd)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await anyio.to_thread.run_sync(proc.wait)
        if proc.stderr is not None:
            proc.stderr.close()


def _stopped_meanwhile() -> RuntimeError:
    return RuntimeError(
        "the session was closed while this call was talking to its sandbox supervisor; "
        "open a new session"
    )


class RunChannel:
    """The host's ends of one run: stdio pipes and the status pipe."""

    def __init__(
        self, supervisor: Supervisor, run_id: int, fds: dict[str, PipeEnd], started: float
    ) -> None:
        self.supervisor = supervisor
        self.run_id = run_id
        self.fds = fds
        self.started = started
        self._kill_kind: TerminationKind | None = None
        self._termination: Termination | None = None
        self.ended_clean = False
        """The run's init reported its end after killing and reaping everything the run
        started: the run's cgroups are empty (but for that init, if it stays)."""
        self.idle_init = 0
        """The serial of the run's init if it stays, idle, for a later run (0 if not)."""

    async def wait_exit(self) -> Termination:
        """Read the status pipe until a final record (the run's init reports after it killed
        and reaped everything the run left) or end of file (init died: the supervisor's
        record, or nothing if the supervisor died too)."""
        if self._termination is not None:
            return self._termination
        pull = pipe_pull(self.fds["status"])
        buffer = b""
        records: list[bytes] = []
        while True:
            while len(buffer) >= 2:
                (size,) = struct.unpack_from("<H", buffer)
                if len(buffer) < 2 + size:
                    break
                records.append(buffer[2 : 2 + size])
                buffer = buffer[2 + size :]
            if records and records[0][:1] in _FINAL_RECORDS:
                break
            chunk = await pull()
            if not chunk:
                break
            buffer += chunk
        self._termination = self._interpret(records)
        return self._termination

    def _interpret(self, records: list[bytes]) -> Termination:
        elapsed_ms = int((time.monotonic() - self.started) * 1000)
        if not records:
            return Termination(
                TerminationKind.SANDBOX_FAILURE,
                -1,
                detail="the sandbox supervisor died before the run ended",
                runtime_ms=elapsed_ms,
            )
        kind, payload = records[0][:1], records[0][1:]
        if kind in (b"E", b"T"):
            # ... then the serial of the init if it stays for another run (0 if not).
            (self.idle_init,) = struct.unpack_from("<q", payload, len(payload) - 8)
            self.ended_clean = True
        if kind == b"E":
            status, runtime_ns = struct.unpack_from("<iq", payload)
            return termination_from_status(status, runtime_ns // 1_000_000)
        if kind == b"T":
            (runtime_ns,) = struct.unpack_from("<q", payload)
            return Termination(
                TerminationKind.TIMEOUT,
                128 + signal.SIGKILL,
                signal=signal.SIGKILL,
                runtime_ms=runtime_ns // 1_000_000,
                detail="timeout_s expired; the process tree was killed",
            )
        if kind == b"X":
            return Termination(
                TerminationKind.SANDBOX_FAILURE,
                -1,
                detail=payload.decode("utf-8", "replace"),
                runtime_ms=elapsed_ms,
            )
        # b"R": the run's init died without a report: we killed it, or it crashed.
        (status,) = struct.unpack("<i", payload)
        if self._kill_kind is not None:
            return Termination(
                self._kill_kind,
                128 + signal.SIGKILL,
                signal=signal.SIGKILL,
                runtime_ms=elapsed_ms,
            )
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return Termination(
                TerminationKind.SIGNAL,
                128 + signal.SIGKILL,
                signal=signal.SIGKILL,
                runtime_ms=elapsed_ms,
            )
        return Termination(
            TerminationKind.SANDBOX_FAILURE,
            -1,
            runtime_ms=elapsed_ms,
            detail=f"the run's init process ended unexpectedly (status {status})",
        )

    async def send_signal(self, signo: int) -> None:
        if signo == signal.SIGKILL:
            # Killing the run's init is how SIGKILL reaches the whole tree; record why.
            await self.kill(TerminationKind.SIGNAL)
        else:
            await self.supervisor.signal(self.run_id, signo)

    async def kill(self, kind: TerminationKind) -> None:
        if self._kill_kind is None:
            self._kill_kind = kind
        await self.supervisor.kill(self.run_id)

    async def aclose(self) -> None:
        """Close the host's ends. The process's streams and stdin keep their
        :class:`PipeEnd`: reading them gives end of file, writing :class:`BrokenPipeError`."""
        for end in self.fds.values():
            await end.aclose()


def termination_from_status(status: int, runtime_ms: int) -> Termination:
    """Map a wait status to a termination (``128 + signo`` for signals)."""
    if os.WIFEXITED(status):
        return Termination(TerminationKind.EXIT, os.WEXITSTATUS(status), runtime_ms=runtime_ms)
    signo = os.WTERMSIG(status)
    kind = TerminationKind.FSIZE_LIMIT if signo == signal.SIGXFSZ else TerminationKind.SIGNAL
    return Termination(kind, 128 + signo, signal=signo, runtime_ms=runtime_ms)
