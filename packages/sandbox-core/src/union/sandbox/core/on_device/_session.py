"""``OnDeviceSession``: sandboxed children of the current process, no daemon."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ..constants import DEFAULT_RUN_TIMEOUT_S, DEVNULL, INHERIT, MAX_CAPTURED_BYTES, PIPE
from ..errors import BackendUnavailableError
from ..policy import (
    NetworkPolicy,
    resolve_run_network,
    validate_env,
    validate_network,
    validate_script_type,
    validate_timeout,
)
from ..process import (
    InputStream,
    IsolationReport,
    OutputStream,
    Process,
    Termination,
    TerminationKind,
)
from ..request_size import args_fit, check_cmd, check_run_args
from ..resources import to_limits
from ..session import SessionBase
from . import backends, cgroups, quotas
from .cgroups import CgroupRun, CgroupSession, CgroupSupport
from .engine import RunChannel, Supervisor, SupervisorSpec, pipe_pull
from .files import PutData, open_for_read, put_file, read_all
from .fs import FsLayout, check_work_dir, gpu_devices
from .limits import LimitPlan, plan_limits, session_mechanisms, session_pids_budget
from .slots import RunSlot, SlotPool
from .venv import ensure_session_venv
from .workdir import WorkDir

if TYPE_CHECKING:
    # The egress (and the proxy code behind it) loads with the first proxied run.
    from .egress import RunEgress, SessionEgress

__all__ = ["OnDeviceSession"]

# release_idle() stops waiting for cgroups to empty after this long without progress.
_CGROUP_STALL_S = 0.2

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Above this many characters a script goes to the command through a memfd instead of argv
# (a single argv string is limited to 128 KiB by the kernel; see request_size.py).
_ARGV_SCRIPT_LIMIT = 64 * 1024


class _RunDriver:
    """Adapts a :class:`RunChannel` to the :class:`Process` driver protocol, and reads what
    the run's cgroup saw (an OOM kill, the pids limit) to say why the run ended."""

    def __init__(
        self,
        session: OnDeviceSession,
        channel: RunChannel,
        slot: RunSlot,
        egress: RunEgress | None,
    ) -> None:
        self.backend = session.backend
        self._session = session
        self._channel = channel
        self._slot = slot
        self._observed = False
        self._egress = egress
        # Forks the session's own pids limit had refused when this run started: a refusal
        # counted later happened while it ran (another run's, exited 0, is not blamed on it).
        self._session_pids_hits = session._session_pids_hits()

    async def wait_exit(self) -> Termination:
        termination = await self._channel.wait_exit()
        if self._slot.cgroup is None or self._observed:
            return termination
        self._observed = True
        oom_kills, pids_limit_hits = self._slot.observe()
        if termination.kind not in (TerminationKind.EXIT, TerminationKind.SIGNAL):
            return termination
        if oom_kills:
            return dataclasses.replace(
                termination, kind=TerminationKind.OOM, detail="the memory limit was exceeded"
            )
        if termination.returncode != 0 and (
            pids_limit_hits or self._session_pids_limit_hit_since_start()
        ):
            return dataclasses.replace(
                termination,
                kind=TerminationKind.PIDS_LIMIT,
                detail="the pids limit stopped it from forking",
            )
        return termination

    def _session_pids_limit_hit_since_start(self) -> bool:
        if self._session_pids_hits is None:
            return False
        return (self._session._session_pids_hits() or 0) > self._session_pids_hits

    async def send_signal(self, signo: int) -> None:
        await self._channel.send_signal(signo)

    async def kill(self, kind: TerminationKind) -> None:
        await self._channel.kill(kind)

    async def release(self) -> None:
        channel = self._channel
        await channel.aclose()
        self._session._live.discard(channel)
        # Reusable only if the run is known to be over, everything in its cgroups reaped,
        # and their counters read (so the next run's count from there).
        reusable = channel.ended_clean and (self._slot.cgroup is None or self._observed)
        serial = channel.idle_init if reusable else 0
        if self._egress is not None:
            # Before the slot can go to another run: this run's proxies stop (its
            # connections closed), and its init's listeners stay only with its init.
            session = self._session
            kept = await session._egress.detach(self._egress, keep=bool(serial))
            self._slot.proxy = kept
            if serial and kept is None:
                if session._supervisor is not None:
                    await session._supervisor.retire(serial)
                serial = 0
        self._slot.init_serial = serial
        await self._session._release_slot(self._slot, reusable)


