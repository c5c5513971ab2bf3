"""Escapes through ``put_bytes`` / ``get_bytes``: the host side of the file API runs with the
caller's rights (root here), so a link planted by the sandbox must never redirect it.

The run plants ``link -> /etc/passwd``, ``dir -> /etc`` and a hard link to a root-only file;
the host then reads and writes through them. A racing run that swaps a directory and a
symlink to ``/etc`` while the host writes and reads checks that the checks are not
time-of-check/time-of-use. The refusals are host-side, so they must hold on ``none`` too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
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
