"""``RemoteSession``: the session contract over a ``sandbox-server`` (``sb.remote``)."""

from __future__ import annotations

import builtins
import sys
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import Any, cast

import anyio

from union.sandbox.core import errors as core_errors
from union.sandbox.core.constants import DEVNULL, INHERIT, MAX_CAPTURED_BYTES, PIPE
from union.sandbox.core.policy import (
    NetworkPolicy,
    resolve_run_network,
    validate_env,
    validate_network,
    validate_script_type,
    validate_timeout,
)
from union.sandbox.core.process import (
    InputStream,
    OutputStream,
    Process,
    Termination,
    TerminationKind,
)
from union.sandbox.core.request_size import check_cmd, check_run_args
from union.sandbox.core.resources import ResourceLimits, to_limits
from union.sandbox.core.session import SessionBase
from union.sandbox.core.wire import Message
from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import Code, ConnectError
from union.sandbox.core.wire.convert import isolation_from_wire

from ._process import CANCELLED_REASON, RemoteDriver, failure_from_error
from ._transport import ConnectTransport

__all__ = ["HealthInfo", "RemoteSession", "session"]

_NOT_OPEN = (
    "session is not open; either 'async with session(...) as sbx:' or "
    "'sbx = await session(...).open()'"
)
#: Connect codes the health check does not retry (a retry cannot fix them).
TERMINAL_CODES = frozenset(
    {
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.UNIMPLEMENTED,
    }
)
_BACKEND_ALIASES = {"bwrap": "bubblewrap", "userns-lite": "userns", "sandboxexec": "sandbox-exec"}
_SCRIPT = {"shell": pb.ScriptType.SCRIPT_TYPE_SHELL, "python": pb.ScriptType.SCRIPT_TYPE_PYTHON}
_NETWORK = {
    "blocked": pb.NetworkMode.NETWORK_MODE_BLOCKED,
    "open": pb.NetworkMode.NETWORK_MODE_OPEN,
    "allowlist": pb.NetworkMode.NETWORK_MODE_ALLOWLIST,
}
_CHUNK = 1 << 20
_UNARY_PUT_MAX = 1 << 20
#: Exceptions a server's ``ErrorDetail`` may name; anything else stays a ConnectError.
_EXCEPTIONS: dict[str, type[BaseException]] = {
    name: getattr(builtins, name)
    for name in (
        "ValueError",
        "TypeError",
        "PermissionError",
        "FileNotFoundError",
        "FileExistsError",
        "IsADirectoryError",
        "NotADirectoryError",
        "BrokenPipeError",
        "ProcessLookupError",
        "NotImplementedError",
        "OSError",
        "RuntimeError",
    )
}
_EXCEPTIONS["SessionPolicyMismatch"] = core_errors.SessionPolicyMismatch
_EXCEPTIONS["LimitUnavailableError"] = core_errors.LimitUnavailableError
_EXCEPTIONS["BackendUnavailableError"] = RuntimeError
_CODE_EXCEPTIONS: dict[Code, type[BaseException]] = {
    Code.INVALID_ARGUMENT: ValueError,
    Code.OUT_OF_RANGE: ValueError,
    Code.NOT_FOUND: FileNotFoundError,
    Code.ALREADY_EXISTS: FileExistsError,
    Code.PERMISSION_DENIED: PermissionError,
    Code.UNIMPLEMENTED: NotImplementedError,
}


def exception_from(error: ConnectError) -> BaseException:
    """The exception to raise for ``error``: the one the server's engine raised (from the
    ``ErrorDetail``), else one implied by the code, else the :class:`ConnectError`."""
    detail = error.detail
    cls: type[BaseException] | None = None
    message = error.message
    if detail is not None and detail.exception in _EXCEPTIONS:
        cls = _EXCEPTIONS[detail.exception]
        message = detail.message
        if issubclass(cls, OSError) and detail.errno:
            args: tuple[Any, ...] = (detail.errno, detail.message)
            if detail.filename:
                args += (detail.filename,)
            os_error = cls(*args)
            os_error.__cause__ = error
            return os_error
    elif detail is None:
        cls = _CODE_EXCEPTIONS.get(error.code)
    if cls is None:
        return error
    exc = cls(message)
    exc.__cause__ = error
    return exc


def _canonical_backend(name: str) -> str:
    return _BACKEND_ALIASES.get(name, name)


