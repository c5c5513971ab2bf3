"""Fixtures for the ``unionai-sandbox`` command-line tests.

Every test runs the real console script as a subprocess (the ``unionai-sandbox`` entry point
installed next to ``sys.executable``, or ``python -m union.sandbox._cli`` when there is none)
and asserts its exit code and output. Nothing here imports the CLI's internals except
``build_parser`` (to list the options that ``--help`` must mention).
"""

from __future__ import annotations

import http.server
import json
import os
import platform
import socketserver
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

CLI_MODULE = "union.sandbox._cli"
#: Body the host-side HTTP server answers every GET with.
HOST_BODY = "hello from the host\n"
#: Generous per-invocation limit: a CLI call takes well under a second here, but the machine
#: is shared, and a hung call must fail the test rather than the whole run.
CALL_TIMEOUT_S = 120

# Variables of the host that would change what the CLI does; tests set them explicitly.
_SCRUBBED = (
    "UNION_SANDBOX_BWRAP",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def console_script() -> list[str]:
    """argv prefix that starts the installed ``unionai-sandbox`` console script."""
    script = Path(sys.executable).with_name("unionai-sandbox")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", CLI_MODULE]


def module_argv() -> list[str]:
    return [sys.executable, "-m", CLI_MODULE]


def cli_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class Cli(Protocol):
    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        prefix: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run ``unionai-sandbox ARGS...`` to completion in ``tmp_path``; stdin is ``input`` (or
    empty). ``prefix`` replaces the console script (e.g. a seccomp launcher)."""

    def call(
        *args: str,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        prefix: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(prefix if prefix is not None else console_script()), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=cli_env(env),
            cwd=cwd if cwd is not None else tmp_path,
            timeout=CALL_TIMEOUT_S,
            check=False,
        )

    return call


def parse_json_summary(stderr: str) -> dict[str, Any]:
    """The ``run --json`` summary: the last stderr line that is a JSON object."""
    for raw in reversed(stderr.splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            value = json.loads(line)
            assert isinstance(value, dict)
            return value
    raise AssertionError(f"no JSON summary on stderr:\n{stderr}")


@pytest.fixture
def json_summary() -> Any:
    return parse_json_summary


# ------------------------------------------------------------------ seccomp launcher

_LAUNCHER = textwrap.dedent(
    '''\
    """Install the sandbox's own seccomp deny-list on this process, then exec argv[1:].

    The filter denies namespace creation (unshare/clone with CLONE_NEW*), as a container
    runtime's default profile does; it is inherited across exec.
    """
    import ctypes
    import os
    import sys

    from union.sandbox.core._seccomp import build_deny_filter

    PR_SET_SECCOMP = 22
    PR_SET_NO_NEW_PRIVS = 38
    SECCOMP_MODE_FILTER = 2


    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


    prog = build_deny_filter()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    zero = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    mode = ctypes.c_ulong(SECCOMP_MODE_FILTER)
    if libc.prctl(PR_SET_SECCOMP, mode, ctypes.byref(fprog), zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
    os.execv(sys.argv[1], sys.argv[1:])
    '''
)


@pytest.fixture(scope="session")
def seccomp_prefix(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """argv prefix that starts the CLI under a seccomp filter denying namespace creation."""
    if platform.machine() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(f"the deny filter is not built for {platform.machine()}")
    launcher = tmp_path_factory.mktemp("seccomp") / "seccomp_launch.py"
    launcher.write_text(_LAUNCHER)
    return [sys.executable, str(launcher), *module_argv()]


# ------------------------------------------------------------------ host HTTP server


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = HOST_BODY.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="session")
def host_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT/`` of an HTTP server on the host's loopback."""
    server = _Server(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="session")
def host_doctor() -> dict[str, Any]:
    """``unionai-sandbox doctor --json`` of this host, run once."""
    out = subprocess.run(
        [*console_script(), "doctor", "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=CALL_TIMEOUT_S,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert isinstance(report, dict)
    return report
