"""``base_sandbox_image``: its layers, and that a source checkout ships *its own* code.

The Dockerfile is rendered with flyte's own docker builder handlers (what ``flyte deploy``
would build, minus the ``docker buildx`` call this machine cannot make).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import anyio
import flyte
from flyte._image import AptPackages, PipPackages, PythonWheels
from flyte._internal.imagebuild.docker_builder import _process_layer

from union import sandbox as sb
from union.sandbox.flyte._image import OUR_DISTRIBUTIONS, Origin, build_base_image, origin_of

REPO = Path(__file__).resolve().parents[3]
#: A file of each distribution, as it must appear in the wheel layered into the image.
PROBES = {
    "unionai-sandbox-core": "packages/sandbox-core/src/union/sandbox/core/constants.py",
    "unionai-sandbox-client": "packages/sandbox-client/src/union/sandbox/client/__init__.py",
    "unionai-sandbox-server": "packages/sandbox-server/src/union/sandbox/server/cli.py",
    "unionai-sandbox-flyte": "packages/sandbox-flyte/src/union/sandbox/flyte/_body.py",
    "unionai-sandbox": "packages/unionai-sandbox/src/union/sandbox/__init__.py",
}


def render(image: flyte.Image, context: Path) -> str:
    async def go() -> str:
        dockerfile = ""
        for layer in image._layers:
            dockerfile = await _process_layer(layer, context, dockerfile, [])
        return dockerfile

    return anyio.run(go)


def wheel_of(wheel_dir: Path, dist: str) -> Path:
    (wheel,) = wheel_dir.glob(dist.replace("-", "_") + "-*.whl")
    return wheel


def test_workspace_install_layers_this_checkouts_wheels(tmp_path: Path) -> None:
    assert {origin_of(d).kind for d in OUR_DISTRIBUTIONS} == {"source"}  # type: ignore[union-attr]
    image = sb.base_sandbox_image
    assert image.base_image.startswith("ghcr.io/flyteorg/flyte:py3.")
    assert image.platform == ("linux/amd64",)
    assert image.name == "union-sandbox-base"
    apt, pip, *wheels = image._layers
    assert isinstance(apt, AptPackages) and apt.packages == ("bubblewrap", "ca-certificates")
    assert isinstance(pip, PipPackages) and pip.packages == ("uv", "kubernetes>=30")
    assert [(type(w), w.package_name) for w in wheels] == [  # type: ignore[attr-defined]
        (PythonWheels, d) for d in OUR_DISTRIBUTIONS
    ]
    wheel_dir = wheels[0].wheel_dir  # type: ignore[attr-defined]
    for dist, source in PROBES.items():
        with zipfile.ZipFile(wheel_of(wheel_dir, dist)) as zf:
            inside = zf.read(source.split("/src/", 1)[1])
        assert inside == (REPO / source).read_bytes(), f"{dist}: the image would ship other code"

    rendered = render(image, tmp_path)
    dockerfile = " ".join(rendered.split())
    assert "apt-get install -y --no-install-recommends bubblewrap ca-certificates" in dockerfile
    assert "uv pip install --python $UV_PYTHON uv 'kubernetes>=30'" in dockerfile
    for dist in OUR_DISTRIBUTIONS:
        # Dependencies resolved with our wheels as find-links, then our exact wheel forced.
        assert f"--find-links /dist --no-deps --no-index --reinstall {dist}\n" in rendered
    assert sorted(p.name for p in (tmp_path / "dist").glob("*.whl")) == sorted(
        p.name for p in wheel_dir.glob("*.whl")
    )
    assert "==" not in dockerfile  # nothing of ours comes from the index by version


def test_release_install_pins_our_packages_by_version() -> None:
    image = build_base_image([Origin(d, "1.2.3", "index") for d in OUR_DISTRIBUTIONS])
    _apt, pip = image._layers
    assert isinstance(pip, PipPackages)
    assert pip.packages == (
        "uv",
        "kubernetes>=30",
        "unionai-sandbox[deploy]==1.2.3",
        "unionai-sandbox-server==1.2.3",
    )


def test_local_wheels_are_layered_and_missing_ones_pinned(tmp_path: Path) -> None:
    """A client-side install from wheel files (no server): the wheels go in, the server comes
    pinned to the same version; the tag follows the wheels' bytes."""
    built = sb.base_sandbox_image._layers[2].wheel_dir  # type: ignore[attr-defined]
    have = [d for d in OUR_DISTRIBUTIONS if d != "unionai-sandbox-server"]
    copies = []
    for dist in have:
        dest = tmp_path / wheel_of(built, dist).name
        shutil.copy2(wheel_of(built, dist), dest)
        copies.append(Origin(dist, "0.1.0", "wheel", dest))
    image = build_base_image(copies)
    _, pip, *wheels = image._layers
    assert pip.packages == ("uv", "kubernetes>=30", "unionai-sandbox-server==0.1.0")  # type: ignore[attr-defined]
    assert [w.package_name for w in wheels] == have  # type: ignore[attr-defined]
    before = image.uri
    with open(copies[0].path, "ab") as f:  # type: ignore[arg-type]
        f.write(b"\0")
    assert build_base_image(copies).uri != before
