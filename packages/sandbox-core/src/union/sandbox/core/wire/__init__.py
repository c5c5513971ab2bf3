"""The wire schema of the remote transport: ``sandbox.proto`` (package ``sandbox.v2``,
service ``SandboxService``), a dependency-free codec for its messages (binary and proto3
JSON), and the I/O-free parts of the Connect protocol shared by server and client."""

from __future__ import annotations

from importlib import resources as _resources

from . import connect, messages
from ._proto import DecodeError, Message
from .connect import Code, ConnectError

__all__ = ["Code", "ConnectError", "DecodeError", "Message", "connect", "messages", "proto_source"]


def proto_source() -> str:
    """The text of ``sandbox.proto`` shipped with this package."""
    return _resources.files(__name__).joinpath("sandbox.proto").read_text(encoding="utf-8")
