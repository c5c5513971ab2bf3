"""Escapes through ``put_bytes`` / ``get_bytes``: the host side of the file API runs with the
caller's rights (root here), so a link planted by the sandbox must never redirect it.

The run plants ``link -> /etc/passwd``, ``dir -> /etc`` and a hard link to a root-only file;
the host then reads and writes through them. A racing run that swaps a directory and a
symlink to ``/etc`` while the host writes and reads checks that the checks are not
time-of-check/time-of-use; another races the file name itself. The refusals are host-side,
so they must hold on ``none`` too.

The host side also works in the work dir on its own: it builds the session venv there when a
session opens (a live sandbox of another session on the same pinned dir may be changing
it: remote, a second server on the same volume), and removes the temporary work dir at
``close()`` whatever a run left (3,000 nested directories, locked ones, links out). And the
work dir must be private to other local users. Paths outside the work dir (``..``, a sibling
sharing its name as a prefix, absolute paths, symlinks) are tried through every file call,
the server's four file RPCs included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture
def etc_secret() -> Iterator[dict[str, str]]:
    """A root-only file in /etc, which the host side (root) could read if redirected."""
    if os.geteuid() != 0:
        pytest.skip("plants a root-owned file in /etc: run the suite as root")
    token = f"UCFILE-{secrets.token_hex(8)}"
    path = f"/etc/union-conformance-{secrets.token_hex(4)}.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, token.encode())
    os.close(fd)
    try:
        yield {"token": token, "path": path}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


async def _outcome(op: Any) -> str:
    try:
        data = await op
    except PermissionError:
        return "PermissionError"
    except OSError as exc:
        return type(exc).__name__
    return f"done ({len(data) if isinstance(data, bytes) else data})"


async def test_symlinks_in_put_get(sandbox: Any, probe: Any, etc_secret: dict[str, str]) -> None:
    work = await probe.work_dir(sandbox)
    name = os.path.basename(etc_secret["path"])
    planted = f"union-conformance-{secrets.token_hex(4)}"
    before = _digest("/etc/passwd")
    await sandbox.exec(f"ln -s /etc/passwd {work}/link && ln -s /etc {work}/dir", check=True)
    outcomes = {
        "get link": await _outcome(sandbox.get_bytes(f"{work}/link")),
        "get dir/<secret>": await _outcome(sandbox.get_bytes(f"{work}/dir/{name}")),
        "put dir/x": await _outcome(sandbox.put_bytes(f"{work}/dir/{planted}", b"x")),
        "put link": await _outcome(sandbox.put_bytes(f"{work}/link", b"pwned\n")),
    }
    written = os.path.lexists(f"/etc/{planted}")
    if written:
        os.unlink(f"/etc/{planted}")
    changed = _digest("/etc/passwd") != before
    refused = all(v == "PermissionError" for v in outcomes.values())
    probe.verdict(
        "escape via symlinks in put_bytes/get_bytes",
        "PermissionError; nothing outside touched",
        let_through=not refused or written or changed,
        detail=", ".join(f"{k}: {v}" for k, v in outcomes.items())
        + ("; WROTE /etc" if written else "")
        + ("; /etc/passwd CHANGED" if changed else ""),
        unisolated="held",
    )


@asyncio_only
async def test_hardlink_in_get(sandbox: Any, probe: Any, etc_secret: dict[str, str]) -> None:
    work = await probe.work_dir(sandbox)
    result = await sandbox.exec(f"ln {etc_secret['path']} {work}/hard 2>&1; echo rc=$?")
    got = await _outcome(sandbox.get_bytes(f"{work}/hard"))
    leaked = False
    if got.startswith("done"):
        data = await sandbox.get_bytes(f"{work}/hard")
        leaked = etc_secret["token"].encode() in data
    probe.verdict(
        "hard link to a root-only host file, read with get_bytes",
        "link refused (EXDEV/EPERM)",
        let_through=leaked,
        detail=f"ln: {result.stdout.strip()[-40:]}; get: {got}",
    )


RACER = r"""
# {tag}
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("race")
os.symlink("/etc", "other")
print("ready", flush=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
while True:
    libc.renameat2(AT_FDCWD, b"race", AT_FDCWD, b"other", RENAME_EXCHANGE)
"""


@asyncio_only
async def test_symlink_race_in_put_get(
    sandbox: Any, probe: Any, etc_secret: dict[str, str], host: Any
) -> None:
    """A run swaps ``race`` between a directory and a symlink to /etc as fast as it can
    (renameat2 RENAME_EXCHANGE, so the name always exists) while the host writes and reads
    through it."""
    work = await probe.work_dir(sandbox)
    name = os.path.basename(etc_secret["path"])
    planted = f"union-conformance-{secrets.token_hex(4)}"
    tag = host.tag()
    racer = await sandbox.run(RACER.replace("{tag}", tag), script_type="python", timeout_s=60)
    assert racer.stdout is not None
    assert await racer.stdout.readline() == b"ready\n"
    counts = {"put ok": 0, "put refused": 0, "get refused": 0, "get other": 0}
    leaked = False
    try:
        with anyio.fail_after(30):
            for _ in range(300):
                try:
                    await sandbox.put_bytes(f"{work}/race/{planted}", b"x")
                    counts["put ok"] += 1
                except OSError:
                    counts["put refused"] += 1
                try:
                    data = await sandbox.get_bytes(f"{work}/race/{name}")
                    leaked = leaked or etc_secret["token"].encode() in data
                except PermissionError:
                    counts["get refused"] += 1
                except OSError:
                    counts["get other"] += 1
    finally:
        await racer.kill()
        # On ``none``, kill() does not reach the command (see the report): end it from here
        # so that wait() sees its stdout close.
        host.cleanup()
        with anyio.fail_after(30):
            await racer.wait()
        written = os.path.lexists(f"/etc/{planted}")
        if written:
            os.unlink(f"/etc/{planted}")
    probe.verdict(
        "symlink race (dir <-> symlink to /etc) during put/get",
        "never follows the link",
        let_through=leaked or written,
        detail=", ".join(f"{k} {v}" for k, v in counts.items())
        + ("; READ the secret" if leaked else "")
        + ("; WROTE /etc" if written else ""),
        unisolated="held",
    )


@pytest.fixture
def etc_bait() -> Iterator[dict[str, str]]:
    """A host file and a host directory a planted symlink could redirect writes to."""
    if os.geteuid() != 0:
        pytest.skip("plants root-owned bait in /etc: run the suite as root")
    base = f"/etc/union-conformance-{secrets.token_hex(4)}"
    os.mkdir(base + ".d", 0o755)
    with open(base + ".target", "w") as f:
        f.write("ORIGINAL\n")
    try:
        yield {"file": base + ".target", "dir": base + ".d"}
    finally:
        shutil.rmtree(base + ".d", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + ".target")


@asyncio_only
async def test_planted_session_venv(
    open_sandbox: Any, probe: Any, etc_bait: dict[str, str], tmp_path: Any
) -> None:
    """A run plants symlinks in ``.session-venv``; the next session on the same pinned
    ``host_work_dir`` must not write through them."""
    work = str(tmp_path / "pinned")
    async with open_sandbox(host_work_dir=work) as sbx:
        venv = f"{await probe.work_dir(sbx)}/.session-venv"
        await sbx.exec(
            f"rm -rf {venv} && mkdir {venv} && ln -s {etc_bait['file']} {venv}/pyvenv.cfg "
            f"&& ln -s {etc_bait['dir']} {venv}/lib",
            check=True,
        )
    async with open_sandbox(host_work_dir=work) as sbx:
        await sbx.exec("true")
    clobbered = _read(etc_bait["file"]) != "ORIGINAL\n"
    created = sorted(
        os.path.relpath(os.path.join(root, name), etc_bait["dir"])
        for root, dirs, files in os.walk(etc_bait["dir"])
        for name in dirs + files
    )
    probe.verdict(
        "poison .session-venv for the next open of a pinned host_work_dir",
        "host writes nothing outside the work dir",
        let_through=clobbered or bool(created),
        detail=("/etc file OVERWRITTEN" if clobbered else "/etc file intact")
        + (f"; created in /etc: {', '.join(created)[:80]}" if created else ""),
        unisolated="held",
    )


# ---------------------------------------------------------------------------------------
# A pinned work dir shared with a live sandbox, the final path component, paths outside
# ---------------------------------------------------------------------------------------


@pytest.fixture
def public_dir() -> Iterator[str]:
    """A fresh 0755 directory under /tmp (every uid may traverse it, unlike ``tmp_path``) to
    hold pinned work dirs."""
    path = tempfile.mkdtemp(prefix="union-conformance-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        _rm_rf(path)


def _rm_rf(path: str) -> None:
    """Remove a tree a probe left, however deep (GNU rm copes with any depth)."""
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


@pytest.fixture
def victim() -> Iterator[dict[str, Any]]:
    """A root-owned 0700 host directory holding a 0600 secret: what a host side that follows
    a planted link would chown, chmod, write into or empty."""
    if os.geteuid() != 0:
        pytest.skip("plants a root-owned victim directory: run the suite as root")
    path = tempfile.mkdtemp(prefix="union-conformance-victim-", dir="/var/tmp")
    os.chmod(path, 0o700)
    secret = os.path.join(path, "secret")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(8).encode())
    os.close(fd)
    os.mkdir(os.path.join(path, "sub"), 0o700)
    try:
        yield {"path": path, "state": _tree_state(path)}
    finally:
        _rm_rf(path)


def _tree_state(path: str) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry of ``path`` (itself included): (mode, uid, gid, content of files)."""
    state = {}
    for root, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            full = os.path.normpath(os.path.join(root, name))
            st = os.lstat(full)
            data = b""
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    data = f.read()
            state[os.path.relpath(full, path)] = (st.st_mode, st.st_uid, st.st_gid, data)
    return state


def _state_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    changed = [
        name for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)
    ]
    return ", ".join(changed)[:120]


