"""Helpers for checking the engine from outside, as its test suites do."""

from __future__ import annotations

import os

__all__ = ["host_pids_with"]


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
