"""Constants of the session contract, shared by every transport.

Values match the published API where it defines them; where we depart (a wider metadata
deny-list, a lower default output cap) the reason is given next to the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import datetime

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

#: Capture a stream (``run(stdout=PIPE)``); ``True`` means the same.
PIPE: Final = -1
#: Forward a stream to the caller's own ``sys.stdout`` / ``sys.stderr``.
INHERIT: Final = -2
#: Discard a stream; ``False`` and ``None`` mean the same.
DEVNULL: Final = -3

#: Hosts ``uv pip install`` needs; splat into ``network_allowlist``.
PYPI_HOSTS: Final[list[str]] = ["pypi.org", "files.pythonhosted.org", "*.pythonhosted.org"]

#: Cloud instance-metadata endpoints, for ``network_denylist``. Beyond the published list
#: (IPv4 link-local, the GCP hostname, AWS IPv6 IMDS) it covers Azure's wireserver, Alibaba's
#: metadata address and IPv6 link-local, which the published list misses.
CLOUD_METADATA_DENY: Final[list[str]] = [
    "169.254.0.0/16",
    "metadata.google.internal",
    "fd00:ec2::254",
    "168.63.129.16/32",
    "100.100.100.200/32",
    "fe80::/10",
]

#: Default soft timeout of a remote session (``sb.session(timeout=...)``): one hour, a
#: :class:`datetime.timedelta` made on first use (:func:`__getattr__`), so that a process
#: that never asks does not import :mod:`datetime`.
DEFAULT_TIMEOUT: datetime.timedelta

#: Default per-``run()`` wall-clock limit of an on-device session, in seconds.
DEFAULT_RUN_TIMEOUT_S: Final = 60.0

#: Bytes of one captured stream kept in memory before the rest is dropped (and
#: ``stdout_truncated`` / ``stderr_truncated`` set): 256 MiB per stream, as published. The
#: capture writes it once and ``communicate()`` hands that buffer over without a copy, so a
#: flood on both streams peaks near 540 MB of caller memory (``tools/bench/bench_limits.py``).
#: Sessions take ``max_output_bytes=`` to change it (``docs/limits.md``).
MAX_CAPTURED_BYTES: Final = 256 * 1024 * 1024

#: Work dir of a remote ``sandbox-server`` launched by the Flyte layer.
SERVER_WORK_DIR: Final = "/tmp/sandbox-work"
#: Port the sandbox-server listens on inside its pod.
SANDBOX_PORT: Final = 8080
#: The session venv lives here, under the work dir.
SESSION_VENV_SUBDIR: Final = ".session-venv"


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_TIMEOUT":
        import datetime

        value = globals()[name] = datetime.timedelta(hours=1)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