VENV_RACER = r"""
# {tag}
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE, IN_MOVED_TO, IN_ISDIR = 0x100, 0x80, 0x40000000
MARKER = ".session-venv/.union-sandbox-session-venv"


def unmark():
    try:
        os.unlink(MARKER)
    except OSError:
        pass


unmark()  # so that the next open of this work dir rebuilds the venv
fd = libc.inotify_init1(0)
assert fd >= 0 and libc.inotify_add_watch(fd, b".", IN_CREATE | IN_MOVED_TO) >= 0
print("ready", flush=True)
while True:
    buf = os.read(fd, 65536)
    off = 0
    while off < len(buf):
        wd, mask, cookie, n = struct.unpack_from("iIII", buf, off)
        name = buf[off + 16 : off + 16 + n].rstrip(b"\0").decode()
        off += 16 + n
        if mask & IN_MOVED_TO and name == ".session-venv":
            unmark()
        elif mask & IN_CREATE and mask & IN_ISDIR and not name.startswith("moved-"):
            # A directory the host just made in the work dir: put a link to the victim
            # in its place.
            try:
                os.rename(name, "moved-" + name)
                os.symlink({victim!r}, name)
                print("swapped", flush=True)
            except OSError:
                pass
"""


@asyncio_only
async def test_pinned_dir_shared_with_a_live_sandbox(
    open_sandbox: Any, probe: Any, victim: dict[str, Any], public_dir: str, host: Any
) -> None:
    """Two sessions on one pinned ``host_work_dir`` (remote: two servers on one volume). A
    run in the first replaces every directory the host creates in the work dir with a link
    to a root-only victim, the moment inotify reports it, while the second session opens and
    rebuilds the session venv there. The host must not follow: nothing under the victim may
    be written, chowned, chmodded or removed."""
    work = os.path.join(public_dir, "pinned")
    rounds = 4 if probe.target.transport == "remote" else 12
    opened, failed = 0, []
    changed = ""
    async with open_sandbox(host_work_dir=work) as first:
        racer = await first.run(
            VENV_RACER.replace("{tag}", host.tag()).replace("{victim!r}", repr(victim["path"])),
            script_type="python",
            timeout_s=300,
        )
        assert racer.stdout is not None
        with anyio.fail_after(30):
            assert await racer.stdout.readline() == b"ready\n"
        try:
            for _ in range(rounds):
                try:
                    async with open_sandbox(host_work_dir=work) as second:
                        await second.exec("true")
                    opened += 1
                except Exception as exc:
                    failed.append(f"{type(exc).__name__}: {str(exc)[-300:]}")
                changed = _state_diff(victim["state"], _tree_state(victim["path"]))
                if changed:
                    break
        finally:
            await racer.kill()
            host.cleanup()
        with anyio.fail_after(30):
            swaps = (await racer.stdout.read()).count(b"swapped\n")
    # The race must have been run: a racer that never swapped a directory the host made
    # leaves the victim untouched whatever the host does.
    assert swaps or changed, "the racer never swapped a directory the host made"
    probe.verdict(
        "pinned work dir shared with a live sandbox: host follows a swapped-in link",
        "victim dir untouched",
        let_through=bool(changed),
        detail=(f"victim CHANGED: {changed}" if changed else "victim intact")
        + f"; second session opened {opened}/{rounds}; racer swapped {swaps} dirs"
        + (f"; failed: {failed[0]}" if failed else ""),
        unisolated="held",
    )