class HealthInfo:
    """What the server said about itself when the session opened."""

    def __init__(self, message: pb.HealthResponse) -> None:
        self.version = message.version
        self.backend = message.backend
        self.work_dir = message.work_dir
        self.features = frozenset(message.features)
        self.max_put_bytes = message.max_put_bytes
        self.max_get_bytes = message.max_get_bytes
        self.network_allowed = message.network_allowed
        self.max_runtime_s = message.max_runtime_s
        self.server = message.server
        ceiling = message.resource_ceiling or pb.Resources()
        self.resource_ceiling = ResourceLimits(
            cpu_milli=ceiling.cpu_milli,
            memory_bytes=ceiling.memory_bytes,
            gpu=ceiling.gpu,
            ephemeral_storage_bytes=ceiling.ephemeral_storage_bytes,
            pids=ceiling.pids,
            file_size_bytes=ceiling.file_size_bytes,
        )

    def __repr__(self) -> str:
        return f"<HealthInfo backend={self.backend} server={self.server!r}>"


def _stream_choice(value: Any, name: str) -> tuple[bool, Any]:
    """(capture?, sink for INHERIT-style forwarding) for a ``stdout=``/``stderr=`` value."""
    if value is True or (value == PIPE and not isinstance(value, bool)):
        return True, None
    if value is False or value is None or value == DEVNULL:
        return False, None
    if value == INHERIT:
        return False, sys.stdout if name == "stdout" else sys.stderr
    if hasattr(value, "write"):
        return False, value
    raise ValueError(
        f"{name} must be True, False, None, PIPE, INHERIT, DEVNULL or a file "
        f"object such as sys.{name}, got {value!r}"
    )


def _resources_message(limits: ResourceLimits) -> pb.Resources:
    return pb.Resources(
        cpu_milli=limits.cpu_milli,
        memory_bytes=limits.memory_bytes,
        gpu=limits.gpu,
        ephemeral_storage_bytes=limits.ephemeral_storage_bytes,
        pids=limits.pids,
        file_size_bytes=limits.file_size_bytes,
    )


