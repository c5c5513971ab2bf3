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


async def test_read_write_grants_take_metadata_changes(backend: str, public_tmp: str) -> None:
    """The host's tree is read-only to runs (userns binds read-write grants and the work
    dir back writable): in them a run may still chmod, touch and set xattrs."""
    rw = os.path.join(public_tmp, "rw")
    data = _writable_dir(rw)
    uid = 65534 if os.getuid() == 0 else os.getuid()
    for path in (rw, data):
        os.chown(path, uid, uid)
    async with sb.on_device.session(backend=backend, read_write_paths=[rw]) as sbx:
        result = await sbx.exec(
            f"chmod 600 {data} && touch -d 2001-01-01 {data} && echo rw-ok; "
            "echo z > mine && chmod 600 mine && touch -d 2001-01-01 mine && "
            'python3 -c \'import os; os.setxattr("mine", "user.k", b"v")\' && echo work-ok'
        )
        assert result.stdout.split() == ["rw-ok", "work-ok"], result.stderr
        assert os.getxattr(os.path.join(sbx.work_dir, "mine"), "user.k") == b"v"
    st = os.stat(data)
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o600, 978307200)


async def test_dev_is_the_sandboxs_own(backend: str) -> None:
    """Runs see a /dev of their own (userns as bubblewrap): the usual nodes and links, never
    the host's terminals or disks; the nodes still work."""
    async with sb.on_device.session(backend=backend) as sbx:
        result = await sbx.exec(
            "ls -A /dev; echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c; "
            "echo y > /dev/shm/a && echo shm-ok"
        )
    names = result.stdout.split()
    assert names[-3:] == ["null-ok", "4", "shm-ok"], result
    assert set(names[:-3]) <= {
        *("null", "zero", "full", "random", "urandom", "tty", "shm", "pts", "ptmx"),
        *("fd", "stdin", "stdout", "stderr", "core"),
    }


async def test_a_grant_under_tmp_replaced_mid_session_is_not_bound(
    backend: str, public_tmp: str
) -> None:
    """Grants are resolved once, when the session starts. userns binds the grants under /tmp
    back beneath each run's fresh /tmp by name: whatever is at that name must still be what
    the session resolved, else the run fails (a directory swapped in there would get the
    fresh /tmp's rights); bubblewrap's root keeps the directory it bound."""
    ro = os.path.join(public_tmp, "ro")
    _writable_dir(ro)
    async with sb.on_device.session(backend=backend, read_only_paths=[ro]) as sbx:
        assert (await sbx.exec(f"cat {ro}/data")).stdout == "original\n"
        os.rename(ro, ro + "-moved")
        os.truncate(_writable_dir(ro), 0)  # "original" no more
        # A scratch size of its own: a new init (not an idle or prepared one).
        again = sbx.exec(f"cat {ro}/data", resources=sb.Resources(disk="32Mi"))
        if backend == "userns":
            with pytest.raises(sb.errors.ExecutionError, match="was replaced after the session"):
                await again
        else:
            assert (await again).stdout == "original\n"


async def test_read_only_grant_beneath_a_read_write_root(backend: str, public_tmp: str) -> None:
    """With ``/`` itself granted read-write (userns then leaves the host's tree writable),
    a read-only grant is still a read-only mount."""
    ro = os.path.join(public_tmp, "ro")
    data = _writable_dir(ro)
    async with sb.on_device.session(
        backend=backend, read_write_paths=["/"], read_only_paths=[ro]
    ) as sbx:
        result = await sbx.exec(f"echo x > {data} || echo refused")
    assert result.stdout == "refused\n", result
    assert _read(data) == "original\n"


async def test_a_grant_under_tmp_made_after_the_session_started(
    backend: str, public_tmp: str
) -> None:
    """A granted path that does not exist when the session starts grants nothing (it is
    skipped, as documented), and its appearing later breaks no run."""
    later = os.path.join(public_tmp, "later")
    async with sb.on_device.session(backend=backend, read_only_paths=[later]) as sbx:
        assert (await sbx.exec("true")).returncode == 0
        _writable_dir(later)
        result = await sbx.exec("echo ran", resources=sb.Resources(disk="32Mi"))
    assert result.stdout == "ran\n", result
