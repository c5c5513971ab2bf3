"""Host files' metadata, outside every grant and inside read-only ones.

Landlock (ABI 7) mediates opening, creating, removing, renaming and linking files, truncating
them and device ioctls; it does not mediate changing a file's metadata. ``chmod``, ``chown``,
``utimensat``, ``setxattr`` (POSIX ACLs are xattrs) and ``file_setattr`` (Linux 6.17) on a
path ask the kernel for nothing but ownership, so with ``userns`` (whose runs see the host's
tree) a run could change any host file its uid owns, wherever it lies: as root, files of uid
65534; as a non-root caller, every file of the caller's (``chmod 644 ~/.ssh/id_rsa``).

The bait is a directory and a ``0600`` secret in it, both owned by the sandbox's uid (65534
when the caller is root, else the caller), placed:

- outside every grant (``/var/tmp``);
- in a directory granted read-only (a control: read-only grants are read-only mounts);
- inside the default read-only grant ``/dev`` (which ``userns`` used to leave unbound: a
  non-root caller owns its terminal's ``/dev/pts/N``).

The hostile run tries every metadata change, and as controls the calls Landlock does
mediate (read, truncate, a hard link into the work dir, rename, mkfifo, a unix socket,
symlink, mkdir, unlink). The host compares the bait's mode, owner, times, xattrs, inode
flags, contents and entries before and after. A second probe runs the library as a non-root
caller whose "home" (``.ssh/id_rsa``) is the bait; a third has that caller's terminal
(``/dev/pts/N``, its own, in the default read-only grant ``/dev``) with a line typed into
it. Over the remote transport the bait is the server's host (it runs as root); the
read-only grant is its ``--extra-read-only``. On ``none`` every change gets through (the
positive control).

Still open, kept as a known hole: an inotify watch on a host directory outside the grants
(Landlock does not mediate ``inotify_add_watch`` either) shows the names of files used there.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from union.sandbox.core.testing_caller import caller_env, system_python

pytestmark = pytest.mark.anyio

BAIT = "union-conformance"
SECRET = b"UCMETA-not-for-the-sandbox\n"
#: The host uid a sandbox runs as: 65534 when the caller is root, else the caller's own.
SANDBOX_UID = 65534 if os.geteuid() == 0 else os.geteuid()
#: An unprivileged caller (the non-root probe): a uid no other test process runs as.
CALLER_UID = 4243
_FS_IOC_GETFLAGS = 0x80086601


@dataclasses.dataclass(frozen=True)
class Place:
    """Where the bait lies."""

    id: str
    parent: str
    grant: str
    """``none``: outside every grant; ``explicit``: the bait's directory is in
    ``read_only_paths``; ``default``: it lies in a default read-only grant."""


PLACES = (
    Place("outside-grants", "/var/tmp", "none"),
    Place("read-only-grant", "/var/tmp", "explicit"),
    Place("in-dev", "/dev", "default"),
)


#: The hostile run. ``TARGET``: the bait file; ``WORK``: the run's work dir.
TAMPER = r"""
target = os.environ["TARGET"]
where = os.path.dirname(target)
work = os.environ["WORK"]
tries = {}

def read():
    with open(target, "rb") as f:
        f.read()

# Metadata: Landlock does not mediate these.
tries["chmod"] = attempt(os.chmod, target, 0o644)
tries["chmod-dir"] = attempt(os.chmod, where, 0o777)
tries["chown"] = attempt(os.chown, target, os.getuid(), os.getgid())
tries["utime"] = attempt(os.utime, target, (946684800, 946684800))
tries["utime-dir"] = attempt(os.utime, where, (946684800, 946684800))
tries["touch"] = attempt(os.utime, target, None)
tries["setxattr"] = attempt(os.setxattr, target, "user.union", b"1")
tries["setxattr-dir"] = attempt(os.setxattr, where, "user.union", b"1")
# A POSIX ACL (user::rw-, group::r--, other::r--): setfacl's xattr.
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 6), (4, 4), (0x20, 4))
)
tries["setfacl"] = attempt(os.setxattr, target, "system.posix_acl_access", ACL)

def file_setattr():
    # file_getattr (468) / file_setattr (469), Linux 6.17: an inode's flags by path.
    attr = ctypes.create_string_buffer(24)
    if libc.syscall(468, -100, target.encode(), attr, 24, 0) < 0:
        raise OSError(ctypes.get_errno(), "file_getattr")
    xflags = struct.unpack_from("<Q", attr, 0)[0]
    struct.pack_into("<Q", attr, 0, xflags | 0x80)  # FS_XFLAG_NODUMP
    if libc.syscall(469, -100, target.encode(), attr, 24, 0) < 0:
        raise OSError(ctypes.get_errno(), "file_setattr")

