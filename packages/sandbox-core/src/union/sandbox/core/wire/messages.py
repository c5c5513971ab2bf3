"""The messages of ``sandbox.proto`` (package ``sandbox.v2``) as Python dataclasses.

Hand-written to match ``sandbox.proto`` field for field (a test parses the ``.proto`` and
checks both agree, and cross-checks the encoding against the protobuf runtime when present).
Unset ``optional``, ``oneof`` and message fields are ``None``; everything else has its proto3
default.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import field
from typing import TypeVar

from ._proto import Field, Kind, Message

__all__ = [
    "ErrorDetail",
    "ExecuteRequest",
    "ExecuteResponse",
    "FetchDirRequest",
    "FetchDirResponse",
    "FetchFileRequest",
    "FetchFileResponse",
    "GetBytesRequest",
    "GetBytesResponse",
    "HealthRequest",
    "HealthResponse",
    "IsolationReport",
    "KillRequest",
    "KillResponse",
    "ReleaseIdleRequest",
    "ReleaseIdleResponse",
    "NetworkMode",
    "PACKAGE",
    "PutBytesRequest",
    "PutBytesResponse",
    "Resources",
    "ScriptType",
    "SERVICE",
    "SessionInfo",
    "SignalRequest",
    "SignalResponse",
    "NetworkDecision",
    "Termination",
    "TerminationKind",
    "WriteStdinRequest",
    "WriteStdinResponse",
]

PACKAGE = "sandbox.v2"
SERVICE = f"{PACKAGE}.SandboxService"


class ScriptType(enum.IntEnum):
    SCRIPT_TYPE_UNSPECIFIED = 0
    SCRIPT_TYPE_PYTHON = 1
    SCRIPT_TYPE_SHELL = 2


class NetworkMode(enum.IntEnum):
    NETWORK_MODE_UNSPECIFIED = 0
    NETWORK_MODE_BLOCKED = 1
    NETWORK_MODE_OPEN = 2
    NETWORK_MODE_ALLOWLIST = 3


class TerminationKind(enum.IntEnum):
    TERMINATION_KIND_UNSPECIFIED = 0
    TERMINATION_KIND_EXIT = 1
    TERMINATION_KIND_SIGNAL = 2
    TERMINATION_KIND_TIMEOUT = 3
    TERMINATION_KIND_KILLED = 4
    TERMINATION_KIND_OOM = 5
    TERMINATION_KIND_PIDS_LIMIT = 6
    TERMINATION_KIND_FSIZE_LIMIT = 7
    TERMINATION_KIND_CANCELLED = 8
    TERMINATION_KIND_SANDBOX_FAILURE = 9


_M = TypeVar("_M", bound=Message)

_S, _B, _BOOL = Kind.STRING, Kind.BYTES, Kind.BOOL
_I32, _U32, _I64, _U64 = Kind.INT32, Kind.UINT32, Kind.INT64, Kind.UINT64
_DBL, _ENUM, _MSG, _MAP = Kind.DOUBLE, Kind.ENUM, Kind.MESSAGE, Kind.MAP


def _schema(name: str, *fields: Field) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: register a message dataclass as ``sandbox.v2.<name>``."""

    def wrap(cls: type[_M]) -> type[_M]:
        cls._setup(f"{PACKAGE}.{name}", fields)
        return cls

    return wrap


@_schema(
    "Resources",
    Field(1, "cpu_milli", _U32),
    Field(2, "memory_bytes", _U64),
    Field(3, "gpu", _U32),
    Field(4, "ephemeral_storage_bytes", _U64),
    Field(100, "pids", _U32),
    Field(101, "file_size_bytes", _U64),
)
@dataclasses.dataclass(slots=True)
class Resources(Message):
    cpu_milli: int = 0
    memory_bytes: int = 0
    gpu: int = 0
    ephemeral_storage_bytes: int = 0
    pids: int = 0
    file_size_bytes: int = 0


@_schema(
    "ExecuteRequest",
    Field(1, "input", _B),
    Field(2, "env", _MAP),
    Field(3, "client_id", _S),
    Field(4, "parent_request_id", _S),
    Field(5, "script_type", _ENUM, enum=ScriptType),
    Field(6, "working_dir", _S),
    Field(7, "stream_stdout", _BOOL),
    Field(8, "stream_stderr", _BOOL),
    Field(10, "resources", _MSG, message=Resources),
    Field(14, "network_mode", _ENUM, enum=NetworkMode),
    Field(15, "network_allowlist", _S, repeated=True),
    Field(16, "timeout_s", _DBL),
    Field(17, "network_denylist", _S, repeated=True),
    Field(100, "stdin", _B),
    Field(101, "stdin_pipe", _BOOL),
    Field(102, "argv", _S, repeated=True),
)
@dataclasses.dataclass(slots=True)
class ExecuteRequest(Message):
    input: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    client_id: str = ""
    parent_request_id: str = ""
    script_type: int = ScriptType.SCRIPT_TYPE_UNSPECIFIED
    working_dir: str = ""
    stream_stdout: bool = False
    stream_stderr: bool = False
    resources: Resources | None = None
    network_mode: int = NetworkMode.NETWORK_MODE_UNSPECIFIED
    network_allowlist: list[str] = field(default_factory=list)
    timeout_s: float = 0.0
    network_denylist: list[str] = field(default_factory=list)
    stdin: bytes = b""
    stdin_pipe: bool = False
    argv: list[str] = field(default_factory=list)


