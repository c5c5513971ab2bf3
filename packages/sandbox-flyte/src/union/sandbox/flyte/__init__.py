"""Flyte layer: ``SandboxEnvironment``, the ``sandbox_server`` task, ``base_sandbox_image``
and the ``unionai-sandbox-deploy`` command.

Importing this module creates no environment and builds no image (``flyte deploy --all``
deploys every environment that exists in the process): ``base_sandbox_image`` /
``base_image`` and the default environments ``DEFAULT_SANDBOX_ENV`` / ``DEFAULT_ENV`` (userns)
and ``DEFAULT_SANDBOX_ENV_BWRAP`` / ``DEFAULT_ENV_BWRAP`` (bubblewrap) are built on first
access. Environments need the ``kubernetes`` package (``unionai-sandbox[deploy]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._body import PASS_THROUGH, Ending, Served, ServerFailed, ServerOptions, serve_sandbox
from ._ceilings import Ceilings, ceilings_for
from ._environment import SandboxEnvironment
from ._image import cached_base_image
from ._settings import DEFAULT_ENV_NAME, DEFAULT_ENV_NAME_BWRAP, HARD_CEILING, TASK_FUNCTION
from ._task import SandboxAborted

#: The b15 name of :class:`SandboxEnvironment`.
Environment = SandboxEnvironment


@functools.cache
def default_environment(sandbox_mode: str) -> SandboxEnvironment:
    """The built-in environment for ``sandbox_mode`` (``"userns"`` or ``"bwrap"``)."""
    if sandbox_mode == "userns":
        return SandboxEnvironment(
            name=DEFAULT_ENV_NAME,
            sandbox_mode="userns",
            description="Default union.sandbox userns-isolated server.",
        )
    if sandbox_mode == "bwrap":
        return SandboxEnvironment(
            name=DEFAULT_ENV_NAME_BWRAP,
            sandbox_mode="bwrap",
            description="Default union.sandbox bubblewrap-isolated server.",
        )
    raise ValueError(f"sandbox_mode must be 'userns' or 'bwrap', got {sandbox_mode!r}")


_LAZY: dict[str, Callable[[], Any]] = {
    "base_sandbox_image": cached_base_image,
    "base_image": cached_base_image,
    "DEFAULT_SANDBOX_ENV": lambda: default_environment("userns"),
    "DEFAULT_ENV": lambda: default_environment("userns"),
    "DEFAULT_SANDBOX_ENV_BWRAP": lambda: default_environment("bwrap"),
    "DEFAULT_ENV_BWRAP": lambda: default_environment("bwrap"),
}


def __getattr__(name: str) -> Any:
    build = _LAZY.get(name)
    if build is None:
        raise AttributeError(f"module 'union.sandbox.flyte' has no attribute {name!r}")
    return build()


__all__ = [
    "DEFAULT_ENV",
    "DEFAULT_ENV_BWRAP",
    "DEFAULT_SANDBOX_ENV",
    "DEFAULT_SANDBOX_ENV_BWRAP",
    "HARD_CEILING",
    "PASS_THROUGH",
    "TASK_FUNCTION",
    "Ceilings",
    "Ending",
    "Environment",
    "SandboxAborted",
    "SandboxEnvironment",
    "Served",
    "ServerFailed",
    "ServerOptions",
    "base_image",
    "base_sandbox_image",
    "cached_base_image",
    "ceilings_for",
    "default_environment",
    "serve_sandbox",
]
