"""A fake Flyte 2 control plane that runs tasks for real, for testing ``sb.session()`` and
friends without a cluster.

The services are flyteidl2's own Connect stubs (WSGI, served by wsgiref on a loopback port),
so the Flyte SDK's real client code talks to it: DeployTask / GetTaskDetails / ListTasks,
SelectCluster, UploadInputs, CreateRun (by task id, or by spec after ``.override()``),
GetRunDetails / GetActionDetails / WatchActionDetails (the pod appears in
``attempts[-1].log_context`` once the "pod" exists), AbortRun / AbortAction and
GetActionData. Its data plane (``fake_dataproxy.py``) proxies ``/dataplane/pod/v1/...`` to
the pods and answers the Kubernetes pod API.

A run executes its deployed task for real, with one of two executors:

- ``"thread"``: Flyte's local mode in this process, on a loop in a thread; an abort cancels
  it (the body sees ``CancelledError``). Per-run settings (where the server listens) go in
  the run's custom context.
- ``"process"``: the real pod entrypoint ``a0`` with the deployed container's arguments and
  a pod's environment, optionally as PID 1 of a PID namespace of its own (``pid1=True``); an
  abort is the kubelet's: SIGTERM, SIGKILL after the grace period.

Each pod gets its own loopback address (127.0.1.N), so every one listens on port 8080.
Knobs for failure cases: ``hold_pods`` (runs stay queued: no pod ever), ``break_pods``
(pods get an unusable listen address: the body fails), ``token`` (RPCs without
``Authorization: Bearer <token>`` are refused as unauthenticated).

Adapted from the ideas of the verified reference in ``spec/flyte-fake-cp``; our own code.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cluster import payload_pb2 as cluster_pb
from flyteidl2.cluster import service_connect as cluster_connect
from flyteidl2.common import identifier_pb2 as ids
from flyteidl2.common import phase_pb2 as ph
from flyteidl2.common import run_pb2 as common_run
from flyteidl2.core import execution_pb2 as ex
from flyteidl2.dataproxy import dataproxy_service_connect as dp_connect
from flyteidl2.dataproxy import dataproxy_service_pb2 as dp
from flyteidl2.task import common_pb2 as task_common
from flyteidl2.task import task_definition_pb2 as tdef
from flyteidl2.task import task_service_connect as task_connect
from flyteidl2.task import task_service_pb2 as tsvc
from flyteidl2.workflow import run_definition_pb2 as rdef
from flyteidl2.workflow import run_service_connect as run_connect
from flyteidl2.workflow import run_service_pb2 as rsvc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["FakeControlPlane", "FakeDataplane", "FakeRun"]

TERMINAL = {
    ph.ACTION_PHASE_SUCCEEDED,
    ph.ACTION_PHASE_FAILED,
    ph.ACTION_PHASE_ABORTED,
    ph.ACTION_PHASE_TIMED_OUT,
}
ADDR_ENV, WORK_DIR_ENV = "UNION_SANDBOX_ADDR", "UNION_SANDBOX_WORK_DIR"


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class FakeRun:
    """One run: its action details (what Get/Watch return), its pod, inputs and outputs."""

    name: str
    details: rdef.ActionDetails
    pod: str
    namespace: str
    pod_ip: str
    inputs: Any
    outputs: Any = None
    version: int = 0
    cancel: Callable[[], None] | None = None
    aborted: bool = False
    log: list[str] = field(default_factory=list)
    root: Path | None = None

    @property
    def phase(self) -> str:
        return str(ph.ActionPhase.Name(self.details.status.phase)).removeprefix("ACTION_PHASE_")


class _State:
    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str], tdef.TaskSpec] = {}
        self.inputs: dict[str, Any] = {}
        self.runs: dict[str, FakeRun] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.cond = threading.Condition()
        self.counter = itertools.count(1)

    def update(self, run: FakeRun, phase: int, *, error: str = "", event: str = "") -> None:
        with self.cond:
            details = run.details
            if details.status.phase in TERMINAL:
                return
            details.status.phase = phase
            if details.attempts:
                attempt = details.attempts[0]
            else:
                attempt = details.attempts.add(attempt=1, start_time=_now(), cluster="fake")
            attempt.phase = phase
            if event:
                attempt.cluster_events.add(message=event, occurred_at=_now())
            started = phase in (ph.ACTION_PHASE_INITIALIZING, ph.ACTION_PHASE_RUNNING)
            if started and not attempt.logs_available:  # the pod exists from here on
                details.status.attempts, attempt.logs_available = 1, True
                attempt.log_context.CopyFrom(
                    ex.LogContext(
                        primary_pod_name=run.pod,
                        pods=[
                            ex.PodLogContext(
                                namespace=run.namespace,
                                pod_name=run.pod,
                                primary_container_name="primary",
                            )
                        ],
                    )
                )
            if phase in TERMINAL:
                details.status.end_time.CopyFrom(_now())
                attempt.end_time.CopyFrom(details.status.end_time)
            if error:
                details.error_info.message = attempt.error_info.message = error
            run.version += 1
            self.cond.notify_all()

    def snapshot(self, run: FakeRun) -> rdef.ActionDetails:
        with self.cond:
            copy = rdef.ActionDetails()
            copy.CopyFrom(run.details)
            return copy

    def set_cancel(self, run: FakeRun, cancel: Callable[[], None]) -> None:
        with self.cond:
            run.cancel, fire = cancel, run.aborted
        if fire:  # the abort came before the executor was ready for it
            cancel()


class _Unimplemented:
    """The stubs want every RPC of a service; the ones we do not need answer UNIMPLEMENTED."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def unimplemented(request: Any, ctx: Any) -> Any:
            raise ConnectError(Code.UNIMPLEMENTED, f"fake control plane: {name}")

        return unimplemented


