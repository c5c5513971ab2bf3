"""unionai-sandbox: run untrusted code in live, multi-turn sandbox sessions.

``from union import sandbox as sb``. On-device sessions (``sb.on_device.session``) need no
extra; the remote client (``sb.remote``) needs ``unionai-sandbox[remote]`` and the Flyte
launcher (``sb.session``, ``sb.SandboxEnvironment``) ``unionai-sandbox[flyte]``. Both the
docs-era names (``SandboxProcess``, ``SandboxExecutionError``, ``PYPI_HOSTS``...) and the newer
ones (``Process``, ``sb.errors.ExecutionError``, ``sb.constants.PYPI_HOSTS``...) are exported.
"""

from __future__ import annotations

# The layer packages (core, server, client, flyte) install their subpackages under
# union/sandbox/ from their own distributions: let this package span all of them.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

import importlib
from typing import TYPE_CHECKING, Any

from union.sandbox.core import Resources as _PlainResources
from union.sandbox.core import __version__
from union.sandbox.core.constants import (
    CLOUD_METADATA_DENY,
    DEVNULL,
    INHERIT,
    PIPE,
    PYPI_HOSTS,
)
from union.sandbox.core.errors import (
    BackendUnavailableError,
    CommandError,
    ExecutionError,
    SessionPolicyMismatch,
    SessionTemplateMismatch,
)
from union.sandbox.core.process import (
    ExecResult,
    IsolationReport,
    Process,
    Termination,
    TerminationKind,
)
from union.sandbox.core.session import Session

from . import constants, errors

if TYPE_CHECKING:
    from union.sandbox.core.constants import DEFAULT_TIMEOUT

    from . import on_device
    from . import on_device as local  # ``sb.local``: ``sb.on_device`` before 0.0.1b8
SandboxProcess = Process
SandboxExecutionError = ExecutionError
SandboxCommandError = CommandError

# Names served by optional layers: (module, attribute, extra that installs the module).
_LAZY: dict[str, tuple[str, str, str]] = {
    "remote": ("union.sandbox.remote", "", "remote"),
    "session": ("union.sandbox.flyte", "session", "flyte"),
    "SandboxSession": ("union.sandbox.flyte", "SandboxSession", "flyte"),
    "SandboxEnvironment": ("union.sandbox.flyte", "SandboxEnvironment", "flyte"),
    "Environment": ("union.sandbox.flyte", "SandboxEnvironment", "flyte"),
    "DEFAULT_SANDBOX_ENV": ("union.sandbox.flyte", "DEFAULT_SANDBOX_ENV", "deploy"),
    "DEFAULT_SANDBOX_ENV_BWRAP": ("union.sandbox.flyte", "DEFAULT_SANDBOX_ENV_BWRAP", "deploy"),
    "DEFAULT_ENV": ("union.sandbox.flyte", "DEFAULT_SANDBOX_ENV", "deploy"),
    "DEFAULT_ENV_BWRAP": ("union.sandbox.flyte", "DEFAULT_SANDBOX_ENV_BWRAP", "deploy"),
    "base_sandbox_image": ("union.sandbox.flyte", "base_sandbox_image", "flyte"),
    "base_image": ("union.sandbox.flyte", "base_sandbox_image", "flyte"),
    "SandboxLaunchError": ("union.sandbox.flyte", "SandboxLaunchError", "flyte"),
    "SandboxRunEnded": ("union.sandbox.flyte", "SandboxRunEnded", "flyte"),
}


def version() -> str:
    """The installed unionai-sandbox version."""
    return __version__


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_TIMEOUT":  # made on first use: see core.constants
        return constants.DEFAULT_TIMEOUT
    if name in ("on_device", "local"):
        # Loaded on first use: the on-device engine is not what a remote client or the
        # CLI's other commands need.
        module = importlib.import_module("union.sandbox.on_device")
        globals().update(on_device=module, local=module)
        return module
    if name == "Resources":
        try:
            import flyte

            return flyte.Resources
        except ImportError:
            return _PlainResources
    if name not in _LAZY:
        raise AttributeError(f"module 'union.sandbox' has no attribute {name!r}")
    module_name, attribute, extra = _LAZY[name]
    try:
        # The flyte layer loads its modules (and flyte itself) on attribute access.
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    except ImportError as exc:
        raise ImportError(
            f"sb.{name} needs an optional part of unionai-sandbox that is not installed: "
            f"pip install 'unionai-sandbox[{extra}]' ({exc})"
        ) from exc


__all__ = [
    "CLOUD_METADATA_DENY",
    "DEFAULT_ENV",
    "DEFAULT_ENV_BWRAP",
    "DEFAULT_SANDBOX_ENV",
    "DEFAULT_SANDBOX_ENV_BWRAP",
    "DEFAULT_TIMEOUT",
    "DEVNULL",
    "INHERIT",
    "PIPE",
    "PYPI_HOSTS",
    "BackendUnavailableError",
    "CommandError",
    "Environment",
    "ExecResult",
    "ExecutionError",
    "IsolationReport",
    "Process",
    "Resources",
    "SandboxCommandError",
    "SandboxEnvironment",
    "SandboxExecutionError",
    "SandboxLaunchError",
    "SandboxProcess",
    "SandboxRunEnded",
    "SandboxSession",
    "Session",
    "SessionPolicyMismatch",
    "SessionTemplateMismatch",
    "Termination",
    "TerminationKind",
    "__version__",
    "base_image",
    "base_sandbox_image",
    "constants",
    "errors",
    "local",
    "on_device",
    "remote",
    "session",
    "version",
]
