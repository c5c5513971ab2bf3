"""``sandbox-server``: the Connect service ``sandbox.v2.SandboxService`` over the on-device
engine of :mod:`union.sandbox.core`. Never imports flyte."""

from __future__ import annotations

__all__: list[str] = []
