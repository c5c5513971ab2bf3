"""Signals: whatever the caller or the run sends, the deadline holds and the run's own init
(pid 1 of its namespace: ours, not the command) is never the one that receives it.

- The caller's ``send_signal`` (remote: the ``Signal`` RPC) must reach the command's process
  group for every signal (``docs/protocol.md``): job-control stops (``SIGTSTP``,
  ``SIGTTIN``, ``SIGTTOU``), ``SIGALRM`` (init's own timer signal: never a timeout),
  default-fatal ones (``SIGSEGV``...), real-time signals (init uses some). The command
  traps each and says so. Then ``SIGSTOP``: the command stops, and ``timeout_s`` must
  still end the run on time, as a timeout.
- The run signals its own init: stopping it (``SIGSTOP`` and the job-control stops) must not
  stretch the deadline; ``SIGALRM`` and real-time signals must not end the run or be
  reported as a timeout.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import pytest

from union.sandbox.core.errors import ExecutionError

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

RTMIN, RTMAX = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
#: Catchable signals the caller sends, each of which init once took as its own (stopped, was
#: killed by, timed out on, or ignored as pid 1).
CAUGHT = (
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGALRM,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGABRT,
    signal.SIGSYS,
    signal.SIGTRAP,
    signal.SIGXCPU,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
    signal.SIGURG,
    signal.SIGUSR1,
    signal.SIGTERM,
    RTMIN,
    RTMIN + 1,
    RTMIN + 2,
    RTMAX,
)
#: Past its timeout, how long a run may take to be reported over (a loaded machine).
SLACK_S = 4.0

TRAPPER = r"""
import os, signal, time
wanted = [int(s) for s in os.environ["WANTED"].split(",")]
def caught(signo, frame):
    os.write(1, b"got %d\n" % signo)
for signo in wanted:
    signal.signal(signo, caught)
os.write(1, b"ready\n")
while True:
    time.sleep(0.05)
"""


def _name(signo: int) -> str:
    if RTMIN <= signo <= RTMAX:
        return f"RTMIN+{signo - RTMIN}"
    return signal.Signals(signo).name


async def _expect_line(stream: Any, wanted: bytes, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        while True:
            line = await stream.readline()
            if not line:
                return False
            if line == wanted:
                return True
    return False


async def _seconds_to_end(proc: Any, started: float, timeout_s: float) -> float:
    """Wait for ``proc`` (given its ``timeout_s`` plus the slack and 30 s); the seconds from
    ``started`` until it ended or the wait gave up. One that is still running is killed."""
    with anyio.move_on_after(timeout_s + SLACK_S + 30):
        await proc.wait()
    elapsed = time.monotonic() - started
    if proc.returncode is None:
        await proc.kill()
        with anyio.move_on_after(10):
            await proc.wait()
    return elapsed


@asyncio_only
async def test_caller_signals_reach_the_command(sandbox: Any, probe: Any) -> None:
    timeout = 8.0
    wanted = ",".join(str(int(s)) for s in CAUGHT)
    started = time.monotonic()
    proc = await sandbox.run(
        TRAPPER, script_type="python", env={"WANTED": wanted}, timeout_s=timeout
    )
    assert proc.stdout is not None
    assert await _expect_line(proc.stdout, b"ready\n", 30), "the trapping command did not start"
    missed = []
    for signo in CAUGHT:
        await proc.send_signal(signo)
        if not await _expect_line(proc.stdout, b"got %d\n" % signo, 2):
            missed.append(_name(signo))
        if proc.returncode is not None:
            break
    await proc.send_signal(signal.SIGSTOP)
    elapsed = await _seconds_to_end(proc, started, timeout)
    term = proc.termination
    kind = term.kind.value if term is not None else "?"
    late = elapsed > timeout + SLACK_S
    early = elapsed < timeout
    probe.verdict(
        "caller's signals reach the command, never init (stops, ALRM, SEGV, RT); "
        "SIGSTOP then timeout_s",
        "every signal trapped; ends on time as a timeout",
        let_through=bool(missed) or late or early or kind != "timeout",
        detail=(f"not delivered: {', '.join(missed)}; " if missed else "all delivered; ")
        + f"ended after {elapsed:.1f} s of timeout_s={timeout:g} as {kind}",
        unisolated="held",
    )


SELF_STOP = """
for sig in STOP TSTP TTIN TTOU; do kill -$sig $PPID 2>/dev/null; done
echo stopped-init
exec sleep {tag}
"""


@asyncio_only
async def test_run_stops_its_own_init(sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    timeout = 1.5
    started = time.monotonic()
    proc = await sandbox.run(SELF_STOP.format(tag=tag), timeout_s=timeout)
    elapsed = await _seconds_to_end(proc, started, timeout)
    left = host.pids(tag)
    term = proc.termination
    kind = term.kind.value if term is not None else "still running"
    probe.verdict(
        "the run stops its own init (kill -STOP/TSTP/TTIN/TTOU $PPID), then outlives timeout_s",
        "ends on time as a timeout, nothing left",
        let_through=elapsed > timeout + SLACK_S or kind != "timeout" or bool(left),
        detail=f"ended after {elapsed:.1f} s of timeout_s={timeout:g} as {kind}; "
        f"{len(left)} left on the host",
        unisolated="held",
    )


SELF_SIGNAL = """
for sig in ALRM {rt}; do kill -$sig $PPID 2>/dev/null; sleep 0.1; done
sleep 0.3
echo survived
"""


@asyncio_only
async def test_run_signals_its_own_init(sandbox: Any, probe: Any) -> None:
    """SIGALRM and real-time signals sent to init by the run must not end the run, and must
    never be reported as a timeout."""
    rt = " ".join(str(RTMIN + i) for i in range(4))
    with anyio.fail_after(60):
        proc = await sandbox.run(SELF_SIGNAL.format(rt=rt), timeout_s=30)
        try:
            out, _ = await proc.communicate()
        except ExecutionError:  # init itself died of one (backend none)
            out = b""
    kind = proc.termination.kind.value if proc.termination is not None else "?"
    probe.verdict(
        "the run sends SIGALRM and RT signals to its own init",
        "ignored: the command runs on, no timeout",
        let_through=out != b"survived\n" or proc.returncode != 0,
        detail=f"exit {proc.returncode} ({kind}) {out.strip()!r}",
        unisolated="any",
    )
