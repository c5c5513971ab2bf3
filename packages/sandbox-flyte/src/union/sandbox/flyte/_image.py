"""``base_sandbox_image``: the image a sandbox pod runs.

Debian (flyte's base, which brings Python, flyte and uv), ``bubblewrap`` and
``ca-certificates`` from apt, ``uv`` and ``kubernetes`` from the index (the PodTemplate helpers
need it in any pod that builds an environment at import), and our own distributions.

Each of our distributions comes from wherever this process got it:

- installed from the index (a release): pinned by version, ``unionai-sandbox-server==V``;
- installed from a source directory (a workspace or editable install of a clone): built to a
  wheel here and layered in, so deploying from a clone ships *this* checkout's code and never
  silently a same-numbered release from the index;
- installed from a local wheel file that still exists: that wheel is layered in.

Built wheels are cached under ``$XDG_CACHE_HOME/unionai-sandbox/image-wheels/<content hash>``,
so the build (about a second per package, with ``uv build``) happens once per source change.
The wheels' bytes are part of the image's content hash, so a code change gives a new tag.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import flyte

__all__ = [
    "IMAGE_NAME",
    "OUR_DISTRIBUTIONS",
    "Origin",
    "build_base_image",
    "cached_base_image",
    "origin_of",
]

IMAGE_NAME = "union-sandbox-base"
#: Our distributions, in install order (dependencies first).
OUR_DISTRIBUTIONS = (
    "unionai-sandbox-core",
    "unionai-sandbox-client",
    "unionai-sandbox-server",
    "unionai-sandbox-flyte",
    "unionai-sandbox",
)
#: What a release image installs from the index (the facade's [deploy] extra brings the
#: Flyte layer, the client, core and kubernetes).
_RELEASE_REQUIREMENTS = ("unionai-sandbox[deploy]", "unionai-sandbox-server")
_BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class Origin:
    """Where an installed distribution came from: ``kind`` is ``"source"`` (a directory with a
    pyproject.toml), ``"wheel"`` (a local wheel file) or ``"index"``."""

    dist: str
    version: str
    kind: str
    path: Path | None = None


def origin_of(dist: str) -> Origin | None:
    """How ``dist`` is installed here, from its PEP 610 ``direct_url.json``; ``None`` when it
    is not installed."""
    try:
        distribution = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    raw = distribution.read_text("direct_url.json")
    info = json.loads(raw) if raw else {}
    url = str(info.get("url", ""))
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if "dir_info" in info and (path / "pyproject.toml").is_file():
            return Origin(dist, distribution.version, "source", path)
        if path.suffix == ".whl" and path.is_file():
            return Origin(dist, distribution.version, "wheel", path)
    return Origin(dist, distribution.version, "index")


@functools.cache
def cached_base_image() -> flyte.Image:
    """``base_sandbox_image``: built once per process."""
    return build_base_image()


def build_base_image(origins: list[Origin] | None = None) -> flyte.Image:
    """The image for ``origins`` (default: where this process's copies came from); builds
    wheels of source installs (cached) when needed."""
    from flyte._image import PythonWheels  # flyte's own layer for local wheels (with_local_v2)

    if origins is None:
        origins = [o for o in map(origin_of, OUR_DISTRIBUTIONS) if o is not None]
    version = next(o.version for o in origins if o.dist == "unionai-sandbox-flyte")
    local = [o for o in origins if o.kind != "index"]
    if local:
        # Ours that are not local (e.g. the server in a client-side install) come pinned.
        from_index = {o.dist for o in origins if o.kind == "index"}
        missing = {"unionai-sandbox-server", "unionai-sandbox"} - {o.dist for o in origins}
        pins = tuple(f"{d}=={version}" for d in OUR_DISTRIBUTIONS if d in from_index | missing)
    else:
        pins = tuple(f"{r}=={version}" for r in _RELEASE_REQUIREMENTS)
    image = (
        flyte.Image.from_debian_base(name=IMAGE_NAME, platform=("linux/amd64",))
        .with_apt_packages("bubblewrap", "ca-certificates")
        .with_pip_packages("uv", "kubernetes>=30", *pins)
    )
    if local:
        wheel_dir = _local_wheels(local)
        for origin in local:
            layer = PythonWheels(wheel_dir=wheel_dir, package_name=origin.dist)
            image = image.clone(addl_layer=layer)
    return image


# -- local wheels ------------------------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unionai-sandbox" / "image-wheels"


def _source_files(root: Path) -> list[Path]:
    """The files a wheel of the project at ``root`` is built from."""
    files = [root / "pyproject.toml", root / "README.md"]
    for path in sorted((root / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return [f for f in files if f.is_file()]


def _content_key(origins: list[Origin]) -> str:
    digest = hashlib.sha256()
    for origin in origins:
        assert origin.path is not None
        digest.update(f"{origin.dist}\0{origin.kind}\0".encode())
        files = _source_files(origin.path) if origin.kind == "source" else [origin.path]
        for path in files:
            rel = path.relative_to(origin.path) if origin.kind == "source" else Path(path.name)
            digest.update(f"{rel}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _local_wheels(origins: list[Origin]) -> Path:
    """A directory holding one wheel per local origin (built or copied), cached by content."""
    target = _cache_root() / _content_key(origins)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for origin in origins:
            assert origin.path is not None
            if origin.kind == "wheel":
                shutil.copy2(origin.path, staging / origin.path.name)
            else:
                _build_wheel(origin.path, staging)
        try:
            staging.rename(target)
        except OSError:  # another process built the same key first: use theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    raise RuntimeError(
        "base_sandbox_image: unionai-sandbox is installed from a source checkout, so the image "
        "must be built from this checkout's code, which needs uv to build the wheels: "
        "pip install uv (or install unionai-sandbox from a release)"
    )


def _build_wheel(source: Path, out: Path) -> None:
    cmd = [*_uv(), "build", "--wheel", "--quiet", "--out-dir", str(out), str(source)]
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"base_sandbox_image: building a wheel of {source} for the image failed "
            f"(exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}"
        )
