"""Session cgroups left by a killed process are removed when a later session makes its own
(on this host: cgroup v1, root). Only a dead owner's, empty, in our pid namespace."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from union import sandbox as sb
from union.sandbox.core.on_device import cgroups

SUPPORT = cgroups.detect()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not SUPPORT.can("pids"), reason=f"no writable pids cgroup here: {SUPPORT.problem}"
    ),
]


def _make(name: str, runs: int = 2) -> Path:
    path = Path(SUPPORT.bases["pids"], name)
    path.mkdir()
    for n in range(runs):
        (path / f"run-{n}").mkdir()
    return path


def _remove(path: Path) -> None:
    for run in path.glob("run-*"):
        for _ in range(100):
            try:
                run.rmdir()
                break
            except OSError:  # a killed holder is still leaving
                time.sleep(0.01)
    if path.exists():
        path.rmdir()


@pytest.fixture
def leftovers() -> Iterator[dict[str, Path]]:
    """Session cgroup trees as other processes would leave them."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    ns = os.stat("/proc/self/ns/pid").st_ino
    trees = {
        "dead owner": _make(f"union-sandbox-testdead-p{gone.pid}.{ns}"),
        "live owner": _make(f"union-sandbox-testlive-p{os.getpid()}.{ns}"),
        "other pid namespace": _make(f"union-sandbox-testns-p{gone.pid}.{ns + 1}"),
        "no owner recorded": _make("union-sandbox-testold"),
        "dead owner, busy": _make(f"union-sandbox-testbusy-p{gone.pid}.{ns}", runs=1),
    }
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (trees["dead owner, busy"] / "run-0" / "cgroup.procs").write_text(str(holder.pid))
        yield trees
    finally:
        holder.kill()
        holder.wait()
        for path in trees.values():
            _remove(path)


async def test_a_session_removes_a_dead_owners_cgroups_and_no_one_elses(
    leftovers: dict[str, Path],
) -> None:
    # A session makes its cgroups at its first run (the default pids limit needs one).
    async with sb.on_device.session(backend="userns") as sbx:
        await sbx.exec("true", check=True)
    assert not leftovers["dead owner"].exists()
    for what, path in leftovers.items():
        if what != "dead owner":
            assert path.exists(), what