class RemoteSession(SessionBase):
    """A session whose runs happen in a ``sandbox-server`` reached over HTTP.

    Same contract as an on-device session: ``run()`` returns a :class:`Process` as soon as the
    command started, output streams live, files move with ``put_bytes``/``get_bytes`` under
    the server's work dir, and errors are the ones on-device raises. The server's network
    posture is fixed when the session opens: a per-call ``network_mode`` that needs network
    on a session opened ``"blocked"`` raises :class:`SessionPolicyMismatch`.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        token: str | None = None,
        resources: Any = None,
        default_cwd: str = "",
        client_id: str | None = None,
        network_mode: str = "blocked",
        network_allowlist: Iterable[str] | None = None,
        network_denylist: Iterable[str] | None = None,
        verify_backend: str | None = None,
        health_deadline_s: float = 60.0,
        compression: str | None = None,
        http2: bool = False,
        max_output_bytes: int = MAX_CAPTURED_BYTES,
        stream_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"endpoint must be a URL such as 'http://localhost:50051', got {endpoint!r}"
            )
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        if token is not None and not token.isprintable():
            # It goes into an HTTP header, where a CR or LF would start another header.
            raise ValueError("token must be printable text (no CR, LF or other control chars)")
        self.endpoint = endpoint.rstrip("/")
        self.network = validate_network(network_mode, network_allowlist, network_denylist)
        self.limits = to_limits(resources)
        self.resources = resources
        if not isinstance(default_cwd, str):
            raise TypeError(f"default_cwd must be a str, got {type(default_cwd).__name__}")
        self.default_cwd = default_cwd
        self.client_id = client_id or str(uuid.uuid4())
        self.verify_backend = verify_backend
        if not health_deadline_s > 0:
            raise ValueError(f"health_deadline_s must be positive, got {health_deadline_s!r}")
        self.health_deadline_s = float(health_deadline_s)
        if not isinstance(max_output_bytes, int) or max_output_bytes <= 0:
            raise ValueError(f"max_output_bytes must be a positive int, got {max_output_bytes!r}")
        self.max_output_bytes = max_output_bytes
        self._buffer_bytes = max(int(stream_buffer_bytes), 1)
        self._token = token
        self._compression = compression
        self._http2 = http2
        self._transport: ConnectTransport = ConnectTransport(
            self.endpoint, token=token, compression=compression, http2=http2
        )
        self.health: HealthInfo | None = None
        self._live: set[RemoteDriver] = set()
        self._ran = False  # any Execute sent (what close() asks the server to release)
        self._open = False
        self._closed = False
        self._open_lock = anyio.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def backend(self) -> str | None:
        return self.health.backend if self.health else None

    @property
    def work_dir(self) -> str:
        """The server's work dir (the session's persistent directory)."""
        if self.health is None:
            raise RuntimeError(_NOT_OPEN)
        return self.health.work_dir

    async def open(self) -> RemoteSession:
        """Health-check the server (retrying with backoff while it starts: 0.05 s growing
        x1.6 up to 1 s, for ``health_deadline_s``). Idempotent. Terminal errors (bad token,
        wrong backend...) are not retried."""
        async with self._open_lock:
            if self._open:
                return self
            if self._closed:
                raise RuntimeError("this session was closed; open a new one")
            info = HealthInfo(await self._health())
            if self.verify_backend is not None and _canonical_backend(info.backend) != (
                _canonical_backend(self.verify_backend)
            ):
                raise core_errors.SessionTemplateMismatch(
                    f"server backend={info.backend!r}, expected {self.verify_backend!r}"
                )
            if self.network.needs_network and not info.network_allowed:
                raise core_errors.SessionPolicyMismatch(
                    f"this session asks for network_mode={self.network.mode!r}, but the "
                    f"sandbox-server at {self.endpoint} runs with --force-no-network (no "
                    "egress); start the server without it, or open the session with "
                    "network_mode='blocked'"
                )
            self.health = info
            self._open = True
            return self

    async def _health(self) -> pb.HealthResponse:
        deadline = anyio.current_time() + self.health_deadline_s
        delay = 0.05
        while True:
            remaining = deadline - anyio.current_time()
            try:
                return await self._transport.unary(
                    "Health",
                    pb.HealthRequest(),
                    pb.HealthResponse,
                    timeout_s=max(min(remaining, 10.0), 0.1),
                )
            except ConnectError as error:
                if error.code in TERMINAL_CODES:
                    raise
                if anyio.current_time() + delay >= deadline:
                    raise ConnectError(
                        Code.UNAVAILABLE,
                        f"sandbox-server at {self.endpoint} is not healthy after "
                        f"{self.health_deadline_s:g} s: {error.message}",
                    ) from error
            await anyio.sleep(delay)
            delay = min(delay * 1.6, 1.0)

    async def close(self) -> None:
        """Drop every running command (the server kills their trees; their handles report
        a cancellation), ask the server to release what finished runs left for reuse (its
        idle inits and cgroups), and close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._open = False
        closing = Termination(TerminationKind.CANCELLED, -1, detail=CANCELLED_REASON)
        with anyio.CancelScope(shield=True):
            # Kill every live run and wait for the server's word that its tree is gone.
            async with anyio.create_task_group() as tg:
                for driver in list(self._live):
                    tg.start_soon(driver.kill_and_wait, closing)
            # The server's session outlives its clients: let go of what this client's
            # finished runs left there for reuse. Best effort, bounded.
            if self._ran:
                with anyio.move_on_after(5):
                    try:
                        await self._release_idle()
                    except ConnectError:
                        pass  # unreachable or refused: nothing more to do from here
            await self._transport.aclose()

    async def release_idle(self) -> int:
        """Ask the server to let go of what finished runs left for reuse (idle inits and
        their cgroups), as :meth:`OnDeviceSession.release_idle` does on-device; how many
        reuse slots it dropped (0 from a server without the ``ReleaseIdle`` extension).
        The reuse cache is the server's, shared by its clients: this drops theirs too.
        ``close()`` calls it when this session ran anything. 0 on a closed session."""
        if not self._open:
            return 0
        return await self._release_idle()

    async def _release_idle(self) -> int:
        if self.health is None or "release-idle" not in self.health.features:
            return 0
        response = await self._transport.unary(
            "ReleaseIdle", pb.ReleaseIdleRequest(), pb.ReleaseIdleResponse
        )
        return response.released

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(_NOT_OPEN)

    # -- running -------------------------------------------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        stdout: Any = True,
        stderr: Any = True,
        stdin: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        network_denylist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        resources: Any = None,
        argv: list[str] | None = None,
    ) -> Process:
        """Start ``cmd`` on the server and return once it runs; output streams live.

        Arguments as for an on-device session. ``timeout_s=None`` means the server's
        ``--max-runtime-s`` (which also caps any value given). Bad arguments raise here,
        before anything is sent; a run that cannot complete (server unreachable, stream cut)
        raises :class:`~union.sandbox.core.errors.ExecutionError` from ``wait()`` /
        ``communicate()``.
        """
        self._require_open()
        if not isinstance(cmd, str):
            raise TypeError(f"cmd must be a str, got {type(cmd).__name__}")
        kind = validate_script_type(script_type)
        extra_env = validate_env(env)
        policy = resolve_run_network(
            self.network, network_mode, network_allowlist, network_denylist
        )
        self._check_policy(policy)
        timeout = validate_timeout(timeout_s, 0.0) if timeout_s is not None else 0.0
        chosen_cwd = cwd if cwd is not None else self.default_cwd
        if not isinstance(chosen_cwd, str):
            raise TypeError(f"cwd must be a str, got {type(chosen_cwd).__name__}")
        capture_out, sink_out = _stream_choice(stdout, "stdout")
        capture_err, sink_err = _stream_choice(stderr, "stderr")
        stdin_pipe = False
        stdin_data = b""
        if stdin in (None, DEVNULL, False):
            pass
        elif stdin == PIPE and not isinstance(stdin, bool):
            stdin_pipe = True
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            stdin_data = bytes(stdin)
        else:
            raise ValueError(f"stdin must be None, DEVNULL, PIPE or bytes, got {stdin!r}")
        if argv is not None and (not argv or not all(isinstance(a, str) for a in argv)):
            raise TypeError("argv must be a non-empty list of str")
        # The server checks these too (with its own variables added); checked here, a bad
        # request is not even sent.
        check_cmd(cmd)
        check_run_args(argv or [], extra_env, chosen_cwd, argv_given=argv is not None)
        limits = self.limits
        if resources is not None:
            limits = limits.merged(to_limits(resources))
        request = pb.ExecuteRequest(
            input=cmd.encode("utf-8"),
            env=extra_env,
            client_id=self.client_id,
            parent_request_id=uuid.uuid4().hex,
            script_type=_SCRIPT[kind],
            working_dir=chosen_cwd,
            stream_stdout=capture_out or sink_out is not None,
            stream_stderr=capture_err or sink_err is not None,
            resources=None if limits.empty else _resources_message(limits),
            network_mode=_NETWORK[policy.mode],
            network_allowlist=list(policy.allowlist),
            timeout_s=timeout,
            network_denylist=list(policy.denylist),
            stdin=stdin_data,
            stdin_pipe=stdin_pipe,
            argv=list(argv or []),
        )
        driver = await self._start(request)
        forward: list[tuple[Any, Any]] = []
        out_stream = err_stream = None
        if request.stream_stdout:
            if sink_out is not None:
                forward.append((driver.pull_stdout, sink_out))
            else:
                out_stream = OutputStream(driver.pull_stdout, limit=self.max_output_bytes)
        if request.stream_stderr:
            if sink_err is not None:
                forward.append((driver.pull_stderr, sink_err))
            else:
                err_stream = OutputStream(driver.pull_stderr, limit=self.max_output_bytes)
        in_stream = self._stdin_writer(driver) if stdin_pipe and not driver.done else None
        return Process(
            driver,
            stdout=out_stream,
            stderr=err_stream,
            stdin=in_stream,
            isolation=driver.isolation,
            forward=forward,
            network_log=driver.network_log,
        )

    def _check_policy(self, policy: NetworkPolicy) -> None:
        if self.network.mode == "blocked" and policy.needs_network:
            raise core_errors.SessionPolicyMismatch(
                f"run(network_mode={policy.mode!r}) needs network, but this remote session was "
                "opened with network_mode='blocked', so its sandbox-server has no egress (the "
                "pod's network is fixed when the session opens). Open the session with the "
                "posture you need, e.g. sb.remote.session(endpoint=..., "
                "network_mode='allowlist', network_allowlist=sb.constants.PYPI_HOSTS)"
            )

    async def _start(self, request: pb.ExecuteRequest) -> RemoteDriver:
        """Open the Execute stream and read up to ``session_info``: the command runs."""
        try:
            self._ran = True
            call = await self._transport.server_stream("Execute", request, pb.ExecuteResponse)
        except ConnectError as error:
            return self._failed(error)
        try:
            first = await call.next()
        except ConnectError as error:
            await call.aclose()
            return self._failed(error)
        except Exception as exc:
            await call.aclose()
            return self._failed(ConnectError(Code.UNAVAILABLE, f"{type(exc).__name__}: {exc}"))
        except BaseException:
            # Cancelled while starting: dropping the stream makes the server kill the run.
            with anyio.CancelScope(shield=True):
                await call.aclose()
            raise
        info = first.session_info if isinstance(first, pb.ExecuteResponse) else None
        if info is None:
            await call.aclose()
            return self._failed(
                ConnectError(Code.INTERNAL, "Execute did not start with session_info")
            )
        driver = RemoteDriver(
            self,
            call,
            backend=info.backend or (self.backend or ""),
            execution_id=info.execution_id,
            buffer_bytes=self._buffer_bytes,
        )
        driver.isolation = isolation_from_wire(info.isolation)
        self._live.add(driver)
        return driver

    def _failed(self, error: ConnectError) -> RemoteDriver:
        """A run the server refused: validation errors raise (as on-device), anything else
        becomes an abnormal termination reported by ``wait()``."""
        if error.detail is not None and error.detail.exception != "ExecutionError":
            raised = exception_from(error)
            if raised is not error:
                raise raised
        termination: Termination = failure_from_error(error)
        return RemoteDriver(
            self,
            None,
            backend=self.backend or "",
            execution_id="",
            buffer_bytes=self._buffer_bytes,
            termination=termination,
        )

    def _stdin_writer(self, driver: RemoteDriver) -> InputStream:
        async def write(data: bytes) -> None:
            await self._stdin(driver, data, eof=False)

        async def close() -> None:
            await self._stdin(driver, b"", eof=True)

        return InputStream(write, close)

    async def _stdin(self, driver: RemoteDriver, data: bytes, *, eof: bool) -> None:
        if driver.done:
            if eof:
                return
            raise BrokenPipeError(32, "the process has ended")
        for offset in range(0, max(len(data), 1), _CHUNK):
            piece = data[offset : offset + _CHUNK]
            last = offset + _CHUNK >= len(data)
            try:
                await self._transport.unary(
                    "WriteStdin",
                    pb.WriteStdinRequest(
                        execution_id=driver.execution_id, data=piece, eof=eof and last
                    ),
                    pb.WriteStdinResponse,
                )
            except ConnectError as error:
                if error.code is Code.NOT_FOUND:
                    if eof and not data:
                        return  # closing the stdin of a process that ended: nothing to do
                    raise BrokenPipeError(32, "the process has ended") from error
                raise exception_from(error) from error

    # -- files ---------------------------------------------------------------------------

    async def put_bytes(
        self,
        path: str,
        data: bytes | bytearray | memoryview | AsyncIterable[bytes],
        *,
        mode: int = 0o644,
        overwrite: bool = True,
    ) -> int:
        """Write ``data`` (bytes, or an async iterable of byte chunks) to ``path`` on the
        server: absolute, under the work dir, no symlinks; atomic. Returns bytes written."""
        self._require_open()
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, got {type(path).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ValueError(f"mode must be a permission int such as 0o644, got {mode!r}")
        assert self.health is not None
        cap = self.health.max_put_bytes
        features = self.health.features
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if cap and len(view) > cap:
                raise ValueError(
                    f"put_bytes payload of {len(view)} bytes exceeds the server's limit of "
                    f"{cap} bytes (--max-put-bytes-mb)"
                )
            if len(view) <= _UNARY_PUT_MAX or "put-bytes-stream" not in features:
                request = pb.PutBytesRequest(
                    target_path=path, data=bytes(view), mode=mode, overwrite=overwrite
                )
                return await self._file_call("PutBytes", request, pb.PutBytesResponse)
            chunks: AsyncIterable[bytes] = _chunks_of(view)
        elif hasattr(data, "__aiter__"):
            chunks = data
        else:
            raise TypeError(
                f"data must be bytes-like or an async iterable of bytes, got {type(data).__name__}"
            )

        async def messages() -> AsyncIterator[pb.PutBytesRequest]:
            yield pb.PutBytesRequest(target_path=path, mode=mode, overwrite=overwrite)
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"data chunks must be bytes, got {type(chunk).__name__}")
                if chunk:
                    # A view is encoded without a copy (the envelope is built in one join).
                    yield pb.PutBytesRequest(data=chunk)

        try:
            response = await self._transport.client_stream(
                "PutBytesStream", messages(), pb.PutBytesResponse
            )
        except ConnectError as error:
            raise exception_from(error) from None
        return int(response.bytes_written)

    async def _file_call(self, method: str, request: Message, response_cls: type[Any]) -> int:
        try:
            response = await self._transport.unary(method, request, response_cls)
        except ConnectError as error:
            raise exception_from(error) from None
        return int(response.bytes_written)

    async def get_bytes(self, path: str, *, max_bytes: int = 0) -> bytes:
        """Read ``path`` on the server (absolute, under the work dir, a regular file, no
        symlinks). ``max_bytes > 0`` raises ``ValueError`` for a larger file; the server's
        ``--max-get-bytes-mb`` applies too."""
        self._require_open()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, got {type(path).__name__}")
        assert self.health is not None
        request = pb.GetBytesRequest(source_path=path, max_bytes=max_bytes)
        if "get-bytes-stream" not in self.health.features:
            try:
                response = await self._transport.unary("GetBytes", request, pb.GetBytesResponse)
            except ConnectError as error:
                raise exception_from(error) from None
            return bytes(response.data)
        chunks: list[bytes | memoryview] = []
        async for chunk in self._iter_bytes(request, borrow=True):
            chunks.append(chunk)
        if len(chunks) == 1:
            return bytes(chunks[0])
        return b"".join(chunks)

    async def iter_bytes(self, path: str, *, max_bytes: int = 0) -> AsyncIterator[bytes]:
        """Stream ``path`` from the server in chunks (same rules as :meth:`get_bytes`),
        without holding the whole file in memory."""
        self._require_open()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        async for chunk in self._iter_bytes(
            pb.GetBytesRequest(source_path=path, max_bytes=max_bytes)
        ):
            yield bytes(chunk)

    async def _iter_bytes(
        self, request: pb.GetBytesRequest, *, borrow: bool = False
    ) -> AsyncIterator[bytes | memoryview]:
        try:
            call = await self._transport.server_stream(
                "GetBytesStream", request, pb.GetBytesResponse, borrow=borrow
            )
        except ConnectError as error:
            raise exception_from(error) from None
        try:
            while True:
                try:
                    message = await call.next()
                except ConnectError as error:
                    raise exception_from(error) from None
                except Exception as exc:
                    raise ConnectError(
                        Code.UNAVAILABLE, f"GetBytesStream was cut off: {exc}"
                    ) from exc
                if message is None:
                    return
                assert isinstance(message, pb.GetBytesResponse)
                if message.data:
                    yield message.data
        finally:
            await call.aclose()

    def __repr__(self) -> str:
        state = "open" if self._open else ("closed" if self._closed else "new")
        return f"<RemoteSession endpoint={self.endpoint} {state}>"


