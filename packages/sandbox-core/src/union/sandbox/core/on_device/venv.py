"""The session venv: ``<work_dir>/.session-venv``, where ``run("uv pip install X")`` lands.

It has the layout ``uv venv --system-site-packages`` produces (``pyvenv.cfg`` with
``include-system-site-packages = true``, ``bin/python*`` links to the base interpreter, an
empty ``site-packages``), written directly: that takes well under a millisecond where
spawning ``uv venv`` takes tens, so opening a session stays fast; ``uv pip install`` treats it
as any other venv. When the caller itself runs in a venv, a ``.pth`` file bridges that venv's
``site-packages`` (mounted read-only) into the session venv, so its packages import inside
the sandbox. The caller's environment is never written to.

The work dir belongs to the sandbox, which may have planted anything in it (a pinned
``host_work_dir`` outlives sessions). So the host never writes into an existing
``.session-venv``: it builds a new one in a private directory it just created and renames it
into place, and anything else found under that name is moved aside first.
"""

from __future__ import annotations

import os
import site
import stat
import sys
import tempfile

from ..constants import SESSION_VENV_SUBDIR

__all__ = ["MARKER", "ensure_session_venv"]

MARKER = ".union-sandbox-session-venv"
BRIDGE_PTH = "_union_sandbox_image_venv.pth"


def _caller_site_packages() -> list[str]:
    if sys.prefix == sys.base_prefix:
        return []
    return [p for p in site.getsitepackages() if p.startswith(sys.prefix)]


def _usable(work_fd: int) -> bool:
    """An existing venv is reused when it is a real directory (not a link) holding the
    marker as a regular file. Its content is the sandbox's; the host only reads this much."""
    try:
        st = os.lstat(SESSION_VENV_SUBDIR, dir_fd=work_fd)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    venv_fd = os.open(
        SESSION_VENV_SUBDIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=work_fd
    )
    try:
        marker = os.lstat(MARKER, dir_fd=venv_fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(venv_fd)
    return stat.S_ISREG(marker.st_mode)


def _write_layout(root: str, python: str) -> None:
    """The venv's files under ``root``, a directory only this process can write to."""
    version = sys.version_info
    pyname = f"python{version.major}.{version.minor}"
    site_dir = os.path.join(root, "lib", pyname, "site-packages")
    os.makedirs(site_dir)
    os.mkdir(os.path.join(root, "bin"))
    os.symlink("lib", os.path.join(root, "lib64"))
    for name in ("python", "python3", pyname):
        os.symlink(python, os.path.join(root, "bin", name))
    with open(os.path.join(root, "pyvenv.cfg"), "x") as f:
        f.write(
            f"home = {os.path.dirname(python)}\n"
            "include-system-site-packages = true\n"
            f"version = {version.major}.{version.minor}.{version.micro}\n"
            "prompt = session-venv\n"
        )
    bridge = _caller_site_packages()
    if bridge:
        with open(os.path.join(site_dir, BRIDGE_PTH), "x") as f:
            f.write("".join(f"{p}\n" for p in bridge))
    with open(os.path.join(root, MARKER), "x") as f:
        f.write("created by unionai-sandbox\n")


def ensure_session_venv(work_dir: str, python: str, owner: tuple[int, int] | None) -> str:
    """Create the session venv under ``work_dir`` unless a usable one exists; return its
    path. ``owner`` (uid, gid) is who the sandbox runs as when the host is root, so that the
    sandbox can install into the venv."""
    venv = os.path.join(work_dir, SESSION_VENV_SUBDIR)
    work_fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _usable(work_fd):
            return venv
        # Built in a fresh 0700 directory no sandbox process can enter, then renamed in.
        staging = tempfile.mkdtemp(prefix=".session-venv-new-", dir=work_dir)
        try:
            _write_layout(staging, python)
            if owner is not None:
                for root, dirs, files in os.walk(staging):
                    for name in dirs + files:
                        os.lchown(os.path.join(root, name), *owner)
                os.lchown(staging, *owner)
            os.chmod(staging, 0o755)
            name = os.path.basename(staging)
            try:
                os.lstat(SESSION_VENV_SUBDIR, dir_fd=work_fd)
                # Whatever holds the name (a link, a file, a venv without its marker) is
                # moved aside, never followed or written into.
                aside = f".session-venv-stale-{os.urandom(4).hex()}"
                os.rename(SESSION_VENV_SUBDIR, aside, src_dir_fd=work_fd, dst_dir_fd=work_fd)
            except FileNotFoundError:
                pass
            os.rename(name, SESSION_VENV_SUBDIR, src_dir_fd=work_fd, dst_dir_fd=work_fd)
        except BaseException:
            _remove_tree(staging)
            raise
        return venv
    finally:
        os.close(work_fd)


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.rmdir(os.path.join(root, name))
    os.rmdir(path)
