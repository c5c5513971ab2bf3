"""Flyte layer: ``sb.session()`` and ``SandboxSession`` (a sandbox launched as its own Flyte
run), ``SandboxEnvironment``, the ``sandbox_server`` task, ``base_sandbox_image`` and the
``unionai-sandbox-deploy`` command.

Importing this package imports nothing else: every name loads its module on first access.
That keeps the local launcher's process (which runs the task body and needs no flyte) fast to
start, and importing it creates no environment and builds no image (``flyte deploy --all``
deploys every environment that exists in the process): ``base_sandbox_image`` /
``base_image`` and the default environments ``DEFAULT_SANDBOX_ENV`` / ``DEFAULT_ENV``
(userns) and ``DEFAULT_SANDBOX_ENV_BWRAP`` / ``DEFAULT_ENV_BWRAP`` (bubblewrap) are built on
first access. Environments need the ``kubernetes`` package (``unionai-sandbox[deploy]``).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._body import PASS_THROUGH, Ending, Served, ServerFailed, ServerOptions, serve_sandbox
    from ._ceilings import Ceilings, ceilings_for
    from ._environment import SandboxEnvironment
    from ._environment import SandboxEnvironment as Environment
    from ._errors import SandboxLaunchError, SandboxRunEnded
    from ._image import cached_base_image
    from ._launch import Progress, Stage
    from ._resolve import DataproxyResolver, EndpointResolver, PodIPResolver, PodRef, Resolved
    from ._serve import SandboxAborted
    from ._session import SandboxSession
    from ._settings import DEFAULT_ENV_NAME, DEFAULT_ENV_NAME_BWRAP, HARD_CEILING, TASK_FUNCTION
    from ._start import session

# name -> module that defines it
_MODULES = {
    "PASS_THROUGH": "._body",
    "Ending": "._body",
    "Served": "._body",
    "ServerFailed": "._body",
    "ServerOptions": "._body",
    "serve_sandbox": "._body",
    "Ceilings": "._ceilings",
    "ceilings_for": "._ceilings",
    "SandboxEnvironment": "._environment",
    "SandboxLaunchError": "._errors",
    "SandboxRunEnded": "._errors",
    "cached_base_image": "._image",
    "Progress": "._launch",
    "Stage": "._launch",
    "DataproxyResolver": "._resolve",
    "EndpointResolver": "._resolve",
    "PodIPResolver": "._resolve",
    "PodRef": "._resolve",
    "Resolved": "._resolve",
    "SandboxAborted": "._serve",
    "SandboxSession": "._session",
    "session": "._start",
    "DEFAULT_ENV_NAME": "._settings",
    "DEFAULT_ENV_NAME_BWRAP": "._settings",
    "HARD_CEILING": "._settings",
    "TASK_FUNCTION": "._settings",
}
#: Names with another spelling: b15 name -> the docs-era one.
_ALIASES = {"Environment": "SandboxEnvironment"}


@functools.cache
def default_environment(sandbox_mode: str) -> SandboxEnvironment:
    """The built-in environment for ``sandbox_mode`` (``"userns"`` or ``"bwrap"``)."""
    from ._environment import SandboxEnvironment
    from ._settings import DEFAULT_ENV_NAME, DEFAULT_ENV_NAME_BWRAP

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


def _base_image() -> Any:
    from ._image import cached_base_image

    return cached_base_image()


_BUILT: dict[str, Callable[[], Any]] = {
    "base_sandbox_image": _base_image,
    "base_image": _base_image,
    "DEFAULT_SANDBOX_ENV": lambda: default_environment("userns"),
    "DEFAULT_ENV": lambda: default_environment("userns"),
    "DEFAULT_SANDBOX_ENV_BWRAP": lambda: default_environment("bwrap"),
    "DEFAULT_ENV_BWRAP": lambda: default_environment("bwrap"),
}


def __getattr__(name: str) -> Any:
    build = _BUILT.get(name)
    if build is not None:
        return build()
    target = _ALIASES.get(name, name)
    module = _MODULES.get(target)
    if module is None:
        raise AttributeError(f"module 'union.sandbox.flyte' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), target)


__all__ = [
    "DEFAULT_ENV",
    "DEFAULT_ENV_BWRAP",
    "DEFAULT_ENV_NAME",
    "DEFAULT_ENV_NAME_BWRAP",
    "DEFAULT_SANDBOX_ENV",
    "DEFAULT_SANDBOX_ENV_BWRAP",
    "HARD_CEILING",
    "PASS_THROUGH",
    "TASK_FUNCTION",
    "Ceilings",
    "DataproxyResolver",
    "EndpointResolver",
    "Ending",
    "Environment",
    "PodIPResolver",
    "PodRef",
    "Progress",
    "Resolved",
    "SandboxAborted",
    "SandboxEnvironment",
    "SandboxLaunchError",
    "SandboxRunEnded",
    "SandboxSession",
    "Served",
    "ServerFailed",
    "ServerOptions",
    "Stage",
    "base_image",
    "base_sandbox_image",
    "cached_base_image",
    "ceilings_for",
    "default_environment",
    "serve_sandbox",
    "session",
]
