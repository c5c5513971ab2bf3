"""Per-user kernel quotas and host PIDs: what one session's runs may take from the host's
users and from other sessions.

The kernel counts pending signals (which also bound POSIX timers), inotify instances and
other objects per user, and charges a count made inside a user namespace to the uid that
created that namespace too. A run that exhausts its own share must leave host root's share
(the probes run as root, so that is this test process) and another session's share alone.
Processes are a host-wide resource (``kernel.pid_max``): the runs of one session together
must stay within the session's pids budget.

These do not depend on the event loop: asyncio only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from union.sandbox.core.testing_caller import run_as, system_python

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

#: Inside a run: take every pending signal and every inotify instance the kernel gives this
#: run, hold them, and keep taking what gets freed, until killed.
EXHAUST = r"""
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)

class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]

sig = signal.SIGRTMIN
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
queued = 0
inotify = []

def take():
    global queued
    while libc.sigqueue(os.getpid(), sig, sigval(0)) == 0:
        queued += 1
    while len(inotify) < 1000:
        fd = libc.inotify_init1(0)
        if fd < 0:
            break
        inotify.append(fd)

take()
print("HOLDING %d signals, %d inotify instances" % (queued, len(inotify)), flush=True)
while True:
    time.sleep(0.005)
    take()
"""

#: A program making the three calls the exhausting run must not break, 20 times each: it
#: prints the ones that failed, with their errno. Run as a fresh process (inside a run, or
#: on the host): a process-directed real-time signal goes to any thread that does not block
#: it, and a test process has threads.
QUOTA_CALLS = """
import ctypes, errno, json, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)

class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]

sig = signal.SIGRTMIN + 2
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
failed = {}
for _ in range(20):
    if libc.sigqueue(os.getpid(), sig, sigval(0)) == 0:
        signal.sigtimedwait([sig], 0)
    else:
        failed["sigqueue"] = errno.errorcode[ctypes.get_errno()]
    timer = ctypes.c_void_p()
    if libc.timer_create(1, None, ctypes.byref(timer)) == 0:  # CLOCK_MONOTONIC
        libc.timer_delete(timer)
    else:
        failed["timer_create"] = errno.errorcode[ctypes.get_errno()]
    fd = libc.inotify_init1(0)
    if fd >= 0:
        os.close(fd)
    else:
        failed["inotify_init1"] = errno.errorcode[ctypes.get_errno()]
    time.sleep(0.01)
print(json.dumps(failed, sort_keys=True))
"""


def host_quota_calls() -> dict[str, str]:
    """:data:`QUOTA_CALLS` in a new host process of this (root) user."""
    out = subprocess.run(
        [sys.executable, "-c", QUOTA_CALLS], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def _start_exhausting(sbx: Any) -> tuple[Any, str]:
    """A run holding every signal and inotify instance it can get; returns it and its report
    once it holds them."""
    proc = await sbx.run(EXHAUST, script_type="python", timeout_s=60)
    line = (await proc.stdout.readline()).decode().strip()
    if not line.startswith("HOLDING"):  # nothing was exhausted: the probe would prove nothing
        await _stop(proc)
        pytest.fail(f"the exhausting run did not start: {line!r} {await proc.stderr.read()!r}")
    return proc, line


async def _stop(proc: Any) -> None:
    await proc.kill()
    await proc.wait()


@asyncio_only
async def test_host_roots_quotas(open_sandbox: Any, probe: Any) -> None:
    if os.getuid() != 0:
        pytest.skip("the probe checks host root's share: run the suite as root")
    async with open_sandbox() as sbx:
        proc, holding = await _start_exhausting(sbx)
        try:
            failed = host_quota_calls()
        finally:
            await _stop(proc)
    probe.verdict(
        "host root's signals, timers and inotify while a run exhausts its own",
        "host root's sigqueue, timer_create, inotify_init1 all work",
        let_through=bool(failed),
        detail=f"run: {holding or 'no report'}; host root: "
        + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "all worked"),
    )


@asyncio_only
async def test_other_sessions_quotas(open_sandbox: Any, open_peer_sandbox: Any, probe: Any) -> None:
    async with open_sandbox() as sbx, open_peer_sandbox() as other:
        await other.exec("true")  # the other session is up before the first one exhausts
        proc, holding = await _start_exhausting(sbx)
        try:
            result = await other.exec(QUOTA_CALLS, script_type="python", timeout_s=30)
        finally:
            await _stop(proc)
    seen = result.stdout.strip()
    probe.verdict(
        "another session's signals, timers and inotify while a run exhausts its own",
        "sigqueue, timer_create, inotify_init1 all work in the other session",
        let_through=result.returncode != 0 or seen != "{}",
        detail=f"run: {holding or 'no report'}; other session: "
        + (seen if seen != "{}" else "all worked")
        + (f"; exit {result.returncode}: {result.stderr[-200:]}" if result.returncode else ""),
        unisolated="any",
    )


#: Processes each run of the pids probe tries to hold, and the session budget it runs under.
PER_RUN, RUNS, SESSION_PIDS = 80, 3, 150
#: A run of the pids probe: start PER_RUN host-visible sleeps (a refused fork is counted,
#: not fatal), say how many, and hold them.
HOLD_PROCESSES = """
import subprocess, sys, time
started = 0
for _ in range({per_run}):
    try:
        subprocess.Popen(["sleep", "{tag}"])
        started += 1
    except OSError:
        pass