@_schema(
    "IsolationReport",
    Field(1, "backend", _S),
    Field(2, "namespaces", _S, repeated=True),
    Field(3, "landlock_abi", _U32, optional=True),
    Field(4, "seccomp", _BOOL),
    Field(5, "no_new_privs", _BOOL),
    Field(6, "capabilities_dropped", _BOOL),
    Field(7, "uid", _I64, optional=True),
    Field(8, "limits", _MAP),
    Field(9, "fresh_tmp", _BOOL),
    Field(10, "network", _S),
    Field(11, "gpus", _U32),
)
@dataclasses.dataclass(slots=True)
class IsolationReport(Message):
    backend: str = ""
    namespaces: list[str] = field(default_factory=list)
    landlock_abi: int | None = None
    seccomp: bool = False
    no_new_privs: bool = False
    capabilities_dropped: bool = False
    uid: int | None = None
    limits: dict[str, str] = field(default_factory=dict)
    fresh_tmp: bool = False
    network: str = ""
    gpus: int = 0


@_schema(
    "SessionInfo",
    Field(1, "version", _S),
    Field(2, "backend", _S),
    Field(3, "resources", _MSG, message=Resources),
    Field(100, "execution_id", _S),
    Field(101, "isolation", _MSG, message=IsolationReport),
)
@dataclasses.dataclass(slots=True)
class SessionInfo(Message):
    version: str = ""
    backend: str = ""
    resources: Resources | None = None
    execution_id: str = ""
    isolation: IsolationReport | None = None


@_schema(
    "NetworkDecision",
    Field(1, "host", _S),
    Field(2, "port", _U32),
    Field(3, "allowed", _BOOL),
    Field(4, "rule", _S),
    Field(5, "reason", _S),
    Field(6, "protocol", _S),
    Field(7, "bytes_up", _U64),
    Field(8, "bytes_down", _U64),
)
@dataclasses.dataclass(slots=True)
class NetworkDecision(Message):
    host: str = ""
    port: int = 0
    allowed: bool = False
    rule: str = ""
    reason: str = ""
    protocol: str = ""
    bytes_up: int = 0
    bytes_down: int = 0


@_schema(
    "Termination",
    Field(1, "exit_code", _I32),
    Field(2, "reason", _S),
    Field(3, "runtime_ms", _I64),
    Field(100, "kind", _ENUM, enum=TerminationKind),
    Field(101, "signal", _I32),
    Field(102, "detail", _S),
    Field(103, "network_decisions", _MSG, message=NetworkDecision, repeated=True),
)
@dataclasses.dataclass(slots=True)
class Termination(Message):
    exit_code: int = 0
    reason: str = ""
    runtime_ms: int = 0
    kind: int = TerminationKind.TERMINATION_KIND_UNSPECIFIED
    signal: int = 0
    detail: str = ""
    network_decisions: list[NetworkDecision] = dataclasses.field(default_factory=list)


@_schema(
    "ExecuteResponse",
    Field(1, "session_info", _MSG, message=SessionInfo, oneof="result"),
    Field(2, "stdout", _B, oneof="result"),
    Field(3, "stderr", _B, oneof="result"),
    Field(4, "termination", _MSG, message=Termination, oneof="result"),
)
@dataclasses.dataclass(slots=True)
class ExecuteResponse(Message):
    session_info: SessionInfo | None = None
    stdout: bytes | None = None
    stderr: bytes | None = None
    termination: Termination | None = None


@_schema(
    "FetchFileRequest",
    Field(1, "uri", _S),
    Field(2, "target_path", _S),
    Field(3, "mode", _U32),
    Field(4, "overwrite", _BOOL),
)
@dataclasses.dataclass(slots=True)
class FetchFileRequest(Message):
    uri: str = ""
    target_path: str = ""
    mode: int = 0
    overwrite: bool = False


@_schema(
    "FetchFileResponse",
    Field(1, "target_path", _S),
    Field(2, "bytes_written", _I64),
    Field(3, "sha256", _S),
)
@dataclasses.dataclass(slots=True)
class FetchFileResponse(Message):
    target_path: str = ""
    bytes_written: int = 0
    sha256: str = ""


