"""Helpers for checking the engine from outside, as its test suites do."""

from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["host_pids_with", "open_checking_warnings"]

NO_ISOLATION_WARNING = "NO isolation"


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
