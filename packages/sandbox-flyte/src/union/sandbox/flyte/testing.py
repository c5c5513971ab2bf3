"""Helpers for tests that touch flyte (this package's suite and ``integration/flyte``).

flyte starts error telemetry on runs and deploys unless ``DO_NOT_TRACK=1``, and writes its
config and local cache under ``~``: :func:`isolated_flyte` points ``HOME`` at a directory of
the test's own (keeping the wheel cache of ``base_sandbox_image`` where it was, so a source
checkout builds its wheels once, not once per test run) and can write a Flyte config whose
endpoint is a closed loopback port, which is all ``flyte deploy --dry-run`` needs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEAD_ENDPOINT", "free_port", "isolated_flyte"]

#: A Flyte endpoint nothing listens on (dry runs need one configured, and never call it).
DEAD_ENDPOINT = "dns:///127.0.0.1:9"


@contextmanager
def isolated_flyte(home: Path, *, config: bool = True) -> Iterator[Path]:
    """Set ``DO_NOT_TRACK=1`` and ``HOME=home`` for the block (restored after); with
    ``config``, write ``home/.flyte/config.yaml`` naming :data:`DEAD_ENDPOINT` and project
    ``p`` / domain ``development`` / org ``o``. Yields ``home``."""
    saved = {k: os.environ.get(k) for k in ("HOME", "DO_NOT_TRACK", "XDG_CACHE_HOME")}
    cache = saved["XDG_CACHE_HOME"] or os.path.join(os.path.expanduser("~"), ".cache")
    home.mkdir(parents=True, exist_ok=True)
    if config:
        (home / ".flyte").mkdir(exist_ok=True)
        (home / ".flyte" / "config.yaml").write_text(
            f"admin:\n  endpoint: {DEAD_ENDPOINT}\n  insecure: true\n"
            "task:\n  project: p\n  domain: development\n  org: o\n"
        )
    os.environ.update(HOME=str(home), DO_NOT_TRACK="1", XDG_CACHE_HOME=cache)
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
