"""The ``sandbox_server`` task body, :func:`serve_sandbox`, with the real ``sandbox-server``
(and a stand-in that ignores SIGTERM), under asyncio and trio.

Figures asked for by the issue are printed (``-s`` shows them): the soft timeout's expiry to
the last process of the server's tree gone, with a server that stops on SIGTERM and with one
that ignores it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with
from union.sandbox.flyte import Ending, Served, ServerFailed, ServerOptions, serve_sandbox
from union.sandbox.flyte._body import PASS_THROUGH, server_environment

pytestmark = pytest.mark.anyio

STUB = str(Path(__file__).with_name("stub_server.py"))
SECRET = "AKIA" + secrets.token_hex(8).upper()  # stands in for the pod's credentials


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the host has (to find it by command line)."""
    return f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"


def options(work_dir: Path | str, **overrides: Any) -> ServerOptions:
    values: dict[str, Any] = {
        "backend": "userns",
        "token": secrets.token_urlsafe(24),
        "soft_timeout_s": 60.0,
        "work_dir": str(work_dir),
        "addr": "127.0.0.1:0",
    }
    values.update(overrides)
    return ServerOptions(**values)


async def serve_until(
    opts: ServerOptions,
    then: Callable[[str, anyio.CancelScope], Awaitable[None]],
    **kwargs: Any,
) -> Served | None:
    """Run :func:`serve_sandbox`; once it is ready, run ``then(endpoint, scope)`` alongside.
    ``then`` may cancel ``scope`` (the result is then ``None``) or wait: the scope is
    cancelled when the server's session ends by itself."""
    ready: list[str] = []
    got = anyio.Event()
    result: list[Served] = []

    def on_ready(addr: str) -> None:
        ready.append(addr)
        got.set()

    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            result.append(
                await serve_sandbox(opts, on_ready=on_ready, log=lambda _: None, **kwargs)
            )
            tg.cancel_scope.cancel()

        tg.start_soon(serve)
        with anyio.fail_after(60):
            await got.wait()
        await then(f"http://{ready[0]}", tg.cancel_scope)
    return result[0] if result else None


def leftovers(work_dir: Path) -> list[int]:
    """Processes still alive that belong to this server (its command line names the dir)."""
    return host_pids_with(str(work_dir))


async def test_serves_a_run_with_auth_and_cancel_leaves_nothing(tmp_path: Path) -> None:
    opts = options(tmp_path / "work")
    sleep = unique_sleep()

    async def use(endpoint: str, scope: anyio.CancelScope) -> None:
        with pytest.raises(sb.remote.ConnectError, match="bearer token"):
            async with sb.remote.session(endpoint=endpoint, token="x" * 20) as bad:
                await bad.exec("true")
        async with sb.remote.session(endpoint=endpoint, token=opts.token) as sbx:
            result = await sbx.exec("echo hello from the pod; echo $VIRTUAL_ENV")
            assert result.stdout == f"hello from the pod\n{opts.work_dir}/.session-venv\n"
            # A sandboxed process that would outlive a sloppy teardown.
            await sbx.run(f"sleep {sleep}", stdout=False, stderr=False)
            with anyio.fail_after(10):
                while not host_pids_with(sleep):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert leftovers(tmp_path)  # the server and its supervisor
            scope.cancel()  # the task's caller goes away
            await anyio.sleep_forever()

    assert await serve_until(opts, use) is None
    assert leftovers(tmp_path) == []
    assert host_pids_with(sleep) == []
    assert os.path.isdir(opts.work_dir)


