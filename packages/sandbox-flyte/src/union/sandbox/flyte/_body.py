"""The body of the ``sandbox_server`` task: run ``sandbox-server`` until the session ends.

:func:`serve_sandbox` is a plain coroutine (anyio: asyncio, as the Flyte runtime needs, or
trio) so that the task, a local launcher and tests all run the same code:

1. create the work dir; the server builds the session venv in it when it opens the session;
2. start ``python -m union.sandbox.server`` in its own session / process group with a
   trimmed environment (:data:`PASS_THROUGH`: platform credentials in the pod's environment
   never reach the server, so no sandboxed process can find them in any ``/proc/*/environ``)
   and the bearer token in ``UNION_SANDBOX_TOKEN`` (a server on a pod network never runs
   without auth);
3. echo the server's log lines, and say when it is ready (its ``listening`` record);
4. stop it when the soft timeout expires, on SIGTERM (an abort deletes the pod: the kubelet
   sends SIGTERM to ``a0``, PID 1 of the container, which ignores it unless someone installs a
   handler: we do, on the main thread), or when the caller is cancelled: SIGTERM to the
   server's group, SIGKILL after ``term_grace_s``, then SIGKILL to anything of the server's
   process tree still alive;
5. return how it ended, or re-raise the cancellation.
"""

from __future__ import annotations

import collections
import enum
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from union.sandbox.core.constants import SERVER_WORK_DIR

from . import _proctree
from ._settings import (
    DEFAULT_ADDR,
    DEFAULT_FSIZE_CEILING_MB,
    DEFAULT_MAX_RUNTIME_S,
    FALLBACK_CPU_CEILING_MILLI,
    FALLBACK_MEM_CEILING_MB,
    HARD_CEILING,
    TERM_GRACE_S,
)

__all__ = [
    "PASS_THROUGH",
    "PASS_THROUGH_PREFIXES",
    "Ending",
    "ServerFailed",
    "ServerOptions",
    "Served",
    "serve_sandbox",
    "server_environment",
]

#: The only variables of the pod's environment the server (and so any sandbox) gets
#: (reference-api §2.16). Everything else, cloud and Flyte credentials included, stays behind.
PASS_THROUGH = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
PASS_THROUGH_PREFIXES = ("NVIDIA_", "CUDA_")
TOKEN_ENV = "UNION_SANDBOX_TOKEN"  # what sandbox-server reads (kept off its command line)
NETWORK_MODES = ("blocked", "open", "allowlist")
BACKENDS = ("userns", "bubblewrap")
#: Starts the server as ``python -m union.sandbox.server`` would, tied to the task's process
#: (:mod:`._lifeline`): when that process is gone (killed, or exited past a pending cleanup)
#: the server gets SIGTERM, then SIGKILL 10 s later; the supervisor and every sandbox go with
#: the server. argv: the starting process's pid, the server flags.
_BOOTSTRAP = """\
import runpy, sys
from union.sandbox.flyte._lifeline import follow_parent
follow_parent(
    int(sys.argv[1]),
    kill_after_s=10,
    gone="sandbox-server: the task process that started it is gone",
)
sys.argv[:2] = ["sandbox-server"]
runpy.run_module("union.sandbox.server", run_name="__main__", alter_sys=True)
"""
SERVER_COMMAND = (sys.executable, "-I", "-c", _BOOTSTRAP)
_LOG_TAIL = 40
_LEFTOVER_WAIT_S = 5.0


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The pass-through subset of ``environ``."""
    return {
        k: v for k, v in environ.items() if k in PASS_THROUGH or k.startswith(PASS_THROUGH_PREFIXES)
    }


@dataclass(frozen=True)
class ServerOptions:
    """One session's server: its backend, token, soft timeout, network posture, ceilings."""

    backend: str
    token: str
    soft_timeout_s: float
    network_mode: str = "blocked"
    max_runtime_s: float = DEFAULT_MAX_RUNTIME_S
    cpu_ceiling_milli: int = FALLBACK_CPU_CEILING_MILLI
    mem_ceiling_mb: int = FALLBACK_MEM_CEILING_MB
    gpu_ceiling: int = 0
    fsize_ceiling_mb: int = DEFAULT_FSIZE_CEILING_MB
    work_dir: str = SERVER_WORK_DIR
    addr: str = DEFAULT_ADDR

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option and the fix, before anything starts."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.token, str) or len(self.token) < 16:
            raise ValueError(
                "the sandbox task needs a bearer token of at least 16 characters (its server "
                "listens on the pod network and never runs without auth): pass token=..."
            )
        ceiling_s = HARD_CEILING.total_seconds()
        if not (0 < self.soft_timeout_s <= ceiling_s) or math.isnan(self.soft_timeout_s):
            raise ValueError(
                f"timeout_s must be > 0 and at most the task's hard ceiling of {ceiling_s:.0f} s, "
                f"got {self.soft_timeout_s!r}"
            )
        if self.network_mode not in NETWORK_MODES:
            raise ValueError(
                f"network_mode must be one of {NETWORK_MODES}, got {self.network_mode!r}"
            )
        for name in ("cpu_ceiling_milli", "mem_ceiling_mb", "gpu_ceiling", "fsize_ceiling_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not self.max_runtime_s > 0:
            raise ValueError(f"max_runtime_s must be > 0, got {self.max_runtime_s!r}")
        if not os.path.isabs(self.work_dir):
            raise ValueError(f"the work dir must be an absolute path, got {self.work_dir!r}")
        host, sep, port = self.addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"the listen address must be HOST:PORT, got {self.addr!r}")

    def server_args(self) -> list[str]:
        """The ``sandbox-server`` flags (without the token, which travels in the env)."""
        args = [
            "--backend",
            self.backend,
            "--addr",
            self.addr,
            "--work-dir",
            self.work_dir,
            "--fetch-root",
            self.work_dir,
            "--max-runtime-s",
            repr(float(self.max_runtime_s)),
            "--mem-ceiling-mb",
            str(self.mem_ceiling_mb),
            "--cpu-ceiling-milli",
            str(self.cpu_ceiling_milli),
            "--gpu-ceiling",
            str(self.gpu_ceiling),
            "--fsize-ceiling-mb",
            str(self.fsize_ceiling_mb),
        ]
        if self.network_mode == "blocked":
            # No run may have network: the server refuses any Execute that asks for it.
            args.append("--force-no-network")
        return args


