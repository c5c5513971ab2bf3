"""``put_bytes`` / ``get_bytes`` on the host side: moving bytes in and out of the work dir.

Every step is relative to a descriptor (see :mod:`.workdir`): the parent directory is
walked from the work dir without following symlinks, the file is created under a fresh
temporary name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed over the target (a rename
replaces a planted symlink, never writes through it), and a file is read only through a
descriptor opened with ``O_NOFOLLOW`` and checked to be a regular file: a sandboxed
process that swaps the final name for a symlink between any two of these steps gets a
refusal, never the link's target.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterable

import anyio

from .fs import split_session_path
from .rmtree import NEW_FILE_FLAGS
from .workdir import WorkDir

__all__ = ["PutData", "open_for_read", "put_file", "read_all"]

PutData = bytes | bytearray | memoryview | AsyncIterable[bytes]

# Transfers at least this big go to a worker thread.
_THREAD_THRESHOLD = 1 << 20


async def put_file(
    work: WorkDir,
    path: str,
    data: PutData,
    *,
    mode: int,
    overwrite: bool,
    owner: tuple[int, int] | None,
) -> int:
    """Write ``data`` to ``path`` atomically (whole or not at all); returns its size."""
    target, parts = split_session_path(path, work.path)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be a permission int such as 0o644, got {mode!r}")
    parent_fd = work.open_parent(parts, target, "write")
    name = parts[-1]
    tmp_name = f".{name}.union-sandbox-{os.urandom(6).hex()}.tmp"
    try:
        if _existing_regular(parent_fd, name, target) and not overwrite:
            raise FileExistsError(errno.EEXIST, "file exists (overwrite=False)", target)
        fd = os.open(tmp_name, NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
        try:
            written = await _write_all(fd, data)
            os.fchmod(fd, mode & ~0o6000 & 0o7777)
            if owner is not None:
                os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            _unlink_quietly(parent_fd, tmp_name)
            raise
        os.close(fd)
        try:
            if overwrite:
                os.rename(tmp_name, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            else:
                os.link(
                    tmp_name,
                    name,
                    src_dir_fd=parent_fd,
                    dst_dir_fd=parent_fd,
                    follow_symlinks=False,
                )
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "file exists (overwrite=False)", target) from None
        except IsADirectoryError:
            raise PermissionError(f"not a regular file: {target}") from None
        finally:
            _unlink_quietly(parent_fd, tmp_name)
        return written
    finally:
        os.close(parent_fd)


def open_for_read(work: WorkDir, path: str, *, max_bytes: int) -> tuple[int, int, str]:
    """``(blocking fd, size, normalised path)`` of the regular file ``path``; the caller
    closes the fd. ``max_bytes > 0``: a larger file is a ``ValueError``."""
    if not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
    target, parts = split_session_path(path, work.path)
    parent_fd = work.open_parent(parts, target, "read")
    try:
        try:
            # O_NOFOLLOW on the leaf itself: the name may be swapped for a symlink at any
            # moment, so it is never checked first and opened after. O_NONBLOCK: a FIFO
            # planted there must not hang us (it is refused below).
            fd = os.open(
                parts[-1],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=parent_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermissionError(f"refusing to read through symlink: {target}") from None
            raise
    finally:
        os.close(parent_fd)
    try:
        size = _regular_file_size(fd, target, max_bytes)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, target


def _regular_file_size(fd: int, target: str, max_bytes: int) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"not a regular file: {target}")
    if max_bytes and st.st_size > max_bytes:
        raise ValueError(f"{target} is {st.st_size} bytes, exceeds max_bytes={max_bytes}")
    return st.st_size


def _existing_regular(dir_fd: int, name: str, target: str) -> bool:
    """Whether ``name`` exists. Refuses early, with a clear message, to replace a symlink
    or a non-file. (Only for the message: the rename that follows never writes through a
    symlink either way.)"""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"refusing to write through symlink: {target}")
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"not a regular file: {target}")
    return True


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


async def _write_all(fd: int, data: PutData) -> int:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        if len(view) >= _THREAD_THRESHOLD:
            return await anyio.to_thread.run_sync(_write_view, fd, view)
        return _write_view(fd, view)
    if not hasattr(data, "__aiter__"):
        raise TypeError(
            f"data must be bytes-like or an async iterable of bytes, got {type(data).__name__}"
        )
    total = 0
    async for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"data chunks must be bytes, got {type(chunk).__name__}")
        total += _write_view(fd, memoryview(chunk).cast("B"))
    return total


def _write_view(fd: int, view: memoryview) -> int:
    total = len(view)
    while view:
        view = view[os.write(fd, view) :]
    return total


async def read_all(fd: int, size: int, limit: int | None, target: str) -> bytes:
    """The content of ``fd`` (``size`` bytes when opened; it may still grow, up to
    ``limit``)."""

    def read() -> bytes:
        data = os.read(fd, size + 1) if size else b""
        # The file may still grow: read the rest too (bounded by max_bytes). When it did not,
        # the rest is b"" and ``+`` hands ``data`` back as it is (no copy).
        return data + _drain(fd, limit, len(data), target)

    if size >= _THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(read)
    return read()


def _drain(fd: int, limit: int | None, total: int, target: str) -> bytes:
    """What follows the first ``total`` bytes read, refused once past ``limit``."""
    if limit is not None and total > limit:
        raise ValueError(f"{target} grew past max_bytes={limit} while reading")
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if limit is not None and total > limit:
            raise ValueError(f"{target} grew past max_bytes={limit} while reading")
        chunks.append(chunk)
    return b"".join(chunks)