async def test_soft_timeout_with_the_real_server(tmp_path: Path) -> None:
    """The soft timeout stops the server (SIGTERM; it exits at once) and everything it ran; the
    server's environment is the pass-through list, so no sandbox sees the pod's credentials."""
    opts = options(tmp_path / "work", soft_timeout_s=4.0, backend="bubblewrap")
    pod_env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "NVIDIA_VISIBLE_DEVICES": "none"}

    sleep = unique_sleep()

    async def use(endpoint: str, scope: anyio.CancelScope) -> None:
        (server,) = [p for p in leftovers(tmp_path) if _is_server(p)]
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        names = {e.split(b"=", 1)[0].decode() for e in environ if e}
        assert names == set(server_environment(pod_env)) | {"UNION_SANDBOX_TOKEN"}
        assert "NVIDIA_VISIBLE_DEVICES" in names and "AWS_SECRET_ACCESS_KEY" not in names
        async with sb.remote.session(endpoint=endpoint, token=opts.token) as sbx:
            seen = await sbx.exec("cat /proc/*/environ | tr '\\0' '\\n'; env")
            assert SECRET not in seen.stdout
            assert "AWS_SECRET_ACCESS_KEY" not in seen.stdout
            assert opts.token not in seen.stdout
            await sbx.run(f"sleep {sleep}", stdout=False, stderr=False)
            await anyio.sleep_forever()  # until the soft timeout ends the session

    served = await serve_until(opts, use, environ=pod_env)
    assert served is not None
    assert served.ending is Ending.SOFT_TIMEOUT
    assert 4.0 <= served.ran_s < 5.0
    assert served.server_exit == 0  # it shut down by itself on SIGTERM
    print(
        f"\n[figure] soft timeout -> server tree gone (server stops on SIGTERM): "
        f"{served.stop_s:.3f} s"
    )
    assert served.stop_s <= 1.0
    assert leftovers(tmp_path) == []
    assert host_pids_with(sleep) == []