class OnDeviceSession(SessionBase):
    """A sandbox session whose runs are children of this process.

    Create it with :func:`union.sandbox.on_device.session`. Each ``run()`` gets fresh pid,
    mount, IPC and (unless ``network_mode="open"``) network namespaces, a fresh ``/tmp`` and
    ``/dev/shm``, no capabilities, no_new_privs, Landlock and seccomp (isolating backends);
    the work dir and the session venv persist across runs.
    """

    def __init__(
        self,
        *,
        backend: str = "bubblewrap",
        resources: Any = None,
        default_cwd: str = "",
        client_id: str | None = None,
        network_mode: str = "blocked",
        network_allowlist: Iterable[str] | None = None,
        network_denylist: Iterable[str] | None = None,
        network_proxy_url: str | None = None,
        network_socks_url: str | None = None,
        host_work_dir: str | None = None,
        timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
        read_only_paths: Iterable[str] | None = None,
        read_write_paths: Iterable[str] | None = None,
        max_output_bytes: int = MAX_CAPTURED_BYTES,
        best_effort_limits: bool = False,
        session_pids: int | None = None,
    ) -> None:
        self.backend = backends.canonical_backend(backend)
        self.limits = to_limits(resources)
        if session_pids is not None and (
            isinstance(session_pids, bool) or not isinstance(session_pids, int) or session_pids <= 0
        ):
            raise ValueError(
                "session_pids must be a positive int (the most processes all runs of the "
                f"session may have at once), got {session_pids!r}"
            )
        #: Processes all runs of this session may have at once (see docs/limits.md).
        self.session_pids = session_pids_budget(session_pids, self.limits.pids)
        if self.limits.gpu and self.backend != "bubblewrap":
            raise ValueError(
                "GPU sandboxes require the bubblewrap backend (CUDA's cuInit fails inside "
                f"the {self.backend!r} backend); use backend='bubblewrap'"
            )
        if not isinstance(best_effort_limits, bool):
            raise TypeError(f"best_effort_limits must be True or False, got {best_effort_limits!r}")
        self.best_effort_limits = best_effort_limits
        self.network = validate_network(network_mode, network_allowlist, network_denylist)
        if self.network.allowlist or self.network.denylist:
            # Rule syntax is checked now, not at the first run that needs the proxies.
            from ..netproxy.rules import RuleSet

            RuleSet.parse(self.network.allowlist, self.network.denylist)
        self.timeout_s = validate_timeout(timeout_s, DEFAULT_RUN_TIMEOUT_S)
        if not isinstance(default_cwd, str):
            raise TypeError(f"default_cwd must be a str, got {type(default_cwd).__name__}")
        if host_work_dir is not None:
            if not os.path.isabs(os.fspath(host_work_dir)):
                raise ValueError(f"host_work_dir must be an absolute path, got {host_work_dir!r}")
            check_work_dir(os.fspath(host_work_dir))
        if not isinstance(max_output_bytes, int) or max_output_bytes <= 0:
            raise ValueError(f"max_output_bytes must be a positive int, got {max_output_bytes!r}")
        for name, url in (
            ("network_proxy_url", network_proxy_url),
            ("network_socks_url", network_socks_url),
        ):
            if url is not None and (not isinstance(url, str) or "://" not in url):
                raise ValueError(
                    f"{name} must be a proxy URL such as 'http://127.0.0.1:3128', got {url!r}"
                )
        self.network_proxy_url = network_proxy_url
        self.network_socks_url = network_socks_url
        self.resources = resources
        self.default_cwd = default_cwd
        self.client_id = client_id or _random_uuid()
        self.max_output_bytes = max_output_bytes
        self._host_work_dir = os.path.normpath(os.fspath(host_work_dir)) if host_work_dir else None
        self._read_only_paths = list(read_only_paths or [])
        self._read_write_paths = list(read_write_paths or [])
        # Validate the path lists now: bad input fails before anything runs. (A temporary
        # work dir is only named at open(); no grant can be this placeholder.)
        FsLayout.build(
            self._host_work_dir or "/<work-dir>", self._read_only_paths, self._read_write_paths
        )
        self._work: WorkDir | None = None
        self._layout: FsLayout | None = None
        self._supervisor: Supervisor | None = None
        self._static_failure: BackendUnavailableError | None = None
        self._cgroup_support: CgroupSupport | None = None
        self._cgroup_session: CgroupSession | None = None
        self._session_mechanisms: dict[str, str] = {}
        self._slots = SlotPool()
        # UNION_SANDBOX_RECYCLE=0 makes every run start a fresh init (for benchmarks).
        self._recycle_inits = os.environ.get("UNION_SANDBOX_RECYCLE", "1") != "0"
        self._venv: str | None = None
        self._live: set[RunChannel] = set()
        self._run_counter = 0
        self._egress_of_session: SessionEgress | None = None
        self._warned_byo_proxy = False
        self._open = False
        self._closed = False

    @property
    def _egress(self) -> SessionEgress:
        """The session's proxies, made (and their code imported) for its first proxied run."""
        if self._egress_of_session is None:
            from .egress import SessionEgress

            self._egress_of_session = SessionEgress()
        return self._egress_of_session

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def work_dir(self) -> str:
        """The session's persistent directory (the same path inside the sandbox)."""
        if self._layout is None:
            raise RuntimeError(_NOT_OPEN)
        return self._layout.work_dir

    @property
    def sandbox_owner(self) -> tuple[int, int] | None:
        """Host (uid, gid) the sandbox runs as when this process is root, else ``None``."""
        if os.getuid() == 0 and self.backend != "none":
            return (backends.UNPRIVILEGED_ID, backends.UNPRIVILEGED_ID)
        return None

    async def open(self) -> OnDeviceSession:
        """Create the work dir and the venv and start the supervisor. Idempotent. A backend
        that cannot run here is reported by the first ``run()``, naming the fix."""
        return self.start()

    def start(self) -> OnDeviceSession:
        """:meth:`open`, callable outside an event loop: nothing in it waits (the supervisor
        sets itself up in its own process, and the first ``run()`` waits for that). A caller
        that starts the session before its event loop exists lets the supervisor boot while
        the loop's modules load (the CLI does). Idempotent; close the session as usual."""
        if self._open:
            return self
        if self._closed:
            raise RuntimeError("this session was closed; open a new one")
        if self.backend == "none":
            warnings.warn(
                "sandbox backend 'none' applies NO isolation (only a process group, rlimits "
                "and a timeout); never use it for untrusted code",
                UserWarning,
                stacklevel=3,  # the caller of open()
            )
        # What can fail for bad input or host support fails first, before anything exists.
        support = cgroups.detect()
        plan = plan_limits(self.limits, support, best_effort=self.best_effort_limits)
        devices = gpu_devices(self.limits.gpu)
        self._cgroup_support = support
        self._session_mechanisms = session_mechanisms(
            support,
            self.session_pids,
            isolated=self.backend != "none",
            root=os.getuid() == 0,
        )
        try:
            owner = self.sandbox_owner
            # Private (0700) and the sandbox's; from here on reached only through its fd.
            self._work = WorkDir.open(self._host_work_dir, owner)
            self._layout = FsLayout.build(
                self._work.path, self._read_only_paths, self._read_write_paths, devices=devices
            )
            self._venv = ensure_session_venv(
                self._work.fd, self._work.path, self._layout.python, owner
            )
            problems = backends.static_problems(self.backend)
            if problems:
                self._static_failure = BackendUnavailableError(self.backend, problems)
            else:
                spec = self._supervisor_spec(self._layout, self._work)
                first = self._first_slot(plan, spec.config["default_net"])
                if first is not None and first.cgroup is not None:
                    spec.first_cgroups = first.cgroup.procs_fds
                self._supervisor = Supervisor(spec)
        except BaseException:
            if self._work is not None:
                work, self._work = self._work, None
                with contextlib.suppress(OSError):  # the error that matters is the one above
                    work.close()
            raise
        self._open = True
        return self

    def _first_slot(self, plan: LimitPlan, default_net: str) -> RunSlot | None:
        """The slot a first run with the session's own settings takes, made now (its cgroups
        too), so that the init the supervisor prepares at startup joins those cgroups ahead
        of the run, off its critical path. ``None`` where that init could not serve it."""
        net, proxied, _byo = self._posture(self.network)
        if not plan.use_cgroup or self.backend == "none" or net != default_net:
            return None
        try:
            cgroup = self._cgroup_for_run(plan)
        except OSError:
            return None  # the first run makes (and reports) its own
        slot = RunSlot(self._slot_key(net, proxied, plan), cgroup)
        self._slots.put(slot)
        return slot

    def _supervisor_spec(self, layout: FsLayout, work: WorkDir) -> SupervisorSpec:
        backend = self.backend
        held = os.fstat(work.fd)
        config = backends.supervisor_config(
            backend,
            layout,
            "open" if self.network.mode == "open" else "blocked",
            (held.st_dev, held.st_ino),
        )
        if backend != "none":
            root = os.getuid() == 0
            config["quota"] = {
                **quotas.session_quota(root, self.session_pids),
                "account": root,
            }
        # bwrap binds the work dir from a copy of the host's descriptor (Supervisor closes
        # it once bwrap has it).
        work_fd = os.dup(work.fd) if backend == "bubblewrap" else -1
        return SupervisorSpec(
            backend=backend,
            argv_prefix=backends.supervisor_argv_prefix(backend, layout, work_fd),
            pass_fds=(work_fd,) if work_fd >= 0 else (),
            python=layout.python,
            config=config,
            diagnose=lambda detail, stderr: backends.diagnose(backend, detail, stderr),
            complete_config=quotas.with_accounting_uid,
        )

    async def close(self) -> None:
        """Kill every running process (their whole trees), stop the supervisor and delete
        the work dir unless ``host_work_dir`` pinned it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._open = False
        with anyio.CancelScope(shield=True):
            for channel in self._live:
                channel._kill_kind = channel._kill_kind or TerminationKind.KILLED
            # Unwaited runs keep their pipe ends with their Process (output and exit
            # stay readable); they close when it is waited for or dropped.
            self._live.clear()
            # Every step runs even if one before it failed; the first failure is raised.
            failure: BaseException | None = None
            for step in (
                self._stop_supervisor,
                self._stop_egress,
                self._remove_cgroups,
                self._remove_work_dir,  # last, once every run is dead
            ):
                try:
                    await step()
                except Exception as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure

    async def _stop_supervisor(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.aclose()
        self._slots.drain()  # their inits died with the supervisor

    async def _stop_egress(self) -> None:
        if self._egress_of_session is not None:
            await self._egress_of_session.aclose()

    async def _remove_cgroups(self) -> None:
        if self._cgroup_session is not None:
            self._cgroup_session.cleanup(final=True)

    async def _remove_work_dir(self) -> None:
        if self._work is not None:
            # The temporary dir goes whatever the runs left in it.
            work, self._work = self._work, None
            await anyio.to_thread.run_sync(work.close)

    def fs_allowlist(self) -> dict[str, list[str]]:
        """What runs may read (``read_only``) and write (``read_write``) on this host."""
        layout = self._layout or FsLayout.build(
            self._host_work_dir or "/<work-dir>", self._read_only_paths, self._read_write_paths
        )
        return layout.as_dict()

    # -- running -------------------------------------------------------------------------

    def _require_open(self) -> Supervisor:
        if not self._open:
            raise RuntimeError(_NOT_OPEN)
        if self._static_failure is not None:
            raise self._static_failure
        assert self._supervisor is not None
        return self._supervisor

    def _resolve_cwd(self, cwd: str | None) -> str:
        work_dir = self.work_dir
        chosen = cwd if cwd is not None else (self.default_cwd or work_dir)
        if not isinstance(chosen, str):
            raise TypeError(f"cwd must be a str, got {type(chosen).__name__}")
        # Relative paths resolve under the work dir.
        return os.path.normpath(os.path.join(work_dir, chosen))

    def _env(self, extra: dict[str, str], cwd: str, policy: NetworkPolicy) -> dict[str, str]:
        layout = self._layout
        assert layout is not None
        assert self._venv is not None
        path = [os.path.join(self._venv, "bin"), os.path.dirname(layout.python)]
        if layout.uv:
            path.append(os.path.dirname(layout.uv))
        path += [os.path.join(layout.work_dir, ".local", "bin"), BASE_PATH]
        env = {
            "HOME": layout.work_dir,
            "PWD": cwd,
            "PATH": ":".join(dict.fromkeys(path)),
            "VIRTUAL_ENV": self._venv,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
            "UV_PYTHON_DOWNLOADS": "never",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(extra)
        return env

    async def run(
        self,
        cmd: str,
        *,
        stdout: Any = True,
        stderr: Any = True,
        stdin: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        script_type: str = "shell",
        network_mode: str | None = None,
        network_allowlist: Iterable[str] | None = None,
        network_denylist: Iterable[str] | None = None,
        timeout_s: float | None = None,
        resources: Any = None,
        argv: list[str] | None = None,
    ) -> Process:
        """Start ``cmd`` in the sandbox and return at once; read or wait on the handle.

        ``stdout``/``stderr``: ``True``/``PIPE`` capture, ``False``/``None``/``DEVNULL``
        discard, ``INHERIT``/``sys.stdout``/``sys.stderr`` forward to the caller. ``stdin``:
        ``None``/``DEVNULL`` (``/dev/null``), ``PIPE`` (write to ``proc.stdin``) or bytes
        (fed while waiting). ``cwd`` resolves under the work dir. ``resources`` tightens or
        loosens the session's limits for this run (GPUs only up to the session's count).
        ``argv`` runs a program directly, without a shell (``cmd`` is then only a label).
        """
        supervisor = self._require_open()
        if not isinstance(cmd, str):
            raise TypeError(f"cmd must be a str, got {type(cmd).__name__}")
        kind = validate_script_type(script_type)
        extra_env = validate_env(env)
        policy = resolve_run_network(
            self.network, network_mode, network_allowlist, network_denylist
        )
        timeout = validate_timeout(timeout_s, self.timeout_s)
        run_cwd = self._resolve_cwd(cwd)
        capture_out, sink_out = _stream_choice(stdout, "stdout")
        capture_err, sink_err = _stream_choice(stderr, "stderr")
        stdin_data: bytes | None = None
        if stdin in (None, DEVNULL, False):
            stdin_mode: int | None = None
        elif stdin == PIPE:
            stdin_mode = PIPE
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            stdin_mode, stdin_data = PIPE, bytes(stdin)
        else:
            raise ValueError(f"stdin must be None, DEVNULL, PIPE or bytes, got {stdin!r}")
        net, proxied, byo_proxy = self._posture(policy)
        run_env = self._env(extra_env, run_cwd, policy)
        if byo_proxy:
            for key, value in self._byo_proxy_env().items():
                run_env.setdefault(key, value)
        script: bytes | None = None
        if argv is not None:
            if not argv or not all(isinstance(a, str) for a in argv):
                raise TypeError("argv must be a non-empty list of str")
            command = list(argv)
            fits = args_fit(command, run_env)
        else:
            check_cmd(cmd)
            assert self._venv is not None
            interpreter = os.path.join(self._venv, "bin", "python")
            program = [interpreter] if kind == "python" else ["/bin/sh"]
            command = [*program, "-c", cmd]
            # (A long script is not measured as an argument: it goes by descriptor anyway.)
            fits = len(cmd) <= _ARGV_SCRIPT_LIMIT and args_fit(command, run_env)
            if not fits:
                # A long script, or one that would not fit beside the environment, reaches
                # the command through a file descriptor instead of argv.
                script = cmd.encode()
                command = [*program, "/proc/self/fd/3"]
                fits = args_fit(command, run_env)
        check_run_args(command, run_env, run_cwd, argv_given=argv is not None, fits=fits)
        plan = self._plan(resources)
        if byo_proxy:
            self._warn_byo_proxy()
        request = {
            "argv": command,
            "env": run_env,
            "cwd": run_cwd,
            "timeout": timeout,
            "net": net,
            "rlimits": plan.rlimits,
            "tmp_size": plan.tmp_size,
        }
        await supervisor.ready()
        slot = self._slot_for_run(net, proxied, plan)
        request["slot"] = slot.init_serial
        # Backend none has no namespaces to keep a run's processes from the next run's
        # proxies: its inits are not reused for proxied runs.
        request["recycle"] = self._recycle_inits and not (proxied and self.backend == "none")
        egress = None
        try:
            if proxied:
                # The slot's idle init keeps its proxy listeners: armed for this run now,
                # before the run can reach them.
                kept = slot.proxy if slot.init_serial else None
                egress = self._egress.prepare(policy, kept)
                request["proxy_env"] = egress.env_template
            channel = await supervisor.start_run(
                request,
                stdin=stdin_mode,
                capture_stdout=capture_out or sink_out is not None,
                capture_stderr=capture_err or sink_err is not None,
                script=script,
                proxy_fd=egress.run_fd if egress is not None else None,
                cgroup_fds=slot.cgroup.procs_fds if slot.cgroup is not None else (),
            )
            if egress is not None:
                await self._egress.attach(egress)
                slot.proxy = egress.group
        except BaseException:
            # Discarding retires the slot's idle init: if the request never reached it, it
            # exits; if it did, the supervisor ignores the retire (the init is busy) and the
            # run's end is reported as usual.
            with anyio.CancelScope(shield=True):
                if egress is not None:
                    await self._egress.detach(egress, keep=False)
                await self._release_slot(slot, reusable=False)
            raise
        self._live.add(channel)
        forward = []
        out_stream = err_stream = None
        if "stdout" in channel.fds:
            if sink_out is not None:
                forward.append((pipe_pull(channel.fds["stdout"]), sink_out))
            else:
                out_stream = OutputStream(
                    pipe_pull(channel.fds["stdout"]), limit=self.max_output_bytes
                )
        if "stderr" in channel.fds:
            if sink_err is not None:
                forward.append((pipe_pull(channel.fds["stderr"]), sink_err))
            else:
                err_stream = OutputStream(
                    pipe_pull(channel.fds["stderr"]), limit=self.max_output_bytes
                )
        in_stream = None
        if "stdin" in channel.fds:
            in_stream = _pipe_writer(channel)
        process = Process(
            _RunDriver(self, channel, slot, egress),
            stdout=out_stream,
            stderr=err_stream,
            stdin=in_stream,
            isolation=self._isolation(supervisor, policy, plan),
            forward=forward,
            stdin_data=stdin_data,
            network_log=egress.log if egress is not None else None,
        )
        return process

    def _byo_proxy_env(self) -> dict[str, str]:
        http = self.network_proxy_url
        assert http is not None
        socks = self.network_socks_url or http
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            env[name] = env[name.lower()] = http
        env["ALL_PROXY"] = env["all_proxy"] = socks
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
        return env

    def _warn_byo_proxy(self) -> None:
        if not self._warned_byo_proxy:
            self._warned_byo_proxy = True
            warnings.warn(
                "network_proxy_url is set: runs that are not 'blocked' share the host network "
                "and only the proxy environment variables point them at your proxy; the "
                "allow-list and deny-list are not applied (filtering is your proxy's job), and "
                "code that ignores the variables is not constrained",
                UserWarning,
                stacklevel=3,
            )

    def _plan(self, resources: Any) -> LimitPlan:
        limits = self.limits
        if resources is not None:
            override = to_limits(resources)
            if override.gpu > self.limits.gpu:
                raise ValueError(
                    f"this run asks for {override.gpu} GPU(s) but the session was opened with "
                    f"{self.limits.gpu}: GPUs are bound when the session opens; open it with "
                    f"resources=Resources(gpu={override.gpu})"
                )
            limits = limits.merged(override)
        assert self._cgroup_support is not None
        return plan_limits(limits, self._cgroup_support, best_effort=self.best_effort_limits)

    def _posture(self, policy: NetworkPolicy) -> tuple[str, bool, bool]:
        """``(net, proxied, byo_proxy)`` of a run with ``policy``: its network namespace
        ("open": the host's), whether it gets the session's proxies, and whether the
        caller's own proxy (``network_proxy_url``) stands in for them."""
        byo_proxy = self.network_proxy_url is not None and policy.mode != "blocked"
        proxied = (policy.mode == "allowlist" or bool(policy.denylist)) and not byo_proxy
        net = "open" if policy.mode == "open" or byo_proxy else "blocked"
        return net, proxied, byo_proxy

    @staticmethod
    def _slot_key(net: str, proxied: bool, plan: LimitPlan) -> Hashable:
        """What runs must share to share a slot (its init and cgroups)."""
        return (
            net,
            # Proxied runs' inits have proxy listeners in their network namespace: never
            # handed to a run without proxies (nor the other way round).
            proxied,
            plan.tmp_size,
            tuple(sorted(plan.rlimits.items())),
            plan.limits if plan.use_cgroup else None,
        )

    def _slot_for_run(self, net: str, proxied: bool, plan: LimitPlan) -> RunSlot:
        """An idle slot of an earlier run with the same settings, or a new one."""
        key = self._slot_key(net, proxied, plan)
        slot = self._slots.take(key)
        if slot is None:
            slot = RunSlot(key, self._cgroup_for_run(plan))
        return slot

    async def _release_slot(self, slot: RunSlot, reusable: bool) -> None:
        """Keep a finished run's slot for a later run, or discard it."""
        discard = [slot]
        if reusable and not self._closed:
            discard = self._slots.put(slot)
        await self._discard_slots(discard)

    async def _discard_slots(self, slots: list[RunSlot]) -> None:
        for old in slots:
            try:
                if old.init_serial and self._supervisor is not None:
                    await self._supervisor.retire(old.init_serial)
            finally:  # a dead supervisor took the init along: the cgroups still go
                if old.proxy is not None:
                    self._egress.release(old.proxy)
                    old.proxy = None
                if old.cgroup is not None:
                    old.cgroup.remove()

    async def release_idle(self, *, within_s: float = 2.0) -> int:
        """Let go of what finished runs left for reuse: their idle inits exit and their
        cgroups are removed, as are the cgroups of runs whose processes were still leaving
        (waiting up to ``within_s`` for those). Returns how many reuse slots were dropped.
        The session stays open; its next runs start fresh. A no-op on a closed session."""
        if self._closed or not self._open:
            return 0
        slots = self._slots.drain()
        with anyio.CancelScope(shield=True):  # out of the pool: they must go now
            await self._discard_slots(slots)
        cgroups = self._cgroup_session
        if cgroups is not None:
            # Polled (nothing signals that an exiting init has left its cgroup), and only
            # while it helps: a cgroup a stray process keeps (an escaped daemon under
            # backend none) must not make every call wait the whole time.
            pending, stalled_since = cgroups.cleanup(), anyio.current_time()
            with anyio.move_on_after(within_s):
                while pending and not self._closed:
                    await anyio.sleep(0.01)
                    left = cgroups.cleanup()
                    if left < pending:
                        pending, stalled_since = left, anyio.current_time()
                    elif anyio.current_time() - stalled_since > _CGROUP_STALL_S:
                        break
        return len(slots)

    def _session_pids_hits(self) -> int | None:
        """Forks the session's own pids limit refused so far, where its cgroup counts them
        (v2; v1 counts them in the cgroup of the run that forked, which the run's slot
        reads); None where it does not."""
        cgroups = self._cgroup_session
        if cgroups is None or cgroups.support.version != "v2":
            return None
        return cgroups.pids_limit_hits()

    def _cgroup_for_run(self, plan: LimitPlan) -> CgroupRun | None:
        if not plan.use_cgroup:
            return None
        assert self._cgroup_support is not None
        if self._cgroup_session is None:
            self._cgroup_session = CgroupSession(
                self._cgroup_support, self.client_id[:8], pids_max=self.session_pids
            )
        else:
            self._cgroup_session.cleanup()
        self._run_counter += 1
        return self._cgroup_session.create_run(self._run_counter, plan.limits)

    def _isolation(
        self, supervisor: Supervisor, policy: NetworkPolicy, plan: LimitPlan
    ) -> IsolationReport:
        facts = supervisor.facts
        limits = {**plan.mechanisms, **self._session_mechanisms}
        if self.backend == "none":
            limits["disk"] = "not enforced (backend 'none' shares the host /tmp)"
            return IsolationReport(backend="none", uid=os.getuid(), network="open", limits=limits)
        namespaces = ["user", "pid", "mount", "ipc", "uts"]
        if policy.mode != "open":
            namespaces.append("net")
        host_uid = facts.get("host_uid")
        return IsolationReport(
            backend=self.backend,
            namespaces=tuple(namespaces),
            landlock_abi=facts.get("landlock_abi") or None,
            seccomp=bool(facts.get("seccomp")),
            no_new_privs=True,
            capabilities_dropped=True,
            uid=host_uid,
            limits=limits,
            fresh_tmp=True,
            network=policy.mode,
            gpus=self.limits.gpu,
        )

    # -- files ---------------------------------------------------------------------------

    async def put_bytes(
        self, path: str, data: PutData, *, mode: int = 0o644, overwrite: bool = True
    ) -> int:
        """Write ``data`` to ``path`` (absolute, under the work dir, no symlinks) atomically:
        the file appears whole or not at all. Returns the bytes written."""
        work = self._require_work()
        return await put_file(
            work, path, data, mode=mode, overwrite=overwrite, owner=self.sandbox_owner
        )

    async def get_bytes(self, path: str, *, max_bytes: int = 0) -> bytes:
        """Read ``path`` (absolute, under the work dir, a regular file, no symlinks).
        ``max_bytes > 0`` raises ``ValueError`` for a larger file instead of truncating."""
        fd, size, target = self.open_for_read(path, max_bytes=max_bytes)
        try:
            return await read_all(fd, size, max_bytes or None, target)
        finally:
            os.close(fd)

    def open_for_read(self, path: str, *, max_bytes: int = 0) -> tuple[int, int, str]:
        """Open ``path`` with the ``get_bytes`` rules for a caller that streams it (the
        server): ``(blocking fd, size, normalised path)``; the caller closes the fd."""
        return open_for_read(self._require_work(), path, max_bytes=max_bytes)

    def _require_work(self) -> WorkDir:
        if not self._open or self._work is None:
            raise RuntimeError(_NOT_OPEN)
        return self._work

    def __repr__(self) -> str:
        state = "open" if self._open else ("closed" if self._closed else "new")
        return f"<OnDeviceSession backend={self.backend} {state}>"


def _random_uuid() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` spells it, without importing
    ``uuid`` (and ``platform`` behind it) into every process that opens a session."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NOT_OPEN = (
    "session is not open; either 'async with session(...) as sbx:' or "
    "'sbx = await session(...).open()'"
)


def _stream_choice(value: Any, name: str) -> tuple[bool, Any]:
    """(capture?, sink for INHERIT-style forwarding) for a ``stdout=``/``stderr=`` value."""
    if value is True or (value == PIPE and not isinstance(value, bool)):
        return True, None
    if value is False or value is None or value == DEVNULL:
        return False, None
    if value == INHERIT:
        return False, sys.stdout if name == "stdout" else sys.stderr
    if hasattr(value, "write"):
        return False, value
    raise ValueError(
        f"{name} must be True, False, None, PIPE, INHERIT, DEVNULL or a file "
        f"object such as sys.{name}, got {value!r}"
    )


def _pipe_writer(channel: RunChannel) -> InputStream:
    # Closing it: the command reads end of file; a no-op once the run was released (its
    # ends closed): closing stdin of a process that ended is not an error.
    end = channel.fds["stdin"]
    return InputStream(end.write_all, end.aclose)
