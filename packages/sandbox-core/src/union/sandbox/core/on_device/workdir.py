"""The session work dir as the host side holds it: one directory descriptor.

The work dir belongs to the sandbox. Its runs, and on a pinned ``host_work_dir`` the runs of
any other live session or server on the same directory, may rename, replace or symlink any
entry in it at any moment, while the host side runs with the caller's rights (often root).
So the host resolves the work dir's own path once, when the session opens, keeps it open,
and from then on reaches what is under it only relative to descriptors: one component at a
time with ``O_NOFOLLOW | O_DIRECTORY``, acting with the ``*at`` calls or on descriptors
(``fchown``, ``fchmod``), never by a path name through the tree. A symlink planted anywhere
is refused, never followed; a directory swapped in is one the sandbox could write anyway.

The work dir is private: created ``0700`` (the temporary one, and a pinned one that does
not exist yet) and, when the host is root, owned by the sandbox's uid, so that no other
local user can read what a session keeps there, whatever the modes of the files in it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import warnings
import weakref

from .fs import check_work_dir
from .rmtree import DIR_FLAGS, removal_error, remove_dir_at

__all__ = ["WorkDir"]


def _temporary_root() -> str:
    """Where temporary work dirs go, as :func:`tempfile.gettempdir` would most often pick:
    ``tempfile.tempdir`` when a program set it, else ``$TMPDIR`` (``$TEMP``, ``$TMP``)
    when it names a directory, else ``/tmp``."""
    chosen = getattr(sys.modules.get("tempfile"), "tempdir", None)
    if isinstance(chosen, str) and chosen:
        return chosen
    for name in ("TMPDIR", "TEMP", "TMP"):
        root = os.environ.get(name)
        if root and os.path.isdir(root):
            return os.path.abspath(root)
    return "/tmp"


def _make_temporary_dir() -> str:
    """A new ``0700`` directory with an unpredictable name, as :func:`tempfile.mkdtemp`
    makes it, without importing :mod:`tempfile` (and :mod:`random` with it) at every
    session start. Where that root does not take it (not writable, gone), ``mkdtemp``
    itself decides, trying every place it knows."""
    root = _temporary_root()
    for _ in range(100):
        path = os.path.join(root, f"union-sandbox-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError:
            break
        return path
    import tempfile

    return tempfile.mkdtemp(prefix="union-sandbox-")


class WorkDir:
    """An open work dir: :attr:`path` (canonical, the same inside the sandbox) and
    :attr:`fd`. The temporary one is removed by :meth:`close`."""

    def __init__(self, path: str, fd: int, temporary: bool) -> None:
        self.path = path
        self.fd = fd
        self.temporary = temporary
        self._finalizer = weakref.finalize(self, _close, path, fd, temporary, True)

    @classmethod
    def open(cls, pinned: str | None, owner: tuple[int, int] | None) -> WorkDir:
        """Open ``pinned`` (created ``0700`` if missing, its parents as the caller's umask
        makes them) or a new temporary directory (``0700``); chown it to ``owner``."""
        if pinned is None:
            path = _make_temporary_dir()
        else:
            path = pinned
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        try:
            # Never through a symlink at the pinned name itself: one planted there by a
            # sandbox that can write the parent (another session's work dir) would make
            # the host take, and chown, any directory as this session's work dir.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if os.path.islink(path):
                raise ValueError(
                    f"host_work_dir {path!r} is a symbolic link (to {os.readlink(path)!r}): "
                    "pass the directory itself (a link at that name can be replaced by "
                    "whoever may write its parent)"
                ) from None
            raise NotADirectoryError(
                errno.ENOTDIR, "host_work_dir exists and is not a directory", path
            ) from None
        work = cls(os.path.realpath(path), fd, temporary=pinned is None)
        # The path the sandbox gets must name the directory held here, and be no system
        # directory reached through a symlink.
        try:
            check_work_dir(work.path)
        except ValueError:
            work.close()
            raise
        if not _same_inode(work.path, fd):
            work.close()
            raise _replaced(path)
        if owner is not None:
            try:
                os.fchown(fd, *owner)
            except BaseException:
                work.close()
                raise
        return work

    def open_parent(self, parts: list[str], target: str, verb: str) -> int:
        """A new descriptor on the directory holding ``parts[-1]``, walked from the work
        dir one component at a time without following symlinks. ``verb`` (``read`` or
        ``write``) words the refusal of a symlink."""
        fd = os.dup(self.fd)
        walked = self.path
        for part in parts[:-1]:
            walked = os.path.join(walked, part)
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                error = _walk_error(exc, fd, part, walked=walked, target=target, verb=verb)
                os.close(fd)
                raise error from None
            os.close(fd)
            fd = next_fd
        return fd

    def close(self) -> None:
        """Close it; the temporary one is removed first, whatever a run left in it.
        Raises ``OSError`` naming what could not be removed (after removing the rest)."""
        if self._finalizer.detach() is not None:
            _close(self.path, self.fd, self.temporary, False)


def _close(path: str, fd: int, remove: bool, implicit: bool) -> None:
    try:
        if not remove:
            return
        if implicit:
            warnings.warn(
                f"a sandbox session was not closed; removing its work dir {path}",
                ResourceWarning,
                stacklevel=2,
            )
        # The temporary dir's parent (the host's temp dir) is not the sandbox's.
        parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            left = remove_dir_at(parent_fd, os.path.basename(path), fd)
        finally:
            os.close(parent_fd)
        if left:
            raise removal_error(path, left)
    finally:
        os.close(fd)


def _replaced(path: str) -> RuntimeError:
    return RuntimeError(
        f"the work dir {path!r} was replaced while the session opened it (is a symlink on "
        "its path being changed?); open the session again"
    )


def _same_inode(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _walk_error(
    exc: OSError, dir_fd: int, part: str, *, walked: str, target: str, verb: str
) -> OSError:
    """What to tell the caller when a component of a put/get path cannot be entered."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            return PermissionError(f"refusing to {verb} through symlink: {walked}")
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
        return FileNotFoundError(
            errno.ENOENT, f"parent directory does not exist: {os.path.dirname(target)}"
        )
    return exc
