"""The filesystem allow-list of on-device sessions and the put/get path rules."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "DEFAULT_READ_ONLY",
    "DEFAULT_READ_WRITE",
    "FsLayout",
    "check_work_dir",
    "default_fs_allowlist",
    "host_python",
    "is_safe_to_mount",
    "is_under",
    "split_session_path",
    "uv_binary",
]

DEFAULT_READ_ONLY: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
)
DEFAULT_READ_WRITE: tuple[str, ...] = (
    "/tmp",
    "/dev/shm",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
)
# Granting one of these read-only would expose far more than an interpreter or a venv.
_BROAD_ROOTS = frozenset(
    {
        "/",
        "/usr",
        "/usr/local",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/etc",
        "/var",
        "/opt",
        "/home",
        "/root",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
    }
)


def is_safe_to_mount(path: str) -> bool:
    """True unless ``path`` is a broad root (``/``, ``/usr``, ``/home``...) that must never be
    granted implicitly."""
    return os.path.normpath(path) not in _BROAD_ROOTS


def check_work_dir(path: str, name: str = "host_work_dir") -> None:
    """Refuse a work dir that is a system directory (``/``, ``/tmp``, ``/home``...): a
    session makes its work dir the sandbox's (chowned to the sandbox user when the host is
    root, writable by every run)."""
    if not is_safe_to_mount(path):
        raise ValueError(
            f"{name} {path!r} is a system directory; a session gives its work dir to the "
            "sandbox (owned by the sandbox user, writable by every run): use a directory of "
            "its own, such as /work or /srv/sandbox/<name>"
        )


def host_python() -> tuple[str, list[str]]:
    """The real interpreter binary behind ``sys.executable`` and the install prefixes a
    sandboxed Python needs (base prefix; the caller's venv, if it is specific enough)."""
    base_exe = getattr(sys, "_base_executable", None) or sys.executable
    python = os.path.realpath(base_exe)
    prefixes = [os.path.realpath(sys.base_prefix)]
    if sys.prefix != sys.base_prefix and is_safe_to_mount(sys.prefix):
        prefixes.append(os.path.realpath(sys.prefix))
    # The binary may live outside its prefix (a uv-managed Python symlinked elsewhere).
    exe_root = os.path.dirname(os.path.dirname(python))
    if not any(is_under(python, p) for p in prefixes) and is_safe_to_mount(exe_root):
        prefixes.append(exe_root)
    return python, _dedupe(prefixes)


@functools.lru_cache(maxsize=1)
def uv_binary() -> str | None:
    """The ``uv`` executable the sandbox uses for ``uv pip install`` (the one the ``uv``
    package ships, else one on ``PATH`` that is a real binary, not a shim script). Looked
    up once per process."""
    # Where the ``uv`` package installs it in a venv, next to this interpreter: found
    # without importing that package (and sysconfig with it) at every session start.
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return os.path.realpath(beside)
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]

        return os.path.realpath(str(find_uv_bin()))
    except (ImportError, FileNotFoundError):
        pass
    import shutil  # here: the common cases above need none of it, at every session start

    found = shutil.which("uv")
    return os.path.realpath(found) if found else None


