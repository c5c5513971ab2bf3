"""The library run by an unprivileged user: the root-only paths (uid 65534 mapping, masking)
are skipped, and every isolating backend must still work and lock runs down."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from union.sandbox.core.testing_caller import run_as, system_python

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


def _run_as_nobody(python: str, script: str, backend: str) -> subprocess.CompletedProcess[str]:
    return run_as(NOBODY, [python, "-c", script, backend], timeout=120)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_unprivileged_caller_gets_a_locked_down_sandbox(backend: str) -> None:
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    out = _run_as_nobody(python, SCRIPT, backend)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert lines["CapEff"].strip() == "0000000000000000"
    assert lines["CapBnd"].strip() == "0000000000000000"
    assert lines["NoNewPrivs"].strip() == "1"
    assert lines["Seccomp"].strip() == "2"
    assert "unshare=1" in out.stdout


VENV_SCRIPT = textwrap.dedent(
    """
    import sys, sysconfig, warnings, anyio
    warnings.simplefilter("ignore")
    from union.sandbox.core.on_device import session

    async def main(backend):
        pth = sysconfig.get_paths()["purelib"] + "/union_sbx_test_evil.pth"
        async with session(backend=backend) as sbx:
            assert sys.prefix in sbx.fs_allowlist()["read_only"]
            r = await sbx.exec(f"echo 'import os' > {pth} && echo WROTE")
            print(r.stdout, r.stderr, sep="")

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_callers_venv_under_tmp_stays_read_only(backend: str, public_tmp: str) -> None:
    """The caller's own venv, in /tmp and writable by the caller, is granted read-only: a
    run must not plant a ``.pth`` file that the caller's next ``python`` would execute (the
    venv comes back beneath each run's fresh, writable /tmp)."""
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    venv = os.path.join(public_tmp, "venv")
    os.chown(public_tmp, NOBODY, NOBODY)
    subprocess.run(
        [python, "-m", "venv", "--without-pip", venv], user=NOBODY, group=NOBODY, check=True
    )
    out = _run_as_nobody(os.path.join(venv, "bin", "python"), VENV_SCRIPT, backend)
    assert out.returncode == 0, out.stderr
    assert "WROTE" not in out.stdout
    assert "Read-only file system" in out.stdout
    planted = subprocess.run(
        ["find", venv, "-name", "union_sbx_test_evil.pth"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert planted.stdout == ""
