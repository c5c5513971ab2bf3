"""The work dir on the host: private modes, removal of whatever a run left at close(), and
host-side operations that a sandbox changing the tree concurrently cannot redirect."""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from union import sandbox as sb
from union.sandbox.core.on_device import rmtree
from union.sandbox.core.testing_caller import run_as, system_python

pytestmark = pytest.mark.anyio

NOBODY = 65534

# A run's leftovers: deeper than Python's recursion limit, locked directories, a FIFO, links
# out of the tree (which removal must unlink, never follow).
MESSY_TREE = textwrap.dedent(
    """
    import os
    work = os.getcwd()
    os.mkdir("deep")
    os.chdir("deep")
    for _ in range(DEPTH):
        os.mkdir("d")
        os.chdir("d")
    open("leaf", "w").close()
    os.symlink(VICTIM, "victim-link")
    os.chdir(work)
    os.makedirs("locked/inner/deeper")
    open("locked/inner/f", "w").close()
    os.mkfifo("locked/inner/fifo")
    os.symlink(VICTIM + "/sub", "locked/victim-link")
    os.chmod("locked/inner/deeper", 0)
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0o500)
    print("made")
    """
)


def _private(path: str) -> bool:
    return stat.S_IMODE(os.stat(path).st_mode) == 0o700


@pytest.fixture
def victim() -> Iterator[str]:
    """A host directory (world-readable, so that a link to it works for any caller) that a
    removal following a link would empty."""
    path = tempfile.mkdtemp(prefix="union-sbx-victim-")
    os.chmod(path, 0o755)
    Path(path, "keep").write_text("precious")
    os.mkdir(os.path.join(path, "sub"))
    Path(path, "sub", "keep").write_text("precious")
    yield path
    shutil.rmtree(path)


def _intact(victim: str) -> bool:
    return (
        sorted(os.listdir(victim)) == ["keep", "sub"]
        and Path(victim, "keep").read_text() == "precious"
        and Path(victim, "sub", "keep").read_text() == "precious"
    )


# -- modes -------------------------------------------------------------------------------


