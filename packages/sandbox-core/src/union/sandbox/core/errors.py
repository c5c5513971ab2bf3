"""Exceptions of the session contract.

A failing sandboxed command is *data* (``proc.returncode``); an exception means the sandbox
itself misbehaved, the caller asked for something impossible, or ``check=True`` was used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .process import ExecResult

__all__ = [
    "BackendUnavailableError",
    "CommandError",
    "ExecutionError",
    "LimitUnavailableError",
    "SessionPolicyMismatch",
    "SessionTemplateMismatch",
]


class ExecutionError(RuntimeError):
    """The process never ran to a real exit (spawn failure, sandbox failure, lost stream,
    cancellation). Never raised for a non-zero exit or a signal."""

    def __init__(
        self,
        reason: str,
        *,
        returncode: int = -1,
        backend: str | None = None,
        runtime_ms: int | None = None,
    ) -> None:
        message = f"sandbox process terminated abnormally: {reason}"
        if backend:
            message += f" (backend={backend})"
        super().__init__(message)
        self.reason = reason
        self.returncode = returncode
        self.backend = backend
        self.runtime_ms = runtime_ms


class CommandError(RuntimeError):
    """``run_code()`` or ``exec(check=True)`` saw a non-zero exit."""

    def __init__(self, cmd: str, result: ExecResult) -> None:
        message = f"sandbox command exited with code {result.returncode}"
        detail = (result.stderr or result.stdout).strip()
        if detail:
            message += ":\n" + detail
        super().__init__(message)
        self.cmd = cmd
        self.result = result


class SessionPolicyMismatch(RuntimeError):
    """A per-call network posture is broader than the session allows (remote sessions fix the
    pod's network at open)."""


class SessionTemplateMismatch(RuntimeError):
    """The server runs a different backend than ``verify_backend=`` asked for."""


class BackendUnavailableError(RuntimeError):
    """The named isolation backend cannot run on this host. The message names the missing
    host feature and the fix; a weaker backend is never substituted."""

    def __init__(self, backend: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"sandbox backend {backend!r} is not available in this environment, and "
            f"downgrading to a weaker backend is refused:\n{lines}\n"
            "Fix the host setting above, or pick another backend explicitly "
            "(see `unionai-sandbox doctor` / sb.on_device.available_backends())."
        )
        self.backend = backend
        self.problems = problems


class LimitUnavailableError(RuntimeError):
    """A requested resource limit cannot be enforced on this host (no usable cgroup for it).
    Pass ``best_effort_limits=True`` to the session to run with what can be enforced; the
    process's ``isolation.limits`` then says which limits were skipped."""
