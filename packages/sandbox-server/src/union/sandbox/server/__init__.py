"""``sandbox-server``: the Connect service ``sandbox.v2.SandboxService`` over the on-device
engine of :mod:`union.sandbox.core`. Never imports flyte.

Run it with ``sandbox-server --backend userns --work-dir /tmp/sandbox-work`` (a bearer token
from ``$UNION_SANDBOX_TOKEN`` or ``--token`` is required unless ``--no-auth``), or host
:func:`create_app` in any ASGI server. The protocol is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

from .app import SandboxApp, create_app
from .config import TOKEN_ENV, ServerConfig, parse_args

__version__ = "0.1.0"

__all__ = ["TOKEN_ENV", "SandboxApp", "ServerConfig", "__version__", "create_app", "parse_args"]