async def test_temporary_work_dir_is_private_and_the_sandboxs(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        assert _private(sbx.work_dir)
        if os.getuid() == 0:
            assert os.stat(sbx.work_dir).st_uid == NOBODY


async def test_pinned_work_dir_is_created_private(backend: str, public_tmp: str) -> None:
    work = os.path.join(public_tmp, "a", "pinned")
    async with sb.on_device.session(backend=backend, host_work_dir=work) as sbx:
        await sbx.put_bytes(f"{work}/f.txt", b"x")
        assert _private(work)
        # Files keep the mode they were given: the directory is what keeps them private.
        assert stat.S_IMODE(os.stat(f"{work}/f.txt").st_mode) == 0o644


async def test_an_existing_pinned_dir_keeps_its_mode(backend: str, public_tmp: str) -> None:
    work = os.path.join(public_tmp, "existing")
    os.mkdir(work, 0o750)
    os.chmod(work, 0o750)
    async with sb.on_device.session(backend=backend, host_work_dir=work) as sbx:
        assert (await sbx.exec("echo ok")).stdout == "ok\n"
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o750


@pytest.mark.parametrize("root", ["/", "/tmp", "/home", "/etc/"])
def test_a_system_directory_is_refused_as_work_dir(root: str) -> None:
    with pytest.raises(ValueError, match="is a system directory"):
        sb.on_device.session(backend="userns", host_work_dir=root)


async def test_a_link_to_a_system_directory_is_refused_at_open(public_tmp: str) -> None:
    link = os.path.join(public_tmp, "looks-harmless")
    os.symlink("/etc", link)
    session = sb.on_device.session(backend="userns", host_work_dir=link)
    with pytest.raises(ValueError, match="is a symbolic link \\(to '/etc'\\)"):
        await session.open()
    assert stat.S_IMODE(os.stat("/etc").st_mode) == 0o755
    assert os.stat("/etc").st_uid == 0


async def test_a_pinned_dir_behind_a_link_is_refused(backend: str, public_tmp: str) -> None:
    """Whatever the link points to: a link at the pinned name may have been planted by a
    sandbox that can write its parent, and the host would take (as root: chown) its
    target. A link in a parent still works."""
    target = os.path.join(public_tmp, "real")
    os.mkdir(target, 0o700)
    os.symlink(target, os.path.join(public_tmp, "pinned"))
    session = sb.on_device.session(backend=backend, host_work_dir=f"{public_tmp}/pinned")
    with pytest.raises(ValueError, match="is a symbolic link"):
        await session.open()
    assert os.stat(target).st_uid == os.getuid()
    os.symlink(public_tmp, os.path.join(public_tmp, "parent-link"))
    async with sb.on_device.session(
        backend=backend, host_work_dir=f"{public_tmp}/parent-link/real"
    ) as sbx:
        assert sbx.work_dir == target
        assert (await sbx.exec("pwd")).stdout.strip() == target


# -- removal at close --------------------------------------------------------------------


async def test_close_removes_any_tree_a_run_left(backend: str, victim: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        async with sb.on_device.session(backend=backend) as sbx:
            work = sbx.work_dir
            script = MESSY_TREE.replace("DEPTH", "3000").replace("VICTIM", repr(victim))
            result = await sbx.exec(script, script_type="python", timeout_s=120)
            assert result.stdout == "made\n", result
            # Fewer descriptors than the tree is deep while close() removes it.
            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 100, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not os.path.lexists(work)
    assert _intact(victim)


UNPRIVILEGED_CLOSE = textwrap.dedent(
    """
    import os, sys, warnings, anyio
    warnings.simplefilter("ignore")
    from union.sandbox.core.on_device import session

    async def main(backend, script):
        async with session(backend=backend) as sbx:
            work = sbx.work_dir
            result = await sbx.exec(script, script_type="python", timeout_s=120)
            assert result.stdout == "made\\n", result
            # The run may lock the work dir itself too.
            await sbx.exec("chmod 0 " + work)
        print("left" if os.path.lexists(work) else "removed")

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_an_unprivileged_callers_close_removes_locked_trees(backend: str, victim: str) -> None:
    """A non-root caller's sandbox runs as the caller's uid, so a run can lock directories
    against the caller (chmod 000, 0500, the work dir itself): close() unlocks them through
    descriptors and removes everything."""
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    # The caller's own directory: a removal that followed the run's links could empty it.
    for path in (victim, f"{victim}/keep", f"{victim}/sub", f"{victim}/sub/keep"):
        os.chown(path, NOBODY, NOBODY)
    out = run_as(
        NOBODY,
        [
            python,
            "-c",
            UNPRIVILEGED_CLOSE,
            backend,
            MESSY_TREE.replace("DEPTH", "1500").replace("VICTIM", repr(victim)),
        ],
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "removed\n"
    assert _intact(victim)


# -- a tree changed while it is removed ---------------------------------------------------


SWAPPER = textwrap.dedent(
    """
    import os, sys
    tree, victim = sys.argv[1], sys.argv[2]
    i = 0
    while True:
        i += 1
        base = os.path.join(tree, "d%d" % (i % 50), "s%d" % i)
        try:
            os.makedirs(os.path.join(base, "x", "y"))
            os.rename(base, base + ".moved")
            os.symlink(victim, base)
            os.rename(base + ".moved", os.path.join(tree, "n%d" % i))
        except OSError:
            pass
    """
)


@pytest.mark.skipif(os.getuid() != 0, reason="runs the writer as uid 65534: needs root")
def test_removal_never_follows_a_tree_changed_under_it(victim: str) -> None:
    """The walk behind close() and the venv's clean-up, against a live sandbox (uid 65534)
    that keeps swapping directories of the tree for links to a root-only host directory
    and adding new ones: the host directory is untouched, and one walk empties the tree
    (each directory is made root's before it is read, so the writer cannot keep up)."""
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version readable by an unprivileged user")
    tree = tempfile.mkdtemp(prefix="union-sbx-tree-")
    os.chmod(victim, 0o700)
    for i in range(50):
        os.makedirs(os.path.join(tree, f"d{i}", "a", "b"))
    for root, dirs, _ in os.walk(tree):
        for name in [".", *dirs]:
            os.chown(os.path.join(root, name), NOBODY, NOBODY)
    writer = subprocess.Popen(
        [python, "-c", SWAPPER, tree, victim], user=NOBODY, group=NOBODY, extra_groups=[]
    )
    fd = os.open(tree, rmtree.DIR_FLAGS)
    try:
        # The walk starts only once the writer has swapped at least once (its "n<i>" entries
        # appear after a swap): a fixed sleep let a slow start (a loaded machine) or a writer
        # that died at once leave a static tree, and the test passed without any race.
        deadline = time.monotonic() + 60
        while not any(name.startswith("n") for name in os.listdir(tree)):
            assert writer.poll() is None, f"the writer exited ({writer.returncode})"
            assert time.monotonic() < deadline, "the writer never swapped a directory"
            time.sleep(0.01)
        assert rmtree.clear_dir(fd) == []
        assert writer.poll() is None, "the writer was not running throughout the walk"
        assert os.listdir(tree) == []
    finally:
        writer.kill()
        writer.wait()
        os.close(fd)
        shutil.rmtree(tree)
    assert _intact(victim)
    assert os.stat(victim).st_uid == 0


def test_removal_reports_what_it_cannot_remove_and_removes_the_rest() -> None:
    """A mount point inside the tree is neither entered nor removed; everything else goes,
    and the error names it."""
    if os.getuid() != 0:
        pytest.skip("mounts a tmpfs: needs root")
    tree = tempfile.mkdtemp(prefix="union-sbx-tree-")
    os.makedirs(os.path.join(tree, "a", "mnt"))
    os.makedirs(os.path.join(tree, "b", "c"))
    mnt = os.path.join(tree, "a", "mnt")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mnt], check=True)
    try:
        Path(mnt, "inside").write_text("on another filesystem")
        fd = os.open(tree, rmtree.DIR_FLAGS)
        try:
            left = rmtree.clear_dir(fd)
        finally:
            os.close(fd)
        assert left == ["a/mnt: a mount point (not entered)"]
        assert Path(mnt, "inside").read_text() == "on another filesystem"
        assert sorted(os.listdir(tree)) == ["a"]
        assert "could not remove everything under" in str(rmtree.removal_error(tree, left))
    finally:
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(tree)
