"""The published on-device code samples, run as close to verbatim as possible.

Sources: ``spec/seed-deployment-page.txt`` (the deployment page the project started from) and
``spec/reference-api.md`` §3.3 "Running commands" and §3.5 "Filesystem" (plus the §3.1
quickstart). Each sample runs for ``backend="bubblewrap"`` and ``backend="userns"`` under
asyncio and trio. Flyte-decorated samples run their body directly (the decorator only makes
the function a task; the on-device body is what matters here).

The seed page's remote samples (``sb.session()``, passing a sandbox between tasks, detached
lifetime, the custom environment, ``flyte run``) run in ``integration/flyte/test_seed_samples.py``
against a fake Flyte cluster and in local mode.

Samples that need pypi.org through ``network_mode="allowlist"`` cannot reach the internet
here: they are skipped, and the same sample runs against a package index that the test serves
on this host's own (non-loopback) address, allow-listed by CIDR.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio

BACKENDS = ["bubblewrap", "userns"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ======================================================================================
# seed-deployment-page.txt
# ======================================================================================


async def run_userns() -> str:
    # Body of `@userns_env.task async def run_userns()` (seed page, "Running an on-device
    # sandbox in a task pod").
    async with sb.on_device.session(backend="userns") as sbx:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        return out


async def run_bwrap() -> str:
    # Body of `@bwrap_env.task async def run_bwrap()`.
    async with sb.on_device.session(backend="bubblewrap") as sbx:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        return out


def _check_uname(out: str) -> None:
    uname = os.uname()
    assert out.startswith(f"{uname.sysname} sandbox {uname.release} "), out
    assert out.endswith("\n")


async def test_seed_run_userns() -> None:
    _check_uname(await run_userns())


async def test_seed_run_bwrap() -> None:
    _check_uname(await run_bwrap())


async def test_seed_detached_lifetime_on_device(backend: str) -> None:
    """The "Detached lifetime" sample; the page says the same pattern works on-device."""

    async def serve_user_session(user_id: str) -> str:
        sbx = await sb.on_device.session(backend=backend)
        await sbx  # wait for the pod to surface, fail fast on a bad launch
        try:
            proc = await sbx.run("uname -a", stdout=True)
            out, _ = await proc.communicate_text()
            return out
        finally:
            await sbx.close()  # closes the transport and aborts the run (owner side)

    _check_uname(await serve_user_session("user-1"))


# ======================================================================================
# reference-api §3.1 quickstart
# ======================================================================================


async def test_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        async with sb.on_device.session(backend="userns") as sbx:
            proc = await sbx.run("uname -a", stdout=True)
            out, _ = await proc.communicate_text()
            print(out)

    await main()  # the page wraps this in asyncio.run(main())
    _check_uname(capsys.readouterr().out[:-1])


# ======================================================================================
# reference-api §3.3 "Running commands"
# ======================================================================================


async def test_lifecycle_async_with(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run("echo hello", stdout=True)
        out, _ = await proc.communicate_text()
    assert out == "hello\n"


async def test_lifecycle_manual_open_close(backend: str) -> None:
    sbx = sb.on_device.session(backend=backend)
    await sbx.open()
    try:
        proc = await sbx.run("echo hello", stdout=True)
        out, _ = await proc.communicate_text()
    finally:
        await sbx.close()
    assert out == "hello\n"


async def test_run_with_every_argument(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run(
            'echo "$FOO"; pwd',
            stdout=True,
            stderr=True,
            env={"FOO": "bar"},
            cwd="/tmp",
            script_type="shell",
            network_mode="allowlist",
            network_allowlist=["pypi.org", "*.pythonhosted.org"],
            timeout_s=30,
        )
        assert isinstance(proc, sb.SandboxProcess)
        out, err = await proc.communicate_text()
    assert out == "bar\n/tmp\n", err
    assert proc.returncode == 0


async def test_run_with_every_argument_blocked_network(backend: str) -> None:
    """The same call with the default network posture (runs today)."""
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run(
            'echo "$FOO"; pwd',
            stdout=True,
            stderr=True,
            env={"FOO": "bar"},
            cwd="/tmp",
            script_type="shell",
            network_mode="blocked",
            timeout_s=30,
        )
        assert isinstance(proc, sb.SandboxProcess)
        assert isinstance(proc, sb.Process)
        out, err = await proc.communicate_text()
    assert out == "bar\n/tmp\n", err
    assert proc.returncode == 0


async def test_one_shot_helpers(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        result = await sbx.exec("ls -la")
        assert isinstance(result, sb.ExecResult)
        assert result.returncode == 0
        assert result.ok
        assert ".session-venv" in result.stdout
        assert result.stderr == ""

        with pytest.raises(sb.SandboxCommandError):
            await sbx.exec("false", check=True)

        assert await sbx.run_code("print(2 + 2)") == "4\n"

        try:
            await sbx.run_code("import sys; print('oops', file=sys.stderr); sys.exit(3)")
        except sb.SandboxCommandError as err:  # the docs' shape: catch, then inspect .result
            assert err.result.stderr == "oops\n"  # noqa: PT017
            assert err.result.returncode == 3  # noqa: PT017
            assert err.cmd.startswith("import sys")  # noqa: PT017
        else:
            pytest.fail("run_code did not raise on a non-zero exit")


async def test_reading_output(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run("echo out; echo err >&2", stdout=True, stderr=True)
        assert proc.returncode is None
        out_b, err_b = await proc.communicate()
        assert (out_b, err_b) == (b"out\n", b"err\n")

        proc = await sbx.run("echo out", stdout=True)
        out, err = await proc.communicate_text()
        assert (out, err) == ("out\n", "")

        proc = await sbx.run("for i in 1 2 3; do echo line$i; done", stdout=True)
        lines = [line async for line in proc.iter_stdout_lines()]
        assert lines == ["line1\n", "line2\n", "line3\n"]

        proc = await sbx.run("echo e1 >&2; echo e2 >&2", stderr=True)
        assert [line async for line in proc.iter_stderr_lines()] == ["e1\n", "e2\n"]
        await proc.wait()

        assert proc.returncode == 0
        assert isinstance(proc.runtime_ms, int)
        assert proc.backend == backend
        assert proc.termination_reason == ""


async def test_script_vs_shell(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run("echo $((6 * 7))", stdout=True)  # script_type="shell" default
        out, _ = await proc.communicate_text()
        assert out == "42\n"

        code = "import json\ndata = {'a': [1, 2, 3]}\nprint(json.dumps(data))\n"
        proc = await sbx.run(code, stdout=True, script_type="python")
        out, _ = await proc.communicate_text()
        assert json.loads(out) == {"a": [1, 2, 3]}

        # On-device uses the host interpreter: `python3` is on PATH ...
        proc = await sbx.run("python3 -c 'print(1 + 1)'", stdout=True)
        out, _ = await proc.communicate_text()
        assert out == "2\n"
        # ... and the session venv has no pip: installs go through `uv pip install`.
        assert (await sbx.exec("uv --version")).ok


async def test_errors_vs_nonzero_exits(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run("exit 5", stdout=True)
        await proc.communicate()  # no exception
        assert proc.returncode == 5


async def test_timeouts(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        proc = await sbx.run("sleep 30", stdout=True, timeout_s=1)
        start = time.monotonic()
        await proc.communicate()
        assert time.monotonic() - start < 10
        assert proc.returncode == 137  # the process was signalled
        # The session stays usable.
        proc = await sbx.run("echo still here", stdout=True)
        out, _ = await proc.communicate_text()
        assert out == "still here\n"


@pytest.mark.skip(
    reason="needs the internet (pypi.org) and network_mode='allowlist'; the same sample runs "
    "against a local index in test_install_is_just_a_run_local_index"
)
async def test_install_is_just_a_run_pypi(backend: str) -> None:
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=sb.PYPI_HOSTS
    ) as sbx:
        proc = await sbx.run("uv pip install requests", stdout=True, stderr=True)
        await proc.communicate()
        assert proc.returncode == 0
        out = await sbx.run_code("import requests; print(requests.__version__)")
        assert out.strip()


# -- a package index on this host ------------------------------------------------------


def _build_wheel(dist: str, version: str = "0.1") -> tuple[str, bytes]:
    files = {
        f"{dist}/__init__.py": b"__version__ = '0.1'\n",
        f"{dist}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        ).encode(),
        f"{dist}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: union-sandbox-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}-{version}.dist-info/RECORD,,")
    files[f"{dist}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def _host_address() -> str | None:
    """This host's own non-loopback IPv4 address (the source address of its default route).
    The index must not listen on loopback: inside a run, 127.0.0.1 is the run's own
    loopback, and the allow-list proxy is bypassed for it (NO_PROXY)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent for a UDP connect
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.fixture
def local_index() -> Iterator[tuple[str, str]]:
    """A PEP 503 simple index on this host's address serving one hand-built wheel.
    Returns (index URL, distribution name)."""
    address = _host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to serve an index on")
    dist = "union_sbx_sample_pkg"
    wheel_name, wheel = _build_wheel(dist)
    root = tempfile.mkdtemp(prefix="union-sbx-index-")
    project = os.path.join(root, "simple", dist.replace("_", "-"))
    os.makedirs(project)
    with open(os.path.join(project, wheel_name), "wb") as f:
        f.write(wheel)
    digest = hashlib.sha256(wheel).hexdigest()
    with open(os.path.join(project, "index.html"), "w") as f:
        f.write(
            f'<html><body><a href="{wheel_name}#sha256={digest}">{wheel_name}</a></body></html>'
        )

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=root, **kwargs)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}/simple/", dist
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)


