"""The threads a session's proxies block in: relay pumps and name lookups.

A pump blocks in ``splice``/``recv`` for as long as its tunnel lives, and ``getaddrinfo``
blocks for as long as the resolver takes, so each needs a thread of its own. anyio's worker
pool would do, but its idle threads are reaped only when it is next used (on asyncio), so a
burst of tunnels leaves hundreds of idle threads in the caller until the next proxied
connection. This pool starts a thread when no idle one is free and lets it go as soon as it
is not needed: a thread that finds ``spare`` others already idle exits at once, and an idle
one exits after ``idle_s``. It never queues work: the proxy host admits a connection only
when its threads are within the session's budget (:mod:`.capacity`), so every job starts at
once and nothing waits behind another run's tunnels.

Results come back to the event loop through ``soon`` (``loop.call_soon_threadsafe`` or
``TrioToken.run_sync_soon``), which never blocks the worker.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

__all__ = ["WorkerPool"]

logger = logging.getLogger("union.sandbox.netproxy")

_T = TypeVar("_T")
Soon = Callable[[Callable[[], object]], object]


class _Outcome(Generic[_T]):
    """A job's result or exception, and the loop-side event that says it is there."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: _T | None = None
        self.error: BaseException | None = None


class WorkerPool:
    """Threads started on demand for at most ``max_threads`` jobs at once; idle threads
    exit quickly.

    :meth:`run` and :meth:`run_abandoning` are called on the event loop whose ``soon``
    the pool was given. :meth:`close` lets every idle thread go and joins them all.
    """

    def __init__(
        self,
        soon: Soon,
        *,
        max_threads: int,
        spare: int = 4,
        idle_s: float = 2.0,
        name: str = "union-sandbox-netproxy-worker",
    ) -> None:
        self._soon = soon
        self._max = max_threads
        self._spare = spare
        self._idle_s = idle_s
        self._name = name
        self._cond = threading.Condition()
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._busy = 0  # jobs submitted and not yet returned
        self._idle = 0  # threads waiting for a job
        self._finishing = 0  # threads whose job returned, about to look for the next one
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads alive now (busy or idle)."""
        with self._cond:
            return len(self._threads)

    async def run(self, func: Callable[[], _T]) -> _T:
        """``func()`` in a worker thread. Cancellation waits for it to return (the caller
        makes it return: a pump ends when its sockets are shut down)."""
        outcome = self._submit(func)
        try:
            await outcome.done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await outcome.done.wait()
            raise
        return self._result(outcome)

    async def run_abandoning(self, func: Callable[[], _T], on_return: Callable[[], None]) -> _T:
        """``func()`` in a worker thread; cancellation returns at once and leaves it running.
        ``on_return`` runs on the loop when ``func`` has returned, however the caller fared
        (so what the thread holds is accounted for until it is really free)."""
        try:
            outcome = self._submit(func, on_return)
        except BaseException:
            on_return()
            raise
        await outcome.done.wait()
        return self._result(outcome)

    def close(self, timeout: float) -> bool:
        """No new jobs; idle threads exit now. True if every thread ended within
        ``timeout`` seconds (busy ones end when their job does)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _result(outcome: _Outcome[_T]) -> _T:
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def _submit(
        self, func: Callable[[], _T], on_return: Callable[[], None] | None = None
    ) -> _Outcome[_T]:
        outcome: _Outcome[_T] = _Outcome()

        def finished() -> None:  # on the loop
            if on_return is not None:
                on_return()
            outcome.done.set()

        def job() -> None:  # in a worker
            try:
                outcome.value = func()
            except BaseException as exc:
                outcome.error = exc
            with self._cond:
                # Before the loop hears of it: a job it submits next may go to this thread.
                self._busy -= 1
                self._finishing += 1
            try:
                self._soon(finished)
            except RuntimeError:
                pass  # the loop has ended: nobody is waiting any more

        with self._cond:
            if self._closed:
                raise RuntimeError("the proxy host is closed")
            if self._busy >= self._max:
                # The host admits work within the budget, so this is a bug, not load:
                # refuse rather than queue behind other runs' tunnels.
                raise RuntimeError(f"netproxy worker budget ({self._max} jobs at once) exceeded")
            self._busy += 1
            if self._idle + self._finishing > len(self._jobs):
                self._jobs.append(job)  # a waiting or finishing thread takes it
                self._cond.notify()
                return outcome
            thread = threading.Thread(target=self._work, args=(job,), name=self._name, daemon=True)
            self._threads.add(thread)
        thread.start()
        return outcome

    def _work(self, first: Callable[[], None]) -> None:
        me = threading.current_thread()
        job: Callable[[], None] | None = first
        try:
            while job is not None:
                job()
                with self._cond:
                    self._finishing -= 1
                    job = self._next_job()
        finally:
            with self._cond:
                self._threads.discard(me)

    def _next_job(self) -> Callable[[], None] | None:
        """The next job, or None when this thread should exit (called with the lock)."""
        if not self._jobs and (self._closed or self._idle >= self._spare):
            return None
        deadline = time.monotonic() + self._idle_s
        while not self._jobs:
            left = deadline - time.monotonic()
            if self._closed or left <= 0:
                return None
            self._idle += 1
            try:
                self._cond.wait(left)
            finally:
                self._idle -= 1
        return self._jobs.popleft()
