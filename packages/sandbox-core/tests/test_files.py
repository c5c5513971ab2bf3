"""``put_bytes`` / ``get_bytes``: moving bytes in and out of the work dir, and the path rules
that keep them inside it (reference-api §2.6, §2.13, §3.5)."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


def read_host(path: str) -> bytes:
    """Read a host file (synchronously: tests check host state between awaits)."""
    with open(path, "rb") as f:
        return f.read()


# -- round trips -----------------------------------------------------------------------


async def test_round_trip_returns_the_byte_count(sbx) -> None:
    data = bytes(range(256)) * 100
    path = f"{sbx.work_dir}/blob.bin"
    assert await sbx.put_bytes(path, data) == len(data)
    assert await sbx.get_bytes(path) == data


async def test_empty_file_round_trip(sbx) -> None:
    path = f"{sbx.work_dir}/empty"
    assert await sbx.put_bytes(path, b"") == 0
    assert await sbx.get_bytes(path) == b""


async def test_large_file_round_trip(sbx) -> None:
    data = os.urandom(20 * 1024 * 1024)
    path = f"{sbx.work_dir}/big.bin"
    assert await sbx.put_bytes(path, data) == len(data)
    assert await sbx.get_bytes(path) == data
    # The sandbox sees the same bytes.
    result = await sbx.exec(f"wc -c < {path}")
    assert result.stdout.strip() == str(len(data))


async def test_bytearray_and_memoryview(sbx) -> None:
    path = f"{sbx.work_dir}/v"
    assert await sbx.put_bytes(path, bytearray(b"abc")) == 3
    assert await sbx.get_bytes(path) == b"abc"
    assert await sbx.put_bytes(path, memoryview(b"defg")) == 4
    assert await sbx.get_bytes(path) == b"defg"


async def test_async_iterable_data(sbx) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(100):
            await anyio.lowlevel.checkpoint()
            yield f"chunk-{i}\n".encode()

    path = f"{sbx.work_dir}/streamed.txt"
    expected = "".join(f"chunk-{i}\n" for i in range(100)).encode()
    assert await sbx.put_bytes(path, chunks()) == len(expected)
    assert await sbx.get_bytes(path) == expected


async def test_put_overwrites_by_default(sbx) -> None:
    path = f"{sbx.work_dir}/f.txt"
    await sbx.put_bytes(path, b"first version, long")
    await sbx.put_bytes(path, b"second")
    assert await sbx.get_bytes(path) == b"second"


async def test_overwrite_false_refuses_an_existing_file(sbx) -> None:
    path = f"{sbx.work_dir}/keep.txt"
    assert await sbx.put_bytes(path, b"original", overwrite=False) == 8
    with pytest.raises(FileExistsError):
        await sbx.put_bytes(path, b"clobber", overwrite=False)
    assert await sbx.get_bytes(path) == b"original"
    # No temporary files are left behind by the refused write.
    assert sorted(os.listdir(sbx.work_dir)) == sorted([".session-venv", "keep.txt"])


async def test_overwrite_false_refuses_a_file_made_by_a_run(sbx) -> None:
    await sbx.exec("echo from-run > made.txt", check=True)
    with pytest.raises(FileExistsError):
        await sbx.put_bytes(f"{sbx.work_dir}/made.txt", b"x", overwrite=False)
    assert await sbx.get_bytes(f"{sbx.work_dir}/made.txt") == b"from-run\n"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o444])
async def test_mode_is_applied(sbx, mode: int) -> None:
    path = f"{sbx.work_dir}/m-{mode:o}"
    await sbx.put_bytes(path, b"#!/bin/sh\necho ran\n", mode=mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    result = await sbx.exec(f"stat -c %a {path}")
    assert result.stdout.strip() == f"{mode:o}"


async def test_default_mode_is_0644(sbx) -> None:
    path = f"{sbx.work_dir}/default-mode"
    await sbx.put_bytes(path, b"x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


async def test_executable_put_file_runs(sbx) -> None:
    path = f"{sbx.work_dir}/tool.sh"
    await sbx.put_bytes(path, b'#!/bin/sh\necho tool-ran "$@"\n', mode=0o755)
    assert (await sbx.exec(f"{path} a b")).stdout == "tool-ran a b\n"


# -- sharing files with runs -----------------------------------------------------------


async def test_file_written_by_a_run_is_readable(sbx) -> None:
    await sbx.exec("mkdir -p out && printf 'result:%s' 42 > out/r.txt", check=True)
    assert await sbx.get_bytes(f"{sbx.work_dir}/out/r.txt") == b"result:42"


async def test_put_file_is_readable_and_writable_by_a_run(sbx) -> None:
    path = f"{sbx.work_dir}/shared.txt"
    await sbx.put_bytes(path, b"from host\n")
    result = await sbx.exec(f"cat {path} && echo from-sandbox >> {path} && echo ok")
    assert result.stdout == "from host\nok\n", result
    assert await sbx.get_bytes(path) == b"from host\nfrom-sandbox\n"


async def test_private_put_file_is_still_usable_by_the_sandbox(sbx) -> None:
    """mode=0o600 must mean private to the sandbox user, not unreadable to it."""
    path = f"{sbx.work_dir}/secret.txt"
    await sbx.put_bytes(path, b"token\n", mode=0o600)
    result = await sbx.exec(f"cat {path} && echo more >> {path} && rm -f {path} && echo gone")
    assert result.stdout == "token\ngone\n", result


async def test_put_into_a_directory_made_by_a_run(sbx) -> None:
    await sbx.exec("mkdir -p data/in", check=True)
    path = f"{sbx.work_dir}/data/in/x.json"
    await sbx.put_bytes(path, b'{"x": 1}')
    assert (await sbx.exec("cat data/in/x.json")).stdout == '{"x": 1}'


async def test_put_replaces_a_file_a_run_made_read_only(sbx) -> None:
    await sbx.exec("echo old > ro.txt && chmod 0444 ro.txt", check=True)
    await sbx.put_bytes(f"{sbx.work_dir}/ro.txt", b"new\n")
    assert (await sbx.exec("cat ro.txt")).stdout == "new\n"


# -- path rules ------------------------------------------------------------------------


async def test_relative_path_is_a_value_error(sbx) -> None:
    with pytest.raises(ValueError, match=r"^path must be absolute, got 'rel/x.txt'$"):
        await sbx.put_bytes("rel/x.txt", b"x")
    with pytest.raises(ValueError, match=r"^path must be absolute, got 'x.txt'$"):
        await sbx.get_bytes("x.txt")


@pytest.mark.parametrize(
    "make_path",
    [
        lambda work: "/etc/union-sbx-should-not-exist",
        lambda work: f"{work}/../escape.txt",
        lambda work: f"{work}-sibling/x.txt",
        lambda work: work,
    ],
    ids=["etc", "dotdot", "sibling-prefix", "work-dir-itself"],
)
async def test_path_outside_the_work_dir_is_refused(sbx, make_path) -> None:
    path = make_path(sbx.work_dir)
    with pytest.raises(PermissionError, match="not under the session work dir"):
        await sbx.put_bytes(path, b"x")
    with pytest.raises(PermissionError, match="not under the session work dir"):
        await sbx.get_bytes(path)
    assert not os.path.exists("/etc/union-sbx-should-not-exist")
    assert not os.path.exists(os.path.join(os.path.dirname(sbx.work_dir), "escape.txt"))


async def test_missing_parent_is_file_not_found(sbx) -> None:
    path = f"{sbx.work_dir}/no/such/dir/f.txt"
    with pytest.raises(FileNotFoundError, match="parent directory does not exist"):
        await sbx.put_bytes(path, b"x")
    with pytest.raises(FileNotFoundError):
        await sbx.get_bytes(path)


async def test_missing_file_is_file_not_found(sbx) -> None:
    with pytest.raises(FileNotFoundError):
        await sbx.get_bytes(f"{sbx.work_dir}/nothing-here")


async def test_symlink_leaf_made_by_a_run_is_refused(sbx) -> None:
    await sbx.exec("ln -s /etc/hostname leaf && ln -s /etc/newfile-union-sbx dangling", check=True)
    before = read_host("/etc/hostname")
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.put_bytes(f"{sbx.work_dir}/leaf", b"pwned")
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.get_bytes(f"{sbx.work_dir}/leaf")
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.put_bytes(f"{sbx.work_dir}/dangling", b"pwned")
    assert read_host("/etc/hostname") == before
    assert not os.path.exists("/etc/newfile-union-sbx")


async def test_symlinked_directory_component_is_refused(sbx) -> None:
    await sbx.exec("ln -s /etc etcdir && mkdir -p real && ln -s real alias", check=True)
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.put_bytes(f"{sbx.work_dir}/etcdir/union-sbx-evil", b"pwned")
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.get_bytes(f"{sbx.work_dir}/etcdir/hostname")
    # Even a symlink that stays inside the work dir is refused.
    with pytest.raises(PermissionError, match="symlink"):
        await sbx.put_bytes(f"{sbx.work_dir}/alias/x.txt", b"x")
    assert not os.path.exists("/etc/union-sbx-evil")


async def test_directory_is_not_a_regular_file(sbx) -> None:
    await sbx.exec("mkdir -p adir", check=True)
    with pytest.raises(PermissionError, match="not a regular file"):
        await sbx.get_bytes(f"{sbx.work_dir}/adir")
    with pytest.raises(PermissionError, match="not a regular file"):
        await sbx.put_bytes(f"{sbx.work_dir}/adir", b"x")
    assert os.path.isdir(f"{sbx.work_dir}/adir")


async def test_fifo_is_not_a_regular_file_and_does_not_hang(sbx) -> None:
    await sbx.exec("mkfifo pipe", check=True)
    with anyio.fail_after(5):
        with pytest.raises(PermissionError, match="not a regular file"):
            await sbx.get_bytes(f"{sbx.work_dir}/pipe")
        with pytest.raises(PermissionError, match="not a regular file"):
            await sbx.put_bytes(f"{sbx.work_dir}/pipe", b"x")


async def test_max_bytes(sbx) -> None:
    path = f"{sbx.work_dir}/sized"
    await sbx.put_bytes(path, b"x" * 100)
    with pytest.raises(ValueError, match=r"is 100 bytes, exceeds max_bytes=99"):
        await sbx.get_bytes(path, max_bytes=99)
    assert await sbx.get_bytes(path, max_bytes=100) == b"x" * 100
    assert await sbx.get_bytes(path, max_bytes=0) == b"x" * 100  # 0: no cap
    with pytest.raises(ValueError, match="max_bytes"):
        await sbx.get_bytes(path, max_bytes=-1)


async def test_methods_need_an_open_session(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    with pytest.raises(RuntimeError, match="session is not open"):
        await session.put_bytes("/tmp/x", b"x")
    with pytest.raises(RuntimeError, match="session is not open"):
        await session.get_bytes("/tmp/x")


# -- the work dir itself ---------------------------------------------------------------


async def test_pinned_host_work_dir_is_used_and_kept(backend: str, public_tmp: str) -> None:
    work = os.path.join(public_tmp, "pinned")
    async with sb.on_device.session(backend=backend, host_work_dir=work) as sbx:
        assert sbx.work_dir == work
        await sbx.put_bytes(f"{work}/in.txt", b"in")
        result = await sbx.exec("cat in.txt > out.txt && pwd")
        assert result.stdout == f"{work}\n", result
    # Not deleted at close; what the run wrote is on the host.
    assert read_host(f"{work}/out.txt") == b"in"


async def test_temporary_work_dir_is_removed_at_close(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        work = sbx.work_dir
        await sbx.exec("mkdir -p a/b && echo x > a/b/c && chmod 0500 a/b", check=True)
        assert os.path.isdir(work)
    assert not os.path.exists(work)


async def test_work_dir_is_per_session(backend: str) -> None:
    async with (
        sb.on_device.session(backend=backend) as one,
        sb.on_device.session(backend=backend) as two,
    ):
        assert one.work_dir != two.work_dir
        await one.put_bytes(f"{one.work_dir}/mine.txt", b"one")
        result = await two.exec(f"cat {one.work_dir}/mine.txt")
        assert result.returncode != 0
        assert "one" not in result.stdout
        with pytest.raises(PermissionError):
            await two.get_bytes(f"{one.work_dir}/mine.txt")
