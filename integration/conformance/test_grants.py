"""Read-only grants stay read-only wherever they lie.

The bait is a directory the sandbox uid could write by file mode alone (0777, with a 0666
file in it), granted read-only. The hostile run then tries everything that changes it:
rewrite, truncate, append, create, rename, unlink, chmod, mkdir. The host compares the
directory before and after. The grant sits where a run's writable mounts or rights lie
above it, which is where Landlock alone is not enough (its rights add up along a path):

- under ``/tmp`` and ``/dev/shm`` (bound back beneath each run's fresh, writable scratch
  mounts), and under ``/var/tmp`` (a plain host directory) as a control;
- beneath a ``read_write_paths`` grant (also in ``/home``, which ``userns`` masks when the
  caller is root and binds grants back into) and beneath the work dir (the deeper grant
  decides);
- beneath ``/proc`` (each run's own procfs, writable where procfs allows): a read-only grant
  of ``/proc/sys`` must keep the run's IPC sysctls unchanged.

Read-only means read rights only, whatever the mounts say: a device node in a read-only
grant (``/dev/urandom``) can be read but takes no device ioctl (Landlock's ``IOCTL_DEV``,
ABI >= 5). This is also what tells Landlock's own read-only rules from the read-only mounts
in front of them (a read-only rule given write rights shows here and nowhere else).

Over the remote transport the grants are the server's ``--extra-read-only`` (and the work
dir its ``--work-dir``); ``read_write_paths`` has no remote form. On ``none`` every write
gets through (the positive control), except where the bait is the host's own kernel state.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

BAIT = "union-conformance"
ORIGINAL = b"original contents\n"


@dataclasses.dataclass(frozen=True)
class Grant:
    """Where the read-only bait lies, and how the session grants it."""

    id: str
    parent: str
    """Host directory the bait's own directory is made in."""
    layout: str = "plain"
    """``plain``: the bait granted read-only; ``under-rw``: a read-write grant above it;
    ``work-dir``: the session's work dir above it."""


GRANTS = (
    Grant("tmp", "/tmp"),
    Grant("dev-shm", "/dev/shm"),
    Grant("var-tmp", "/var/tmp"),
    Grant("under-read-write", "/var/tmp", "under-rw"),
    # As root, userns covers /home with an empty tmpfs and binds granted paths back on it.
    Grant("under-read-write-in-home", "/home", "under-rw"),
    Grant("under-work-dir", "/var/tmp", "work-dir"),
)


@pytest.fixture
def bait_root() -> Iterator[list[str]]:
    """Directories to remove after the probe (filled by it)."""
    made: list[str] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _make_bait(directory: str) -> str:
    os.makedirs(directory)
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "data")
    with open(path, "wb") as f:
        f.write(ORIGINAL)
    os.chmod(path, 0o666)
    return path


def _snapshot(directory: str) -> dict[str, tuple[int, bytes]]:
    """Every entry of ``directory``: (mode, contents or b"" for directories)."""
    seen = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        data = b""
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                data = f.read()
        seen[name] = (st.st_mode, data)
    return seen


TAMPER = """
target = os.environ["TARGET"]
where = os.path.dirname(target)
tries = {}

def rewrite():
    fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"tampered\\n")
    os.close(fd)

def append():
    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"appended\\n")
    os.close(fd)

tries["rewrite"] = attempt(rewrite)
tries["append"] = attempt(append)
tries["truncate"] = attempt(os.truncate, target, 0)
tries["create"] = attempt(lambda: os.close(os.open(os.path.join(where, "new"),
                                                  os.O_WRONLY | os.O_CREAT, 0o644)))
tries["mkdir"] = attempt(os.mkdir, os.path.join(where, "newdir"))
tries["chmod"] = attempt(os.chmod, target, 0o600)
tries["rename"] = attempt(os.rename, target, os.path.join(where, "moved"))
tries["unlink"] = attempt(os.unlink, target)
verdict(False, "", tries=tries)
"""


