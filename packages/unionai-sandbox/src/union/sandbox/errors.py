"""``sb.errors``: the exceptions of the session contract."""

from __future__ import annotations

from union.sandbox.core.errors import (
    BackendUnavailableError,
    CommandError,
    ExecutionError,
    LimitUnavailableError,
    SessionPolicyMismatch,
    SessionTemplateMismatch,
)

__all__ = [
    "BackendUnavailableError",
    "CommandError",
    "ExecutionError",
    "LimitUnavailableError",
    "SessionPolicyMismatch",
    "SessionTemplateMismatch",
]