print("started", started, flush=True)
time.sleep(60)
"""


@asyncio_only
async def test_session_pids_budget(open_sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    code = HOLD_PROCESSES.format(per_run=PER_RUN, tag=tag)
    async with open_sandbox(session_pids=SESSION_PIDS) as sbx:
        procs = [await sbx.run(code, script_type="python", timeout_s=60) for _ in range(RUNS)]
        try:
            said = [(await proc.stdout.readline()).decode().strip() for proc in procs]
            held = len(host.pids(tag))
        finally:
            for proc in procs:
                await _stop(proc)
        usable = (await sbx.exec("echo usable")).stdout == "usable\n"
    # The runs must have forked in earnest: runs that died at once hold nothing and would
    # pass whatever the budget.
    started = [int(line.split()[1]) for line in said if line.startswith("started ")]
    assert len(started) == RUNS and sum(started) >= PER_RUN, f"the runs did not fork: {said}"
    probe.verdict(
        f"{RUNS} runs of one session forking {PER_RUN} processes each",
        f"at most the session's {SESSION_PIDS} pids at once; session usable after",
        let_through=held > SESSION_PIDS or not usable,
        detail=f"{held} processes at once ({'; '.join(said)}); usable after: {usable}",
        unisolated="held",
    )


#: Run by an unprivileged caller: a session whose run exhausts what it can take, then the
#: caller's own calls, in a new process of its uid (``sys.argv``: backend, the exhausting
#: code, the calls' code).
_AS_CALLER = """
import json, subprocess, sys, warnings
import anyio
warnings.simplefilter("ignore")
from union.sandbox.core.on_device import session

async def main():
    async with session(backend=sys.argv[1]) as sbx:
        proc = await sbx.run(sys.argv[2], script_type="python", timeout_s=60)
        holding = (await proc.stdout.readline()).decode().strip()
        calls = subprocess.run([sys.executable, "-c", sys.argv[3]], capture_output=True)
        await proc.kill()
        await proc.wait()
    print(json.dumps({"holding": holding, "failed": json.loads(calls.stdout)}))

anyio.run(main)
"""
#: The unprivileged caller's uid: one no other test process runs as.
CALLER_UID = 65533


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize("backend", ["bubblewrap", "userns"])
def test_unprivileged_callers_share_is_bounded(backend: str) -> None:
    """An unprivileged caller's uid is charged for its sandbox (nothing else can create the
    namespace): the sandbox may take at most half of each quota, so the caller keeps the
    rest."""
    python = system_python()
    if python is None:
        pytest.skip("no system Python of this version for an unprivileged user")
    out = run_as(CALLER_UID, [python, "-c", _AS_CALLER, backend, EXHAUST, QUOTA_CALLS], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["holding"].startswith("HOLDING"), seen
    assert seen["failed"] == {}, seen