DEEP_TREE = r"""
import os
work = os.getcwd()
os.mkdir("wide")
for i in range(300):
    open("wide/f%d" % i, "w").close()
os.mkdir("deep")
os.chdir("deep")
for i in range({depth}):
    os.mkdir("d")
    os.chdir("d")
open("leaf", "w").write("x")
os.symlink({victim!r}, "victim-link")
os.chdir(work)
os.makedirs("locked/inner/deeper")
open("locked/inner/f", "w").close()
os.chmod("locked/inner/deeper", 0)
os.chmod("locked/inner", 0)
os.chmod("locked", 0o500)
print("made", flush=True)
"""


async def test_deep_tree_at_close(open_sandbox: Any, probe: Any, victim: dict[str, Any]) -> None:
    """A run leaves 3,000 nested directories (deeper than Python's recursion limit and, for
    the duration of close(), deeper than RLIMIT_NOFILE), directories without permissions
    and a link to a root-only host directory at the bottom; close() must remove the
    temporary work dir whole, without raising and without following the link."""
    depth = 3000
    raised = ""
    work = ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        async with open_sandbox() as sbx:
            work = sbx.work_dir
            result = await sbx.exec(
                DEEP_TREE.replace("{depth}", str(depth)).replace(
                    "{victim!r}", repr(victim["path"])
                ),
                script_type="python",
                timeout_s=120,
            )
            assert result.stdout == "made\n", result
            # Fewer descriptors than the tree is deep, while close() removes it.
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 200, hard)
            )
    except Exception as exc:
        raised = f"{type(exc).__name__}: {str(exc)[:60]}"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    left = bool(work) and os.path.lexists(work)
    if left:
        _rm_rf(work)
    followed = _state_diff(victim["state"], _tree_state(victim["path"]))
    probe.verdict(
        "deep tree (3,000 levels, chmod 000 dirs) left for close()",
        "close() removes the work dir whole",
        let_through=bool(raised) or left or bool(followed),
        detail=(f"close raised {raised}" if raised else "close returned")
        + ("; work dir LEFT on disk" if left else "; work dir removed")
        + (f"; FOLLOWED a link, victim changed: {followed}" if followed else ""),
        unisolated="held",
    )


