"""Helpers for checking the engine from outside, as its test suites do."""

from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["RUN_HELPERS", "host_pids_with", "open_checking_warnings"]

NO_ISOLATION_WARNING = "NO isolation"

#: Python source for the programs the suites run in a sandbox (after ``import errno``):
#: ``err(errno)`` names an errno, ``attempt(fn, *args)`` runs an os-level call and says
#: "ok" or the errno name, ``read_text(path, n)`` reads a file's text or says ``<ERRNO>``.
RUN_HELPERS = r'''
def err(e):
    return errno.errorcode.get(e, str(e))


def attempt(fn, *args):
    """Run an os-level call: "ok" or the errno name."""
    try:
        fn(*args)
        return "ok"
    except OSError as exc:
        return err(exc.errno) if exc.errno else type(exc).__name__


def read_text(path, n=1 << 16):
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace")
    except OSError as exc:
        return "<" + err(exc.errno) + ">"
'''


async def open_checking_warnings(session: Any) -> None:
    """Open an on-device session the way the suites require: backend ``none`` must warn
    loudly (a ``UserWarning`` saying it applies NO isolation), any other backend must not
    warn at all. Raises ``AssertionError`` otherwise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await session.open()
    said = [str(w.message) for w in caught]
    if session.backend == "none":
        assert any(
            issubclass(w.category, UserWarning) and NO_ISOLATION_WARNING in str(w.message)
            for w in caught
        ), f"backend none opened without its NO isolation warning: {said}"
    else:
        assert not caught, f"backend {session.backend!r} warned at open: {said}"


def host_pids_with(needle: str) -> list[int]:
    """Pids of host processes (other than this one) whose command line contains ``needle``:
    how a test proves that nothing a sandboxed run started is still alive."""
    found = []
    raw = needle.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if raw in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found
