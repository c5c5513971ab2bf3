"""The local launcher: the ``sandbox_server`` task body in a process of this machine, for
development and tests (Flyte's local mode, or no cluster configured).

The process (:mod:`._local_pod`) stands in for the pod: the same body, its soft timeout and
its SIGTERM handling are real; its server listens on a free loopback port and keeps its work
dir under a private temporary directory. An abort is what the kubelet does to a pod: SIGTERM,
then SIGKILL if the body has not ended after the pod's grace period. Its log (the body's and
the server's lines) is ``pod.log`` in that directory, which goes when the run ends.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import anyio.abc

from ._launch import Endpoint, Launch, LaunchRequest, Stage
from ._local_pod import MARK
from ._serve import TaskSpec
from ._settings import ADDR_ENV, POD_GRACE_S, WORK_DIR_ENV

__all__ = ["LocalLaunch", "start_local"]

_TAIL = 20


async def start_local(request: LaunchRequest) -> LocalLaunch:
    """Start the body's process for ``request``; the launch follows it from here."""
    spec = request.spec
    assert spec is not None, "the session checked that local mode has a task spec"
    inputs = {
        "cpu_ceiling_milli": spec.cpu_ceiling_milli,
        "mem_ceiling_mb": spec.mem_ceiling_mb,
        "gpu_ceiling": spec.gpu_ceiling,
        **request.inputs,
    }
    run_dir = Path(tempfile.mkdtemp(prefix=f"union-sandbox-{request.name}-"))
    # Others may pass through (the sandboxes of the userns backend run as another uid and
    # reach the work dir through it), not list it.
    run_dir.chmod(0o711)
    nonce = secrets.token_hex(8)
    env = {
        **os.environ,
        ADDR_ENV: "127.0.0.1:0",
        WORK_DIR_ENV: str(run_dir / "work"),
        "PYTHONUNBUFFERED": "1",
    }
    process = await anyio.open_process(
        # The run's name only labels the process (ps); its parameters come on stdin.
        [sys.executable, "-I", "-m", "union.sandbox.flyte._local_pod", request.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    params = {
        "nonce": nonce,
        "parent": os.getpid(),
        "loader_args": spec.loader_args(),
        "inputs": inputs,
    }
    assert process.stdin is not None
    await process.stdin.send(json.dumps(params).encode())
    await process.stdin.aclose()
    launch = LocalLaunch(request.name, process, run_dir, nonce, spec)
    launch.start()
    return launch


class LocalLaunch(Launch):
    """The body's process, followed through its output until it exits."""

    def __init__(
        self,
        name: str,
        process: anyio.abc.Process,
        run_dir: Path,
        nonce: str,
        spec: TaskSpec,
    ) -> None:
        super().__init__(name, url=(run_dir / "pod.log").as_uri())
        self._process = process
        self._run_dir = run_dir
        self._nonce = nonce
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self._aborting = ""
        self._follower: asyncio.Task[None] | None = None
        self.set_phase("RUNNING", f"local process {process.pid}")
        self.note(Stage.POD, f"local process {process.pid} ({spec.backend} backend)")

    def start(self) -> None:
        self._follower = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        prefix = f"{MARK} {self._nonce} "
        ending = ("failed", json.dumps("the local sandbox process ended without a word"))
        assert self._process.stdout is not None
        # Plain writes of a few lines at a time: they do not block the launcher loop.
        log_path = self._run_dir / "pod.log"
        with open(log_path, "w", encoding="utf-8", errors="replace") as log:  # noqa: ASYNC230
            pending = b""
            async for chunk in self._process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    log.write(line + "\n")
                    if not line.startswith(prefix):
                        self._tail.append(line)
                        continue
                    word, _, rest = line[len(prefix) :].partition(" ")
                    if word == "ready":
                        self.resolved(
                            Endpoint(
                                url=f"http://{rest}", ip="127.0.0.1", work_dir=self._work_dir()
                            )
                        )
                    elif word == "end":
                        kind, _, message = rest.partition(" ")
                        ending = (kind, message)
                log.flush()
        code = await self._process.wait()
        kind, message = ending
        try:
            reason = str(json.loads(message))
        except ValueError:
            reason = message
        if self._aborting:
            self.finished("ABORTED", self._aborting)
        elif kind == "ok" and code == 0:
            self.finished(
                "SUCCEEDED", f"its server stopped at the session's soft timeout ({reason})"
            )
        else:
            tail = "\n".join(self._tail)
            self.finished("FAILED", f"exit status {code}: {reason}\n{tail}")
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def _work_dir(self) -> str:
        return str(self._run_dir / "work")

    async def abort(self, reason: str) -> None:
        """SIGTERM the body's process; SIGKILL it after the pod's grace period; return once
        it and its server are gone."""
        if self.ended.done():
            return
        self._aborting = reason or "aborted"
        try:
            os.kill(self._process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        with anyio.move_on_after(POD_GRACE_S):
            await self._process.wait()
        if self._process.returncode is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._follower is not None:
            await self._follower
