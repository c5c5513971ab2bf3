"""A process that ends when the process that started it is gone.

The server a task starts and the local launcher's "pod" each follow their starter this way:
a daemon thread waits on a pidfd of the starter (polling the parent pid where pidfds are not
available), then SIGTERMs this process, and SIGKILLs it if that did not end it in time. (Not
``PR_SET_PDEATHSIG``: that fires when the *thread* that forked exits, and trio forks from a
worker thread that ends when idle.) Standard library only: the server's bootstrap imports it
before anything else.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

__all__ = ["follow_parent"]


def follow_parent(parent: int, *, kill_after_s: float, gone: str) -> None:
    """Start the lifeline on ``parent``, which must be this process's parent; exit with
    ``gone`` if it is already gone."""
    try:
        pidfd = os.pidfd_open(parent)
    except OSError:
        pidfd = None
    if os.getppid() != parent:
        sys.exit(gone)

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while os.getppid() == parent:
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(kill_after_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="lifeline").start()
