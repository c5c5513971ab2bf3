"""Shared pytest configuration: every async test runs under asyncio and under trio, and every
test runs under a time limit.

Time limits
    pytest-timeout bounds each test (setup, call and teardown): ``timeout`` in the root
    ``pyproject.toml`` is the default, ``@pytest.mark.timeout(N)`` gives a test that needs
    longer its own. Its ``signal`` method raises in the main thread when the limit is reached,
    which is right for a synchronous test: the traceback ends at the line that hung and the
    run goes on. An anyio test waiting on an ``await`` is not on the main thread's stack,
    though: the event loop is, parked in its poll. The exception would tear the loop out from
    under the test (a traceback of the loop's internals, not of the test) and the async
    fixtures' teardown would then wait forever on the abandoned test task. The ``thread``
    method is no better: it dumps thread stacks (no coroutine is on them) and ends the whole
    run. So, on top of pytest-timeout:

    1. The body of an anyio test is cancelled from inside its own event loop, on asyncio and
       on trio alike, :func:`_grace` seconds before the limit: it fails with
       :class:`TimeLimitExceeded`, raised from the cancellation, whose traceback runs through
       the ``await`` it was stuck in; its fixtures then tear down as usual (a session's
       close kills what its runs left).
    2. pytest-timeout's own ``signal`` limit stays the backstop for everything else: a
       synchronous test, a loop blocked by a synchronous call, a hung fixture.
    3. If a test is still not over :data:`WATCHDOG_S` seconds after its limit (a teardown
       waiting on an abandoned loop, a C call that never releases the GIL), ``faulthandler``
       prints ``Timeout (h:mm:ss)!`` and every thread's stack to the real stderr and ends the
       run with exit status 1: one hang must not eat CI's whole budget. (It shares
       faulthandler's one timer with pytest's ``faulthandler_timeout``: leave that unset.)
"""

from __future__ import annotations

import faulthandler
import functools
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import pytest

#: Seconds past a test's limit after which the run is stopped (see the module docstring, 3).
WATCHDOG_S = 30.0

_DEADLINE = pytest.StashKey[tuple[float, float]]()  # (monotonic deadline, limit)
_STDERR = pytest.StashKey[int]()  # a copy of the real stderr, for the watchdog


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TimeLimitExceeded(Exception):
    """An async test's body was cancelled as it neared the test's time limit."""


def _grace(limit: float) -> float:
    """How long before the limit an async body is cancelled: time for the cancellation to
    unwind (a sandbox run is killed on the way) and for the fixtures to tear down."""
    return min(15.0, limit / 4)


def pytest_configure(config: pytest.Config) -> None:
    # Output capture is suspended while plugins configure: fd 2 is the real stderr here.
    config.stash[_STDERR] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_STDERR, None)
    if fd is not None:
        os.close(fd)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Called by pytest-timeout as it arms a test's limit: note the deadline for the async
    body (1) and arm the watchdog (3). Returns None so that pytest-timeout arms its own."""
    limit = float(settings.timeout)
    item.stash[_DEADLINE] = (time.monotonic() + limit, limit)
    faulthandler.dump_traceback_later(
        limit + WATCHDOG_S, exit=True, file=item.config.stash[_STDERR]
    )


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    func = pyfuncitem.obj
    deadline = pyfuncitem.stash.get(_DEADLINE, None)
    if (
        deadline is None
        or "anyio_backend" not in pyfuncitem.funcargs
        or not inspect.iscoroutinefunction(func)
    ):
        return (yield)
    __tracebackhide__ = True
    pyfuncitem.obj = _cancelled_near(func, *deadline)
    try:
        return (yield)
    finally:
        pyfuncitem.obj = func


def _cancelled_near(
    func: Callable[..., Awaitable[object]], deadline: float, limit: float
) -> Callable[..., Awaitable[object]]:
    """``func``, cancelled from inside its event loop :func:`_grace` seconds before
    ``deadline`` (``time.monotonic()``), failing with :class:`TimeLimitExceeded`."""
    grace = _grace(limit)

    @functools.wraps(func)
    async def bounded(**kwargs: Any) -> object:
        __tracebackhide__ = True
        remaining = deadline - grace - time.monotonic()
        cancelled: list[BaseException] = []
        with anyio.CancelScope(deadline=anyio.current_time() + remaining) as scope:
            try:
                return await func(**kwargs)
            except BaseException as exc:
                if not scope.cancel_called:
                    raise
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    cancelled.append(exc)
                    raise  # for the scope to catch
                # The body turned the cancellation into an error of its own: say why.
                raise TimeLimitExceeded(_timeout_message(limit, grace)) from exc
        if not scope.cancelled_caught:
            return None  # the body swallowed the cancellation and returned
        raise TimeLimitExceeded(_timeout_message(limit, grace)) from (
            cancelled[0] if cancelled else None
        )

    return bounded


def _timeout_message(limit: float, grace: float) -> str:
    return (
        f"the test was cancelled {limit - grace:.0f}s into its {limit:.0f}s time limit, at "
        "the await shown in the traceback above; if it needs longer, give it "
        "@pytest.mark.timeout(seconds)"
    )
