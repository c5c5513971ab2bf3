"""The local launcher's "pod": a process that runs the ``sandbox_server`` task body.

    python -I -m union.sandbox.flyte._local_pod RUN_NAME   < parameters as JSON on stdin

It is what a pod's ``a0`` does with the deployed task, minus Flyte: the body
(:func:`._serve.serve_task`, the one the task runs) on this process's main thread, so the
soft timeout ends it and SIGTERM (how the local launcher aborts it, as the kubelet does a
pod) stops its server. The parameters (the task spec's loader arguments, the task's inputs
with the bearer token, the launcher's pid and a nonce) come on stdin, never on the command
line or in the environment. It reports on stdout, with lines that start with
``union-sandbox-local <nonce>``: ``ready ADDR`` once the server listens, and
``end ok|aborted|failed <json message>`` last.

A lifeline thread follows the launcher's process (a pidfd): if it dies without aborting this
run, the run stops as if aborted; the server follows this process the same way.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import anyio

from ._lifeline import follow_parent
from ._serve import SandboxAborted, TaskSpec, serve_task

__all__ = ["MARK", "main"]

MARK = "union-sandbox-local"
_KILL_AFTER_S = 20.0


def _say(nonce: str, *words: str) -> None:
    print(MARK, nonce, *words, flush=True)


def main() -> int:
    params: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    nonce = str(params["nonce"])
    parent = int(params["parent"])
    follow_parent(
        parent, kill_after_s=_KILL_AFTER_S, gone=f"{MARK}: the launcher (pid {parent}) is gone"
    )
    spec = TaskSpec.from_loader_args(list(params["loader_args"]))
    body = functools.partial(
        serve_task,
        spec,
        settings=dict(os.environ),
        on_ready=lambda addr: _say(nonce, "ready", addr),
        **params["inputs"],
    )
    try:
        result = anyio.run(body)
    except SandboxAborted as exc:
        _say(nonce, "end", "aborted", json.dumps(str(exc)))
        return 143
    except Exception as exc:
        _say(nonce, "end", "failed", json.dumps(f"{type(exc).__name__}: {exc}"))
        return 1
    _say(nonce, "end", "ok", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
