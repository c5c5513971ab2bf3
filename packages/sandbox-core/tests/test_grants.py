"""Nested filesystem grants: the deeper grant decides, and a read-only grant is read-only
wherever it lies (docs/filesystem.md). Adversarial variants live in
``integration/conformance/test_grants.py``."""

from __future__ import annotations

import os

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


def _writable_dir(path: str) -> str:
    """A directory (and a 0666 file in it) that the sandbox uid could write by mode."""
    os.makedirs(path)
    os.chmod(path, 0o777)
    data = os.path.join(path, "data")
    with open(data, "w") as f:
        f.write("original\n")
    os.chmod(data, 0o666)
    return data


def _read(path: str) -> str:
    """Read a host file (synchronously: tests check host state between awaits)."""
    with open(path) as f:
        return f.read()


async def test_read_only_beneath_read_write_stays_read_only(backend: str, public_tmp: str) -> None:
    outer = os.path.join(public_tmp, "rw")
    inner = os.path.join(outer, "ro")
    deepest = os.path.join(inner, "rw")
    _writable_dir(outer)
    data = _writable_dir(inner)
    _writable_dir(deepest)
    async with sb.on_device.session(
        backend=backend, read_write_paths=[outer, deepest], read_only_paths=[inner]
    ) as sbx:
        result = await sbx.exec(
            f"echo a > {outer}/new && echo outer-ok; "
            f"echo b > {data} || echo inner-refused; "
            f"echo c > {deepest}/new && echo deepest-ok; cat {data}"
        )
    assert result.stdout.split() == ["outer-ok", "inner-refused", "deepest-ok", "original"]
    assert "Read-only file system" in result.stderr
    assert _read(data) == "original\n"


async def test_read_write_beneath_read_only_is_writable(backend: str, public_tmp: str) -> None:
    outer = os.path.join(public_tmp, "ro")
    inner = os.path.join(outer, "out")
    data = _writable_dir(outer)
    _writable_dir(inner)
    async with sb.on_device.session(
        backend=backend, read_only_paths=[outer], read_write_paths=[inner]
    ) as sbx:
        result = await sbx.exec(f"echo x > {inner}/result && echo ok; echo y > {data}")
    assert result.stdout == "ok\n"
    assert result.returncode != 0
    assert _read(os.path.join(inner, "result")) == "x\n"


async def test_read_only_under_tmp_is_bound_back_read_only(backend: str, public_tmp: str) -> None:
    """Paths under /tmp come back beneath each run's fresh, writable /tmp, and stay
    read-only there; the rest of that /tmp is the run's own."""
    ro = os.path.join(public_tmp, "models")
    data = _writable_dir(ro)
    async with sb.on_device.session(backend=backend, read_only_paths=[ro]) as sbx:
        for _ in range(2):  # a fresh init, then (if recycled) the same one again
            result = await sbx.exec(
                f"cat {data}; echo x > {data} || echo refused; echo y > /tmp/mine && cat /tmp/mine"
            )
            assert result.stdout == "original\nrefused\ny\n", result


@pytest.mark.parametrize("conflict", ["explicit", "work-dir", "default"])
async def test_a_path_granted_both_ways_is_refused(conflict: str, public_tmp: str) -> None:
    path = {"explicit": public_tmp, "work-dir": public_tmp, "default": "/tmp"}[conflict]
    kwargs: dict[str, object] = {"read_only_paths": [path]}
    if conflict == "explicit":
        kwargs["read_write_paths"] = [path]
    elif conflict == "work-dir":
        kwargs["host_work_dir"] = path
    with pytest.raises(ValueError, match="granted both read-only and read-write"):
        sb.on_device.session(backend="userns", **kwargs)  # type: ignore[arg-type]