OTHER_USER = 4242


def _succeeds_as(uid: int, argv: list[str]) -> bool:
    """Whether ``argv`` run as host ``uid`` (no groups) exits 0."""
    out = subprocess.run(
        argv, user=uid, group=uid, extra_groups=[], capture_output=True, check=False
    )
    return out.returncode == 0


async def test_pinned_work_dir_is_private(open_sandbox: Any, probe: Any, public_dir: str) -> None:
    """Another local user must not read what a session keeps in its pinned work dir (files
    put with the default mode 0644, files a run made, the listing)."""
    if os.geteuid() != 0:
        pytest.skip("reads as another uid: run the suite as root")
    work = os.path.join(public_dir, "pinned")
    token = f"UCPRIV-{secrets.token_hex(8)}"
    async with open_sandbox(host_work_dir=work) as sbx:
        await sbx.put_bytes(f"{work}/put.txt", token.encode())
        await sbx.exec(f"echo {token} > made.txt", check=True)
        mode = stat.S_IMODE(os.stat(work).st_mode)
        reads = {
            what: _succeeds_as(OTHER_USER, argv)
            for what, argv in (
                ("put file", ["cat", f"{work}/put.txt"]),
                ("run's file", ["cat", f"{work}/made.txt"]),
                ("listing", ["ls", work]),
            )
        }
    leaked = [what for what, ok in reads.items() if ok]
    probe.verdict(
        "another local user reads a pinned work dir",
        "work dir private (0700)",
        let_through=bool(leaked),
        detail=f"work dir mode {mode:o}; "
        + (f"uid {OTHER_USER} READ: {', '.join(leaked)}" if leaked else "all refused"),
        unisolated="held",
    )