tries["file_setattr"] = attempt(file_setattr)

def opath_chmod():
    # Landlock does not mediate O_PATH opens either: the change through the descriptor.
    fd = os.open(target, os.O_PATH)
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o640)
    finally:
        os.close(fd)

tries["chmod-via-o-path"] = attempt(opath_chmod)

# Controls: Landlock mediates these (and a read-only mount refuses the writes).
tries["read"] = attempt(read)
tries["truncate"] = attempt(os.truncate, target, 0)
tries["link-into-work-dir"] = attempt(os.link, target, os.path.join(work, "linked"))
tries["rename"] = attempt(os.rename, target, target + ".moved")
tries["mkfifo"] = attempt(os.mkfifo, os.path.join(where, "fifo"))

def bind():
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.join(where, "sock"))
    finally:
        sock.close()

tries["bind-unix-socket"] = attempt(bind)
tries["symlink"] = attempt(os.symlink, "/", os.path.join(where, "link"))
tries["mkdir"] = attempt(os.mkdir, os.path.join(where, "newdir"))
tries["unlink"] = attempt(os.unlink, target)
linked = read_text(os.path.join(work, "linked"))
verdict(False, "", tries=tries, linked=linked)
"""


def _fs_flags(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))
        return int(struct.unpack("<l", buf[:4])[0])
    except OSError:
        return None
    finally:
        os.close(fd)


def _state(directory: str) -> dict[str, Any]:
    """Everything a run could change about ``directory`` and its entries (not atime)."""
    seen: dict[str, Any] = {}
    for name in [".", *sorted(os.listdir(directory))]:
        path = os.path.join(directory, name)
        st = os.lstat(path)
        try:
            xattrs = {x: os.getxattr(path, x, follow_symlinks=False) for x in os.listxattr(path)}
        except OSError:
            xattrs = {}
        data = b""
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                data = f.read()
        seen[name] = {
            "mode": oct(st.st_mode),
            "owner": (st.st_uid, st.st_gid),
            "times": (st.st_mtime_ns, st.st_ctime_ns),
            "xattrs": xattrs,
            "flags": _fs_flags(path),
            "data": data,
        }
    return seen


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changed = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            changed.append(f"{name}: removed")
        elif name not in before:
            changed.append(f"{name}: created")
        else:
            changed += [
                f"{name}: {key}" for key in before[name] if before[name][key] != after[name][key]
            ]
    return changed


def _make_bait(directory: str, uid: int) -> str:
    """``directory`` (0700) with a 0600 secret in it, both ``uid``'s; returns the file."""
    os.mkdir(directory, 0o700)
    path = os.path.join(directory, "secret")
    with open(path, "wb") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    for p in (directory, path):
        os.chown(p, uid, uid)
    return path


@pytest.fixture
def bait_tops() -> Iterator[list[str]]:
    """Directories to remove after the probe (filled by it)."""
    made: list[str] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _judge(readable: bool, tries: dict[str, str], linked: str, changed: list[str]) -> bool:
    """Whether the run got anything: a change on the host, the secret through a link, or
    (outside the grants, where it is not ``readable``) the secret read."""
    read_it = not readable and tries.get("read") == "ok"
    return bool(changed) or SECRET.decode() in linked or read_it


def _detail(tries: dict[str, str], changed: list[str]) -> str:
    got = sorted(name for name, outcome in tries.items() if outcome == "ok")
    return (
        (f"changed on the host: {changed}; " if changed else "unchanged; ")
        + (f"succeeded: {got}; " if got else "")
        + ", ".join(f"{k}={v}" for k, v in tries.items() if v != "ok")
    )


