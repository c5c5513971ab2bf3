"""Session cgroups left by a killed process are removed by a later session (on this host:
cgroup v1, root). Only a dead owner's, empty, in our pid namespace."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from union.sandbox.core.on_device import cgroups

SUPPORT = cgroups.detect()
pytestmark = pytest.mark.skipif(
    not SUPPORT.can("pids"), reason=f"no writable pids cgroup here: {SUPPORT.problem}"
)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _make(name: str, runs: int = 2) -> Path:
    path = SUPPORT.bases["pids"] / name
    path.mkdir()
    for n in range(runs):
        (path / f"run-{n}").mkdir()
    return path


def test_a_dead_owners_cgroups_are_removed_and_no_one_elses() -> None:
    dead, ns = _dead_pid(), _namespace()
    stale = _make(f"union-sandbox-testdead-p{dead}.{ns}")
    mine = _make(f"union-sandbox-testlive-p{os.getpid()}.{ns}")
    elsewhere = _make(f"union-sandbox-testns-p{dead}.{ns + 1}")  # another pid namespace
    unnamed = _make("union-sandbox-testold")  # no owner recorded
    busy = _make(f"union-sandbox-testbusy-p{dead}.{ns}", runs=1)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (busy / "run-0" / "cgroup.procs").write_text(str(holder.pid))
        removed = cgroups.sweep_stale(SUPPORT)
        assert stale in removed and not stale.exists()
        for kept in (mine, elsewhere, unnamed, busy):
            assert kept.exists(), kept
    finally:
        holder.kill()
        holder.wait()
        for path in (mine, elsewhere, unnamed, busy):
            for run in path.glob("run-*"):
                for _ in range(100):
                    try:
                        run.rmdir()
                        break
                    except OSError:  # the killed holder is still leaving
                        time.sleep(0.01)
            if path.exists():
                path.rmdir()
