"""One command of a tool call: started in the connection's session, its output streamed
into :class:`~.output.Spool` s (with live progress reports), and reported as a model reads
it: exit code, how it ended, runtime, output (trimmed), the network decisions.

If the call is cancelled (the client gave up, the connection went, the server stops) the
run's whole process tree is killed before the cancellation goes on: nothing of it outlives
the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from union.sandbox.core.errors import ExecutionError
from union.sandbox.core.process import Process, Termination, TerminationKind

from .ceiling import RunNetwork
from .output import Spool, StreamText
from .slot import SessionSlot

__all__ = ["OutputLimits", "Progress", "RunReport", "run_command"]

#: ``(elapsed seconds, timeout, new output or None)``: a progress report to the client.
Progress = Callable[[float, float, "str | None"], Awaitable[None]]

#: Seconds between progress reports of a running command.
PROGRESS_INTERVAL_S = 0.5
#: Bytes read from a stream at a time.
_READ = 1 << 16
#: Network decisions listed in the text of a result (all of them, up to 200, in the
#: structured result).
_DECISIONS_SHOWN = 20
_DECISIONS_KEPT = 200


@dataclasses.dataclass(frozen=True)
class OutputLimits:
    """How much of each stream a result shows (``head`` + ``tail`` bytes), and how much of
    a trimmed stream is kept in its file."""

    head: int = 8 * 1024
    tail: int = 8 * 1024
    file_cap: int = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What a run did, for a model (:meth:`text`) and for a program (:meth:`structured`)."""

    termination: Termination
    stdout: StreamText
    stderr: StreamText
    network: RunNetwork
    timeout_s: float
    decisions: list[dict[str, Any]]

    @property
    def failed_to_run(self) -> bool:
        """The sandbox could not run the command at all (not a command that failed)."""
        return self.termination.kind is TerminationKind.SANDBOX_FAILURE

    def headline(self) -> str:
        t = self.termination
        code = t.returncode
        runtime = f" after {t.runtime_ms} ms" if t.runtime_ms is not None else ""
        kind = t.kind
        if kind is TerminationKind.EXIT:
            what = f"exit code {code}"
        elif kind is TerminationKind.TIMEOUT:
            what = (
                f"killed: the {self.timeout_s:g} s timeout expired (the command and everything "
                f"it started; exit code {code})"
            )
        elif kind is TerminationKind.SIGNAL:
            what = f"ended by {t.reason.removeprefix('signal=')} (exit code {code})"
        elif kind is TerminationKind.SANDBOX_FAILURE:
            what = f"the sandbox could not run it: {t.detail or t.reason}"
        else:
            what = f"{_ENDINGS.get(kind, kind.value)} (exit code {code})"
        return f"{what}{runtime}; network {self.network.describe()}"

    def text(self) -> str:
        parts = [self.headline()]
        for stream in (self.stdout, self.stderr):
            if not stream.total_bytes:
                parts.append(f"--- {stream.name}: (empty)")
                continue
            size = f"{stream.total_bytes:,} bytes"
            parts.append(f"--- {stream.name} ({size}):\n{stream.text.rstrip(chr(10))}")
            if stream.file_note:
                parts.append(f"({stream.file_note})")
        if self.decisions:
            lines = [_decision_line(d) for d in self.decisions[:_DECISIONS_SHOWN]]
            more = len(self.decisions) - _DECISIONS_SHOWN
            if more > 0:
                lines.append(f"... and {more} more (in the structured result)")
            parts.append("--- network decisions:\n" + "\n".join(lines))
        return "\n".join(parts)

    def structured(self) -> dict[str, Any]:
        t = self.termination
        return {
            "exit_code": t.returncode,
            "termination": t.kind.value,
            "reason": t.reason,
            "runtime_ms": t.runtime_ms,
            "timeout_s": self.timeout_s,
            "stdout": self.stdout.structured(),
            "stderr": self.stderr.structured(),
            "network": {
                "mode": self.network.mode,
                "allow": list(self.network.allow or ()),
                "deny": list(self.network.deny or ()),
            },
            "network_decisions": self.decisions,
        }


_ENDINGS = {
    TerminationKind.KILLED: "killed (the session was reset or is closing)",
    TerminationKind.OOM: "killed: out of memory (the memory limit)",
    TerminationKind.PIDS_LIMIT: "died: too many processes (the process limit)",
    TerminationKind.FSIZE_LIMIT: "killed: it wrote past the file-size limit",
    TerminationKind.CANCELLED: "cancelled",
}


