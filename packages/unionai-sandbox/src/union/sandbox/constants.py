"""``sb.constants``: allow-list helpers, defaults and stream constants."""

from __future__ import annotations

from union.sandbox.core.constants import (
    CLOUD_METADATA_DENY,
    DEFAULT_RUN_TIMEOUT_S,
    DEFAULT_TIMEOUT,
    DEVNULL,
    INHERIT,
    MAX_CAPTURED_BYTES,
    PIPE,
    PYPI_HOSTS,
    SANDBOX_PORT,
    SERVER_WORK_DIR,
    SESSION_VENV_SUBDIR,
)

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