async def test_install_is_just_a_run_local_index(backend: str, local_index) -> None:
    """§3.3 "Installing packages", with the local index standing in for PyPI."""
    index_url, dist = local_index
    host = index_url.split("/")[2].split(":")[0]
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=[f"{host}/32"]
    ) as sbx:
        proc = await sbx.run(
            f"uv pip install --index-url {index_url} {dist}", stdout=True, stderr=True
        )
        out, err = await proc.communicate_text()
        assert proc.returncode == 0, err
        out = await sbx.run_code(f"import {dist}; print({dist}.__version__)")
        assert out == "0.1\n"


async def test_install_needs_network_when_blocked(backend: str, local_index) -> None:
    """Control for the sample above: the default posture cannot reach the index."""
    index_url, dist = local_index
    async with sb.on_device.session(backend=backend) as sbx:
        result = await sbx.exec(
            f"uv pip install --index-url {index_url} {dist}",
            env={"UV_HTTP_RETRIES": "0"},
            timeout_s=60,
        )
        assert result.returncode != 0


async def test_install_with_open_network_from_local_index(backend: str, local_index) -> None:
    """Install is just a run(): with the network open, the loopback index works today."""
    index_url, dist = local_index
    async with sb.on_device.session(backend=backend, network_mode="open") as sbx:
        proc = await sbx.run(f"uv pip install --index-url {index_url} {dist}", stdout=True)
        out, err = await proc.communicate_text()
        assert proc.returncode == 0, err
        out = await sbx.run_code(f"import {dist}; print({dist}.__version__)")
        assert out == "0.1\n"