class Ending(str, enum.Enum):
    """Why a served session ended (when it did not raise)."""

    SOFT_TIMEOUT = "soft-timeout"
    SIGTERM = "sigterm"


@dataclass(frozen=True)
class Served:
    """How a session ended: ``ending``, the address it served on, how long it ran, how long the
    stop took (expiry or signal to the last process of the server's tree gone), the server's
    exit status, and how many processes had to be killed after the server exited."""

    ending: Ending
    addr: str
    ran_s: float
    stop_s: float
    server_exit: int | None
    leftovers_killed: int


class ServerFailed(RuntimeError):
    """The server exited by itself: before it was ready (a bad backend, a bad flag...) or later
    (a crash). The message carries its exit status and last log lines."""


def _log(line: str) -> None:
    print(line, flush=True)


def _killpg(pgid: int, signo: int) -> None:
    try:
        os.killpg(pgid, signo)
    except (ProcessLookupError, PermissionError):
        pass


class _Run:
    """Shared state of one :func:`serve_sandbox` call."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.ready = anyio.Event()
        self.done = anyio.Event()
        self.eof = anyio.Event()
        self.addr = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        self.sigterm = False

    async def pump(
        self, stream: anyio.abc.ByteReceiveStream, on_ready: Callable[[str], None] | None
    ) -> None:
        """Echo the server's log lines; note the ``listening`` record."""
        pending = b""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw.decode(errors="replace"), on_ready)
        if pending:
            self._line(pending.decode(errors="replace"), on_ready)
        self.eof.set()

    def _line(self, line: str, on_ready: Callable[[str], None] | None) -> None:
        self.log(line)
        self.tail.append(line)
        if self.ready.is_set() or not line.startswith("{"):
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict) and record.get("msg") == "listening":
            self.addr = str(record.get("addr", ""))
            self.log(
                f"[sandbox_server] ready: sandbox-server listening on {self.addr} "
                f"(backend {record.get('backend')}, bearer auth)"
            )
            self.ready.set()
            if on_ready is not None:
                on_ready(self.addr)

    async def watch_sigterm(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self.log("[sandbox_server] SIGTERM (run aborted or pod evicted): stopping")
                self.sigterm = True
                self.done.set()
                return


async def serve_sandbox(
    options: ServerOptions,
    *,
    on_ready: Callable[[str], None] | None = None,
    server_command: Sequence[str] = SERVER_COMMAND,
    term_grace_s: float = TERM_GRACE_S,
    handle_sigterm: bool | None = None,
    environ: Mapping[str, str] | None = None,
    log: Callable[[str], None] = _log,
) -> Served:
    """Serve one sandbox session until its soft timeout, a SIGTERM or cancellation.

    ``on_ready(addr)`` is called with the address the server listens on (the real port when
    ``options.addr`` asks for port 0). ``server_command`` is what this process's pid and the
    server flags are appended to. ``handle_sigterm`` (default: on the main thread, as in a
    pod) installs a SIGTERM handler for the call's duration. ``environ`` is what the
    pass-through list is applied to (default ``os.environ``).

    Raises :class:`ServerFailed` when the server exits by itself; re-raises cancellation
    after the server and its sandboxes are gone.
    """
    options.validate()
    if handle_sigterm is None:
        handle_sigterm = threading.current_thread() is threading.main_thread()
    os.makedirs(options.work_dir, exist_ok=True)
    env = server_environment(os.environ if environ is None else environ)
    env[TOKEN_ENV] = options.token
    run = _Run(log)
    process = await anyio.open_process(
        [*server_command, str(os.getpid()), *options.server_args()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log(
        f"[sandbox_server] started sandbox-server pid {process.pid} (backend {options.backend}, "
        f"network {options.network_mode}, soft timeout {options.soft_timeout_s:g} s)"
    )
    started = anyio.current_time()
    ending: Ending | None = None
    stop_started = started
    report: _StopReport | None = None

    async def wait_exit() -> None:
        await process.wait()
        run.done.set()

    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            tg.start_soon(run.pump, process.stdout, on_ready)
            tg.start_soon(wait_exit)
            if handle_sigterm:
                tg.start_soon(run.watch_sigterm)
            try:
                with anyio.move_on_after(options.soft_timeout_s) as timer:
                    await run.done.wait()
                if timer.cancelled_caught:
                    ending = Ending.SOFT_TIMEOUT
                    log(
                        f"[sandbox_server] soft timeout of {options.soft_timeout_s:g} s "
                        "expired: stopping"
                    )
                elif run.sigterm:
                    ending = Ending.SIGTERM
            finally:
                with anyio.CancelScope(shield=True):
                    stop_started = anyio.current_time()
                    report = await _stop(process, term_grace_s, log)
                    with anyio.move_on_after(1.0):  # the last lines of the server's log
                        await run.eof.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert report is not None
    if ending is None:
        what = "before it was ready" if not run.ready.is_set() else "unexpectedly"
        raise ServerFailed(
            f"sandbox-server exited {what} with status {report.exit_code}; its last log "
            "lines:\n" + "\n".join(run.tail)
        )
    return Served(
        ending=ending,
        addr=run.addr,
        ran_s=stop_started - started,
        stop_s=report.seconds,
        server_exit=report.exit_code,
        leftovers_killed=report.leftovers_killed,
    )


@dataclass(frozen=True)
class _StopReport:
    seconds: float
    exit_code: int | None
    leftovers_killed: int


async def _stop(
    process: anyio.abc.Process, term_grace_s: float, log: Callable[[str], None]
) -> _StopReport:
    """SIGTERM the server's group, SIGKILL after ``term_grace_s``, then SIGKILL whatever of
    its process tree survived it; returns once all of it is gone (or reports what is left)."""
    t0 = anyio.current_time()
    tree = _proctree.descendants(process.pid)
    if process.returncode is None:
        _killpg(process.pid, signal.SIGTERM)
        with anyio.move_on_after(term_grace_s):
            await process.wait()
        if process.returncode is None:
            log(f"[sandbox_server] sandbox-server ignored SIGTERM for {term_grace_s:g} s: SIGKILL")
            _killpg(process.pid, signal.SIGKILL)
            await process.wait()
    # After a graceful exit nothing is left (the server closed its session). After a SIGKILL
    # the supervisor and its runs would follow it by themselves (socket EOF,
    # PR_SET_PDEATHSIG); do not wait for that, and kill what the group signal cannot reach.
    survivors = _proctree.alive(tree)
    _proctree.kill_all(survivors)
    with anyio.move_on_after(_LEFTOVER_WAIT_S):
        while _proctree.alive(tree):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    _proctree.reap(tree)
    left = _proctree.alive(tree)
    seconds = anyio.current_time() - t0
    log(
        f"[sandbox_server] sandbox-server stopped in {seconds:.3f} s (exit {process.returncode}, "
        f"{len(survivors)} leftover processes killed, {len(left)} still alive)"
    )
    return _StopReport(seconds, process.returncode, len(survivors))
