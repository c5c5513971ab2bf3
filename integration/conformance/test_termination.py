"""Timeout evasion: however a run ends, nothing it started survives on the host.

The hostile run starts ``setsid sleep``, ``nohup sleep``, a double fork ``(sleep &) &`` and a
daemon that ignores SIGTERM/SIGHUP/SIGINT and detaches itself (fork, setsid, fork), each
carrying a unique argument; then the run ends: by itself, by ``timeout_s``, by ``kill()``,
by the session's ``close()`` or by cancelling the caller's wait. Right after, the host's
``/proc`` must show none of them. ``kill``, ``close`` and ``cancel`` go through the event
loop, so they run under asyncio and trio.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from typing import Any

import anyio
import pytest

from union.sandbox.core.resources import Resources

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

DAEMON = (
    "import os, signal, sys, time\n"
    "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_IGN)\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    'open(sys.argv[2], "w").close()\n'
    "time.sleep(1000)\n"
)


def evasion_script(tag: str, ready: str, ending: str) -> str:
    quiet = ">/dev/null 2>&1 </dev/null"
    return f"""
setsid sleep {tag} {quiet} &
nohup sleep {tag} {quiet} &
( sleep {tag} {quiet} & ) &
python -c '{DAEMON}' {tag} {ready} {quiet} &
i=0
while [ ! -e {ready} ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
echo ready
exec >/dev/null 2>&1
{ending}
"""


EXPECTED = "no process left on the host"


def _verdict(probe: Any, how: str, leftovers: list[int], detail: str) -> None:
    probe.verdict(
        f"timeout evasion (setsid, nohup, double fork, daemon): {how}",
        EXPECTED,
        let_through=bool(leftovers),
        detail=(f"{len(leftovers)} left on the host" if leftovers else "none left") + detail,
    )


def _check_started(host: Any, tag: str) -> None:
    """The hostile processes must exist before the run ends, or the probe proves nothing:
    the shell, three sleeps and the daemon carry the tag."""
    running = len(host.pids(tag))
    assert running >= 5, f"the evasion set-up did not start (only {running} processes)"


def _cleanup_ready(path: str) -> None:
    # On ``none`` /tmp is the host's.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@asyncio_only
async def test_evasion_after_exit(sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    ready = f"/tmp/uc-ready-{tag}"
    with anyio.fail_after(60):
        result = await sandbox.exec(evasion_script(tag, ready, "exit 0"))
    leftovers = host.pids(tag)
    _cleanup_ready(ready)
    _verdict(probe, "run exits", leftovers, f"; rc {result.returncode}")


@asyncio_only
async def test_evasion_after_timeout(sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    ready = f"/tmp/uc-ready-{tag}"
    timeout = 1.5
    with anyio.fail_after(60):
        started = time.monotonic()
        proc = await sandbox.run(evasion_script(tag, ready, f"sleep {tag}"), timeout_s=timeout)
        assert proc.stdout is not None
        if await proc.stdout.readline() == b"ready\n":
            _check_started(host, tag)
        await proc.communicate()
        ended = time.monotonic()
    leftovers = host.pids(tag)
    _cleanup_ready(ready)
    # From the timer's expiry (the run was spawned when run() returned) to the end being
    # reported, which the sandbox sends only once the whole tree is gone.
    gone_ms = (ended - started - timeout) * 1e3
    if probe.target.isolated:
        probe.figure("timeout -> whole tree gone", f"{gone_ms:.0f} ms (upper bound)")
    _verdict(probe, "timeout_s", leftovers, f"; {proc.termination_reason}")


async def _ended_by(
    how: str, open_sandbox: Any, probe: Any, host: Any
) -> tuple[list[int], float, str]:
    tag = host.tag()
    ready = f"/tmp/uc-ready-{tag}"
    reason = ""
    with anyio.fail_after(60):
        async with open_sandbox() as sbx:
            proc = await sbx.run(evasion_script(tag, ready, f"sleep {tag}"))
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            assert line == b"ready\n", line
            _check_started(host, tag)
            start = time.monotonic()
            if how == "kill":
                await proc.kill()
                await proc.wait()
            elif how == "close":
                await sbx.close()
            else:
                with anyio.move_on_after(0.05):
                    await proc.wait()
                start += 0.05  # from the moment the wait was cancelled
            elapsed = time.monotonic() - start
            leftovers = host.pids(tag)
            # Whether they go at all (only where they should: ``none`` leaves them).
            gone = host.gone_within(tag, 5.0) if leftovers and probe.target.isolated else 0.0
            reason = proc.termination_reason or ""
    _cleanup_ready(ready)
    return leftovers, elapsed, reason + (" (still there 5 s later)" if gone is None else "")


@pytest.mark.parametrize(
    "how",
    [
        "kill",
        "close",
        "cancel",
    ],
)
async def test_evasion_after(how: str, open_sandbox: Any, probe: Any, host: Any) -> None:
    leftovers, elapsed, reason = await _ended_by(how, open_sandbox, probe, host)
    if probe.target.isolated:
        probe.figure(f"{how}() -> whole tree gone", f"{elapsed * 1e3:.0f} ms")
    label = {"kill": "kill()", "close": "session close()", "cancel": "caller cancelled"}[how]
    _verdict(probe, label, leftovers, f"; {reason}" if reason else "")


@asyncio_only
async def test_close_with_50_processes(open_sandbox: Any, probe: Any, host: Any) -> None:
    """close() with 50 running processes (5 runs x 10) leaves none behind."""
    tag = host.tag()
    script = f"for i in 1 2 3 4 5 6 7 8 9 10; do sleep {tag} & done; echo ready; wait"
    with anyio.fail_after(60):
        async with open_sandbox() as sbx:
            procs = [await sbx.run(script) for _ in range(5)]
            for proc in procs:
                assert await proc.stdout.readline() == b"ready\n"
            for _ in range(1000):  # the sleeps may still be exec'ing
                if len(host.pids(tag)) >= 50:
                    break
                await anyio.sleep(0.01)
            running = len(host.pids(tag))
            start = time.monotonic()
            await sbx.close()
            closed = time.monotonic() - start
            leftovers = host.pids(tag)
            gone = host.gone_within(tag, 1.0)
    if probe.target.isolated:
        probe.figure(
            "close() with 50 running processes",
            f"close took {closed * 1e3:.0f} ms; {len(leftovers)} left after it returned",
        )
    probe.verdict(
        "close() with 50 running processes",
        "none left when close() returns",
        let_through=bool(leftovers) or running < 50,
        detail=f"{running} tagged processes running, {len(leftovers)} left after close "
        f"({'gone' if gone is not None else 'still there'} 1 s later)",
        # backend none kills the command's process group too: these sleeps are in it.
        unisolated="held",
    )


def _read_proc(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _run_cgroups(proc_cgroup: str) -> set[str]:
    """The host directories of the sandbox cgroups listed in a ``/proc/<pid>/cgroup``."""
    dirs = set()
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "union-sandbox-" not in path:
            continue
        controller = controllers.split(",")[0].removeprefix("name=")
        base = "/sys/fs/cgroup" + (f"/{controller}" if controller else "")
        if controller and not os.path.isdir(base):
            base = "/sys/fs/cgroup/" + controllers
        dirs.add(base + path)
    return dirs


@asyncio_only
async def test_close_leaves_no_cgroups(open_sandbox: Any, probe: Any, host: Any) -> None:
    """On-device: close() removes the session's cgroups and its runs'. Over the remote
    transport the session's cgroup belongs to the server (it outlives its clients): the run
    cgroups of this client's runs, kept for reuse, must be gone once close() returned and
    their processes are (close() asks the server to release them: ReleaseIdle)."""
    tag = host.tag()
    async with open_sandbox(resources=Resources(pids=64, memory="256Mi")) as sbx:
        server = probe.server(sbx)
        client_id = getattr(sbx, "client_id", "")
        if not server and not client_id:
            pytest.fail("this transport does not expose the session's cgroup name", pytrace=False)
        runs = _run_cgroups((await sbx.exec("cat /proc/self/cgroup")).stdout)
        await sbx.run(f"sleep {tag}")
        for _ in range(500):
            if host.pids(tag):
                break
            await anyio.sleep(0.01)
        for pid in host.pids(tag):
            runs |= _run_cgroups(_read_proc(f"/proc/{pid}/cgroup"))
        runs |= _run_cgroups((await sbx.exec("cat /proc/self/cgroup")).stdout)
        await sbx.close()
        if server:
            host.gone_within(tag, 5.0)
            left = sorted(p.removeprefix("/sys/fs/cgroup/") for p in runs if os.path.exists(p))
        else:
            # Checked before the fixture's housekeeping removes what close() left.
            left = sorted(
                p.removeprefix("/sys/fs/cgroup/")
                for p in glob.glob(f"/sys/fs/cgroup/*/union-sandbox-{client_id[:8]}*")
                + glob.glob(f"/sys/fs/cgroup/union-sandbox-{client_id[:8]}*")
            )
    if probe.target.isolated and not runs:
        pytest.fail("no run cgroup seen: the probe cannot see what it looks for", pytrace=False)
    probe.verdict(
        "close() leaves no cgroups behind",
        "session and run cgroups removed (remote: run cgroups)",
        let_through=bool(left),
        detail=f"left: {', '.join(left)}" if left else f"none left ({len(runs)} run cgroups seen)",
        unisolated="held",
    )


async def test_kill_ends_the_command(sandbox: Any, probe: Any, host: Any) -> None:
    """kill() ends the command itself on every backend (escaped descendants aside)."""
    tag = host.tag()
    proc = await sandbox.run(f"exec sleep {tag}")
    for _ in range(500):
        if host.pids(tag):
            break
        await anyio.sleep(0.01)
    await proc.kill()
    waited = False
    # Generous where the tree is expected to go (a loaded machine must not fail it); short
    # on ``none``, whose kill() is known not to reach the command.
    with anyio.move_on_after(10 if probe.target.isolated else 1):
        await proc.wait()
        waited = True
    left = host.pids(tag)
    host.cleanup()
    with anyio.fail_after(30):
        await proc.wait()
    probe.verdict(
        "kill() ends the command (same process, no descendants)",
        "command gone when wait() returns",
        let_through=bool(left) or not waited,
        detail=f"wait() {'returned' if waited else 'still blocked'}, {len(left)} left",
        unisolated="held",
    )