class _Tasks(_Unimplemented):
    def __init__(self, state: _State) -> None:
        self.st = state

    def deploy_task(self, request: Any, ctx: Any) -> Any:
        self.st.calls.append(("DeployTask", request.task_id.name, request.task_id.version))
        self.st.tasks[(request.task_id.name, request.task_id.version)] = request.spec
        return tsvc.DeployTaskResponse()

    def get_task_details(self, request: Any, ctx: Any) -> Any:
        tid = request.task_id
        self.st.calls.append(("GetTaskDetails", tid.name, tid.version))
        spec = self.st.tasks.get((tid.name, tid.version))
        if spec is None:
            raise ConnectError(Code.NOT_FOUND, f"task {tid.name}@{tid.version}")
        return tsvc.GetTaskDetailsResponse(details=tdef.TaskDetails(task_id=tid, spec=spec))

    def list_tasks(self, request: Any, ctx: Any) -> Any:  # auto_version="latest": newest first
        self.st.calls.append(("ListTasks",))
        names = {v for f in request.request.filters if f.field == "name" for v in f.values}
        project = request.project_id
        found = [
            tdef.Task(
                task_id=tdef.TaskIdentifier(
                    org=project.organization,
                    project=project.name,
                    domain=project.domain,
                    name=name,
                    version=version,
                )
            )
            for name, version in reversed(list(self.st.tasks))
            if not names or name in names
        ]
        return tsvc.ListTasksResponse(tasks=found)


class _Cluster(_Unimplemented):
    def select_cluster(self, request: Any, ctx: Any) -> Any:
        return cluster_pb.SelectClusterResponse()  # empty: keep using the control plane


class _DataProxy(_Unimplemented):
    def __init__(self, state: _State) -> None:
        self.st = state

    def upload_inputs(self, request: Any, ctx: Any) -> Any:
        uri = f"fake://inputs/{next(self.st.counter)}/inputs.pb"
        self.st.inputs[uri] = request.inputs
        self.st.calls.append(("UploadInputs", [i.name for i in request.inputs.literals]))
        return dp.UploadInputsResponse(offloaded_input_data=common_run.OffloadedInputData(uri=uri))

    def get_action_data(self, request: Any, ctx: Any) -> Any:
        run = self.st.runs[request.action_id.run.name]
        return dp.GetActionDataResponse(inputs=run.inputs, outputs=run.outputs)


