"""Core of unionai-sandbox: the session contract (process handle, results, errors,
constants, policy validation) and the on-device engine (``union.sandbox.core.on_device``).

Imports nothing heavy: the on-device engine loads on first use of ``on_device``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import constants, errors
from .constants import (
    CLOUD_METADATA_DENY,
    DEVNULL,
    INHERIT,
    MAX_CAPTURED_BYTES,
    PIPE,
    PYPI_HOSTS,
)
from .errors import (
    BackendUnavailableError,
    CommandError,
    ExecutionError,
    SessionPolicyMismatch,
    SessionTemplateMismatch,
)
from .process import ExecResult, IsolationReport, Process, Termination, TerminationKind
from .resources import Resources
from .session import Session, SessionBase

if TYPE_CHECKING:
    from .constants import DEFAULT_TIMEOUT

__version__ = "0.1.0"

__all__ = [
    "CLOUD_METADATA_DENY",
    "DEFAULT_TIMEOUT",
    "DEVNULL",
    "INHERIT",
    "MAX_CAPTURED_BYTES",
    "PIPE",
    "PYPI_HOSTS",
    "BackendUnavailableError",
    "CommandError",
    "ExecResult",
    "ExecutionError",
    "IsolationReport",
    "Process",
    "Resources",
    "Session",
    "SessionBase",
    "SessionPolicyMismatch",
    "SessionTemplateMismatch",
    "Termination",
    "TerminationKind",
    "__version__",
    "constants",
    "errors",
]


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_TIMEOUT":  # made on first use: see core.constants
        return constants.DEFAULT_TIMEOUT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