@_schema("FetchDirRequest", Field(1, "uri", _S), Field(2, "target_path", _S))
@dataclasses.dataclass(slots=True)
class FetchDirRequest(Message):
    uri: str = ""
    target_path: str = ""


@_schema(
    "FetchDirResponse",
    Field(1, "target_path", _S),
    Field(2, "file_count", _I32),
    Field(3, "bytes_written", _I64),
)
@dataclasses.dataclass(slots=True)
class FetchDirResponse(Message):
    target_path: str = ""
    file_count: int = 0
    bytes_written: int = 0


@_schema(
    "PutBytesRequest",
    Field(1, "target_path", _S),
    Field(2, "data", _B),
    Field(3, "mode", _U32),
    Field(4, "overwrite", _BOOL),
)
@dataclasses.dataclass(slots=True)
class PutBytesRequest(Message):
    target_path: str = ""
    data: bytes = b""
    mode: int = 0
    overwrite: bool = False


@_schema(
    "PutBytesResponse",
    Field(1, "target_path", _S),
    Field(2, "bytes_written", _I64),
    Field(3, "sha256", _S),
)
@dataclasses.dataclass(slots=True)
class PutBytesResponse(Message):
    target_path: str = ""
    bytes_written: int = 0
    sha256: str = ""


@_schema("GetBytesRequest", Field(1, "source_path", _S), Field(2, "max_bytes", _U64))
@dataclasses.dataclass(slots=True)
class GetBytesRequest(Message):
    source_path: str = ""
    max_bytes: int = 0


@_schema(
    "GetBytesResponse",
    Field(1, "source_path", _S),
    Field(2, "data", _B),
    Field(3, "bytes_read", _I64),
    Field(4, "sha256", _S),
    Field(100, "size", _I64),
)
@dataclasses.dataclass(slots=True)
class GetBytesResponse(Message):
    source_path: str = ""
    data: bytes = b""
    bytes_read: int = 0
    sha256: str = ""
    size: int = 0


@_schema("HealthRequest")
@dataclasses.dataclass(slots=True)
class HealthRequest(Message):
    pass


@_schema(
    "HealthResponse",
    Field(1, "version", _S),
    Field(2, "backend", _S),
    Field(3, "resource_ceiling", _MSG, message=Resources),
    Field(100, "work_dir", _S),
    Field(101, "features", _S, repeated=True),
    Field(102, "max_put_bytes", _U64),
    Field(103, "max_get_bytes", _U64),
    Field(104, "network_allowed", _BOOL),
    Field(105, "max_runtime_s", _DBL),
    Field(106, "server", _S),
)
@dataclasses.dataclass(slots=True)
class HealthResponse(Message):
    version: str = ""
    backend: str = ""
    resource_ceiling: Resources | None = None
    work_dir: str = ""
    features: list[str] = field(default_factory=list)
    max_put_bytes: int = 0
    max_get_bytes: int = 0
    network_allowed: bool = False
    max_runtime_s: float = 0.0
    server: str = ""


@_schema(
    "WriteStdinRequest",
    Field(1, "execution_id", _S),
    Field(2, "data", _B),
    Field(3, "eof", _BOOL),
)
@dataclasses.dataclass(slots=True)
class WriteStdinRequest(Message):
    execution_id: str = ""
    data: bytes = b""
    eof: bool = False


@_schema("WriteStdinResponse", Field(1, "bytes_written", _I64))
@dataclasses.dataclass(slots=True)
class WriteStdinResponse(Message):
    bytes_written: int = 0


@_schema("SignalRequest", Field(1, "execution_id", _S), Field(2, "signal", _I32))
@dataclasses.dataclass(slots=True)
class SignalRequest(Message):
    execution_id: str = ""
    signal: int = 0


@_schema("SignalResponse")
@dataclasses.dataclass(slots=True)
class SignalResponse(Message):
    pass


@_schema("KillRequest", Field(1, "execution_id", _S))
@dataclasses.dataclass(slots=True)
class KillRequest(Message):
    execution_id: str = ""


@_schema("KillResponse")
@dataclasses.dataclass(slots=True)
class KillResponse(Message):
    pass


@_schema("ReleaseIdleRequest")
@dataclasses.dataclass(slots=True)
class ReleaseIdleRequest(Message):
    pass


@_schema("ReleaseIdleResponse", Field(1, "released", _U32))
@dataclasses.dataclass(slots=True)
class ReleaseIdleResponse(Message):
    released: int = 0


@_schema(
    "ErrorDetail",
    Field(1, "exception", _S),
    Field(2, "message", _S),
    Field(3, "errno", _I32),
    Field(4, "filename", _S),
)
@dataclasses.dataclass(slots=True)
class ErrorDetail(Message):
    exception: str = ""
    message: str = ""
    errno: int = 0
    filename: str = ""