class _Runs(_Unimplemented):
    def __init__(self, cp: FakeControlPlane) -> None:
        self.cp, self.st = cp, cp.st

    def _run(self, name: str) -> FakeRun:
        if name not in self.st.runs:
            raise ConnectError(Code.NOT_FOUND, f"run {name}")
        return self.st.runs[name]

    def create_run(self, request: Any, ctx: Any) -> Any:
        st = self.st
        if request.HasField("run_id"):
            rid = ids.RunIdentifier()
            rid.CopyFrom(request.run_id)
        else:
            p = request.project_id
            rid = ids.RunIdentifier(
                org=p.organization, project=p.name, domain=p.domain, name=f"r{next(st.counter)}"
            )
        if rid.name in st.runs:
            raise ConnectError(Code.ALREADY_EXISTS, f"run {rid.name} exists")
        kind = request.WhichOneof("task")
        if kind == "task_id":
            spec = st.tasks.get((request.task_id.name, request.task_id.version))
            if spec is None:
                raise ConnectError(Code.NOT_FOUND, f"task {request.task_id.name}")
        elif kind == "task_spec":  # by value, after TaskDetails.override(...)
            spec = request.task_spec
        else:
            raise ConnectError(Code.UNIMPLEMENTED, f"fake: CreateRun with {kind}")
        index = next(st.counter)
        run = FakeRun(
            name=rid.name,
            pod=f"{rid.name}-a0-0",
            namespace=f"{rid.project}-{rid.domain}",
            pod_ip=f"127.0.1.{index % 250 + 2}",
            inputs=st.inputs[request.offloaded_input_data.uri],
            details=rdef.ActionDetails(
                id=ids.ActionIdentifier(run=rid, name="a0"),
                task=spec,
                status=rdef.ActionStatus(phase=ph.ACTION_PHASE_QUEUED, start_time=_now()),
            ),
        )
        tid = spec.task_template.id
        run.details.metadata.task.id.CopyFrom(
            tdef.TaskIdentifier(
                org=tid.org,
                project=tid.project,
                domain=tid.domain,
                name=tid.name,
                version=tid.version,
            )
        )
        st.runs[run.name] = run
        st.calls.append(("CreateRun", run.name, kind))
        self.cp.launch(run, spec)
        return rsvc.CreateRunResponse(
            run=rdef.Run(
                action=rdef.Action(
                    id=run.details.id, metadata=run.details.metadata, status=run.details.status
                )
            )
        )

    def abort_run(self, request: Any, ctx: Any) -> Any:
        self.cp.abort(request.run_id.name, request.reason)
        return rsvc.AbortRunResponse()

    def abort_action(self, request: Any, ctx: Any) -> Any:
        self.cp.abort(request.action_id.run.name, request.reason)
        return rsvc.AbortActionResponse()

    def get_run_details(self, request: Any, ctx: Any) -> Any:
        self.st.calls.append(("GetRunDetails", request.run_id.name))
        run = self._run(request.run_id.name)
        return rsvc.GetRunDetailsResponse(details=rdef.RunDetails(action=self.st.snapshot(run)))

    def get_action_details(self, request: Any, ctx: Any) -> Any:
        self.st.calls.append(("GetActionDetails", request.action_id.run.name))
        run = self._run(request.action_id.run.name)
        return rsvc.GetActionDetailsResponse(details=self.st.snapshot(run))

    def watch_action_details(self, request: Any, ctx: Any) -> Iterator[Any]:
        """The current state, then every change, until the run ends."""
        self.st.calls.append(("WatchActionDetails", request.action_id.run.name))
        run, seen = self._run(request.action_id.run.name), -1
        while True:
            with self.st.cond:
                self.st.cond.wait_for(lambda s=seen: run.version != s, timeout=30)
                seen, snapshot = run.version, self.st.snapshot(run)
            yield rsvc.WatchActionDetailsResponse(details=snapshot)
            if snapshot.status.phase in TERMINAL:
                return


