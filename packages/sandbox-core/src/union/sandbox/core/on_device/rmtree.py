"""Remove a directory tree a sandbox made, whatever it made.

``shutil.rmtree`` recurses (a run that nests 3,000 directories raises ``RecursionError``)
and holds one descriptor per level (past ``RLIMIT_NOFILE`` it fails with ``EMFILE``), and
either way stops half-way. The tree belongs to the sandbox, which may still be changing it
(a live sandbox on the same pinned work dir), so the walk must also never be redirected
out of it. This walk:

- is iterative, and holds at most :data:`MAX_HELD` directory descriptors: a directory
  found deeper than that is renamed (``renameat``) up to the top of the tree under a fresh
  name and removed from there later, so any depth takes the same few descriptors;
- works only relative to descriptors it opened itself with ``O_NOFOLLOW | O_DIRECTORY``
  (``unlinkat``, ``openat``, ``renameat``), never by path and never through ``..``: a
  symlink is unlinked, never followed, and a directory swapped in is one the sandbox could
  write anyway;
- stays on the tree's filesystem (a mount point below it is reported, not entered);
- takes each directory before reading it, through its descriptor: as root it makes it
  root's and 0700 (``fchown``, ``fchmod``), so a live sandbox (uid 65534) can neither add to
  it nor move anything out of it, and each directory's listing is final once read; as
  another user (whose sandbox runs as that same uid and could undo it) it gives the owner
  rwx back on directories a run locked (``chmod 000``, ``0500``);
- re-reads a directory that is not empty when it should be (entries added meanwhile), a
  bounded number of times, and otherwise carries on with the rest of the tree: what it could
  not remove is listed at the end, it never stops at the first problem.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DIR_FLAGS", "MAX_HELD", "NEW_FILE_FLAGS", "clear_dir", "removal_error", "remove_dir_at"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How every directory under a work dir is opened: never through a symlink."""

NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""How the host creates a file under a work dir: a name nothing has yet, never a symlink's
target (a name the sandbox planted meanwhile fails with ``EEXIST``)."""

MAX_HELD = 32
"""Directory descriptors held at once; deeper directories are moved up to the top."""

_PASSES = 8
"""Times one directory is re-read because entries keep appearing in it (a live writer)."""

_T = TypeVar("_T")

_MOUNT_POINT = "a mount point (not entered)"

_SWAPS = 64
"""Times entries of one directory are found swapped (renamed, replaced) under the walk
before it gives up on them (a live writer)."""

_BUDGET = 4096
"""Entries found by re-reading directories, and retries of swapped entries, in one walk
(all directories together): a writer as fast as the walk (possible only as the caller's own
uid: as root each directory is frozen before it is read) cannot keep it going forever."""

_REPORTED = 5
"""Leftovers named in the error message."""


@dataclasses.dataclass
class _Frame:
    fd: int
    name: str
    """Its name in the frame below (``""`` for the top)."""
    names: list[str]
    """Entries still to remove."""
    passes: int = 1
    swaps: int = 0
    failed: set[str] = dataclasses.field(default_factory=set)
    """Entries given up on (not re-read)."""


class _Remover:
    def __init__(self, top_fd: int) -> None:
        self.top_fd = top_fd
        self.dev = os.fstat(top_fd).st_dev
        self.euid = os.geteuid()
        self.left: list[str] = []
        self.stack: list[_Frame] = []
        self.budget = _BUDGET

    def run(self) -> list[str]:
        self._take(self.top_fd)
        try:
            names = os.listdir(self.top_fd)
        except OSError as exc:
            return [f".: {exc.strerror}"]
        self.stack.append(_Frame(self.top_fd, "", names))
        try:
            while self.stack:
                frame = self.stack[-1]
                if frame.names:
                    child = self._remove(frame, frame.names.pop())
                    if child is not None:
                        self.stack.append(child)
                elif not self._finish(frame):
                    self.stack.pop()
        finally:
            for frame in self.stack[1:]:  # left only by an unexpected error
                os.close(frame.fd)
        return self.left

    def _remove(self, frame: _Frame, name: str) -> _Frame | None:
        """Remove ``name`` in ``frame`` if it is not a directory, or an empty one; else
        return the frame to descend into (or move it up, when too deep)."""
        try:
            self._at(frame, os.unlink, name)
            return None
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            pass
        except OSError as exc:
            self._fail(frame, name, exc)
            return None
        try:
            os.rmdir(name, dir_fd=frame.fd)
            return None
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            self._swapped(frame, name)
            return None
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                exc = OSError(errno.EBUSY, _MOUNT_POINT)
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                self._fail(frame, name, exc)
                return None
        if len(self.stack) >= MAX_HELD:
            self._move_up(frame, name)
            return None
        fd = self._open_child(frame, name)
        if fd is None:
            return None
        st = os.fstat(fd)
        if st.st_dev != self.dev:
            os.close(fd)
            self._fail(frame, name, OSError(errno.EXDEV, _MOUNT_POINT))
            return None
        self._take(fd, st)
        try:
            return _Frame(fd, name, os.listdir(fd))
        except OSError as exc:
            os.close(fd)
            self._fail(frame, name, exc)
            return None

    def _open_child(self, frame: _Frame, name: str) -> int | None:
        try:
            return self._at(frame, os.open, name, DIR_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a non-directory
                self._swapped(frame, name)
                return None
            if exc.errno in (errno.EMFILE, errno.ENFILE) and len(self.stack) > 1:
                self._move_up(frame, name)
                return None
            if exc.errno == errno.EACCES and _unlock_entry(frame.fd, name):
                try:
                    return os.open(name, DIR_FLAGS, dir_fd=frame.fd)
                except OSError as again:
                    exc = again
            self._fail(frame, name, exc)
            return None

    def _finish(self, frame: _Frame) -> bool:
        """``frame`` has no entries left to try: remove it from its parent. True when it
        has to be read again first (entries appeared meanwhile)."""
        if len(self.stack) == 1:  # the top: the caller removes it (or keeps it)
            return self._reread(frame)
        parent = self.stack[-2]
        try:
            os.rmdir(frame.name, dir_fd=parent.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                self._fail(parent, frame.name, exc)
            elif not self._is_entry(parent, frame):
                self._swapped(parent, frame.name)  # its name holds something else now
            elif self._reread(frame):
                return True
            elif frame.failed:
                parent.failed.add(frame.name)  # what is left in it is reported already
            else:
                self._swapped(parent, frame.name)  # emptied meanwhile: try again
        os.close(frame.fd)
        return False

    def _reread(self, frame: _Frame) -> bool:
        try:
            names = [n for n in os.listdir(frame.fd) if n not in frame.failed]
        except OSError as exc:
            names = []
            if len(self.stack) > 1:
                self._fail(self.stack[-2], frame.name, exc)
        if not names:
            return False
        self.budget -= len(names)
        if frame.passes >= _PASSES or self.budget < 0:
            for name in names:
                self._fail(frame, name, OSError(errno.EBUSY, "entries kept appearing"))
            return False
        frame.passes += 1
        frame.names = names
        return True

    def _move_up(self, frame: _Frame, name: str) -> None:
        """Rename a directory too deep to enter now to the top, under a fresh name."""
        fresh = f".union-sandbox-rm-{os.urandom(8).hex()}"
        for attempt in range(2):
            try:
                os.rename(name, fresh, src_dir_fd=frame.fd, dst_dir_fd=self.top_fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                # Moving a directory to a new parent needs write access to it (its "..").
                if attempt or exc.errno != errno.EACCES or not _unlock_entry(frame.fd, name):
                    self._fail(frame, name, exc)
                    return
                continue
            self.stack[0].names.append(fresh)
            return

    # -- helpers ----------------------------------------------------------------------

    def _at(self, frame: _Frame, call: Callable[..., _T], *args: object) -> _T:
        """``call(*args, dir_fd=frame.fd)``; on EACCES the directory is made usable (when
        this process owns it and it lacks owner rights) and the call tried once more."""
        try:
            return call(*args, dir_fd=frame.fd)
        except PermissionError:
            if not self._take(frame.fd):
                raise
            return call(*args, dir_fd=frame.fd)

    def _take(self, fd: int, st: os.stat_result | None = None) -> bool:
        """Make the directory ``fd`` this process's own before listing it. As root: owned
        by root, mode 0700, so that a live sandbox can no longer add entries to it or move
        entries out of it (each directory is frozen before it is read, so the walk ends
        whatever a writer does). Otherwise (the sandbox runs as the caller's uid and could
        undo anything): owner rwx back on a directory a run locked. True if it changed."""
        st = st or os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        try:
            if self.euid == 0:
                if st.st_uid == 0 and st.st_gid == 0 and mode == 0o700:
                    return False
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o700)
                return True
            if st.st_uid != self.euid or mode & 0o700 == 0o700:
                return False
            os.fchmod(fd, mode | 0o700)
        except OSError:
            return False
        return True

    def _is_entry(self, parent: _Frame, frame: _Frame) -> bool:
        """Whether ``frame.name`` in ``parent`` is still the directory ``frame`` holds."""
        return _same_entry(parent.fd, frame.name, frame.fd)

    def _swapped(self, frame: _Frame, name: str) -> None:
        """``name`` changed type under the walk: try it afresh, a bounded number of times."""
        frame.swaps += 1
        self.budget -= 1
        if frame.swaps > _SWAPS or self.budget < 0:
            self._fail(frame, name, OSError(errno.EBUSY, "kept being replaced"))
        else:
            frame.names.append(name)

    def _fail(self, frame: _Frame, name: str, exc: OSError) -> None:
        frame.failed.add(name)
        depth = next(i for i, f in enumerate(self.stack) if f is frame)
        where = "/".join([*(f.name for f in self.stack[1 : depth + 1]), name])
        self.left.append(f"{where}: {exc.strerror or exc}")


def _same_entry(dir_fd: int, name: str, fd: int) -> bool:
    try:
        here = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _unlock_entry(dir_fd: int, name: str) -> bool:
    """Give the owner rwx on the directory ``name`` in ``dir_fd`` without following a
    symlink: through an ``O_PATH`` descriptor, which needs no permission on it."""
    try:
        path_fd = os.open(name, os.O_PATH | DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(path_fd)
        if st.st_uid != os.geteuid():
            return False
        os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IMODE(st.st_mode) | 0o700)
        return True
    except OSError:
        return False
    finally:
        os.close(path_fd)


def clear_dir(fd: int) -> list[str]:
    """Remove everything under the directory open as ``fd`` (not the directory itself).
    Returns what could not be removed (``"relative/path: reason"``), after trying all."""
    return _Remover(fd).run()


def remove_dir_at(parent_fd: int, name: str, fd: int) -> list[str]:
    """Empty the directory held as ``fd`` and remove it as ``name`` in ``parent_fd``, only
    if that name still holds it (a sandbox may have swapped the name meanwhile; whatever
    it put there is left alone). Returns what could not be removed."""
    left = clear_dir(fd)
    if _same_entry(parent_fd, name, fd):
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            left.append(f"{name}: {exc.strerror}")
    return left


def removal_error(root: str, left: list[str]) -> OSError:
    """The error reporting what :func:`clear_dir` left under ``root``."""
    shown = "; ".join(left[:_REPORTED])
    if len(left) > _REPORTED:
        shown += f"; and {len(left) - _REPORTED} more"
    return OSError(errno.ENOTEMPTY, f"could not remove everything under {root} ({shown})")