@pytest.mark.parametrize("place", PLACES, ids=[p.id for p in PLACES])
async def test_metadata_of_host_files(
    place: Place, open_sandbox: Any, probe: Any, bait_tops: list[str]
) -> None:
    if place.parent == "/dev" and os.geteuid() != 0:
        pytest.skip("plants bait in /dev: run the suite as root")
    top = os.path.join(place.parent, f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(top, 0o755)
    bait_tops.append(top)
    target = _make_bait(os.path.join(top, "owned"), SANDBOX_UID)
    kwargs = {"read_only_paths": [os.path.dirname(target)]} if place.grant == "explicit" else {}
    before = _state(os.path.dirname(target))
    async with open_sandbox(**kwargs) as sbx:
        work = await probe.work_dir(sbx)
        result = await probe.run_py(sbx, TAMPER, env={"TARGET": target, "WORK": work})
    changed = _changes(before, _state(os.path.dirname(target)))
    tries = result["tries"]
    probe.verdict(
        f"metadata of a host file the sandbox uid owns ({place.id}): chmod, chown, utime, "
        "xattr, ACL, file_setattr",
        "EROFS (or not visible); nothing changed on the host",
        let_through=_judge(place.grant != "none", tries, result["linked"], changed),
        detail=_detail(tries, changed),
    )


#: Run by a non-root caller: a session of the backend (``sys.argv``: backend, the hostile
#: code, its ``TARGET``, the event loop) running the code; prints the run's stdout. A
#: ``TARGET`` of ``PTY`` is a terminal the caller opens, with a line typed into it.
_AS_CALLER = """
import os, sys, warnings
import anyio
warnings.simplefilter("ignore")
from union.sandbox.core.on_device import session

async def main():
    target = sys.argv[3]
    if target == "PTY":
        typing, terminal = os.openpty()
        os.write(typing, b"typed-secret\\n")
        target = os.ttyname(terminal)
    async with session(backend=sys.argv[1]) as sbx:
        result = await sbx.exec(
            sys.argv[2], script_type="python", timeout_s=60,
            env={"TARGET": target, "WORK": sbx.work_dir},
        )
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)

anyio.run(main, backend=sys.argv[4])
"""


async def _as_caller(backend: str, code: str, target: str, loop: str, home: str) -> Any:
    """Run ``code`` in a session of ``backend`` opened by :data:`CALLER_UID`; its verdict."""
    if os.geteuid() != 0:
        pytest.skip("starts the library as another user: run the suite as root")
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version for an unprivileged user")
    with anyio.fail_after(180):
        out = await anyio.run_process(
            [python, "-c", _AS_CALLER, backend, code, target, loop],
            user=CALLER_UID,
            group=CALLER_UID,
            extra_groups=[],
            env=caller_env(home),
            cwd="/tmp",
            check=False,
        )
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    reported = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert reported, f"exit {out.returncode}\nstdout: {stdout[-2000:]}\n{stderr[-3000:]}"
    return json.loads(reported[-1][len("RESULT ") :])


async def test_non_root_callers_own_files(
    target: Any, probe: Any, anyio_backend: str, bait_tops: list[str]
) -> None:
    """A non-root caller's sandbox runs as the caller's uid: every file of the caller's,
    anywhere on the host, is the sandbox uid's. Its ``~/.ssh/id_rsa`` must keep its mode."""
    top = os.path.join("/var/tmp", f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(top, 0o755)
    bait_tops.append(top)
    home = os.path.join(top, "home")
    os.mkdir(home, 0o700)
    os.chown(home, CALLER_UID, CALLER_UID)
    key = _make_bait(os.path.join(home, ".ssh"), CALLER_UID)
    before = _state(os.path.dirname(key))
    result = await _as_caller(target.backend, probe.prelude + TAMPER, key, anyio_backend, home)
    changed = _changes(before, _state(os.path.dirname(key)))
    probe.verdict(
        "a non-root caller's own files (~/.ssh/id_rsa, outside every grant): chmod, chown, "
        "utime, xattr, ACL, file_setattr",
        "EROFS (or not visible); nothing changed on the host",
        let_through=_judge(False, result["tries"], result["linked"], changed),
        detail=_detail(result["tries"], changed),
    )


#: ``TARGET``: the caller's terminal, with a line typed into it.
TERMINAL = r"""
tty = os.environ["TARGET"]
tries, got = {}, b""
try:
    fd = os.open(tty, os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = os.read(fd, 64)
    finally:
        os.close(fd)
    tries["read"] = "ok"
except OSError as exc:
    tries["read"] = err(exc.errno)
tries["chmod"] = attempt(os.chmod, tty, 0o666)
tries["got"] = got.decode(errors="replace")
verdict(b"typed-secret" in got or tries["chmod"] == "ok", tries)
"""


async def test_non_root_callers_terminal(
    target: Any, probe: Any, anyio_backend: str, bait_tops: list[str]
) -> None:
    """A non-root caller owns its terminal (``/dev/pts/N``), inside the default read-only
    grant ``/dev``: a run must not read what is typed into it, nor change its mode."""
    home = os.path.join("/var/tmp", f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(home, 0o700)
    os.chown(home, CALLER_UID, CALLER_UID)
    bait_tops.append(home)
    result = await _as_caller(target.backend, probe.prelude + TERMINAL, "PTY", anyio_backend, home)
    probe.verdict(
        "a non-root caller's terminal (/dev/pts/N, in the default read-only /dev): read, chmod",
        "not visible; nothing typed read",
        let_through=result["let_through"],
        detail=result["detail"],
    )


WATCH_HOLE = (
    "HOLE (low, information): in the userns backend a run can put an inotify watch on any "
    "host directory its uid may read by mode, outside every grant (Landlock does not "
    "mediate inotify_add_watch), and learn the names of files opened, created and removed "
    "there as it happens (as a non-root caller: anywhere in the caller's home). Layer: "
    "userns filesystem view, as for stat(2). Fix: the fresh-root construction proposed for "
    "unix sockets (paths outside the grants then do not exist)."
)

#: ``TARGET``: a host directory outside the grants. Prints READY once watching, then reports
#: the names of the events that came within 10 s.
WATCH = r"""
import select
IN_OPEN, IN_CREATE = 0x20, 0x100
fd = libc.inotify_init1(0)
wd = libc.inotify_add_watch(fd, os.environ["TARGET"].encode(), IN_OPEN | IN_CREATE)
print("READY", flush=True)
if wd < 0:
    verdict(False, "inotify_add_watch: " + err(ctypes.get_errno()))
names = []
deadline = time.monotonic() + 10
while not names and time.monotonic() < deadline:
    if select.select([fd], [], [], 0.2)[0]:
        buf = os.read(fd, 4096)
        off = 0
        while off < len(buf):
            _wd, _mask, _cookie, n = struct.unpack_from("iIII", buf, off)
            names.append(buf[off + 16 : off + 16 + n].rstrip(b"\0").decode())
            off += 16 + n
verdict(bool(names), "saw: %s" % (names or "nothing"))
"""


@pytest.mark.hole(**dict.fromkeys(["userns", "remote/userns"], WATCH_HOLE))
async def test_watch_outside_grants(sandbox: Any, probe: Any, bait_tops: list[str]) -> None:
    top = os.path.join("/var/tmp", f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(top, 0o755)
    bait_tops.append(top)
    proc = await sandbox.run(
        probe.prelude + WATCH, script_type="python", env={"TARGET": top}, timeout_s=30
    )
    assert proc.stdout is not None
    with anyio.fail_after(20):
        assert (await proc.stdout.readline()).strip() == b"READY"
    secret_name = f"{BAIT}-name-{secrets.token_hex(4)}"
    with open(os.path.join(top, secret_name), "w"):  # noqa: ASYNC230 (host bait, instant)
        pass
    out = await proc.stdout.read()
    await proc.wait()
    line = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[-1][len("RESULT ") :]) if line else {"detail": "no verdict"}
    probe.verdict(
        "inotify watch on a host directory outside the grants (/var/tmp/<dir>: file names)",
        "ENOENT / EACCES",
        let_through=secret_name in result["detail"],
        detail=result["detail"].replace(secret_name, "<secret name>"),
    )


#: The session's own ``/dev``: a change to it would greet every later run of the session.
SESSION_DEV = r"""
tries = {
    "chmod": attempt(os.chmod, "/dev", 0o700),
    "utime": attempt(os.utime, "/dev", (946684800, 946684800)),
    "setxattr": attempt(os.setxattr, "/dev", "user.union", b"1"),
}
verdict(any(v == "ok" for v in tries.values()), tries)
"""


async def test_non_root_callers_session_dev(
    target: Any, probe: Any, anyio_backend: str, bait_tops: list[str]
) -> None:
    """bubblewrap's ``/dev`` is a tmpfs of the session, owned by the sandbox's uid when the
    caller is not root: a run could ``chmod 000 /dev`` and every later run of the session
    (every client of a server) would have no ``/dev/null``. It is read-only, as userns's."""
    home = os.path.join("/var/tmp", f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(home, 0o700)
    os.chown(home, CALLER_UID, CALLER_UID)
    bait_tops.append(home)
    code = probe.prelude + SESSION_DEV
    result = await _as_caller(target.backend, code, "/dev", anyio_backend, home)
    probe.verdict(
        "a non-root caller's session /dev: chmod, utime, xattr (seen by every later run)",
        "EROFS / EPERM",
        let_through=result["let_through"],
        detail=result["detail"],
        unisolated="any",
    )
