"""Every ``examples/*.py`` runs, with ``--backend userns`` and ``--backend bubblewrap``.

Each example runs as a subprocess of the workspace interpreter (``sys.executable``, as
``uv run examples/<name>.py`` would), must exit 0 within its time limit, and must print the
lines that show it did what its docstring says. A new example needs an entry in
``EXPECTED``; each must say how to run it in its module docstring.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BACKENDS = ("userns", "bubblewrap")
TIMEOUT_S = 120

#: Lines (substrings of stdout) each example must print; ``{backend}`` is filled in.
EXPECTED: dict[str, list[str]] = {
    "quickstart": [
        "  streamed: tick 3",
        "exit 0 in ",
        " ms on {backend}",
        "wrote summary.json: {'n': 5, 'mean': 2.8, 'max': 5}",
        "fetched summary.json: {'n': 5, 'mean': 2.8, 'max': 5}",
        "`cat /etc/shadow` -> exit 1:",
        "network probe -> exit 1:",
        "isolation: namespaces=",
    ],
    "agent_loop": [
        "(backend {backend}, network blocked)",
        "staged input/: config.json, text.txt",
        "agent reads: py_compile failed: SyntaxError",
        "agent reads: exit 1: KeyError: 'stopwords'",
        "Network is unreachable",
        "run -> returncode=137 termination.kind=timeout",
        "stdout: box: 4",
        "run -> returncode=0 termination.kind=exit reason='(clean exit)'",
        "fetched output/top.json after 5 attempts: [['box', 4], ['code', 3]]",
        "run_code() raised CommandError: exit 1",
    ],
    "install_then_run_offline": [
        "built sandbox_demo_greeter-1.0.0-py3-none-any.whl",
        "(backend {backend})",
        "HTTP_PROXY=http://127.0.0.1:",
        "+ sandbox-demo-greeter==1.0.0",
        "  exit 0",
        "allowed http-forward 127.0.0.1:",
        "GET /simple/sandbox-demo-greeter/",
        "-> HTTP 403",
        "REFUSED 10.1.2.3:80",
        "hello, newcomer, from an offline sandbox",
        "blocked run fetching the index -> exit 7",
    ],
    "data_pipeline": [
        "(backend {backend})",
        "kept 5 rows, dropped 3",
        "clean.csv: still there",
        "/tmp/step1-scratch.txt: gone",
        "scratch file from step 1 still there? False",
        "wrote report.txt",
        "north        2    220.00    110.00",
        "all          5    545.25",
    ],
    "flyte_sessions": [
        "launched sbx-",
        "uname in the sandbox (backend {backend}): Linux ",
        "count_words (owner: False) counted 9 words",
        "] server ready: {backend} backend at http://127.0.0.1:",
        "after async with: ABORTED: SandboxSession closed",
        "detached session sbx-",
    ],
    "on_device_task_pod": [
        "ran through Flyte's local executor (backend {backend})",
        "  uname -a in the sandbox: Linux sandbox ",
    ],
    "mcp_agent_loop": [
        "tools ({backend} backend): run_shell, run_python, write_file, read_file, list_dir",
        "Default and maximum: 20 (the operator's limit).",
        "attempt 1: exit code 1",
        "the model reads: AssertionError: 4.0",
        "attempt 2: exit code 0",
        "run_python imports the agent's stats.py: mean([2, 4]) = 3.0",
        "timeout_s=0.5 -> killed: the 0.5 s timeout expired",
        "{'timeout_s': 60} -> refused (error=True); the operator's flag: --timeout 60",
        "{'network': 'open'} -> refused (error=True); the operator's flag: --network open",
        "seq 1 100000 -> 588,895 bytes, 861 shown",
        "cut from the middle of stdout",
        "from byte 588,888: '100000'",
        "  progress at ",
        "step 1",
        "done: the client closed the server, and the server its session",
    ],
    "remote_session": [
        "== on-device session (backend {backend})",
        "== remote session (a local sandbox-server, backend {backend})",
        "sandbox-server listening at http://127.0.0.1:",
        "work dir: /tmp/union-sandbox-server-",
        "same steps, same results; only the session constructor changed",
    ],
}

#: Examples that run Flyte: no telemetry, and flyte's config and local cache in a temporary
#: HOME (the wheel cache of ``sb.base_sandbox_image`` stays where it was).
USES_FLYTE = {"on_device_task_pod", "flyte_sessions"}

#: Lines that must appear this many times (once per session in ``remote_session``).
COUNTED: dict[str, dict[str, int]] = {
    "remote_session": {
        "streamed: tick 3": 2,
        "ms on {backend}": 2,
        "fetched summary.json: {'n': 5, 'mean': 2.8, 'max': 5}": 2,
        "`cat /etc/shadow` -> exit 1:": 2,
    },
}


def _examples() -> list[str]:
    return sorted(path.stem for path in EXAMPLES.glob("*.py"))


def test_every_example_is_covered() -> None:
    names = _examples()
    assert "quickstart" in names
    assert set(names) == set(EXPECTED), (
        f"examples without expected output here: {sorted(set(names) - set(EXPECTED))}; "
        f"expected but missing: {sorted(set(EXPECTED) - set(names))}"
    )


@pytest.mark.parametrize("name", _examples())
def test_example_says_how_to_run_it(name: str) -> None:
    docstring = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    assert docstring, f"examples/{name}.py has no module docstring"
    assert f"uv run examples/{name}.py" in docstring


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", _examples())
def test_example_runs(name: str, backend: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("UNION_SANDBOX_TOKEN", None)
    if name in USES_FLYTE:
        env.setdefault("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        env.update(DO_NOT_TRACK="1", HOME=str(tmp_path))
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--backend", backend],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"examples/{name}.py --backend {backend} ran over {TIMEOUT_S} s:\n{exc}")
    report = (
        f"examples/{name}.py --backend {backend} -> exit {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
    for line in EXPECTED[name]:
        assert line.replace("{backend}", backend) in done.stdout, f"missing {line!r}\n{report}"
    for line, times in COUNTED.get(name, {}).items():
        found = done.stdout.count(line.replace("{backend}", backend))
        assert found == times, f"{line!r} printed {found} times, not {times}\n{report}"
