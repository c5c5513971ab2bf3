"""``unionai-sandbox mcp`` over stdio, driven as an agent host drives it: the real console
script as a subprocess, spoken to through the ``mcp`` SDK's own client, on both isolating
backends, with client and server on the same event loop (asyncio and trio).

Covers: the tool list; each tool; state persisting across calls; a call narrowed within
the operator's limits and a widening refused with the flag that allows it; progress with
live output; a cancelled long run leaving no process behind (the host's process list); a
flood of output trimmed as documented, the whole of it in a file; malformed calls answered
with errors while the server keeps serving; and the session's work dir gone once the
client has gone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from union.sandbox._mcp.cli import build_parser
from union.sandbox.core.testing import host_pids_with

from .conftest import cli_env, console_script

mcp = pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="Linux backends"),
]

BACKENDS = ("userns", "bubblewrap")
TOOLS = {
    "run_shell",
    "run_python",
    "write_file",
    "read_file",
    "list_dir",
    "install_packages",
    "reset_session",
}


@asynccontextmanager
async def mcp_client(tmp_path: Path, backend: str, loop: str, *args: str) -> AsyncIterator[Client]:
    """A client of a fresh ``unionai-sandbox mcp`` server (its stderr in tmp_path)."""
    script = console_script()
    params = StdioServerParameters(
        command=script[0],
        args=[*script[1:], "mcp", "--backend", backend, "--event-loop", loop, *args],
        env=cli_env(),
        cwd=str(tmp_path),
    )
    with open(tmp_path / "server.stderr", "w") as errlog:  # noqa: ASYNC230 - local, once
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


async def call(client: Client, name: str, arguments: dict[str, Any], **kw: Any) -> Any:
    return await client.call_tool(name, arguments, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tools_and_session_state(tmp_path: Path, backend: str, anyio_backend: str) -> None:
    async with mcp_client(tmp_path, backend, anyio_backend) as client:
        listed = await client.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        for tool in listed.tools:
            schema = tool.input_schema
            assert tool.description and len(tool.description) > 40, tool.name
            assert schema["type"] == "object" and schema["additionalProperties"] is False
            for name, prop in schema["properties"].items():
                assert prop.get("description"), (tool.name, name)
        run_shell = next(t for t in listed.tools if t.name == "run_shell")
        assert "60" in run_shell.input_schema["properties"]["timeout_s"]["description"]

        # run_shell: exit code, both streams, runtime, network, as text and as data.
        result = await call(client, "run_shell", {"command": "echo out; echo err >&2; exit 3"})
        assert not result.is_error
        data = result.structured_content
        assert data["exit_code"] == 3 and data["termination"] == "exit"
        assert data["stdout"]["text"] == "out\n" and data["stderr"]["text"] == "err\n"
        assert data["network"]["mode"] == "blocked" and data["network_decisions"] == []
        assert isinstance(data["runtime_ms"], int)
        assert text(result).startswith("exit code 3 after ")
        work = (await call(client, "run_shell", {"command": "pwd"})).structured_content
        work_dir = work["stdout"]["text"].strip()
        assert Path(work_dir).is_dir()

        # write_file (parents created, text and base64), then read_file and list_dir.
        wrote = await call(
            client, "write_file", {"path": "pkg/data/notes.txt", "content": "héllo\n"}
        )
        assert not wrote.is_error and wrote.structured_content["bytes"] == len("héllo\n".encode())
        raw = bytes(range(256))
        b64 = base64.b64encode(raw).decode()
        await call(client, "write_file", {"path": "bin.dat", "content": b64, "encoding": "base64"})
        script = "#!/bin/sh\necho script ran\n"
        await call(client, "write_file", {"path": "s.sh", "content": script, "executable": True})
        read = await call(client, "read_file", {"path": "pkg/data/notes.txt"})
        assert text(read) == "héllo\n" and read.structured_content["size"] == 7
        back = await call(client, "read_file", {"path": "bin.dat", "encoding": "base64"})
        assert base64.b64decode(back.structured_content["content"]) == raw
        page = await call(client, "read_file", {"path": "bin.dat", "encoding": "base64",
                                                "offset": 250, "length": 4})  # fmt: skip
        assert base64.b64decode(page.structured_content["content"]) == raw[250:254]
        binary = await call(client, "read_file", {"path": "bin.dat"})
        assert binary.is_error and "encoding='base64'" in text(binary)
        listing = await call(client, "list_dir", {"depth": 3})
        names = {e["name"]: e for e in listing.structured_content["entries"]}
        assert names["pkg/data/notes.txt"]["type"] == "file"
        assert names["pkg/data/notes.txt"]["size"] == 7
        assert names["pkg"]["type"] == "dir" and "pkg/data/" in text(listing)

        # State persists: files, the cwd argument, the session venv (run_python).
        ran = await call(client, "run_shell", {"command": "../../s.sh; cat notes.txt",
                                               "cwd": "pkg/data"})  # fmt: skip
        assert ran.structured_content["stdout"]["text"] == "script ran\n" + "héllo\n"
        ran = await call(client, "run_shell", {"command": "cd /; ./s.sh", "cwd": "."})
        assert ran.structured_content["exit_code"] != 0  # cwd is per call, not sticky
        py = await call(client, "run_python", {
            "code": "import sys, os\nprint(open('pkg/data/notes.txt').read().strip())\n"
                    "print(sys.prefix == os.environ['VIRTUAL_ENV'])",
            "env": {"EXTRA": "1"},
        })  # fmt: skip
        assert py.structured_content["stdout"]["text"] == "héllo\nTrue\n"

        # reset_session: a fresh session (the old work dir is gone).
        reset = await call(client, "reset_session", {})
        assert not reset.is_error and "reset" in text(reset)
        assert not Path(work_dir).exists()
        after = await call(client, "list_dir", {})
        assert "notes" not in text(after) and "pkg" not in text(after)
        new_dir = (await call(client, "run_shell", {"command": "pwd"})).structured_content
        work_dir = new_dir["stdout"]["text"].strip()
        assert Path(work_dir).is_dir()
    # The client went: the server closed its session (the work dir is gone).
    with anyio.fail_after(10):
        while Path(work_dir).exists():  # noqa: ASYNC110
            await anyio.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_narrowing_and_refused_widening(
    tmp_path: Path, backend: str, anyio_backend: str
) -> None:
    args = ("--timeout", "20", "--allow", "127.0.0.1/32", "--allow", "*.example.com")
    async with mcp_client(tmp_path, backend, anyio_backend, *args) as client:
        # Narrowed: a shorter timeout is applied, and ends the run as a timeout.
        slow = await call(client, "run_shell", {"command": "sleep 30", "timeout_s": 0.5})
        data = slow.structured_content
        assert not slow.is_error
        assert data["termination"] == "timeout" and data["timeout_s"] == 0.5
        assert "timeout expired" in text(slow)
        # Narrowed: blocked, and part of the allow-list (the run sees only that).
        blocked = await call(client, "run_shell", {"command": "env", "network": "blocked"})
        assert "HTTP_PROXY" not in blocked.structured_content["stdout"]["text"]
        part = await call(client, "run_shell", {"command": "true", "allow": ["api.example.com"]})
        assert part.structured_content["network"] == {
            "mode": "allowlist", "allow": ["api.example.com"], "deny": []
        }  # fmt: skip
        # Refused: each widening names the flag that allows it, and runs nothing.
        widenings = {
            "--timeout 21": {"command": "true", "timeout_s": 21},
            "--network open": {"command": "true", "network": "open"},
            "--allow pypi.org": {"command": "true", "allow": ["pypi.org"]},
            "--allow 10.0.0.0/8": {"command": "true", "allow": ["10.0.0.0/8"]},
            "--allow example.com": {"command": "true", "allow": ["example.com"]},
        }
        marker = tmp_path / "ran"
        for flag, widening in widenings.items():
            refused = await call(client, "run_shell", {**widening, "command": f"touch {marker}"})
            assert refused.is_error, flag
            assert flag in text(refused) and "refused" in text(refused), text(refused)
            assert refused.structured_content == {"refused": True, "flag": flag}
        install = await call(client, "install_packages", {"packages": ["six"]})
        assert install.is_error and "--allow-install" in text(install)
        assert not marker.exists()
        # Still serving after all that.
        ok = await call(client, "run_shell", {"command": "echo fine"})
        assert ok.structured_content["stdout"]["text"] == "fine\n"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_long_runs(tmp_path: Path, backend: str, anyio_backend: str) -> None:
    args = ("--max-output", "2000", "--timeout", "120")
    async with mcp_client(tmp_path, backend, anyio_backend, *args) as client:
        # Progress: live output while the command runs, before the result.
        seen: list[tuple[float, str | None]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen.append((value, message))

        ticking = "for i in 1 2 3 4; do echo tick $i; sleep 0.3; done"
        done = await call(client, "run_shell", {"command": ticking}, progress_callback=progress)
        assert done.structured_content["stdout"]["lines"] == 4
        assert len(seen) >= 2, seen
        live = "".join(m or "" for _, m in seen)
        assert "tick 1" in live
        assert [v for v, _ in seen] == sorted(v for v, _ in seen)

        # A flood: head and tail shown, the cut said plainly, the whole stream in a file.
        flood = await call(client, "run_shell", {"command": "seq 1 200000; echo done >&2"})
        out = flood.structured_content["stdout"]
        total = sum(len(f"{i}\n") for i in range(1, 200001))
        assert out["bytes"] == total and out["lines"] == 200000 and out["trimmed"]
        assert out["text"].startswith("1\n2\n3\n") and out["text"].endswith("199999\n200000\n")
        assert f"cut from the middle of stdout: {total:,} bytes in all" in out["text"]
        assert len(out["text"]) < 2000 + 400
        assert out["file"] == ".mcp-output/" + out["file"].split("/")[-1]
        assert flood.structured_content["stderr"]["text"] == "done\n"
        size = await call(client, "run_shell", {"command": f"wc -c < {out['file']}"})
        assert size.structured_content["stdout"]["text"].strip() == str(total)
        page = await call(client, "read_file", {"path": out["file"], "offset": 0, "length": 100})
        assert text(page).startswith("1\n2\n") and "offset=" in text(page)

        # Cancelled: the client gives up, the run's whole tree is killed.
        needle = f"mcp-cancel-{secrets.token_hex(6)}"
        sleeper = f"python3 -c 'import time; time.sleep(300)' {needle}"
        started = anyio.Event()

        async def watch(value: float, total: float | None, message: str | None) -> None:
            started.set()

        async def long_call() -> None:
            await call(client, "run_shell", {"command": f"{sleeper} & {sleeper}"},
                       progress_callback=watch)  # fmt: skip

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await started.wait()
                while len(host_pids_with(needle)) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            while host_pids_with(needle):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # ...and the server goes on serving.
        ok = await call(client, "run_shell", {"command": "echo still here"})
        assert ok.structured_content["stdout"]["text"] == "still here\n"


async def test_malformed_calls_keep_the_server_serving(tmp_path: Path, anyio_backend: str) -> None:
    async with mcp_client(tmp_path, "userns", anyio_backend) as client:
        with pytest.raises(MCPError, match=r"unknown tool 'rm_rf'.*run_shell"):
            await call(client, "rm_rf", {})
        bad = {
            "run_shell": [
                ({}, "missing required argument 'command'"),
                ({"command": 5}, "argument 'command' must be a string"),
                ({"command": "true", "timeout_s": -1}, "'timeout_s' must be greater than 0"),
                ({"command": "true", "timeout_s": True}, "'timeout_s' must be a number"),
                ({"command": "true", "network": "wide"}, "must be one of 'blocked'"),
                ({"command": "true", "allow": "x.com"}, "'allow' must be an array"),
                ({"command": "true", "allow": ["not a host"]}, "invalid network rule"),
                ({"command": "true", "env": {"A": 1}}, "'env.A' must be a string"),
                ({"command": "true", "sudo": True}, "unknown argument 'sudo'"),
                ({"command": "true", "cwd": "a\0b"}, "run_shell failed"),
            ],
            "write_file": [
                ({"path": "x", "content": "!!", "encoding": "base64"}, "not valid base64"),
                ({"path": "../../etc/x", "content": "x"}, "write_file failed"),
                ({"path": "/etc/passwd", "content": "x"}, "write_file failed"),
            ],
            "read_file": [
                ({"path": "missing.txt"}, "read_file failed"),
                ({"path": "x", "length": 10**9}, "'length' must be at most"),
            ],
            "install_packages": [({"packages": []}, "at least 1 item")],
            "list_dir": [({"path": "nowhere"}, "not a directory: nowhere")],
        }
        for name, cases in bad.items():
            for arguments, message in cases:
                result = await call(client, name, arguments)
                assert result.is_error, (name, arguments)
                assert message in text(result), (name, arguments, text(result))
        ok = await call(client, "run_shell", {"command": "echo fine"})
        assert ok.structured_content["stdout"]["text"] == "fine\n"
    assert "Traceback" not in (tmp_path / "server.stderr").read_text()


async def test_malformed_protocol_messages(tmp_path: Path, anyio_backend: str) -> None:
    """Raw JSON-RPC on the server's stdin: garbage and ill-formed requests get errors (or
    are dropped), and the next good request is answered."""
    script = console_script()
    argv = [*script, "mcp", "--backend", "userns", "--event-loop", anyio_backend]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}  # fmt: skip
    lines = [
        init,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        "this is not json",
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": 5}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"arguments": "x"}},
        {"jsonrpc": "2.0", "id": 4, "method": "no/such/method"},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
    ]
    payload = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    async with await anyio.open_process(argv, env=cli_env(), cwd=tmp_path) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(payload.encode())
        answers: dict[int, Any] = {}
        buffer = b""
        with anyio.fail_after(60):
            while 5 not in answers:
                buffer += await proc.stdout.receive()
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    message = json.loads(line)
                    if "id" in message and message["id"] is not None:
                        answers[message["id"]] = message
        await proc.stdin.aclose()
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    for request_id in (2, 3, 4):
        assert "error" in answers[request_id], answers[request_id]
    assert len(answers[5]["result"]["tools"]) == len(TOOLS)


def test_run_never_imports_the_mcp_sdk(tmp_path: Path) -> None:
    """``unionai-sandbox run`` (and the other commands) load neither the SDK nor the
    server: the mcp subcommand's imports stay on its own path."""
    code = (
        "import sys\n"
        "from union.sandbox._cli import main\n"
        "assert main(['run', '--backend', 'userns', '--', 'true']) == 0\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types') "
        "or m.startswith('union.sandbox._mcp')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
        cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_the_sdk_the_extra_is_named(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['mcp'] = None  # as if the [mcp] extra were not installed\n"
        "from union.sandbox._cli import main\n"
        "sys.exit(main(['mcp', '--backend', 'userns']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
        cwd=tmp_path, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "pip install 'unionai-sandbox[mcp]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_help(tmp_path: Path) -> None:
    top = subprocess.run([*console_script(), "--help"], capture_output=True, text=True,
                         env=cli_env(), timeout=60, check=False)  # fmt: skip
    assert re.search(r"^\s+mcp\s+\S", top.stdout, re.M), top.stdout
    own = subprocess.run([*console_script(), "mcp", "--help"], capture_output=True, text=True,
                         env=cli_env(), timeout=60, check=False)  # fmt: skip
    assert own.returncode == 0 and own.stdout.startswith("usage: unionai-sandbox mcp")
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert action.help and option in own.stdout, option


def test_the_work_dir_flag_keeps_files(tmp_path: Path) -> None:
    """--work-dir pins the session's directory: files outlive the server (as for run)."""
    pinned = tmp_path / "pinned"

    async def main() -> None:
        async with mcp_client(tmp_path, "userns", "asyncio", "--work-dir", str(pinned)) as c:
            await call(c, "write_file", {"path": "keep.txt", "content": "kept"})
            reset = await call(c, "reset_session", {})
            assert "pinned by the operator" in text(reset)
            assert (await call(c, "read_file", {"path": "keep.txt"})).content[0].text == "kept"

    anyio.run(main)
    assert os.path.exists(pinned / "keep.txt")
