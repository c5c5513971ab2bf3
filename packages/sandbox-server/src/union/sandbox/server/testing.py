"""Start a real ``sandbox-server`` in a subprocess (for tests, benchmarks and local use).

    with spawn_server(backend="userns") as server:
        async with sb.remote.session(endpoint=server.endpoint, token=server.token) as sbx:
            ...

The server listens on a free loopback port (it binds port 0 and logs the address), and is
killed, with its process group, when the block ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["RunningServer", "spawn_server"]


class RunningServer:
    """A started server: its ``endpoint``, ``token`` (``None`` with ``--no-auth``),
    ``work_dir``, ``process`` and JSON ``log_path``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        endpoint: str,
        token: str | None,
        work_dir: str,
        log_path: str,
    ) -> None:
        self.process = process
        self.endpoint = endpoint
        self.token = token
        self.work_dir = work_dir
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """The server's log records so far."""
        out = []
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"raw": line.rstrip("\n")})
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.wait())

    def kill(self) -> None:
        """SIGKILL the server (a crash, from the clients' point of view)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


@contextmanager
def spawn_server(
    *args: str,
    backend: str = "userns",
    token: str | bool | None = None,
    work_dir: str | None = None,
    env: dict[str, str] | None = None,
    worker_class: str = "asyncio",
    startup_timeout: float = 60.0,
    python: str | None = None,
) -> Iterator[RunningServer]:
    """Run ``python -m union.sandbox.server`` on ``127.0.0.1`` with a free port.

    ``token=None`` runs with ``--no-auth``; ``token=True`` generates one; a string uses it
    (passed through ``$UNION_SANDBOX_TOKEN``). Extra ``args`` go on the command line.
    """
    owned = work_dir is None
    if work_dir is None:
        work_dir = tempfile.mkdtemp(prefix="union-sandbox-server-", dir="/tmp")
        os.chmod(work_dir, 0o755)
    if token is True:
        token = secrets.token_hex(24)  # never starts with "-", which `--token` would refuse
    log_fd, log_path = tempfile.mkstemp(prefix="sandbox-server-", suffix=".log")
    cmd: list[str] = [
        python or sys.executable,
        "-m",
        "union.sandbox.server",
        "--backend",
        backend,
        "--addr",
        "127.0.0.1:0",
        "--work-dir",
        work_dir,
        "--worker-class",
        worker_class,
        *args,
    ]
    child_env = dict(os.environ if env is None else env)
    child_env.pop("UNION_SANDBOX_TOKEN", None)
    if isinstance(token, str):
        child_env["UNION_SANDBOX_TOKEN"] = token
    else:
        cmd.append("--no-auth")
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
        env=child_env,
        start_new_session=True,
    )
    os.close(log_fd)
    server = RunningServer(
        process, "", token if isinstance(token, str) else None, work_dir, log_path
    )
    try:
        server.endpoint = _wait_listening(server, startup_timeout)
        yield server
    finally:
        server.terminate()
        os.unlink(log_path)
        if owned:
            shutil.rmtree(work_dir, ignore_errors=True)


def _wait_listening(server: RunningServer, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in server.logs():
            if record.get("msg") == "listening":
                return f"http://{record['addr']}"
        if not server.alive():
            break
        time.sleep(0.02)
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    server.kill()
    raise RuntimeError(f"sandbox-server did not start (exit {server.process.poll()}):\n{output}")