def _decision_line(d: Mapping[str, Any]) -> str:
    target = f"{d['host']}:{d['port']}"
    if d["allowed"]:
        rule = f" (rule {d['rule']})" if d.get("rule") else ""
        extra = f": {d['reason']}" if d.get("reason") else ""
        return f"allowed {target}{rule}{extra}"
    return f"refused {target}: {d.get('reason') or 'not allowed'}"


def _decisions(proc: Process) -> list[dict[str, Any]]:
    out = []
    for d in proc.network_decisions[:_DECISIONS_KEPT]:
        out.append(
            {
                "host": getattr(d, "host", ""),
                "port": getattr(d, "port", 0),
                "allowed": bool(getattr(d, "allowed", False)),
                "rule": getattr(d, "rule", None) or None,
                "reason": getattr(d, "reason", "") or "",
                "bytes_up": getattr(d, "bytes_up", 0),
                "bytes_down": getattr(d, "bytes_down", 0),
            }
        )
    return out


async def run_command(
    slot: SessionSlot,
    cmd: str,
    *,
    script_type: str,
    network: RunNetwork,
    timeout_s: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    limits: OutputLimits,
    progress: Progress | None,
) -> RunReport:
    """Run ``cmd`` in the slot's session (opened now if need be) and report it."""
    session = await slot.get()
    call = slot.next_call()
    proc: Process = await session.run(
        cmd,
        stdout=True,
        stderr=True,
        env=env,
        cwd=cwd,
        script_type=script_type,
        network_mode=network.mode,
        network_allowlist=list(network.allow) if network.allow else None,
        network_denylist=list(network.deny) if network.deny else None,
        timeout_s=timeout_s,
    )
    try:
        # One task group: stderr is pumped by a task, stdout by this one; the group also
        # holds the progress reporter and the writers of output files (which end once the
        # spools are finished).
        async with anyio.create_task_group() as tg:
            open_file = slot.output_files(session, call, tg)
            out = Spool("stdout", head=limits.head, tail=limits.tail, file_cap=limits.file_cap,
                        open_file=open_file)  # fmt: skip
            err = Spool("stderr", head=limits.head, tail=limits.tail, file_cap=limits.file_cap,
                        open_file=open_file)  # fmt: skip
            reporting = anyio.CancelScope()
            if progress is not None:
                tg.start_soon(_report_progress, reporting, progress, timeout_s, out, err)
            stderr_done = anyio.Event()
            tg.start_soon(_pump, proc.stderr, err, stderr_done)
            await _pump(proc.stdout, out)
            await stderr_done.wait()
            reporting.cancel()
            stdout, stderr = await out.finish(), await err.finish()
        try:
            await proc.wait()
        except ExecutionError:
            pass  # the sandbox failed it: proc.termination says how
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _reap(proc)
        raise
    termination = proc.termination
    assert termination is not None
    return RunReport(termination, stdout, stderr, network, timeout_s, _decisions(proc))


async def _pump(stream: Any, spool: Spool, done: anyio.Event | None = None) -> None:
    try:
        if stream is not None:
            while chunk := await stream.read(_READ):
                await spool.feed(chunk)
    finally:
        if done is not None:
            done.set()


async def _report_progress(
    scope: anyio.CancelScope, progress: Progress, timeout_s: float, out: Spool, err: Spool
) -> None:
    with scope:
        await _reports(progress, timeout_s, out, err)


async def _reports(progress: Progress, timeout_s: float, out: Spool, err: Spool) -> None:
    started = anyio.current_time()
    while True:
        await anyio.sleep(PROGRESS_INTERVAL_S)
        new = out.take_live()
        new_err = err.take_live()
        if new_err:
            new += ("" if not new or new.endswith("\n") else "\n") + "[stderr] " + new_err
        try:
            await progress(round(anyio.current_time() - started, 3), timeout_s, new or None)
        except Exception:
            return  # a report that cannot be delivered: the run goes on, unreported


async def _reap(proc: Process) -> None:
    """Kill the run's whole tree and wait for it to be gone (bounded)."""
    await proc.kill()
    with anyio.move_on_after(30):
        try:
            await proc.wait()
        except ExecutionError:
            pass
