"""The session venv: ``<work_dir>/.session-venv``, where ``run("uv pip install X")`` lands.

It has the layout ``uv venv --system-site-packages`` produces (``pyvenv.cfg`` with
``include-system-site-packages = true``, ``bin/python*`` links to the base interpreter, an
empty ``site-packages``), written directly: that takes well under a millisecond where
spawning ``uv venv`` takes tens, so opening a session stays fast; ``uv pip install`` treats it
as any other venv. When the caller itself runs in a venv, a ``.pth`` file bridges that venv's
``site-packages`` (mounted read-only) into the session venv, so its packages import inside
the sandbox. The caller's environment is never written to.

The work dir belongs to the sandbox, which may have planted anything in it (a pinned
``host_work_dir`` outlives sessions), and may still be changing it while this runs (a live
sandbox of another session or server on the same pinned dir). So the host never writes into
an existing ``.session-venv``: it builds a new one in a private directory it just created
and renames it into place, and anything else found under that name is moved aside first.
And it never works on path names there: the new directory is opened with ``O_NOFOLLOW``
right after it is made (and must be an empty 0700 directory of this process's uid), and
everything in it is created, chowned and chmodded relative to descriptors (``mkdirat``,
``symlinkat``, ``openat(O_EXCL)``, ``fchownat(AT_SYMLINK_NOFOLLOW)``, ``fchown``,
``fchmod``), so a name swapped for a symlink to a host directory is refused, not followed.
While it is built the directory is 0700 and, when the host is root, root's: the sandbox
cannot enter it until it is handed over, whole, by the final ``fchown``/``fchmod``.
"""

from __future__ import annotations

import errno
import os
import site
import stat
import sys

from ..constants import SESSION_VENV_SUBDIR
from .rmtree import DIR_FLAGS, NEW_FILE_FLAGS, remove_dir_at

__all__ = ["MARKER", "ensure_session_venv"]

MARKER = ".union-sandbox-session-venv"
BRIDGE_PTH = "_union_sandbox_image_venv.pth"
# Tries before giving up on a work dir a live sandbox keeps changing under us.
_ATTEMPTS = 8


def _caller_site_packages() -> list[str]:
    if sys.prefix == sys.base_prefix:
        return []
    return [p for p in site.getsitepackages() if p.startswith(sys.prefix)]


def _usable(work_fd: int) -> bool:
    """An existing venv is reused when it is a real directory (not a link) holding the
    marker as a regular file. Its content is the sandbox's; the host only reads this much."""
    try:
        venv_fd = os.open(SESSION_VENV_SUBDIR, DIR_FLAGS, dir_fd=work_fd)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    try:
        marker = os.lstat(MARKER, dir_fd=venv_fd)
    except (FileNotFoundError, PermissionError):
        return False
    finally:
        os.close(venv_fd)
    return stat.S_ISREG(marker.st_mode)


class _Builder:
    """Creates entries under directory descriptors it holds, owned by ``owner``."""

    def __init__(self, owner: tuple[int, int] | None) -> None:
        self.owner = owner

    def mkdir(self, dir_fd: int, name: str) -> int:
        """A new directory ``name``; returns a descriptor on it (the caller closes it)."""
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        if self.owner is not None:
            os.fchown(fd, *self.owner)
        return fd

    def symlink(self, dir_fd: int, name: str, target: str) -> None:
        os.symlink(target, name, dir_fd=dir_fd)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def write(self, dir_fd: int, name: str, text: str) -> None:
        fd = os.open(name, NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
        try:
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view) :]
            if self.owner is not None:
                os.fchown(fd, *self.owner)
        finally:
            os.close(fd)


