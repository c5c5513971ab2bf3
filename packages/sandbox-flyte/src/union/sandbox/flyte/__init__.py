"""Flyte layer: ``SandboxEnvironment``, the ``sandbox_server`` task and the ``sb.session()``
launcher. Creates no environment at import time."""

from __future__ import annotations

__all__: list[str] = []
