"""Blocking name lookups, run where the proxy host says and counted against the run that
asked.

``getaddrinfo`` blocks a thread for as long as the resolver takes (seconds, for a name whose
servers do not answer), and a lookup that timed out keeps its thread until then. Run on a
small shared pool (asyncio's default executor), one run's slow names would hold every
thread and the other runs' lookups would time out behind them. So the proxy host sets a
*runner* for each connection it serves (:func:`lookups_run_by`): the lookup then runs on the
session's own threads, and the run's share of lookups stays taken until the thread is
really free. Without a runner (a :class:`~.rules.RuleSet` used on its own), lookups run on
anyio's worker threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence

import anyio

__all__ = ["BlockingResolver", "LookupRunner", "blocking_resolver", "lookups_run_by"]

#: ``resolver(name, port)`` returns the addresses (text) of ``name``; it may block.
BlockingResolver = Callable[[str, int], Sequence[str]]
#: ``runner(call)`` runs the blocking ``call`` to completion and returns its result.
LookupRunner = Callable[[Callable[[], Sequence[str]]], Awaitable[Sequence[str]]]

_RUNNER: contextvars.ContextVar[LookupRunner | None] = contextvars.ContextVar(
    "union_sandbox_netproxy_lookup_runner", default=None
)


@contextlib.contextmanager
def lookups_run_by(runner: LookupRunner) -> Iterator[None]:
    """Within this block (this task, and tasks it starts), blocking lookups go to
    ``runner``."""
    token = _RUNNER.set(runner)
    try:
        yield
    finally:
        _RUNNER.reset(token)


def blocking_resolver(
    func: BlockingResolver,
) -> Callable[[str, int], Awaitable[Sequence[str]]]:
    """An async resolver (for :meth:`~.rules.RuleSet.parse`) made from a blocking one."""

    async def resolve(name: str, port: int) -> Sequence[str]:
        call = functools.partial(func, name, port)
        runner = _RUNNER.get()
        if runner is None:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        return await runner(call)

    return resolve