def _write_layout(root_fd: int, python: str, owner: tuple[int, int] | None) -> None:
    """The venv's files under the directory ``root_fd``, which only this process can
    enter while they are written."""
    build = _Builder(owner)
    version = sys.version_info
    pyname = f"python{version.major}.{version.minor}"
    lib_fd = build.mkdir(root_fd, "lib")
    try:
        py_fd = build.mkdir(lib_fd, pyname)
        try:
            site_fd = build.mkdir(py_fd, "site-packages")
        finally:
            os.close(py_fd)
    finally:
        os.close(lib_fd)
    try:
        bridge = _caller_site_packages()
        if bridge:
            build.write(site_fd, BRIDGE_PTH, "".join(f"{p}\n" for p in bridge))
    finally:
        os.close(site_fd)
    bin_fd = build.mkdir(root_fd, "bin")
    try:
        for name in ("python", "python3", pyname):
            build.symlink(bin_fd, name, python)
    finally:
        os.close(bin_fd)
    build.symlink(root_fd, "lib64", "lib")
    build.write(
        root_fd,
        "pyvenv.cfg",
        f"home = {os.path.dirname(python)}\n"
        "include-system-site-packages = true\n"
        f"version = {version.major}.{version.minor}.{version.micro}\n"
        "prompt = session-venv\n",
    )
    build.write(root_fd, MARKER, "created by unionai-sandbox\n")


def ensure_session_venv(
    work_fd: int, work_dir: str, python: str, owner: tuple[int, int] | None
) -> str:
    """Create the session venv in the work dir (open as ``work_fd``, at ``work_dir``)
    unless a usable one exists; return its path. ``owner`` (uid, gid) is who the sandbox
    runs as when the host is root, so that the sandbox can install into the venv."""
    venv = os.path.join(work_dir, SESSION_VENV_SUBDIR)
    if _usable(work_fd):
        return venv
    name, staging_fd = _make_staging(work_fd, work_dir)
    try:
        _write_layout(staging_fd, python, owner)
        # Handed over whole: until now the sandbox could not enter it.
        if owner is not None:
            os.fchown(staging_fd, *owner)
        os.fchmod(staging_fd, 0o755)
        _move_into_place(work_fd, name)
    except BaseException:
        remove_dir_at(work_fd, name, staging_fd)
        raise
    finally:
        os.close(staging_fd)
    return venv


def _make_staging(work_fd: int, work_dir: str) -> tuple[str, int]:
    """A new private directory in the work dir: ``(name, descriptor)``. A live sandbox on
    the same work dir may rename it away and put a link or a directory of its own in its
    place before it is opened: that one is not used, a fresh name is tried."""
    for _ in range(_ATTEMPTS):
        name = f".session-venv-new-{os.urandom(8).hex()}"
        os.mkdir(name, 0o700, dir_fd=work_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=work_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700 and not os.listdir(fd):
            return name, fd
        os.close(fd)
    raise RuntimeError(
        f"could not build the session venv in {work_dir}: the directories created there "
        f"were replaced {_ATTEMPTS} times in a row (is a live sandbox of another session on "
        "this host_work_dir interfering?); give each session its own host_work_dir"
    )


def _move_into_place(work_fd: int, name: str) -> None:
    """Rename ``name`` to ``.session-venv``, moving aside (never following, never writing
    into) whatever holds that name: a link, a file, a venv without its marker."""
    for _ in range(_ATTEMPTS):
        try:
            os.lstat(SESSION_VENV_SUBDIR, dir_fd=work_fd)
        except FileNotFoundError:
            pass
        else:
            aside = f".session-venv-stale-{os.urandom(4).hex()}"
            try:
                os.rename(SESSION_VENV_SUBDIR, aside, src_dir_fd=work_fd, dst_dir_fd=work_fd)
            except FileNotFoundError:
                pass
        try:
            os.rename(name, SESSION_VENV_SUBDIR, src_dir_fd=work_fd, dst_dir_fd=work_fd)
            return
        except OSError as exc:
            # Something took the name again meanwhile (a live sandbox): move it aside too.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
    raise RuntimeError(
        f"could not put the session venv in place: {SESSION_VENV_SUBDIR} kept being "
        "recreated (is a live sandbox of another session on this host_work_dir interfering?)"
    )