def is_under(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies beneath it (by their text, both normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _dedupe(paths: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for p in paths:
        seen.setdefault(os.path.normpath(p), None)
    return list(seen)


def _absolute_list(paths: Iterable[str] | None, name: str) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, bytes)):
        raise TypeError(f"{name} must be a list of paths, got a single string: use [{paths!r}]")
    out = []
    for entry in paths:
        p = os.fspath(entry)
        if not isinstance(p, str) or not os.path.isabs(p):
            raise ValueError(f"{name} entries must be absolute paths, got {p!r}")
        out.append(os.path.normpath(p))
    return out


# A NamedTuple: created at import ~5x faster than a frozen dataclass (docs/design.md).
class FsLayout(NamedTuple):
    """What a session's runs may read and write."""

    work_dir: str
    python: str
    python_prefixes: tuple[str, ...]
    uv: str | None
    extra_read_only: tuple[str, ...] = ()
    extra_read_write: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    """Device nodes bound read-write (GPUs)."""

    @classmethod
    def build(
        cls,
        work_dir: str,
        read_only_paths: Iterable[str] | None,
        read_write_paths: Iterable[str] | None,
        devices: Iterable[str] = (),
    ) -> FsLayout:
        python, prefixes = host_python()
        layout = cls(
            work_dir=os.path.normpath(work_dir),
            python=python,
            python_prefixes=tuple(prefixes),
            uv=uv_binary(),
            extra_read_only=tuple(_absolute_list(read_only_paths, "read_only_paths")),
            extra_read_write=tuple(_absolute_list(read_write_paths, "read_write_paths")),
            devices=tuple(devices),
        )
        writable = set(layout.read_write)
        for path in layout.extra_read_only:
            if path in writable:
                raise ValueError(
                    f"{path!r} is granted both read-only and read-write (it is "
                    + (
                        "in read_write_paths"
                        if path in layout.extra_read_write
                        else "always writable: the work dir or a default read-write path"
                    )
                    + "): remove it from read_only_paths, or grant a path beneath it instead"
                )
        return layout

    @property
    def read_only(self) -> list[str]:
        """Readable paths. Where a read-only and a read-write grant nest, the deeper one
        decides: a read-only path beneath a read-write one stays read-only, and the other way
        round. An automatic grant (the interpreter, uv) that is also granted read-write is
        read-write."""
        extra = [*self.python_prefixes, *([self.uv] if self.uv else []), *self.extra_read_only]
        writable = set(self.read_write)
        return [p for p in _dedupe([*DEFAULT_READ_ONLY, *extra]) if p not in writable]

    @property
    def read_write(self) -> list[str]:
        return _dedupe([*DEFAULT_READ_WRITE, *self.extra_read_write, *self.devices, self.work_dir])

    def as_dict(self) -> dict[str, list[str]]:
        return {"read_only": self.read_only, "read_write": self.read_write}


def default_fs_allowlist() -> dict[str, list[str]]:
    """The allow-list every on-device session starts from (before the work dir, the
    interpreter and per-session extras): ``{"read_only": [...], "read_write": [...]}``."""
    return {"read_only": list(DEFAULT_READ_ONLY), "read_write": list(DEFAULT_READ_WRITE)}


def split_session_path(path: str, work_dir: str) -> tuple[str, list[str]]:
    """Check a ``put_bytes``/``get_bytes`` path by its text: a str, absolute, no NUL, and
    under the work dir once normalised (``..`` resolved lexically). Returns the normalised
    path and its components below the work dir. Symlinks are refused by the walk that
    follows (:meth:`WorkDir.open_parent` and the leaf's ``O_NOFOLLOW``), never by a check
    of the path ahead of it, which a sandboxed process could race."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, got {type(path).__name__}")
    if not os.path.isabs(path):
        raise ValueError(f"path must be absolute, got {path!r}")
    if "\0" in path:
        raise ValueError("path must not contain NUL bytes")
    norm = os.path.normpath(path)
    root = os.path.normpath(work_dir)
    # With the separator: a sibling such as /work-evil is not under /work.
    if not norm.startswith(root + "/"):
        raise PermissionError(
            f"path {path!r} is not under the session work dir {root!r}; stage files there "
            "(put_bytes/get_bytes only reach the work dir)"
        )
    return norm, norm[len(root) + 1 :].split("/")


NVIDIA_CONTROL_DEVICES = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)


def gpu_devices(count: int, dev: str = "/dev") -> list[str]:
    """The NVIDIA device nodes to bind for ``count`` GPUs: the control nodes present and the
    first ``count`` of ``/dev/nvidia0..N``. Fails closed when the host has fewer GPUs."""
    if count <= 0:
        return []
    numbered = sorted(
        (name for name in os.listdir(dev) if name.startswith("nvidia") and name[6:].isdigit()),
        key=lambda name: int(name[6:]),
    )
    if len(numbered) < count:
        raise ValueError(
            f"{count} GPU(s) requested but this host has {len(numbered)} NVIDIA device "
            f"node(s) in {dev} (/dev/nvidia0..N); is the NVIDIA driver loaded?"
        )
    controls = [p.replace("/dev", dev, 1) for p in NVIDIA_CONTROL_DEVICES]
    return [p for p in controls if os.path.exists(p)] + [f"{dev}/{n}" for n in numbered[:count]]
