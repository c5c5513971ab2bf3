"""Drive a core :class:`Process` from an ``Execute`` response stream.

One HTTP response carries both output streams and the termination record. Readers pull
messages from it on demand (no background task): whoever needs data reads the next message
and files it under its stream. A stream whose unread data reaches the buffer bound stops
the reading (and so, through HTTP flow control, the sandboxed writer) until its reader
catches up: the same back-pressure a full pipe applies on-device.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import anyio

from union.sandbox.core.netproxy.log import NetworkDecision
from union.sandbox.core.process import Capture, IsolationReport, Termination, TerminationKind
from union.sandbox.core.wire import Message
from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import Code, ConnectError
from union.sandbox.core.wire.convert import decisions_from_wire

from ._transport import StreamCall, StreamCut

if TYPE_CHECKING:
    from ._session import RemoteSession

__all__ = [
    "CANCELLED_REASON",
    "STREAM_CLOSED_REASON",
    "RemoteDriver",
    "stream_error_reason",
]

#: Reason of a run whose stream stopped before the server's termination message.
STREAM_CLOSED_REASON = (
    "stream closed before the server sent a termination message (sandbox-server pod may have "
    "crashed, OOM-killed, or the connection was dropped upstream)"
)
#: Reason of a run lost to a cancelled read on httpx's transport (TLS, HTTP/2, proxies),
#: which abandons the response when a read is cancelled; the lean one does not.
CANCELLED_READ_REASON = (
    "killed: a read of the run's output was cancelled, and httpx's transport (used for TLS, "
    "HTTP/2 and proxies) cannot go on reading a response after that; over plain http:// "
    "without a proxy the run goes on"
)
#: Reason of a run the caller cancelled, or whose session was closed while it ran.
CANCELLED_REASON = "session cancelled (client closed the session or task)"

_KINDS: dict[int, TerminationKind] = {
    pb.TerminationKind.TERMINATION_KIND_EXIT: TerminationKind.EXIT,
    pb.TerminationKind.TERMINATION_KIND_SIGNAL: TerminationKind.SIGNAL,
    pb.TerminationKind.TERMINATION_KIND_TIMEOUT: TerminationKind.TIMEOUT,
    pb.TerminationKind.TERMINATION_KIND_KILLED: TerminationKind.KILLED,
    pb.TerminationKind.TERMINATION_KIND_OOM: TerminationKind.OOM,
    pb.TerminationKind.TERMINATION_KIND_PIDS_LIMIT: TerminationKind.PIDS_LIMIT,
    pb.TerminationKind.TERMINATION_KIND_FSIZE_LIMIT: TerminationKind.FSIZE_LIMIT,
    pb.TerminationKind.TERMINATION_KIND_CANCELLED: TerminationKind.CANCELLED,
    pb.TerminationKind.TERMINATION_KIND_SANDBOX_FAILURE: TerminationKind.SANDBOX_FAILURE,
}


def stream_error_reason(error: ConnectError) -> str:
    """The ``termination_reason`` of a run whose stream ended with a Connect error."""
    return f"stream error: ConnectError[{error.code.value}]: {error.message}"


class _DecisionList:
    """A run's egress decisions as the server reported them with its termination."""

    def __init__(self) -> None:
        self._items: list[NetworkDecision] = []

    def extend(self, decisions: list[pb.NetworkDecision]) -> None:
        self._items.extend(decisions_from_wire(decisions))

    def snapshot(self) -> list[NetworkDecision]:
        return list(self._items)


def termination_from_wire(message: pb.Termination) -> Termination:
    """A core :class:`Termination` from the wire; servers of the published schema (no
    ``kind``) get one inferred from the exit code."""
    kind = _KINDS.get(int(message.kind))
    signal = message.signal or None
    if kind is None:
        kind = TerminationKind.EXIT
        if message.exit_code > 128 and "signal" in message.reason.lower():
            kind, signal = TerminationKind.SIGNAL, message.exit_code - 128
    return Termination(
        kind=kind,
        returncode=message.exit_code,
        signal=signal,
        detail=message.detail,
        runtime_ms=message.runtime_ms,
    )


def failure_from_error(error: ConnectError) -> Termination:
    """The termination of a run whose stream ended with ``error``."""
    if error.detail is not None and error.detail.exception == "ExecutionError":
        reason = error.detail.message or error.message
    else:
        reason = stream_error_reason(error)
    return Termination(TerminationKind.SANDBOX_FAILURE, -1, detail=reason)