# ======================================================================================
# reference-api §3.5 "Filesystem"
# ======================================================================================

PROCESS_PY = b"""\
import json, os
work = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(work, "input.json")) as f:
    data = json.load(f)
with open(os.path.join(work, "result.json"), "w") as f:
    json.dump({"x": data["x"], "doubled": data["x"] * 2}, f)
"""


async def test_moving_bytes_in_and_out(backend: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        async with sb.on_device.session(host_work_dir=work, backend=backend) as sbx:
            await sbx.put_bytes(f"{work}/input.json", b'{"x": 1}')
            await sbx.put_bytes(f"{work}/process.py", PROCESS_PY)
            proc = await sbx.run(f"python3 {work}/process.py")
            _out, err = await proc.communicate()
            assert proc.returncode == 0, err
            result = await sbx.get_bytes(f"{work}/result.json", max_bytes=10 * 1024 * 1024)
        assert json.loads(result) == {"x": 1, "doubled": 2}


async def test_moving_bytes_hermetic(backend: str) -> None:
    """ "Pair this with network_mode="blocked" for hermetic runs: stage in, run offline,
    collect out"."""
    with tempfile.TemporaryDirectory() as work:
        async with sb.on_device.session(
            host_work_dir=work, backend=backend, network_mode="blocked"
        ) as sbx:
            await sbx.put_bytes(f"{work}/input.json", b'{"x": 21}')
            await sbx.put_bytes(f"{work}/process.py", PROCESS_PY)
            proc = await sbx.run(f"python3 {work}/process.py")
            await proc.communicate()
            assert proc.returncode == 0
            result = json.loads(await sbx.get_bytes(f"{work}/result.json"))
        assert result == {"x": 21, "doubled": 42}


async def test_path_rules(backend: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        async with sb.on_device.session(host_work_dir=work, backend=backend) as sbx:
            with pytest.raises(PermissionError):
                await sbx.put_bytes("/etc/outside.txt", b"x")
            await sbx.exec("ln -s /etc linked", check=True)
            with pytest.raises(PermissionError):
                await sbx.get_bytes(f"{work}/linked/hostname")
            await sbx.put_bytes(f"{work}/big.bin", b"x" * 2048)
            with pytest.raises(ValueError, match="max_bytes"):
                await sbx.get_bytes(f"{work}/big.bin", max_bytes=1024)


async def test_state_persists_but_tmp_is_fresh(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        await sbx.exec("echo kept > state.txt; echo gone > /tmp/scratch.txt", check=True)
        assert (await sbx.exec("cat state.txt")).stdout == "kept\n"
        assert (await sbx.exec("cat /tmp/scratch.txt")).returncode != 0


async def test_extending_the_allow_list(backend: str) -> None:
    # Verbatim but for host_work_dir, made unique so that concurrent test runs cannot clash.
    host_work_dir = f"/tmp/my-sandbox-work-{os.getpid()}-{time.monotonic_ns()}"
    try:
        async with sb.on_device.session(
            backend=backend,
            read_only_paths=["/opt/models"],
            read_write_paths=["/data/scratch"],
            host_work_dir=host_work_dir,
        ) as sbx:
            allow = sbx.fs_allowlist()
            assert "/opt/models" in allow["read_only"]
            assert "/data/scratch" in allow["read_write"]
            assert host_work_dir in allow["read_write"]
            for default in ("/usr", "/lib", "/etc", "/proc", "/sys"):
                assert default in allow["read_only"]  # additions never replace defaults
            for default in ("/tmp", "/dev/shm"):
                assert default in allow["read_write"]
            assert (await sbx.exec("pwd")).stdout == f"{host_work_dir}\n"
        assert os.path.isdir(host_work_dir)  # a pinned work dir is kept at close
    finally:
        shutil.rmtree(host_work_dir, ignore_errors=True)
