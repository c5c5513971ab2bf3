"""``sb.constants``: allow-list helpers, defaults and stream constants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from union.sandbox.core import constants as _core
from union.sandbox.core.constants import (
    CLOUD_METADATA_DENY,
    DEFAULT_RUN_TIMEOUT_S,
    DEVNULL,
    INHERIT,
    MAX_CAPTURED_BYTES,
    PIPE,
    PYPI_HOSTS,
    SANDBOX_PORT,
    SERVER_WORK_DIR,
    SESSION_VENV_SUBDIR,
)

if TYPE_CHECKING:
    from union.sandbox.core.constants import DEFAULT_TIMEOUT

__all__ = [
    "CLOUD_METADATA_DENY",
    "DEFAULT_RUN_TIMEOUT_S",
    "DEFAULT_TIMEOUT",
    "DEVNULL",
    "INHERIT",
    "MAX_CAPTURED_BYTES",
    "PIPE",
    "PYPI_HOSTS",
    "SANDBOX_PORT",
    "SERVER_WORK_DIR",
    "SESSION_VENV_SUBDIR",
]


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_TIMEOUT":  # made on first use: see core.constants
        return _core.DEFAULT_TIMEOUT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
