"""A task pod as Kubernetes runs one, on this machine: the deployed container's ``a0``
command line (from Flyte's own serializer), run as PID 1 of a PID namespace of its own (with
its own ``/proc``), with the pod's environment; an abort is what the kubelet does when a run
is aborted and its pod deleted: SIGTERM to PID 1, SIGKILL to everything after the grace
period.

Differences from a real pod, on purpose: the network namespace is the host's (the test
reaches the server on a loopback port), there is no control plane (``a0`` gets a closed
endpoint; the sandbox task never calls it) and no image (the task's code is this checkout's).
The idea comes from the fake control plane in ``spec/flyte-fake-cp``; this is our own code.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from flyte._internal.runtime.convert import convert_from_native_to_inputs
from flyte._internal.runtime.task_serde import translate_task_to_wire
from flyte.models import SerializationContext
from google.protobuf.json_format import MessageToDict

from union.sandbox.flyte import _proctree
from union.sandbox.flyte.testing import DEAD_ENDPOINT

__all__ = ["Pod"]


class Pod:
    """``Pod(task, inputs, root=..., env=...)``: ``start()``, ``abort()``, ``wait()``,
    ``processes()`` (the pod's live processes, as host pids), ``log()``."""

    def __init__(
        self,
        task: Any,
        inputs: dict[str, Any],
        *,
        root: Path,
        env: dict[str, str],
        run_name: str = "sbx-pod-test",
    ) -> None:
        self.task, self.inputs, self.root, self.run_name = task, inputs, root, run_name
        self.extra_env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.ns: str | None = None
        self.spec = MessageToDict(
            translate_task_to_wire(
                task,
                SerializationContext(
                    project="p", domain="development", org="o", version="v1", root_dir=root
                ),
            )
        )
        pod = self.spec["taskTemplate"]["k8sPod"]["podSpec"]
        (self.container,) = pod["containers"]
        self.grace_s = float(pod.get("terminationGracePeriodSeconds", 30))

    def _argv(self) -> list[str]:
        for sub in ("out", "raw", "ckpt"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        native = anyio.run(_inputs, self.task, self.inputs)
        (self.root / "inputs.pb").write_bytes(native.SerializeToString())
        start = datetime.datetime.now(datetime.timezone.utc).isoformat()
        subs = {
            "{{.input}}": str(self.root / "inputs.pb"),
            "{{.outputPrefix}}": str(self.root / "out"),
            "{{.rawOutputDataPrefix}}": str(self.root / "raw"),
            "{{.checkpointOutputPrefix}}": str(self.root / "ckpt"),
            "{{.prevCheckpointPrefix}}": "",
            "{{.runName}}": self.run_name,
            "{{.actionName}}": "a0",
            "{{.runStartTime}}": start,
        }
        argv = [subs.get(a, a) for a in self.container["args"]]
        assert argv[0] == "a0"
        argv[0] = str(Path(sys.executable).with_name("a0"))  # the image's console script
        # PID 1 of a new PID namespace with its own /proc, as in a container (a user namespace
        # first when not root, which unprivileged user namespaces allow).
        userns = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
        return [
            "unshare",
            *userns,
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGKILL",
            *argv,
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
        env["HOME"] = str(self.root / "home")
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
        env.update(
            {
                "POD_IP": "127.0.0.1",  # downward API (status.podIP)
                "POD_NAME": f"{self.run_name}-a0-0",
                "HOSTNAME": f"{self.run_name}-a0-0",
                "_U_RUN_BASE": str(self.root),
                "_U_ORG_NAME": "o",
                "FLYTE_INTERNAL_EXECUTION_PROJECT": "p",
                "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development",
                "_U_EP_OVERRIDE": DEAD_ENDPOINT,
                "_U_INSECURE": "true",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        with open(self.root / "pod.log", "wb") as log:
            self.process = subprocess.Popen(
                self._argv(),
                cwd=self.root,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while self.ns is None and time.monotonic() < deadline:
            pid1 = self.pid1()
            if pid1 is not None:
                self.ns = os.readlink(f"/proc/{pid1}/ns/pid")
            time.sleep(0.01)
        assert self.ns is not None, self.log()

    def pid1(self) -> int | None:
        """The host pid of the pod's PID 1 (``a0``): the child of ``unshare``."""
        assert self.process is not None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def processes(self) -> list[int]:
        """Host pids of every live process of the pod: PID 1 and everything below it, in its
        PID namespace or in the sandboxes' nested ones (zombies excluded)."""
        assert self.process is not None
        return [p.pid for p in _proctree.alive(_proctree.descendants(self.process.pid))]

    def abort(self) -> tuple[float, float]:
        """The kubelet deleting the pod: SIGTERM to PID 1; SIGKILL to the namespace after the
        grace period. Returns the seconds until only PID 1 was left (the task's teardown) and
        until the last process of the pod was gone (``a0`` exited too)."""
        pid1 = self.pid1()
        assert pid1 is not None
        t0 = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        only_pid1 = None
        while procs := self.processes():
            if only_pid1 is None and procs == [pid1]:
                only_pid1 = time.monotonic() - t0
            if time.monotonic() - t0 > self.grace_s:
                os.kill(pid1, signal.SIGKILL)  # PID 1's death kills the whole namespace
                raise AssertionError(f"grace period of {self.grace_s} s expired\n{self.log()}")
            time.sleep(0.005)
        gone = time.monotonic() - t0
        return (gone if only_pid1 is None else only_pid1), gone

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return (self.root / "pod.log").read_text(errors="replace")

    def outputs_written(self) -> bool:
        return (self.root / "out" / "outputs.pb").exists()

    def error_written(self) -> bool:
        return (self.root / "out" / "error.pb").exists()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def _inputs(task: Any, values: dict[str, Any]) -> Any:
    converted = await convert_from_native_to_inputs(task.native_interface, **values)
    return converted.proto_inputs
