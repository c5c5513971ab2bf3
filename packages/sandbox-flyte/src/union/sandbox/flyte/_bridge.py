"""One asyncio loop of our own, in a daemon thread, where every launch lives; and a way to wait
for its results from any anyio loop (asyncio or trio).

Why a loop of its own: the Flyte SDK is asyncio-only (its ``.aio()`` APIs await asyncio
futures, which trio cannot), and a launch outlives the call that started it (the run is
watched until it ends, whether or not anyone awaits the session), which a trio caller could
not host without a nursery. So launches run here, and callers wait on
:class:`concurrent.futures.Future` objects with :func:`wait`, which holds no thread: the
future's completion wakes the caller's loop through its own thread-safe entry point.

Submitting a coroutine copies the caller's context variables (``call_soon_threadsafe`` takes
them along), so code here still sees ``flyte.ctx()`` of the task that called ``sb.session()``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["submit", "wait"]

_T = TypeVar("_T")
_lock = threading.Lock()
_loops: list[asyncio.AbstractEventLoop] = []  # the launcher loop, once started


def _launcher_loop() -> asyncio.AbstractEventLoop:
    with _lock:
        if not _loops or _loops[-1].is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_serve, args=(loop,), name="union-sandbox-launcher", daemon=True
            )
            thread.start()
            if not _loops:
                atexit.register(_stop)
            _loops[:] = [loop]
        return _loops[-1]


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()  # a later submit() starts a new loop instead of waiting on this one


def _stop() -> None:
    """At exit: stop the loop, so that no launch's code runs while the interpreter shuts
    down (a local run's process then ends by its lifeline; a remote run by its soft timeout,
    unless its owner closed it)."""
    with _lock:
        loop = _loops[-1] if _loops else None
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)


def submit(coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
    """Run ``coro`` on the launcher loop; its future (cancelling it cancels the coroutine)."""
    return asyncio.run_coroutine_threadsafe(_here(coro), _launcher_loop())


async def _here(coro: Coroutine[Any, Any, _T]) -> _T:
    # The caller's context came along, including sniffio's note of the caller's event loop
    # library ("trio"), which would make anyio take this asyncio loop for trio: reset it in
    # this task's copy of the context.
    try:
        import sniffio
    except ImportError:
        pass
    else:
        sniffio.current_async_library_cvar.set(None)
    return await coro


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call, without blocking, to set ``event`` on this loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend, trio
        return _trio_waker(event)

    def wake_asyncio() -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:
            pass  # the waiter's loop is closed: nobody to wake

    return wake_asyncio


def _trio_waker(event: anyio.Event) -> Callable[[], None]:
    import trio

    token = trio.lowlevel.current_trio_token()

    def wake_trio() -> None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass  # the waiter's loop is gone: nobody to wake

    return wake_trio


async def wait(future: concurrent.futures.Future[_T], *, cancel: bool = True) -> _T:
    """The result of ``future``, awaited from the current anyio loop. If the caller is
    cancelled, ``future`` is cancelled too unless ``cancel=False`` (a future several callers
    share, such as a launch's endpoint)."""
    if not future.done():
        event = anyio.Event()
        wake = _waker(event)
        future.add_done_callback(lambda _: wake())
        try:
            await event.wait()
        except BaseException:
            if cancel:
                future.cancel()
            raise
    return future.result()