class RemoteDriver:
    """The :class:`~union.sandbox.core.process.ProcessDriver` of one remote run."""

    def __init__(
        self,
        session: RemoteSession,
        call: StreamCall | None,
        *,
        backend: str,
        execution_id: str,
        buffer_bytes: int,
        termination: Termination | None = None,
    ) -> None:
        self.backend = backend
        self.execution_id = execution_id
        self._session = session
        self._call = call
        self._limit = buffer_bytes
        self._queues: dict[bool, collections.deque[bytes]] = {
            True: collections.deque(),
            False: collections.deque(),
        }
        self._sizes = {True: 0, False: 0}
        self._drained = {True: anyio.Event(), False: anyio.Event()}
        # Fast acquire: taking a free lock does not yield to the event loop (a waiter
        # still gets it handed over on release).
        self._read_lock = anyio.Lock(fast_acquire=True)
        self._termination = termination
        self.isolation: IsolationReport | None = None
        self.network_log = _DecisionList()
        self._server_ended = False

    # -- reading ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._termination is not None

    def _finish(self, termination: Termination) -> None:
        if self._termination is None:
            self._termination = termination

    async def _read_one(self) -> None:
        """Read and file the next message (caller holds the read lock)."""
        call = self._call
        if call is None or self._termination is not None:
            return
        try:
            message = await call.next()
        except ConnectError as error:
            self._finish(failure_from_error(error))
            return
        except StreamCut:
            reason = STREAM_CLOSED_REASON
            if call.cut_by_cancel:
                # The server may not notice (httpx sends no reset for an HTTP/2 stream it
                # abandons): the run would go on unseen, out of reach of close().
                reason = CANCELLED_READ_REASON
                with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                    await self._until_forgotten()
            self._finish(Termination(TerminationKind.SANDBOX_FAILURE, -1, detail=reason))
            return
        except Exception as exc:  # a broken response is a lost stream
            self._finish(
                Termination(
                    TerminationKind.SANDBOX_FAILURE,
                    -1,
                    detail=f"{STREAM_CLOSED_REASON}: {type(exc).__name__}: {exc}",
                )
            )
            return
        if message is None:
            self._finish(
                Termination(TerminationKind.SANDBOX_FAILURE, -1, detail=STREAM_CLOSED_REASON)
            )
            return
        assert isinstance(message, pb.ExecuteResponse)
        if message.stdout is not None or message.stderr is not None:
            is_stdout = message.stdout is not None
            data = message.stdout if is_stdout else message.stderr
            assert data is not None
            if data:
                self._queues[is_stdout].append(data)
                self._sizes[is_stdout] += len(data)
        elif message.termination is not None:
            self.network_log.extend(message.termination.network_decisions)
            self._finish(termination_from_wire(message.termination))
            self._server_ended = True

    async def _wait_for_room(self) -> None:
        """Hold the reading back while either stream has a full buffer nobody drains."""
        for stream in (True, False):
            while self._sizes[stream] >= self._limit and self._termination is None:
                await self._drained[stream].wait()

    def _pop(self, stream: bool) -> bytes | None:
        queue = self._queues[stream]
        if not queue:
            return None
        data = queue.popleft()
        self._sizes[stream] -= len(data)
        if self._sizes[stream] < self._limit:
            self._drained[stream].set()
            self._drained[stream] = anyio.Event()
        return data

    async def pull(self, stream: bool) -> bytes:
        """The next chunk of stdout (``True``) or stderr; ``b""`` at the end."""
        while True:
            data = self._pop(stream)
            if data is not None:
                return data
            if self._termination is not None:
                return b""
            async with self._read_lock:
                if self._queues[stream] or self._termination is not None:
                    continue
                await self._wait_for_room_except(stream)
                await self._read_one()

    async def _wait_for_room_except(self, stream: bool) -> None:
        other = not stream
        while self._sizes[other] >= self._limit and self._termination is None:
            await self._drained[other].wait()

    async def pull_stdout(self) -> bytes:
        return await self.pull(True)

    async def pull_stderr(self) -> bytes:
        return await self.pull(False)

    # -- ProcessDriver ---------------------------------------------------------------------

    async def wait_exit(self) -> Termination:
        while self._termination is None:
            async with self._read_lock:
                if self._termination is None:
                    await self._wait_for_room()
                    await self._read_one()
        return self._termination

    async def wait_exit_capturing(
        self, stdout: Capture | None, stderr: Capture | None
    ) -> Termination:
        """:meth:`wait_exit`, moving output into the streams' buffers as it arrives
        (``Process.wait`` then needs no drain task per stream)."""
        while True:
            self._hand_over(True, stdout)
            self._hand_over(False, stderr)
            if self._termination is not None:
                return self._termination
            async with self._read_lock:
                if self._termination is None:
                    # Again under the lock: a reader may have filed a large message while
                    # we waited for it, and only this hand-over makes room for it.
                    self._hand_over(True, stdout)
                    self._hand_over(False, stderr)
                    await self._wait_for_room()
                    await self._read_one()

    def _hand_over(self, stream: bool, capture: Capture | None) -> None:
        if capture is None:
            return
        queue = self._queues[stream]
        while queue and capture(queue[0]):
            self._pop(stream)

    async def send_signal(self, signo: int) -> None:
        if self._termination is None:
            await self._control(
                "Signal",
                pb.SignalRequest(execution_id=self.execution_id, signal=signo),
                pb.SignalResponse,
            )

    async def kill(self, kind: TerminationKind) -> None:
        if self._termination is not None:
            return
        if kind is TerminationKind.CANCELLED:
            await self.kill_and_wait(
                Termination(TerminationKind.CANCELLED, -1, detail=CANCELLED_REASON)
            )
            return
        try:
            await self._control(
                "Kill", pb.KillRequest(execution_id=self.execution_id), pb.KillResponse
            )
        except ConnectError:
            # Unreachable, or it already ended: dropping the stream kills it either way.
            self._finish(Termination(TerminationKind.KILLED, 137, signal=9, detail="killed"))
            await self.release()

    async def _control(self, method: str, request: Message, response_cls: type[Message]) -> bool:
        """Call a per-run RPC; ``False`` if the server no longer knows the run (it ended
        meanwhile and was reaped: the termination is on its way)."""
        try:
            await self._session._transport.unary(method, request, response_cls)
        except ConnectError as error:
            if error.code is Code.NOT_FOUND:
                return False
            raise
        return True

    async def release(self) -> None:
        call = self._call
        if call is not None and not call.closed:
            with anyio.CancelScope(shield=True):
                # The end-of-stream message follows the termination: reading it lets the
                # connection be reused rather than closed.
                await call.aclose(expect_end=self._server_ended)
        self._session._live.discard(self)

    async def kill_and_wait(self, termination: Termination, within: float = 5.0) -> None:
        """Ask the server to kill the run and wait (bounded) for its termination record,
        which the server sends once the whole tree is gone; output still in flight is
        dropped. The run then ends as ``termination`` says (a cancellation, a close)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(within):
            try:
                await self._control(
                    "Kill", pb.KillRequest(execution_id=self.execution_id), pb.KillResponse
                )
            except ConnectError:
                pass  # already over, or unreachable: dropping the stream kills it
            async with self._read_lock:
                while self._termination is None and self._call is not None:
                    for stream in (True, False):
                        while self._pop(stream) is not None:
                            pass
                    await self._read_one()
            if not self._server_ended:
                # The stream broke before the server's record (it was cut, or a read was
                # cancelled on httpx's transport, which drops the connection). Close it, and
                # ask until the server no longer knows the run: it forgets a run only once
                # its whole tree is gone.
                await self.release()
                await self._until_forgotten()
        # The record we were waiting for only proves the tree is gone; the reason is ours.
        self._termination = termination
        await self.release()

    async def _until_forgotten(self) -> None:
        """Ask the server to kill the run until it no longer knows it: it forgets a run only
        once its whole tree is gone."""
        while True:
            if await self._forgotten():
                return
            await anyio.sleep(0.01)  # polling the server: there is no event to await

    async def _forgotten(self) -> bool:
        """Whether the server no longer knows this run (or cannot be asked: dropping the
        stream kills it)."""
        try:
            return not await self._control(
                "Kill", pb.KillRequest(execution_id=self.execution_id), pb.KillResponse
            )
        except ConnectError:
            return True

    def abandon(self) -> None:
        """The session is closing: record the cancellation (the stream is dropped with the
        connection pool)."""
        self._finish(Termination(TerminationKind.CANCELLED, -1, detail=CANCELLED_REASON))
        for event in self._drained.values():
            event.set()