class FakeControlPlane:
    """A fake cluster on loopback: ``endpoint`` for ``flyte.init``, ``dataplane.url`` for
    ``UNION_SANDBOX_DATAPROXY_URL``; ``deploy(task)``, ``runs``, ``calls``, ``close()``."""

    def __init__(
        self,
        *,
        executor: str = "thread",
        pid1: bool = False,
        grace_s: float = 10.0,
        token: str | None = None,
        workdir: Path | None = None,
        code_root: Path | None = None,
        pod_port: int = 8080,
    ) -> None:
        self.st = _State()
        self.executor = executor
        self.executors: dict[str, str] = {}  # task name -> executor, overriding the default
        self.pid1, self.grace_s, self.token, self.pod_port = pid1, grace_s, token, pod_port
        self.hold_pods = False
        self.break_pods = False
        #: Extra environment of every "process" pod (what a cluster's admission adds).
        self.pod_env: dict[str, str] = {}
        self.code_root = code_root
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fake-cp-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        apps = [
            run_connect.RunServiceWSGIApplication(_Runs(self)),
            task_connect.TaskServiceWSGIApplication(_Tasks(self.st)),
            cluster_connect.ClusterServiceWSGIApplication(_Cluster()),
            dp_connect.DataProxyServiceWSGIApplication(_DataProxy(self.st)),
        ]

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            # Buffered and de-chunked: wsgiref does not decode chunked bodies, and connectrpc
            # drains wsgi.input to EOF on an error, which a raw socket never reaches.
            environ["wsgi.input"] = io.BytesIO(_read_body(environ))
            if self.token is not None and environ.get("HTTP_AUTHORIZATION") != (
                f"Bearer {self.token}"
            ):
                self.st.calls.append(("Unauthenticated", environ["PATH_INFO"]))
                start_response("401 Unauthorized", [("content-type", "application/json")])
                return [b'{"code": "unauthenticated", "message": "fake: bad or no credentials"}']
            for each in apps:
                if environ["PATH_INFO"].startswith(each.path):
                    return each(environ, start_response)
            start_response("404 Not Found", [("content-type", "text/plain")])
            return [b"not found"]

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Quiet)
        self.port = self.server.server_address[1]
        self.endpoint = f"dns:///127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.dataplane = FakeDataplane(self._pod_ip, pod_port=pod_port)

    # -- what tests use -------------------------------------------------------------------

    @property
    def calls(self) -> list[tuple[Any, ...]]:
        return list(self.st.calls)

    @property
    def runs(self) -> dict[str, FakeRun]:
        return dict(self.st.runs)

    def init_flyte(self, *, command_token: str = "tok") -> None:
        """``flyte.init`` against this control plane (project p, domain development, org
        o); the client authenticates with ``command_token``."""
        import flyte

        flyte.init(
            endpoint=self.endpoint,
            insecure=True,
            org="o",
            project="p",
            domain="development",
            auth_type="ExternalCommand",
            command=["echo", command_token],
            rpc_retries=0,
        )

    def deploy(self, task: Any, version: str = "v1") -> None:
        """Store ``task``'s spec as Flyte's serializer makes it (no image build, no code
        bundle: the executors run this checkout's code)."""
        from flyte.extras._serialize import serialize  # with the default inputs, as deploy
        from flyte.models import SerializationContext

        spec = serialize(
            task,
            SerializationContext(
                project="p",
                domain="development",
                org="o",
                version=version,
                root_dir=self.code_root or Path.cwd(),
            ),
        )
        self.st.tasks[(spec.task_template.id.name, version)] = spec

    def abort(self, name: str, reason: str = "aborted by the test") -> None:
        run = self.st.runs.get(name)
        if run is None:
            raise ConnectError(Code.NOT_FOUND, f"run {name}")
        self.st.calls.append(("Abort", name, reason))
        with self.st.cond:
            if run.details.status.phase in TERMINAL or run.aborted:
                return
            run.aborted, cancel = True, run.cancel
            run.details.abort_info.reason = reason
        if run.details.status.phase == ph.ACTION_PHASE_QUEUED and cancel is None:
            self.st.update(run, ph.ACTION_PHASE_ABORTED)  # never got a pod
        elif cancel is not None:
            cancel()  # the executor reports ABORTED once the task has stopped

    def wait_phase(self, name: str, phases: set[str], timeout: float = 30.0) -> str:
        run = self.st.runs[name]
        with self.st.cond:
            self.st.cond.wait_for(lambda: run.phase in phases, timeout=timeout)
        return run.phase

    def close(self) -> None:
        for run in list(self.st.runs.values()):
            if run.details.status.phase not in TERMINAL:
                self.abort(run.name, "fake control plane closing")
        for proc in self._procs:
            try:
                proc.wait(self.grace_s + 5)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
        for thread in self._threads:
            thread.join(self.grace_s + 5)
        self.server.shutdown()
        self.server.server_close()
        self.dataplane.close()

    # -- executors -------------------------------------------------------------------------

    def _pod_ip(self, namespace: str, pod: str) -> str | None:
        run = next(
            (r for r in self.st.runs.values() if (r.namespace, r.pod) == (namespace, pod)), None
        )
        return None if run is None else run.pod_ip

    def _addr(self, run: FakeRun) -> str:
        return "127.0.0.1:notaport" if self.break_pods else f"{run.pod_ip}:{self.pod_port}"

    def launch(self, run: FakeRun, spec: tdef.TaskSpec) -> None:
        run.root = self.workdir / run.name
        run.root.mkdir(parents=True)
        if self.hold_pods:
            self.st.update(
                run,
                ph.ACTION_PHASE_QUEUED,
                event="0/3 nodes are available: 3 Insufficient cpu (fake: pods are held)",
            )
            return
        template = spec.task_template
        if template.container.args:
            args, grace = list(template.container.args), self.grace_s
        else:  # with a pod template, the container lives in k8sPod.podSpec
            pod_spec = MessageToDict(template.k8s_pod.pod_spec)
            primary = template.config.get("primary_container_name", "primary")
            container = next(c for c in pod_spec["containers"] if c["name"] == primary)
            args = container["args"]
            grace = float(pod_spec.get("terminationGracePeriodSeconds", self.grace_s))
        executor = self.executors.get(template.id.name, self.executor)
        if executor == "thread":
            self._thread(run, args)
        else:
            self._process(run, args, min(grace, self.grace_s))

    def _thread(self, run: FakeRun, args: list[str]) -> None:
        import flyte
        from flyte._internal.runtime.convert import convert_from_native_to_outputs
        from flyte.types import TypeEngine
        from flyteidl2.core import literals_pb2

        assert run.root is not None
        settings = {ADDR_ENV: self._addr(run), WORK_DIR_ENV: str(run.root / "work")}

        async def main() -> None:
            task = _load_task(args)
            kwargs = await TypeEngine.literal_map_to_kwargs(
                literals_pb2.LiteralMap(literals={i.name: i.value for i in run.inputs.literals}),
                task.native_interface.get_input_types(),
            )
            self.st.update(run, ph.ACTION_PHASE_RUNNING)
            runner = flyte.with_runcontext(mode="local", name=run.name, custom_context=settings)
            outputs = await (await runner.run.aio(task, **kwargs)).outputs.aio()
            value = tuple(outputs) if len(outputs) > 1 else (outputs[0] if outputs else None)
            native = await convert_from_native_to_outputs(value, task.native_interface)
            run.outputs = native.proto_outputs

        def target() -> None:
            loop = asyncio.new_event_loop()
            job = loop.create_task(main())
            self.st.set_cancel(run, lambda: loop.call_soon_threadsafe(job.cancel))
            self.st.update(run, ph.ACTION_PHASE_INITIALIZING, event="fake: pod started")
            try:
                loop.run_until_complete(job)
                self.st.update(run, ph.ACTION_PHASE_SUCCEEDED)
            except asyncio.CancelledError:
                self.st.update(run, ph.ACTION_PHASE_ABORTED)
            except BaseException as exc:
                self.st.update(run, ph.ACTION_PHASE_FAILED, error=f"{type(exc).__name__}: {exc}")
            finally:
                loop.close()

        thread = threading.Thread(target=target, daemon=True, name=f"fake-pod-{run.pod}")
        self._threads.append(thread)
        thread.start()

    def _process(self, run: FakeRun, args: list[str], grace: float) -> None:
        root, rid = run.root, run.details.id.run
        assert root is not None
        for sub in ("out", "raw", "ckpt", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "inputs.pb").write_bytes(run.inputs.SerializeToString())
        subs = {
            "{{.input}}": str(root / "inputs.pb"),
            "{{.outputPrefix}}": str(root / "out"),
            "{{.rawOutputDataPrefix}}": str(root / "raw"),
            "{{.checkpointOutputPrefix}}": str(root / "ckpt"),
            "{{.prevCheckpointPrefix}}": "",
            "{{.runName}}": run.name,
            "{{.actionName}}": "a0",
            "{{.runStartTime}}": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        argv = [subs.get(a, a) for a in args]
        argv[0] = str(Path(sys.executable).with_name(argv[0]))  # a0: this venv's console script
        if self.pid1:
            userns = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
            argv = ["unshare", *userns, "--pid", "--fork", "--mount-proc", *argv]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
        env.update(
            {
                "HOME": str(root / "home"),
                "POD_IP": run.pod_ip,
                "POD_NAME": run.pod,
                "HOSTNAME": run.pod,
                "_U_RUN_BASE": str(root),
                "_U_ORG_NAME": rid.org or "o",
                "FLYTE_INTERNAL_EXECUTION_PROJECT": rid.project,
                "FLYTE_INTERNAL_EXECUTION_DOMAIN": rid.domain,
                "_U_EP_OVERRIDE": self.endpoint,
                "_U_INSECURE": "true",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
                ADDR_ENV: self._addr(run),
                WORK_DIR_ENV: str(root / "work"),
            }
        )
        env.update(self.pod_env)
        if self.code_root is not None:  # the "image" holds the user's code
            env["PYTHONPATH"] = str(self.code_root)
        with open(root / "pod.log", "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.code_root or root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        self.st.update(run, ph.ACTION_PHASE_INITIALIZING, event="fake: container created")
        self.st.update(run, ph.ACTION_PHASE_RUNNING, event="fake: container started")

        def kubelet_abort() -> None:
            def stop() -> None:
                if self.pid1:  # the namespace's PID 1 (a0), not the unshare wrapper
                    for pid in _children(proc.pid):
                        os.kill(pid, signal.SIGTERM)
                else:
                    _killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    run.log.append(f"grace period of {grace} s expired: SIGKILL")
                    _killpg(proc.pid, signal.SIGKILL)

            threading.Thread(target=stop, daemon=True).start()

        def reap() -> None:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            _killpg(proc.pid, signal.SIGKILL)  # whatever the task left in its "container"
            code = proc.wait()
            run.log.append(f"exit code {code}")
            out = root / "out"
            if run.aborted:
                self.st.update(run, ph.ACTION_PHASE_ABORTED)
            elif code == 0 and not (out / "error.pb").exists():
                if (out / "outputs.pb").exists():
                    run.outputs = task_common.Outputs.FromString((out / "outputs.pb").read_bytes())
                self.st.update(run, ph.ACTION_PHASE_SUCCEEDED)
            else:
                tail = (root / "pod.log").read_text(errors="replace").strip().splitlines()[-3:]
                self.st.update(
                    run,
                    ph.ACTION_PHASE_FAILED,
                    error=f"exit code {code}: " + " | ".join(tail),
                )

        self.st.set_cancel(run, kubelet_abort)
        thread = threading.Thread(target=reap, daemon=True)
        self._threads.append(thread)
        thread.start()


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
        return bytes(stream.read(int(environ.get("CONTENT_LENGTH") or 0)))
    out = []
    while size := int(stream.readline().split(b";")[0], 16):
        out.append(stream.read(size))
        stream.readline()
    while stream.readline() not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return b"".join(out)


def _killpg(pgid: int, signo: int) -> None:
    try:
        os.killpg(pgid, signo)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _load_task(args: list[str]) -> Any:
    import importlib

    i = args.index("--resolver")
    module, _, cls = args[i + 1].rpartition(".")
    return getattr(importlib.import_module(module), cls)().load_task(args[i + 2 :])


# -- the data plane ------------------------------------------------------------------------
#
# Union's pod proxy and the bit of the Kubernetes API the pod-IP resolver reads, as one ASGI
# app (hypercorn, on its own loop in a thread):
# - /dataplane/pod/v1/{namespace}/{pod}/{path} -> http://{pod IP}:{port}/{path}, streamed both
#   ways with keep-alive on both sides (a reverse proxy); 502 while nothing listens there yet,
#   404 for an unknown pod; the Authorization header passes through;
# - /api/v1/namespaces/{namespace}/pods/{pod} -> {"status": {"podIP": ...}}, 403 without the
#   expected service-account token.

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te"}


class FakeDataplane:
    """``FakeDataplane(pods)``: ``pods(namespace, name)`` gives a pod's IP (or ``None``).
    ``url`` is the base URL (``UNION_SANDBOX_DATAPROXY_URL``); ``sa_token`` the token the
    Kubernetes API wants."""

    def __init__(self, pods: Callable[[str, str], str | None], *, pod_port: int = 8080) -> None:
        self._pods = pods
        self._pod_port = pod_port
        self.sa_token = "fake-service-account-token"
        self.forwarded = 0
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-dataplane", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        asyncio.set_event_loop(self._loop)
        config = Config()
        config.bind = [f"fd://{os.dup(self._sock.fileno())}"]
        config.accesslog = config.errorlog = None
        config.keep_alive_timeout = 60

        async def main() -> None:
            self._stop = asyncio.Event()
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None), trust_env=False)
            self._loop.call_soon(self._ready.set)
            try:
                await serve(self._app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
            finally:
                await self._client.aclose()

        self._loop.run_until_complete(main())

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._sock.close()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if path.startswith("/dataplane/pod/v1/"):
            await self._proxy(scope, receive, send, path[len("/dataplane/pod/v1/") :])
        elif path.startswith("/api/v1/namespaces/"):
            await self._pod_api(scope, send, path[len("/api/v1/namespaces/") :])
        else:
            await _answer(send, 404, b"not found")

    async def _pod_api(self, scope: dict[str, Any], send: Any, tail: str) -> None:
        namespace, _, rest = tail.partition("/pods/")
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != f"Bearer {self.sa_token}".encode():
            await _answer(send, 403, b'{"reason": "Forbidden"}')
            return
        ip = self._pods(namespace, rest)
        if ip is None:
            await _answer(send, 404, b'{"reason": "NotFound"}')
            return
        body = json.dumps({"metadata": {"name": rest}, "status": {"podIP": ip}}).encode()
        await _answer(send, 200, body, b"application/json")

    async def _proxy(self, scope: dict[str, Any], receive: Any, send: Any, tail: str) -> None:
        namespace, _, rest = tail.partition("/")
        pod, _, path = rest.partition("/")
        ip = self._pods(namespace, pod)
        if ip is None:
            await _answer(send, 404, f"no pod {namespace}/{pod}".encode())
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        query = scope.get("query_string", b"").decode()
        url = f"http://{ip}:{self._pod_port}/{path}" + (f"?{query}" if query else "")

        async def body() -> Any:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        request = self._client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:  # the pod is known, nothing listens yet
            await _answer(send, 502, f"upstream {ip}:{self._pod_port}: {exc!r}".encode())
            return
        self.forwarded += 1
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _answer(send: Any, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
