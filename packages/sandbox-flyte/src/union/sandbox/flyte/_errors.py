"""Errors of the launcher: each names the run and says what to do."""

from __future__ import annotations

__all__ = ["SandboxLaunchError", "SandboxRunEnded"]


class SandboxLaunchError(RuntimeError):
    """The sandbox run could not be submitted (no such deployed task, the control plane
    refused the request, the run name is taken...). Nothing was started."""

    def __init__(self, message: str, *, run_name: str) -> None:
        super().__init__(message)
        self.run_name = run_name


class SandboxRunEnded(RuntimeError):
    """The sandbox's run ended (failed, aborted, timed out, or its soft timeout expired), so
    its server is gone: raised to whoever waits for it or calls it afterwards. ``phase`` is
    the run's final phase (``"FAILED"``, ``"ABORTED"``, ``"TIMED_OUT"``, ``"SUCCEEDED"``)."""

    def __init__(self, message: str, *, run_name: str, phase: str, reason: str = "") -> None:
        super().__init__(message)
        self.run_name = run_name
        self.phase = phase
        self.reason = reason
