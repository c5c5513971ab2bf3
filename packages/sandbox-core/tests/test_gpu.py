"""GPU pass-through: NVIDIA device nodes bound into bubblewrap sandboxes, fail closed.

There is no GPU on the test machines, so the tests create the device nodes a driver would
(character devices, major 195) in the host's /dev for the duration of a test, unless real
ones exist. Opening them fails without a driver, but their presence (or absence) inside the
sandbox is what the binding decides.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from union import sandbox as sb
from union.sandbox.core.resources import Resources

pytestmark = pytest.mark.anyio

NVIDIA_MAJOR = 195
NODES = {"/dev/nvidiactl": 255, "/dev/nvidia0": 0, "/dev/nvidia1": 1}


@pytest.fixture
def nvidia_nodes() -> Iterator[list[str]]:
    if os.getuid() != 0:
        pytest.skip("creating device nodes needs root")
    made = []
    for path, minor in NODES.items():
        if not os.path.exists(path):
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, minor))
            made.append(path)
    try:
        yield list(NODES)
    finally:
        for path in made:
            os.unlink(path)


async def test_gpu_nodes_are_bound_into_bubblewrap(nvidia_nodes: list[str]) -> None:
    async with sb.on_device.session(backend="bubblewrap", resources=Resources(gpu=1)) as sbx:
        proc = await sbx.run("ls /dev | grep nvidia | sort; stat -c '%F %t' /dev/nvidia0")
        out, err = await proc.communicate_text()
        assert proc.returncode == 0, err
        names = out.split()
        assert "nvidia0" in names and "nvidiactl" in names
        assert "nvidia1" not in names  # exactly the requested count
        assert "character special file c3" in out  # major 195 = 0xc3
        assert proc.isolation is not None and proc.isolation.gpus == 1
        # The nodes are granted read-write (ioctl included) by Landlock, not just bound.
        assert sbx.fs_allowlist()["read_write"].count("/dev/nvidia0") == 1


async def test_no_gpu_requested_means_no_nodes(nvidia_nodes: list[str]) -> None:
    async with sb.on_device.session(backend="bubblewrap") as sbx:
        result = await sbx.exec("ls /dev")
        assert "nvidia0" not in result.stdout.split()


def test_gpu_requires_bubblewrap() -> None:
    with pytest.raises(ValueError, match="GPU sandboxes require the bubblewrap backend"):
        sb.on_device.session(backend="userns", resources=Resources(gpu=1))


async def test_more_gpus_than_the_host_has_fails_closed(nvidia_nodes: list[str]) -> None:
    sbx = sb.on_device.session(backend="bubblewrap", resources=Resources(gpu=8))
    with pytest.raises(ValueError, match="8 GPU"):
        await sbx.open()
    await sbx.close()


async def test_a_run_cannot_ask_for_more_gpus_than_its_session(nvidia_nodes: list[str]) -> None:
    async with sb.on_device.session(backend="bubblewrap", resources=Resources(gpu=1)) as sbx:
        with pytest.raises(ValueError, match="session was opened with 1"):
            await sbx.run("true", resources=Resources(gpu=2))
        async with sb.on_device.session(backend="bubblewrap") as plain:
            with pytest.raises(ValueError, match="opened with 0"):
                await plain.run("true", resources=Resources(gpu=1))