def _is_server(pid: int) -> bool:
    return b"--work-dir" in Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_soft_timeout_with_a_server_that_ignores_sigterm(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SIGKILL follows SIGTERM after the grace period (10 s, as in a pod; 1 s under trio to
    keep the suite short: the path is the same), and a process of the server's tree in a
    session of its own, which the group signal cannot reach, is killed too."""
    grace = 10.0 if anyio_backend == "asyncio" else 1.0
    opts = options(tmp_path / "work", soft_timeout_s=1.0)

    async def nothing(endpoint: str, scope: anyio.CancelScope) -> None:
        with anyio.fail_after(5):
            while len(leftovers(tmp_path)) < 2:  # noqa: ASYNC110 (the stub and its helper)
                await anyio.sleep(0.05)

    served = await serve_until(
        opts, nothing, server_command=(sys.executable, STUB, "ignore-term"), term_grace_s=grace
    )
    assert served is not None
    assert served.ending is Ending.SOFT_TIMEOUT
    assert served.server_exit == -signal.SIGKILL
    assert served.leftovers_killed == 1
    print(
        f"\n[figure] soft timeout -> server tree gone (server ignores SIGTERM, grace "
        f"{grace:g} s): {served.stop_s:.3f} s"
    )
    assert grace <= served.stop_s <= grace + 1.0
    assert leftovers(tmp_path) == []


async def test_sigterm_stops_the_session(tmp_path: Path) -> None:
    """In a pod, an abort is SIGTERM to ``a0`` (PID 1, no handler of its own): the body
    handles it on the main thread and stops the server."""
    opts = options(tmp_path / "work")
    fallback: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signo, frame: fallback.append(signo))

    async def terminate(endpoint: str, scope: anyio.CancelScope) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        served = await serve_until(
            opts, terminate, server_command=(sys.executable, STUB, "term"), handle_sigterm=True
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert fallback == [], "the body's handler was not installed"
    assert served is not None and served.ending is Ending.SIGTERM
    assert leftovers(tmp_path) == []


async def test_a_server_that_cannot_start(tmp_path: Path) -> None:
    opts = options(tmp_path / "work")
    with pytest.raises(
        ServerFailed, match=r"(?s)before it was ready with status 3.*no such backend"
    ):
        await serve_sandbox(opts, server_command=(sys.executable, STUB, "fail"), log=lambda _: None)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token": "short"}, "bearer token of at least 16 characters"),
        ({"soft_timeout_s": 0.0}, "timeout_s must be > 0"),
        ({"soft_timeout_s": 25 * 3600.0}, "hard ceiling of 86400 s"),
        ({"network_mode": "internet"}, "network_mode must be one of"),
        ({"backend": "none"}, "backend must be one of"),
        ({"cpu_ceiling_milli": -1}, "cpu_ceiling_milli must be an int >= 0"),
        ({"work_dir": "relative"}, "absolute path"),
        ({"addr": "8080"}, "HOST:PORT"),
    ],
)
async def test_bad_options_fail_before_anything_starts(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    opts = options(**{"work_dir": tmp_path / "work", **overrides})
    with pytest.raises(ValueError, match=message):
        await serve_sandbox(opts)
    assert not (tmp_path / "work").exists()


def test_server_flags() -> None:
    opts = ServerOptions(backend="bubblewrap", token="t" * 16, soft_timeout_s=10.0, gpu_ceiling=1)
    args = opts.server_args()
    assert args[args.index("--addr") + 1] == "0.0.0.0:8080"
    assert args[args.index("--work-dir") + 1] == "/tmp/sandbox-work"
    assert args[args.index("--fetch-root") + 1] == "/tmp/sandbox-work"
    assert args[args.index("--gpu-ceiling") + 1] == "1"
    assert "--force-no-network" in args
    assert "t" * 16 not in " ".join(args)  # the token travels in the environment
    for mode in ("open", "allowlist"):
        assert (
            "--force-no-network"
            not in ServerOptions(
                backend="userns", token="t" * 16, soft_timeout_s=10.0, network_mode=mode
            ).server_args()
        )


def test_pass_through_list() -> None:
    env = {
        "PATH": "/bin",
        "HOME": "/home/flyte",
        "LANG": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_DRIVER_CAPABILITIES": "all",
        "AWS_ACCESS_KEY_ID": "x",
        "FLYTE_INTERNAL_EXECUTION_ID": "x",
        "_U_EP_OVERRIDE": "x",
        "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/x",
        "HF_HF_TOKEN": "x",
        "PYTHONPATH": "/root",
    }
    assert server_environment(env) == {
        "PATH": "/bin",
        "HOME": "/home/flyte",
        "LANG": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_DRIVER_CAPABILITIES": "all",
    }
    assert {
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "LC_ALL",
    } < PASS_THROUGH


ORPHAN_SCRIPT = """
import sys, anyio
from union.sandbox.flyte import ServerOptions, serve_sandbox

async def main():
    options = ServerOptions(
        backend="userns", token="t" * 24, soft_timeout_s=300.0, work_dir=sys.argv[1],
        addr="127.0.0.1:0",
    )
    await serve_sandbox(options, on_ready=lambda addr: print("READY", addr, flush=True),
                        log=lambda line: None)

anyio.run(main, backend=sys.argv[2])
"""


def test_the_server_dies_with_the_task_process(tmp_path: Path, anyio_backend: str) -> None:
    """A task process killed outright (no cleanup runs) does not leave its server behind,
    whichever thread started it (trio starts processes from a worker thread)."""
    work = tmp_path / "work"
    task = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(work), anyio_backend],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert task.stdout is not None
        assert task.stdout.readline().startswith("READY 127.0.0.1:")
        assert leftovers(tmp_path)
        task.kill()
        task.wait()
        t0 = time.monotonic()
        while leftovers(tmp_path):
            assert time.monotonic() - t0 < 15, leftovers(tmp_path)
            time.sleep(0.01)
        print(
            f"\n[figure] task process killed -> its server tree gone: {time.monotonic() - t0:.3f} s"
        )
    finally:
        task.kill()
        task.wait()
