"""What a process pays to start: the layers load what they use, when they use it
(docs/design.md, "What a process imports"), and a session can be started before its event
loop exists."""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from union.sandbox.core.on_device import engine, session

pytestmark = pytest.mark.anyio

#: Modules that a process running only blocked runs must not load: the proxy host (a thread
#: portal, logging, sockets), the egress, the remote client, and what only ids needed.
PROXY_ONLY = ("union.sandbox.core.netproxy.host", "union.sandbox.core.on_device.egress")
NEVER = ("union.sandbox.client", "union.sandbox.server", "uuid", "secrets", "platform")
#: Nor what a one-shot run has no use for: the backend probes, and stdlib modules that our
#: code would load only for a convenience (pathlib, tempfile and random, shutil with bz2
#: and lzma, datetime for a constant, the ``uv`` package to find its binary).
UNUSED = (
    "union.sandbox.core.on_device.availability",
    "pathlib",
    "tempfile",
    "random",
    "shutil",
    "bz2",
    "lzma",
    "datetime",
    "uv",
)


def _modules_after(code: str) -> dict[str, bool]:
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps({{m: m in sys.modules for m in {list(PROXY_ONLY + NEVER + UNUSED)!r}
                          + ["union.sandbox.core.on_device"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    loaded: dict[str, bool] = json.loads(out.stdout.splitlines()[-1])
    return loaded


def test_the_facade_loads_no_engine_and_no_proxy() -> None:
    loaded = _modules_after("from union import sandbox as sb\nsb.Process, sb.PIPE")
    assert not loaded["union.sandbox.core.on_device"]
    assert not any(loaded[m] for m in PROXY_ONLY + NEVER), loaded


def test_a_blocked_run_loads_no_proxy_code_and_a_proxied_run_does() -> None:
    run = """
        import anyio, warnings
        warnings.simplefilter("ignore")
        from union import sandbox as sb

        async def main():
            async with sb.on_device.session(backend="userns", **{kwargs!r}) as sbx:
                await sbx.exec("true", check=True)

        anyio.run(main)
        """
    blocked = _modules_after(run.format(kwargs={}))
    assert not any(blocked[m] for m in PROXY_ONLY + NEVER + UNUSED), blocked
    allowlist = {"network_mode": "allowlist", "network_allowlist": ["pypi.org"]}
    proxied = _modules_after(run.format(kwargs=allowlist))
    assert all(proxied[m] for m in PROXY_ONLY), proxied


def test_a_one_shot_cli_run_loads_only_what_it_uses() -> None:
    cli = """
        from union.sandbox._cli import main
        assert main(["run", "--backend", "userns", "--", "true"]) == 0
        """
    loaded = _modules_after(cli)
    assert loaded["union.sandbox.core.on_device"]
    assert not any(loaded[m] for m in PROXY_ONLY + NEVER + UNUSED), loaded


def test_a_session_started_before_its_event_loop_runs_in_it() -> None:
    """``start()`` opens the session outside any loop (its supervisor boots meanwhile); the
    loop then uses it, and ``open()`` on it is a no-op."""
    import anyio

    sbx = session(backend="userns").start()
    assert sbx.start() is sbx  # idempotent

    async def use() -> str:
        async with sbx:  # open() again: already open
            return (await sbx.exec("echo started", check=True)).stdout

    assert anyio.run(use) == "started\n"
    with pytest.raises(RuntimeError, match="closed"):
        sbx.start()


@pytest.mark.parametrize("command", [["run", "--backend", "userns", "--", "true"], ["doctor"]])
def test_the_console_script_collects_garbage_once_its_command_runs(command: list[str]) -> None:
    """``console_main`` holds garbage collection off while the process starts, and only
    then: a one-shot run has it back once its event loop is up, other commands at once."""
    script = textwrap.dedent(
        f"""
        import gc, os, sys
        from union.sandbox import _cli

        seen = []
        real_run, real_doctor = _cli._run, _cli._doctor

        async def run(*args):
            code = await real_run(*args)
            seen.append(gc.isenabled())
            return code

        def doctor(*args):
            seen.append(gc.isenabled())
            return 0

        real_start = _cli.start_on_device

        def start(*args):
            seen.append(gc.isenabled())  # while the process starts
            return real_start(*args)

        _cli._run, _cli._doctor, _cli.start_on_device = run, doctor, start
        real_exit = os._exit

        def exit_(code):
            print(seen, gc.isenabled(), gc.get_freeze_count() > 0, code, flush=True)
            real_exit(code)

        os._exit = exit_
        sys.argv = ["unionai-sandbox", *{command!r}]
        _cli.console_main()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    during_start = ["False,"] if command[0] == "run" else []
    # Back on, with what start-up made frozen out of the collections' way.
    expected = ["[", *during_start, "True]", "True", "True", "0"]
    assert out.stdout.replace("[", "[ ").split() == expected, out


def test_the_supervisor_code_is_taken_from_its_bytecode_cache_only_while_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "supervisor.py"
    monkeypatch.setattr(engine, "SUPERVISOR_PATH", str(source))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)

    def constants() -> tuple[object, ...]:
        return marshal.loads(engine._supervisor_code()).co_consts  # type: ignore[no-any-return]

    source.write_text("VALUE = 'first'\n")
    os.utime(source, (1_000_000, 1_000_000))
    assert "first" in constants()  # compiled, and cached
    cache = Path(importlib.util.cache_from_source(str(source)))
    assert cache.exists()
    assert "first" in constants()  # from the cache
    source.write_text("VALUE = 'other'\n")  # the same size: the mtime tells
    os.utime(source, (1_000_001, 1_000_001))
    assert "other" in constants()
    source.write_text("VALUE = 'longer one'\n")
    os.utime(source, (1_000_001, 1_000_001))  # same mtime, other size
    assert "longer one" in constants()


def test_main_called_from_python_leaves_the_collector_as_it_found_it() -> None:
    script = textwrap.dedent(
        """
        import gc
        from union.sandbox._cli import main
        gc.disable()  # this program's own choice
        assert main(["run", "--backend", "userns", "--", "true"]) == 0
        print(gc.isenabled(), gc.get_freeze_count())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "0"]


def test_help_is_sized_as_shutil_would_size_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from union.sandbox import _cli

    monkeypatch.delenv("COLUMNS", raising=False)
    # A terminal nobody sized yet (a fresh pty) reports 0 columns: 80, as shutil says.
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((0, 0)))
    assert _cli._terminal_columns() == 80
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((132, 40)))
    assert _cli._terminal_columns() == 132
    monkeypatch.setenv("COLUMNS", "60")
    assert _cli._terminal_columns() == 60


def test_the_temporary_work_dir_goes_where_tempfile_would_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from union.sandbox.core.on_device import workdir

    # As mkdtemp: tempfile.tempdir when set (by the program, or cached by gettempdir())...
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "chosen"))
    (tmp_path / "chosen").mkdir()
    assert Path(workdir._make_temporary_dir()).parent == tmp_path / "chosen"
    # ... else $TMPDIR.
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    made = workdir._make_temporary_dir()
    assert Path(made).parent == tmp_path
    assert os.stat(made).st_mode & 0o777 == 0o700
    # A $TMPDIR that takes no directory (sysfs: not even root may mkdir there): tempfile
    # decides instead, trying every place it knows, as before.
    monkeypatch.setenv("TMPDIR", "/sys")
    made = workdir._make_temporary_dir()
    assert not made.startswith("/sys/")
    assert Path(made).name.startswith("union-sandbox-")
    os.rmdir(made)
