"""The session venv: ``<work_dir>/.session-venv``, where ``run("uv pip install X")`` lands.

It has the layout ``uv venv --system-site-packages`` produces (``pyvenv.cfg`` with
``include-system-site-packages = true``, ``bin/python*`` links to the base interpreter, an
empty ``site-packages``), written directly: that takes well under a millisecond where
spawning ``uv venv`` takes tens, so opening a session stays fast; ``uv pip install`` treats it
as any other venv. When the caller itself runs in a venv, a ``.pth`` file bridges that venv's
``site-packages`` (mounted read-only) into the session venv, so its packages import inside
the sandbox. The caller's environment is never written to.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from ..constants import SESSION_VENV_SUBDIR

__all__ = ["MARKER", "ensure_session_venv"]

MARKER = ".union-sandbox-session-venv"
BRIDGE_PTH = "_union_sandbox_image_venv.pth"


def _caller_site_packages() -> list[str]:
    if sys.prefix == sys.base_prefix:
        return []
    return [p for p in site.getsitepackages() if p.startswith(sys.prefix)]


def ensure_session_venv(work_dir: str, python: str, owner: tuple[int, int] | None) -> str:
    """Create the session venv under ``work_dir`` unless it exists; return its path.

    ``owner`` (uid, gid) is who the sandbox runs as when the host is root, so that the
    sandbox can install into the venv.
    """
    venv = Path(work_dir) / SESSION_VENV_SUBDIR
    if (venv / MARKER).exists():
        return str(venv)
    version = sys.version_info
    pyname = f"python{version.major}.{version.minor}"
    bin_dir = venv / "bin"
    site_dir = venv / "lib" / pyname / "site-packages"
    site_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    if not (venv / "lib64").exists():
        (venv / "lib64").symlink_to("lib")
    for name in ("python", "python3", pyname):
        link = bin_dir / name
        if not link.is_symlink():
            link.symlink_to(python)
    (venv / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(python)}\n"
        "include-system-site-packages = true\n"
        f"version = {version.major}.{version.minor}.{version.micro}\n"
        "prompt = session-venv\n"
    )
    bridge = _caller_site_packages()
    if bridge:
        (site_dir / BRIDGE_PTH).write_text("".join(f"{p}\n" for p in bridge))
    (venv / MARKER).write_text("created by unionai-sandbox\n")
    if owner is not None:
        for root, dirs, files in os.walk(venv):
            os.lchown(root, *owner)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), *owner)
    return str(venv)