@pytest.mark.parametrize("grant", GRANTS, ids=[g.id for g in GRANTS])
async def test_read_only_grant_stays_read_only(
    grant: Grant, open_sandbox: Any, probe: Any, bait_root: list[str]
) -> None:
    if not os.path.isdir(grant.parent):
        pytest.skip(f"this host has no {grant.parent}")
    top = os.path.join(grant.parent, f"{BAIT}-{secrets.token_hex(6)}")
    bait_root.append(top)
    kwargs: dict[str, Any] = {}
    if grant.layout == "plain":
        bait_dir = os.path.join(top, "ro")
        kwargs["read_only_paths"] = [bait_dir]
    elif grant.layout == "under-rw":
        bait_dir = os.path.join(top, "rw", "ro")
        kwargs["read_write_paths"] = [os.path.join(top, "rw")]
        kwargs["read_only_paths"] = [bait_dir]
    else:
        bait_dir = os.path.join(top, "work", "ro")
        kwargs["host_work_dir"] = os.path.join(top, "work")
        kwargs["read_only_paths"] = [bait_dir]
    os.makedirs(top, mode=0o755)
    target = _make_bait(bait_dir)
    if grant.layout in ("under-rw", "work-dir"):
        os.chmod(os.path.dirname(bait_dir), 0o777)
    before = _snapshot(bait_dir)
    async with open_sandbox(**kwargs) as sbx:
        result = await probe.run_py(sbx, TAMPER, env={"TARGET": target})
    after = _snapshot(bait_dir)
    changed = sorted(
        name for name in set(before) | set(after) if before.get(name) != after.get(name)
    )
    probe.verdict(
        f"write beneath a read-only grant ({grant.id}): 0777 dir, 0666 file",
        "EROFS/EACCES; nothing changed on the host",
        let_through=bool(changed),
        detail=(f"changed on the host: {changed}; " if changed else "unchanged; ")
        + ", ".join(f"{k}={v}" for k, v in result["tries"].items()),
    )


PROC_SYSCTL = """
path = "/proc/sys/kernel/msgmni"
before = read_text(path).strip()
wanted = str(int(before) - 1)
def write():
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, wanted.encode())
    os.close(fd)
outcome = attempt(write)
after = read_text(path).strip()
verdict(after != before, dict(write=outcome, before=before, after=after))
"""


async def test_read_only_grant_beneath_proc(open_sandbox: Any, probe: Any) -> None:
    """A run may write parts of its own /proc (its IPC sysctls among them); granting
    ``/proc/sys`` read-only must make them read-only."""
    name = "write beneath a read-only grant (/proc/sys): the run's kernel.msgmni"
    if not probe.target.isolated:
        probe.not_run(name, "EROFS", "it would change this host's kernel.msgmni")
        return
    async with open_sandbox(read_only_paths=["/proc/sys"]) as sbx:
        result = await probe.run_py(sbx, PROC_SYSCTL)
    probe.verdict(name, "EROFS", let_through=result["let_through"], detail=result["detail"])


DEVICE_IOCTL = """
import fcntl
RNDGETENTCNT = 0x80045200  # a harmless, unprivileged ioctl of the random device
fd = os.open("/dev/urandom", os.O_RDONLY)
read = len(os.read(fd, 8))
outcome = attempt(fcntl.ioctl, fd, RNDGETENTCNT, bytes(4))
verdict(outcome == "ok", dict(read=read, ioctl=outcome))
"""


async def test_device_ioctl_beneath_read_only_grant(sandbox: Any, probe: Any) -> None:
    result = await probe.run_py(sandbox, DEVICE_IOCTL)
    probe.verdict(
        "device ioctl beneath a read-only grant (/dev/urandom RNDGETENTCNT)",
        "readable; ioctl EACCES",
        let_through=result["let_through"],
        detail=result["detail"],
    )