FINAL_RACER = r"""
# {tag}
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
with open("racefile", "w") as f:
    f.write("harmless")
os.symlink({secret!r}, "racelink")
print("ready", flush=True)
while True:
    libc.renameat2(-100, b"racefile", -100, b"racelink", 2)  # RENAME_EXCHANGE
"""


@asyncio_only
async def test_symlink_race_on_the_final_name(
    sandbox: Any, probe: Any, etc_secret: dict[str, str], host: Any
) -> None:
    """A run swaps the *file name* itself between a regular file and a symlink to a
    root-only host file, as fast as it can, while the host reads it: get_bytes must never
    return the host file (the leaf is opened with O_NOFOLLOW, not only checked)."""
    work = await probe.work_dir(sandbox)
    racer = await sandbox.run(
        FINAL_RACER.replace("{tag}", host.tag()).replace("{secret!r}", repr(etc_secret["path"])),
        script_type="python",
        timeout_s=120,
    )
    assert racer.stdout is not None
    counts = {"harmless": 0, "refused": 0, "other": 0}
    leaked = 0
    try:
        with anyio.fail_after(30):
            assert await racer.stdout.readline() == b"ready\n"
        # Until both names were seen many times (the racer shares two cores with us), and
        # long enough that a leaf opened without O_NOFOLLOW would be caught (it leaked in
        # about one call in five).
        deadline = anyio.current_time() + 30
        for calls in range(3000):
            if calls >= 300 and min(counts["harmless"], counts["refused"]) >= 50:
                break
            if anyio.current_time() > deadline:
                break
            if calls % 100 == 99 and not counts["refused"]:
                await anyio.sleep(0.01)  # let the racer have a core
            try:
                data = await sandbox.get_bytes(f"{work}/racefile")
            except PermissionError:
                counts["refused"] += 1
                continue
            except OSError:
                counts["other"] += 1
                continue
            if etc_secret["token"].encode() in data:
                leaked += 1
                break
            counts["harmless" if data == b"harmless" else "other"] += 1
    finally:
        await racer.kill()
        host.cleanup()
    # The race must have been run: the host saw the link at least once.
    assert counts["refused"] or leaked, f"the racer never swapped the name in time: {counts}"
    probe.verdict(
        "symlink race on the final name during get_bytes",
        "never follows the link",
        let_through=bool(leaked),
        detail=", ".join(f"{k} {v}" for k, v in counts.items())
        + ("; READ the root-only file" if leaked else ""),
        unisolated="held",
    )


