"""Deploying: ``unionai-sandbox-deploy`` and the seed page's custom-environment recipe, with
``--dry-run`` against a configured (closed) endpoint, through the real ``flyte`` CLI; and
``depends_on=[sandbox_env]`` pulling the sandbox task into a caller's deploy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import flyte
import pytest
from flyte._deploy import plan_deploy

from union import sandbox as sb
from union.sandbox.flyte import _deploy
from union.sandbox.flyte.testing import isolated_flyte

from .samples import MY_SANDBOXES

BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
TITLED = re.compile(r'```python title="(?P<file>[^"]+)"\n(?P<code>.*?)```', re.S)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\\\")

# The seed page's two files, verbatim (my_sandboxes.py in samples.py).
DEPLOY_MY_SANDBOXES = """
from my_sandboxes import ml_sandbox
# Module-scope name; flyte deploy discovers this via isinstance(v, flyte.Environment).
ml_sandbox_env = ml_sandbox.task_env
"""


RECIPE_TARGET = ("deploy_my_sandboxes.py", "ml_sandbox_env")


@pytest.fixture(scope="module")
def dry_runs(
    tmp_path_factory: pytest.TempPathFactory, flyte_home_dir: Path
) -> dict[str, tuple[int, str, Path]]:
    """Both CLI dry runs, started together (each spends seconds importing flyte and
    kubernetes): ``name -> (exit status, output, cwd)``."""
    with isolated_flyte(flyte_home_dir):  # module scope: set up before the per-test HOME
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    deploy_dir = tmp_path_factory.mktemp("deploy-cwd")
    recipe_dir = tmp_path_factory.mktemp("recipe")
    (recipe_dir / "my_sandboxes.py").write_text(MY_SANDBOXES)
    (recipe_dir / "deploy_my_sandboxes.py").write_text(DEPLOY_MY_SANDBOXES)
    commands = {
        "defaults": (
            [str(BIN / "unionai-sandbox-deploy"), "--dry-run", "--version", "v1"],
            deploy_dir,
        ),
        "recipe": (
            [str(BIN / "flyte"), "deploy", "--dry-run", "--version", "v1", *RECIPE_TARGET],
            recipe_dir,
        ),
    }
    started = {
        name: subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (argv, cwd) in commands.items()
    }
    results = {}
    for name, proc in started.items():
        out, _ = proc.communicate(timeout=300)
        results[name] = (proc.returncode, ANSI.sub("", out), commands[name][1])
    return results


def test_unionai_sandbox_deploy_dry_run(dry_runs: dict[str, tuple[int, str, Path]]) -> None:
    code, out, cwd = dry_runs["defaults"]
    assert code == 0, out
    assert "union-sandbox.sandbox_server" in out
    assert "union-sandbox-bwrap.sandbox_server" in out
    assert not list(cwd.iterdir())  # its deploy module lived in a temporary directory


def test_seed_custom_recipe_dry_run(dry_runs: dict[str, tuple[int, str, Path]]) -> None:
    code, out, _ = dry_runs["recipe"]
    assert code == 0, out
    assert "ml-sandbox.sandbox_server" in out
    assert "union-sandbox" not in out.replace("union-sandbox-base", "")  # only what was named


def test_the_deployment_pages_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two files the Deployment page shows, as written there: the deploy module binds the
    environment at module scope, where ``flyte deploy <file> <variable>`` finds it (the CLI
    run itself is the seed recipe's test above)."""
    files = {m["file"]: m["code"] for m in TITLED.finditer(DOCS.read_text())}
    assert set(files) == {"my_sandboxes.py", "deploy_my_sandboxes.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("my_sandboxes", "deploy_my_sandboxes"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    import deploy_my_sandboxes  # type: ignore[import-not-found]

    env = deploy_my_sandboxes.ml_sandbox_env
    assert isinstance(env, flyte.Environment)
    (plan,) = plan_deploy(env)
    assert list(plan.envs) == ["ml-sandbox"]
    assert list(env.tasks) == ["ml-sandbox.sandbox_server"]
    monkeypatch.delitem(sys.modules, "deploy_my_sandboxes")
    monkeypatch.delitem(sys.modules, "my_sandboxes")


def test_depends_on_deploys_the_sandbox_task() -> None:
    """The GPU page's shape: a caller environment that ``depends_on`` a sandbox environment;
    one deploy of the caller deploys the sandbox task too."""
    sandbox = sb.SandboxEnvironment(name="deps-sandbox", sandbox_mode="bwrap")
    caller = flyte.TaskEnvironment(name="deps-caller", depends_on=[sandbox])

    @caller.task
    async def main() -> str:
        return "ok"

    (plan,) = plan_deploy(caller)
    assert set(plan.envs) == {"deps-caller", "deps-sandbox"}
    assert list(plan.envs["deps-sandbox"].tasks) == ["deps-sandbox.sandbox_server"]


def test_without_the_flyte_cli_exit_127(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no flyte beside it
    assert _deploy.main(["--dry-run"]) == 127
    assert "pip install 'unionai-sandbox[deploy]'" in capsys.readouterr().err


def test_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert _deploy.main(["--help"]) == 0
    assert "flyte deploy --all" in capsys.readouterr().out
    assert textwrap.dedent(_deploy.DEPLOY_MODULE).count("DEFAULT_SANDBOX_ENV") == 2
