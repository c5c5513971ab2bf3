"""``sandbox.v2.SandboxService`` over one :class:`OnDeviceSession` (the pod's sandbox).

Every behaviour (validation, path rules, limits, termination reasons) is the on-device
engine's: the server only translates between the wire and the session, clamps requests to
its ceilings, and maps exceptions to Connect codes with a ``sandbox.v2.ErrorDetail`` naming
the exception, so that the remote client raises exactly what on-device raises.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio

from union.sandbox.core import errors as core_errors
from union.sandbox.core.constants import PIPE
from union.sandbox.core.on_device import OnDeviceSession
from union.sandbox.core.policy import validate_signal
from union.sandbox.core.process import OutputStream, Process
from union.sandbox.core.process import TerminationKind as CoreKind
from union.sandbox.core.resources import ResourceLimits
from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import Code, ConnectError
from union.sandbox.core.wire.convert import decisions_to_wire, isolation_to_wire

from ._connect import CallContext, ResponseStream, Rpc
from .config import ServerConfig

__all__ = ["FEATURES", "SandboxService", "error_from_exception"]

_MIB = 1024 * 1024
_CHUNK = 1 << 20
_STREAM_READ = 1 << 18
#: Extension capabilities advertised in ``HealthResponse.features``.
FEATURES = (
    "execution-id",
    "write-stdin",
    "signal",
    "kill",
    "release-idle",
    "argv",
    "stdin",
    "termination-kind",
    "isolation-report",
    "error-detail",
    "put-bytes-stream",
    "get-bytes-stream",
)

_KIND_TO_WIRE = {
    CoreKind.EXIT: pb.TerminationKind.TERMINATION_KIND_EXIT,
    CoreKind.SIGNAL: pb.TerminationKind.TERMINATION_KIND_SIGNAL,
    CoreKind.TIMEOUT: pb.TerminationKind.TERMINATION_KIND_TIMEOUT,
    CoreKind.KILLED: pb.TerminationKind.TERMINATION_KIND_KILLED,
    CoreKind.OOM: pb.TerminationKind.TERMINATION_KIND_OOM,
    CoreKind.PIDS_LIMIT: pb.TerminationKind.TERMINATION_KIND_PIDS_LIMIT,
    CoreKind.FSIZE_LIMIT: pb.TerminationKind.TERMINATION_KIND_FSIZE_LIMIT,
    CoreKind.CANCELLED: pb.TerminationKind.TERMINATION_KIND_CANCELLED,
    CoreKind.SANDBOX_FAILURE: pb.TerminationKind.TERMINATION_KIND_SANDBOX_FAILURE,
}
_SCRIPT_TYPES: dict[int, str] = {
    pb.ScriptType.SCRIPT_TYPE_UNSPECIFIED: "shell",
    pb.ScriptType.SCRIPT_TYPE_SHELL: "shell",
    pb.ScriptType.SCRIPT_TYPE_PYTHON: "python",
}
_NETWORK_MODES: dict[int, str] = {
    pb.NetworkMode.NETWORK_MODE_UNSPECIFIED: "blocked",
    pb.NetworkMode.NETWORK_MODE_BLOCKED: "blocked",
    pb.NetworkMode.NETWORK_MODE_OPEN: "open",
    pb.NetworkMode.NETWORK_MODE_ALLOWLIST: "allowlist",
}

# Most specific first.
_EXCEPTION_CODES: tuple[tuple[type[BaseException], Code], ...] = (
    (core_errors.SessionPolicyMismatch, Code.PERMISSION_DENIED),
    (core_errors.BackendUnavailableError, Code.FAILED_PRECONDITION),
    (core_errors.LimitUnavailableError, Code.FAILED_PRECONDITION),
    (FileExistsError, Code.ALREADY_EXISTS),
    (FileNotFoundError, Code.NOT_FOUND),
    (PermissionError, Code.PERMISSION_DENIED),
    (BrokenPipeError, Code.FAILED_PRECONDITION),
    (IsADirectoryError, Code.FAILED_PRECONDITION),
    (NotADirectoryError, Code.FAILED_PRECONDITION),
    (NotImplementedError, Code.UNIMPLEMENTED),
    (ValueError, Code.INVALID_ARGUMENT),
    (TypeError, Code.INVALID_ARGUMENT),
)
_EXHAUSTED_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMFILE, errno.ENFILE}


def error_from_exception(exc: BaseException, code: Code | None = None) -> ConnectError:
    """The Connect error for an exception of the session, with an ``ErrorDetail`` that lets
    the client raise the same exception type with the same message."""
    if isinstance(exc, ConnectError):
        return exc
    if code is None:
        code = Code.INTERNAL
        for cls, mapped in _EXCEPTION_CODES:
            if isinstance(exc, cls):
                code = mapped
                break
        else:
            if isinstance(exc, OSError) and exc.errno in _EXHAUSTED_ERRNOS:
                code = Code.RESOURCE_EXHAUSTED
    if isinstance(exc, OSError) and exc.errno is not None:
        detail = pb.ErrorDetail(
            exception=type(exc).__name__,
            message=exc.strerror or str(exc),
            errno=exc.errno,
            filename=os.fsdecode(exc.filename) if exc.filename is not None else "",
        )
    else:
        detail = pb.ErrorDetail(exception=type(exc).__name__, message=str(exc))
    return ConnectError(code, str(exc), detail=detail)


def _invalid(message: str, exception: str = "ValueError") -> ConnectError:
    return ConnectError(
        Code.INVALID_ARGUMENT,
        message,
        detail=pb.ErrorDetail(exception=exception, message=message),
    )


@dataclasses.dataclass
class _Run:
    id: str
    proc: Process
    stdin_lock: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)


def _limits_message(limits: ResourceLimits) -> pb.Resources:
    return pb.Resources(
        cpu_milli=limits.cpu_milli,
        memory_bytes=limits.memory_bytes,
        gpu=limits.gpu,
        ephemeral_storage_bytes=limits.ephemeral_storage_bytes,
        pids=limits.pids,
        file_size_bytes=limits.file_size_bytes,
    )


def _clamp(requested: int, ceiling: int) -> int:
    """``requested`` capped at ``ceiling`` (0 = no ceiling); 0 requested = the default."""
    if not requested:
        return 0
    return min(requested, ceiling) if ceiling else requested


class SandboxService:
    """The RPC handlers; :meth:`rpcs` lists them for :class:`ConnectApp`."""

    def __init__(self, config: ServerConfig, session: OnDeviceSession, version: str) -> None:
        self.config = config
        self.session = session
        self.version = version
        self.ceiling = self.ceiling_limits(config)
        self._runs: dict[str, _Run] = {}
        self._closing = False

    @staticmethod
    def ceiling_limits(config: ServerConfig) -> ResourceLimits:
        """The server's ceilings: every run's default limits and the most it may ask for."""
        return ResourceLimits(
            cpu_milli=config.cpu_ceiling_milli,
            memory_bytes=config.mem_ceiling_mb * _MIB,
            gpu=config.gpu_ceiling,
            file_size_bytes=config.fsize_ceiling_mb * _MIB,
        )

    @property
    def running(self) -> int:
        return len(self._runs)

    def rpcs(self) -> list[Rpc]:
        cfg = self.config
        message = cfg.max_message_bytes
        put_body = cfg.max_put_bytes + 64 * 1024 if cfg.max_put_bytes else None
        chunk_limit = max(message, 4 * _MIB)
        return [
            Rpc(
                "Execute",
                "server_stream",
                pb.ExecuteRequest,
                pb.ExecuteResponse,
                self.execute,
                message,
            ),
            Rpc(
                "FetchFile",
                "unary",
                pb.FetchFileRequest,
                pb.FetchFileResponse,
                self.fetch_file,
                message,
            ),
            Rpc(
                "FetchDir",
                "unary",
                pb.FetchDirRequest,
                pb.FetchDirResponse,
                self.fetch_dir,
                message,
            ),
            Rpc(
                "PutBytes",
                "unary",
                pb.PutBytesRequest,
                pb.PutBytesResponse,
                self.put_bytes,
                put_body,
                borrow=True,
            ),
            Rpc(
                "GetBytes",
                "unary",
                pb.GetBytesRequest,
                pb.GetBytesResponse,
                self.get_bytes,
                message,
            ),
            Rpc("Health", "unary", pb.HealthRequest, pb.HealthResponse, self.health, message),
            Rpc(
                "WriteStdin",
                "unary",
                pb.WriteStdinRequest,
                pb.WriteStdinResponse,
                self.write_stdin,
                message,
            ),
            Rpc("Signal", "unary", pb.SignalRequest, pb.SignalResponse, self.signal, message),
            Rpc("Kill", "unary", pb.KillRequest, pb.KillResponse, self.kill, message),
            Rpc(
                "ReleaseIdle",
                "unary",
                pb.ReleaseIdleRequest,
                pb.ReleaseIdleResponse,
                self.release_idle,
                message,
            ),
            Rpc(
                "PutBytesStream",
                "client_stream",
                pb.PutBytesRequest,
                pb.PutBytesResponse,
                self.put_bytes_stream,
                chunk_limit,
                max_total_bytes=put_body,
            ),
            Rpc(
                "GetBytesStream",
                "server_stream",
                pb.GetBytesRequest,
                pb.GetBytesResponse,
                self.get_bytes_stream,
                message,
            ),
        ]

    async def shutdown(self) -> None:
        """Refuse new runs and kill the running ones (their streams end with KILLED)."""
        self._closing = True
        for run in list(self._runs.values()):
            with anyio.CancelScope(shield=True):
                await run.proc.kill()

    # -- Health ----------------------------------------------------------------------------

    async def health(self, request: pb.HealthRequest, ctx: CallContext) -> pb.HealthResponse:
        cfg = self.config
        return pb.HealthResponse(
            version=self.version,
            backend=self.session.backend,
            resource_ceiling=_limits_message(self.ceiling),
            work_dir=self.session.work_dir,
            features=list(FEATURES),
            max_put_bytes=cfg.max_put_bytes,
            max_get_bytes=cfg.max_get_bytes,
            network_allowed=not cfg.force_no_network,
            max_runtime_s=cfg.max_runtime_s,
            server=f"unionai-sandbox-server/{self.version}",
        )

    # -- Execute ---------------------------------------------------------------------------

    def _run_arguments(self, req: pb.ExecuteRequest) -> tuple[str, dict[str, Any], bytes | None]:
        cfg = self.config
        try:
            cmd = bytes(req.input).decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("ExecuteRequest.input must be UTF-8 text") from None
        script_type = _SCRIPT_TYPES.get(req.script_type)
        if script_type is None:
            raise _invalid(f"unknown script_type {req.script_type}")
        mode = _NETWORK_MODES.get(req.network_mode)
        if mode is None:
            raise _invalid(f"unknown network_mode {req.network_mode}")
        if mode != "blocked" and cfg.force_no_network:
            message = (
                f"network_mode={mode!r} was requested, but this sandbox-server runs with "
                "--force-no-network (the session was opened with network_mode='blocked', so "
                "its pod has no egress); open the session with the network posture you need"
            )
            raise ConnectError(
                Code.PERMISSION_DENIED,
                message,
                detail=pb.ErrorDetail(exception="SessionPolicyMismatch", message=message),
            )
        timeout = req.timeout_s
        if math.isnan(timeout) or timeout < 0:
            raise _invalid(f"timeout_s must be a positive number of seconds, got {timeout!r}")
        timeout = min(timeout, cfg.max_runtime_s) if timeout else cfg.max_runtime_s
        kwargs: dict[str, Any] = {
            "stdout": bool(req.stream_stdout),
            "stderr": bool(req.stream_stderr),
            "env": dict(req.env),
            "cwd": req.working_dir or None,
            "script_type": script_type,
            "network_mode": mode,
            "network_allowlist": list(req.network_allowlist) or None,
            "network_denylist": list(req.network_denylist) or None,
            "timeout_s": timeout,
        }
        if req.resources is not None:
            r = req.resources
            if r.gpu > cfg.gpu_ceiling:
                raise _invalid(
                    f"this run asks for {r.gpu} GPU(s) but the server allows at most "
                    f"{cfg.gpu_ceiling} per Execute (--gpu-ceiling)"
                )
            ceiling = self.ceiling
            kwargs["resources"] = ResourceLimits(
                cpu_milli=_clamp(r.cpu_milli, ceiling.cpu_milli),
                memory_bytes=_clamp(r.memory_bytes, ceiling.memory_bytes),
                gpu=r.gpu,
                ephemeral_storage_bytes=r.ephemeral_storage_bytes,
                pids=r.pids,
                file_size_bytes=_clamp(r.file_size_bytes, ceiling.file_size_bytes),
            )
        stdin_data: bytes | None = None
        if req.stdin_pipe or req.stdin:
            kwargs["stdin"] = PIPE
            stdin_data = bytes(req.stdin)
        if req.argv:
            kwargs["argv"] = list(req.argv)
        return cmd, kwargs, stdin_data

    async def execute(
        self, req: pb.ExecuteRequest, ctx: CallContext, stream: ResponseStream
    ) -> None:
        if self._closing:
            raise ConnectError(Code.UNAVAILABLE, "sandbox-server is shutting down")
        cmd, kwargs, stdin_data = self._run_arguments(req)
        try:
            proc = await self.session.run(cmd, **kwargs)
        except Exception as exc:
            raise error_from_exception(exc) from None
        run = _Run(secrets.token_hex(8), proc)
        self._runs[run.id] = run
        ctx.fields["execution_id"] = run.id
        try:
            limits = self.session.limits
            if "resources" in kwargs:
                limits = limits.merged(kwargs["resources"])
            await stream.send(
                pb.ExecuteResponse(
                    session_info=pb.SessionInfo(
                        version=self.version,
                        backend=self.session.backend,
                        resources=_limits_message(limits),
                        execution_id=run.id,
                        isolation=isolation_to_wire(proc.isolation),
                    )
                )
            )
            async with anyio.create_task_group() as tg:
                if proc.stderr is not None:
                    tg.start_soon(_pump, proc.stderr, stream, False)
                if stdin_data is not None and proc.stdin is not None:
                    tg.start_soon(self._feed, run, stdin_data, not req.stdin_pipe)
                if proc.stdout is not None:
                    await _pump(proc.stdout, stream, True)  # here: one task fewer per run
            try:
                await proc.wait()
            except core_errors.ExecutionError:
                pass
        finally:
            with anyio.CancelScope(shield=True):
                if proc.termination is None:
                    await proc.kill()
                    with anyio.move_on_after(30):
                        try:
                            await proc.wait()
                        except core_errors.ExecutionError:
                            pass
                self._runs.pop(run.id, None)
        term = proc.termination
        assert term is not None
        ctx.fields["exit_code"] = term.returncode
        ctx.fields["termination"] = term.kind.value
        if term.kind is CoreKind.SANDBOX_FAILURE:
            reason = term.detail or term.kind.value
            raise ConnectError(
                Code.INTERNAL,
                reason,
                detail=pb.ErrorDetail(exception="ExecutionError", message=reason),
            )
        await stream.send(
            pb.ExecuteResponse(
                termination=pb.Termination(
                    exit_code=term.returncode,
                    reason=term.reason,
                    runtime_ms=term.runtime_ms or 0,
                    kind=_KIND_TO_WIRE[term.kind],
                    signal=term.signal or 0,
                    detail=term.detail,
                    network_decisions=decisions_to_wire(run.proc.network_decisions),
                )
            ),
            last=True,
        )

    async def _feed(self, run: _Run, data: bytes, close: bool) -> None:
        stdin = run.proc.stdin
        assert stdin is not None
        async with run.stdin_lock:
            try:
                if data:
                    await stdin.write(data)
                if close:
                    await stdin.aclose()
            except (BrokenPipeError, ValueError):
                pass

    def _run(self, execution_id: str) -> _Run:
        run = self._runs.get(execution_id)
        if run is None:
            message = f"no running execution {execution_id!r} (it finished, or never existed)"
            raise ConnectError(
                Code.NOT_FOUND,
                message,
                detail=pb.ErrorDetail(exception="ProcessLookupError", message=message),
            )
        return run

    async def write_stdin(
        self, req: pb.WriteStdinRequest, ctx: CallContext
    ) -> pb.WriteStdinResponse:
        run = self._run(req.execution_id)
        ctx.fields["execution_id"] = run.id
        stdin = run.proc.stdin
        if stdin is None:
            message = f"execution {run.id!r} was not started with stdin_pipe=true"
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                message,
                detail=pb.ErrorDetail(exception="ValueError", message=message),
            )
        async with run.stdin_lock:
            try:
                if req.data:
                    await stdin.write(bytes(req.data))
                if req.eof:
                    await stdin.aclose()
            except Exception as exc:
                raise error_from_exception(exc) from None
        return pb.WriteStdinResponse(bytes_written=len(req.data))

    async def signal(self, req: pb.SignalRequest, ctx: CallContext) -> pb.SignalResponse:
        try:
            validate_signal(req.signal)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        run = self._run(req.execution_id)
        ctx.fields["execution_id"] = run.id
        await run.proc.send_signal(req.signal)
        return pb.SignalResponse()

    async def kill(self, req: pb.KillRequest, ctx: CallContext) -> pb.KillResponse:
        run = self._run(req.execution_id)
        ctx.fields["execution_id"] = run.id
        await run.proc.kill()
        return pb.KillResponse()

    async def release_idle(
        self, req: pb.ReleaseIdleRequest, ctx: CallContext
    ) -> pb.ReleaseIdleResponse:
        released = await self.session.release_idle()
        ctx.fields["released"] = released
        return pb.ReleaseIdleResponse(released=released)

    # -- files -----------------------------------------------------------------------------

    def _put_too_big(self, size: int) -> ConnectError:
        message = (
            f"put_bytes payload of {size} bytes exceeds the server's limit of "
            f"{self.config.max_put_bytes} bytes (--max-put-bytes-mb)"
        )
        return ConnectError(
            Code.RESOURCE_EXHAUSTED,
            message,
            detail=pb.ErrorDetail(exception="ValueError", message=message),
        )

    async def put_bytes(self, req: pb.PutBytesRequest, ctx: CallContext) -> pb.PutBytesResponse:
        data = req.data
        cap = self.config.max_put_bytes
        if cap and len(data) > cap:
            raise self._put_too_big(len(data))
        try:
            written = await self.session.put_bytes(
                req.target_path, data, mode=req.mode or 0o644, overwrite=req.overwrite
            )
        except Exception as exc:
            raise error_from_exception(exc) from None
        digest = await _sha256(data)
        ctx.fields["bytes"] = written
        return pb.PutBytesResponse(
            target_path=os.path.normpath(req.target_path), bytes_written=written, sha256=digest
        )

    async def put_bytes_stream(
        self, messages: AsyncIterator[pb.PutBytesRequest], ctx: CallContext
    ) -> pb.PutBytesResponse:
        iterator = messages.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise _invalid("PutBytesStream needs a first message naming target_path") from None
        if not first.target_path:
            raise _invalid("the first PutBytesStream message must set target_path")
        cap = self.config.max_put_bytes
        total = 0

        async def chunks() -> AsyncGenerator[bytes, None]:
            nonlocal total
            message = first
            while True:
                if message.target_path and message.target_path != first.target_path:
                    raise _invalid("every PutBytesStream message must name the same target_path")
                data = message.data
                if data:
                    total += len(data)
                    if cap and total > cap:
                        raise self._put_too_big(total)
                    yield data
                try:
                    message = await iterator.__anext__()
                except StopAsyncIteration:
                    return

        source = chunks()
        try:
            written = await self.session.put_bytes(
                first.target_path, source, mode=first.mode or 0o644, overwrite=first.overwrite
            )
        except ConnectError:
            raise
        except Exception as exc:
            raise error_from_exception(exc) from None
        finally:
            await source.aclose()
        ctx.fields["bytes"] = written
        # No sha256 for streamed transfers: hashing would cost the server as much CPU as
        # moving the bytes, and TCP already checks them on the way.
        return pb.PutBytesResponse(
            target_path=os.path.normpath(first.target_path), bytes_written=written
        )

    def _get_limit(self, requested: int) -> tuple[int, bool]:
        """(effective max_bytes, whether it is the server's cap)."""
        cap = self.config.max_get_bytes
        if cap and (not requested or requested > cap):
            return cap, True
        return requested, False

    def _get_error(self, exc: Exception, server_cap: bool) -> ConnectError:
        if server_cap and isinstance(exc, ValueError) and "max_bytes" in str(exc):
            message = f"{exc} (the server caps GetBytes at --max-get-bytes-mb)"
            return ConnectError(
                Code.RESOURCE_EXHAUSTED,
                message,
                detail=pb.ErrorDetail(exception="ValueError", message=message),
            )
        return error_from_exception(exc)

    async def get_bytes(self, req: pb.GetBytesRequest, ctx: CallContext) -> pb.GetBytesResponse:
        limit, server_cap = self._get_limit(req.max_bytes)
        try:
            data = await self.session.get_bytes(req.source_path, max_bytes=limit)
        except Exception as exc:
            raise self._get_error(exc, server_cap) from None
        ctx.fields["bytes"] = len(data)
        return pb.GetBytesResponse(
            source_path=os.path.normpath(req.source_path),
            data=data,
            bytes_read=len(data),
            sha256=await _sha256(data),
        )

    async def get_bytes_stream(
        self, req: pb.GetBytesRequest, ctx: CallContext, stream: ResponseStream
    ) -> None:
        limit, server_cap = self._get_limit(req.max_bytes)
        try:
            fd, size, target = self.session.open_for_read(req.source_path, max_bytes=limit)
        except Exception as exc:
            raise self._get_error(exc, server_cap) from None
        try:
            await stream.send(pb.GetBytesResponse(source_path=target, size=size))
            total = 0
            while True:
                chunk = await _read_chunk(fd)
                if not chunk:
                    break
                total += len(chunk)
                if limit and total > limit:
                    raise self._get_error(
                        ValueError(f"{target} grew past max_bytes={limit} while reading"),
                        server_cap,
                    )
                await stream.send(pb.GetBytesResponse(data=chunk))
            ctx.fields["bytes"] = total
            await stream.send(pb.GetBytesResponse(bytes_read=total), last=True)
        finally:
            os.close(fd)

    async def fetch_file(self, req: pb.FetchFileRequest, ctx: CallContext) -> pb.FetchFileResponse:
        raise ConnectError(
            Code.UNIMPLEMENTED,
            "FetchFile is not served by this sandbox-server: download inside the sandbox "
            "(run with network) or send the bytes with PutBytes/PutBytesStream",
        )

    async def fetch_dir(self, req: pb.FetchDirRequest, ctx: CallContext) -> pb.FetchDirResponse:
        raise ConnectError(
            Code.UNIMPLEMENTED,
            "FetchDir is not served by this sandbox-server: send files with PutBytesStream",
        )


async def _pump(source: OutputStream, stream: ResponseStream, is_stdout: bool) -> None:
    """Forward one captured stream as it arrives (back-pressure: we read the pipe only as
    fast as the client takes the data)."""
    while chunk := await source.read(_STREAM_READ):
        if is_stdout:
            await stream.send(pb.ExecuteResponse(stdout=chunk))
        else:
            await stream.send(pb.ExecuteResponse(stderr=chunk))


async def _sha256(data: bytes | memoryview) -> str:
    if len(data) >= 4 * _MIB:
        return await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


async def _read_chunk(fd: int) -> bytes:
    return os.read(fd, _CHUNK)