class _FileCalls:
    """Every way the file API reaches the host side: on-device ``put_bytes`` (bytes and
    streamed) and ``get_bytes``; remote ``PutBytes``, ``PutBytesStream``, ``GetBytes`` and
    ``GetBytesStream`` (the server is the host side)."""

    def __init__(self, sbx: Any, remote: bool) -> None:
        self.sbx = sbx
        self.remote = remote

    @staticmethod
    async def _chunks(data: bytes) -> Any:
        yield data

    def calls(self, path: str, data: bytes) -> dict[str, Any]:
        sbx = self.sbx
        calls: dict[str, Any] = {
            "put": lambda: sbx.put_bytes(path, data),
            "put-stream": lambda: sbx.put_bytes(path, self._chunks(data)),
            "get": lambda: sbx.get_bytes(path),
        }
        if self.remote:
            calls["get-unary"] = lambda: self._unary_get(path)
        return calls

    async def _unary_get(self, path: str) -> bytes:
        from union.sandbox.client import ConnectError, exception_from
        from union.sandbox.core.wire import messages as pb

        try:
            response = await self.sbx._transport.unary(
                "GetBytes", pb.GetBytesRequest(source_path=path), pb.GetBytesResponse
            )
        except ConnectError as error:
            raise exception_from(error) from None
        return bytes(response.data)


@pytest.fixture
def sibling_of(tmp_path: Any) -> Iterator[Any]:
    """``sibling_of(root)``: a host directory ``<root>-evil`` next to the session's root work
    dir (the name a prefix check without a separator accepts), holding a root-only bait."""
    made: list[str] = []

    def make(root: str) -> dict[str, str]:
        path = root.rstrip("/") + "-evil"
        os.mkdir(path, 0o700)
        made.append(path)
        token = f"UCSIB-{secrets.token_hex(8)}"
        fd = os.open(f"{path}/bait", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
        return {"path": path, "token": token}

    try:
        yield make
    finally:
        for path in made:
            _rm_rf(path)


@asyncio_only
async def test_paths_outside_the_work_dir(
    sandbox: Any, probe: Any, etc_secret: dict[str, str], sibling_of: Any
) -> None:
    """Every file call with a path outside the work dir: ``..``, a sibling sharing the work
    dir's name as a prefix (``/work-evil`` next to ``/work``), an absolute host path, a
    symlinked directory and a symlinked leaf. Each must be refused with ``PermissionError``
    naming why, and nothing outside may be read or written."""
    server = probe.server(sandbox)
    root = server.work_dir if server is not None else sandbox.work_dir
    work = await probe.work_dir(sandbox)
    sibling = sibling_of(root)
    before = _tree_state(sibling["path"])
    await sandbox.exec(
        f"ln -s {sibling['path']} {work}/sib-dir && ln -s {sibling['path']}/bait {work}/sib-leaf",
        check=True,
    )
    up = "/".join([".."] * (work.count("/") - root.count("/") + 1))
    cases = {
        "dotdot": (f"{work}/{up}/{os.path.basename(sibling['path'])}/bait", "not under"),
        "sibling-prefix": (f"{sibling['path']}/bait", "not under"),
        "absolute": (etc_secret["path"], "not under"),
        "symlinked-dir": (f"{work}/sib-dir/bait", "symlink"),
        "symlinked-leaf": (f"{work}/sib-leaf", "symlink"),
    }
    wrong: list[str] = []
    read = False
    for case, (path, reason) in cases.items():
        for call, op in _FileCalls(sandbox, server is not None).calls(path, b"pwned").items():
            try:
                data = await op()
            except PermissionError as exc:
                if reason not in str(exc):
                    wrong.append(f"{case}/{call}: PermissionError {str(exc)[:50]}")
                continue
            except Exception as exc:
                wrong.append(f"{case}/{call}: {type(exc).__name__} {str(exc)[:50]}")
                continue
            wrong.append(f"{case}/{call}: DONE")
            if isinstance(data, bytes) and (
                sibling["token"].encode() in data or etc_secret["token"].encode() in data
            ):
                read = True
    changed = _state_diff(before, _tree_state(sibling["path"]))
    probe.verdict(
        "paths outside the work dir (.., sibling prefix, absolute, symlinks) in every file call",
        "PermissionError naming why; nothing outside touched",
        let_through=bool(wrong) or read or bool(changed),
        detail=("; ".join(wrong)[:200] if wrong else "all refused")
        + ("; READ outside" if read else "")
        + (f"; sibling CHANGED: {changed}" if changed else ""),
        unisolated="held",
    )
