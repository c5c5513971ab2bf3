"""The removal walk behind close() (``on_device/rmtree.py``) at the exact moments a live
sandbox could exploit, made deterministic: a hook on ``os`` plays the sandbox at that moment.
(``test_work_dir.py`` races a real writer against the walk; a race may or may not hit the
window, so each window is also forced here.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from union.sandbox.core.on_device import rmtree

NOBODY = 65534


def _clear(tree: Path) -> list[str]:
    fd = os.open(tree, rmtree.DIR_FLAGS)
    try:
        return rmtree.clear_dir(fd)
    finally:
        os.close(fd)


def test_a_directory_swapped_for_a_symlink_before_it_is_opened_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk finds ``d`` not empty (``rmdir`` fails); before it opens ``d``, the sandbox
    swaps it for a symlink to a host directory. The walk must not enter the host directory
    (nor take it: chown, chmod)."""
    tree, victim = tmp_path / "tree", tmp_path / "victim"
    (tree / "d" / "sub").mkdir(parents=True)
    (tree / "d" / "file").write_text("x")
    (victim / "dir").mkdir(parents=True)
    (victim / "keep").write_text("host data")
    before = os.stat(victim)
    real_rmdir = os.rmdir
    swapped: list[str] = []

    def rmdir(path: Any, *, dir_fd: int | None = None) -> None:
        try:
            real_rmdir(path, dir_fd=dir_fd)
        except OSError as exc:
            if path == "d" and not swapped and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                swapped.append(path)
                os.rename("d", "d.moved", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.symlink(victim, "d", dir_fd=dir_fd)
            raise

    monkeypatch.setattr(rmtree.os, "rmdir", rmdir)
    _clear(tree)
    monkeypatch.undo()
    assert swapped == ["d"]
    assert sorted(p.name for p in victim.iterdir()) == ["dir", "keep"]
    assert (victim / "keep").read_text() == "host data"
    after = os.stat(victim)
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )


@pytest.mark.skipif(os.getuid() != 0, reason="takes directories from uid 65534: needs root")
def test_each_directory_is_frozen_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, the walk makes each directory root's and 0700 before it reads it, so the
    sandbox (uid 65534) can no longer add to it: its listing is final and the walk ends
    whatever a writer does. Checked at the moment of each read, by a process of the sandbox
    uid trying to add an entry."""
    tree = tmp_path / "tree"
    for i in range(3):
        (tree / f"d{i}" / "a").mkdir(parents=True)
        (tree / f"d{i}" / "a" / "file").write_text("x")
    tmp_path.chmod(0o755)
    for root, dirs, files in os.walk(tree):
        for name in [".", *dirs, *files]:
            os.chown(os.path.join(root, name), NOBODY, NOBODY)
    real_listdir = os.listdir
    added: list[str] = []
    read: list[str] = []

    def listdir(path: Any = ".") -> list[str]:
        if isinstance(path, int):
            where = os.readlink(f"/proc/self/fd/{path}")
            read.append(where)
            if _sandbox_uid_can_add_to(path):
                added.append(os.path.relpath(where, tree))
        return real_listdir(path)

    monkeypatch.setattr(rmtree.os, "listdir", listdir)
    left = _clear(tree)
    monkeypatch.undo()
    assert len(read) >= 7  # the top, d0..d2 and their a's
    assert added == [] and left == []


def _sandbox_uid_can_add_to(dir_fd: int) -> bool:
    """Whether a process of uid 65534 can make an entry in the directory open as ``dir_fd``
    (removed again). Through the descriptor, as the sandbox reaches it through its own
    mounts: the host's path to it (the walk's top is 0700 root's) is not the sandbox's."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.mkdir("intruder", dir_fd=dir_fd)
            os.rmdir("intruder", dir_fd=dir_fd)
        except OSError:
            os._exit(1)
        os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
