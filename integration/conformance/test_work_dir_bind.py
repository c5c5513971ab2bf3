"""A pinned work dir is what the host opened, not whatever is at its path later.

A pinned ``host_work_dir`` may lie where another live sandbox can write its parent: inside
another session's work dir, or a ``read_write_paths`` entry (over the remote transport: a
server's ``--work-dir`` inside another server's). The host opens the work dir once, when the
session opens, and holds it; the sandbox bound it, and granted it in Landlock, by its path,
when the supervisor (``userns``) or bwrap started a moment later. Session A's run watches
the path, and as soon as session B's host has opened it (B's venv appears in it) renames it
away and puts a symlink to a victim directory in its place: a 0777 host directory outside
every grant. B's runs then wrote into the victim. Now the work dir is bound as the
directory the host holds (bwrap ``--bind-fd``; the userns supervisor checks its device and
inode before binding or granting it, and fails the session if it changed), so B either
works in its real directory or refuses to start, and the victim is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

BAIT = "union-conformance"

#: Session A's run: ``SUB`` is session B's pinned work dir, ``VICTIM`` the directory to
#: redirect it to.
RACER = r"""
sub, victim = os.environ["SUB"], os.environ["VICTIM"]
print("READY", flush=True)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        if os.listdir(sub):  # B's host is building its venv in it: it holds it open now
            break
    except OSError:
        pass
else:
    verdict(False, "B's work dir never appeared", swapped=False)
os.rename(sub, sub + "-real")
os.symlink(victim, sub)
verdict(False, "swapped", swapped=True)
"""


@pytest.fixture
def victim() -> Iterator[str]:
    """A host directory outside every grant that the sandbox uid could write by mode."""
    path = os.path.join("/var/tmp", f"{BAIT}-{secrets.token_hex(6)}")
    os.mkdir(path)
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_pinned_work_dir_swapped_before_the_bind(
    open_sandbox: Any, probe: Any, victim: str
) -> None:
    async with open_sandbox() as a:
        sub = os.path.join(await probe.work_dir(a), f"{BAIT}-pinned_{secrets.token_hex(4)}")
        racer = await a.run(
            probe.prelude + RACER,
            script_type="python",
            env={"SUB": sub, "VICTIM": victim},
            timeout_s=120,
        )
        try:
            assert racer.stdout is not None
            assert (await racer.stdout.readline()).strip() == b"READY"
            outcome = await _session_on(open_sandbox, sub)
            swapped = (await racer.stdout.readline()).decode()
        finally:
            with contextlib.suppress(Exception):
                await racer.kill()
            await racer.wait()
        # A's work dir, B's real one and the link are A's: removed with A.
    # The race must have been run: a racer that never saw B's dir (and so never swapped it)
    # leaves the victim untouched whatever the host does.
    reported = json.loads(swapped[len("RESULT ") :]) if swapped.startswith("RESULT ") else {}
    assert reported.get("swapped") is True, f"the racer never swapped: {swapped.strip()!r}"
    planted = sorted(os.listdir(victim))
    probe.verdict(
        "pinned work dir swapped for a symlink after the host opened it, before the bind",
        "B works in the dir the host opened, or refuses to start; the victim is untouched",
        let_through=bool(planted),
        detail=(f"B wrote into the victim: {planted}; " if planted else "victim untouched; ")
        + f"B: {outcome}; racer: {swapped.strip() or 'no verdict'}",
    )


async def _session_on(open_sandbox: Any, pinned: str) -> str:
    """Open session B on ``pinned``, write a file in its work dir, and say what happened."""
    try:
        async with open_sandbox(host_work_dir=pinned) as b:
            result = await b.exec("echo planted > union-conformance-marker; pwd -P", timeout_s=30)
            return (
                f"exit {result.returncode}, in {result.stdout.strip()!r} {result.stderr[-200:]!r}"
            )
    except Exception as exc:  # refusing to start is the safe outcome
        return f"refused: {type(exc).__name__}: {str(exc)[:300]}"


#: Session A's run: put a symlink to ``VICTIM`` at ``SUB`` (session B's pinned path).
PLANT = r"""
os.symlink(os.environ["VICTIM"], os.environ["SUB"])
verdict(False, "planted")
"""


async def test_pinned_work_dir_planted_as_a_symlink(
    open_sandbox: Any, probe: Any, victim: str
) -> None:
    """The other form: the symlink is there before session B's host opens the path. The
    host used to follow it, take the target as B's work dir and, as root, chown it to the
    sandbox uid (any directory but the system roots ``check_work_dir`` refuses); now a
    symlink at the pinned name is refused."""
    os.chmod(victim, 0o700)  # root's (or the caller's) own: the sandbox uid may not enter it
    async with open_sandbox() as a:
        sub = os.path.join(await probe.work_dir(a), f"{BAIT}-pinned_{secrets.token_hex(4)}")
        await probe.run_py(a, PLANT, env={"SUB": sub, "VICTIM": victim})
        outcome = await _session_on(open_sandbox, sub)
    st = os.stat(victim)
    planted = sorted(os.listdir(victim))
    taken = (st.st_uid, st.st_mode & 0o777) != (os.geteuid(), 0o700)
    probe.verdict(
        "pinned work dir planted as a symlink (to a 0700 dir) before the host opened it",
        "B refuses the symlink; the victim keeps its owner and mode",
        let_through=taken or bool(planted),
        detail=(f"victim now uid {st.st_uid} mode {st.st_mode & 0o777:o}; " if taken else "")
        + (f"B wrote into it: {planted}; " if planted else "")
        + f"B: {outcome}",
        unisolated="held",
    )