async def _chunks_of(view: memoryview) -> AsyncIterator[bytes]:
    for offset in range(0, len(view), _CHUNK):
        yield cast(bytes, view[offset : offset + _CHUNK])


def session(
    *,
    endpoint: str,
    token: str | None = None,
    resources: Any = None,
    default_cwd: str = "",
    client_id: str | None = None,
    network_mode: str = "blocked",
    network_allowlist: Iterable[str] | None = None,
    network_denylist: Iterable[str] | None = None,
    verify_backend: str | None = None,
    health_deadline_s: float = 60.0,
    compression: str | None = None,
    http2: bool = False,
    max_output_bytes: int = MAX_CAPTURED_BYTES,
) -> RemoteSession:
    """A session on the ``sandbox-server`` at ``endpoint`` (not yet open).

    ``async with sb.remote.session(endpoint="http://localhost:50051", token=...) as sbx:``.
    No ``token`` means no ``Authorization`` header. ``verify_backend`` makes open fail with
    :class:`SessionTemplateMismatch` when the server runs another backend. ``resources`` is
    the default per-run request (the server clamps it to its ceilings). ``compression="gzip"``
    compresses messages (useful over slow links only). Bad arguments raise here.
    """
    return RemoteSession(
        endpoint=endpoint,
        token=token,
        resources=resources,
        default_cwd=default_cwd,
        client_id=client_id,
        network_mode=network_mode,
        network_allowlist=network_allowlist,
        network_denylist=network_denylist,
        verify_backend=verify_backend,
        health_deadline_s=health_deadline_s,
        compression=compression,
        http2=http2,
        max_output_bytes=max_output_bytes,
    )
