"""``unionai-sandbox shell --flyte --env NAME`` against a (fake) Flyte cluster, found through a
Flyte config file as the ``flyte`` CLI finds it: the launch's steps on stderr, the shell on a
sandbox in its own run, the run aborted when the shell ends."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from union.sandbox.flyte import SandboxEnvironment

from .fake_cp import FakeControlPlane


def test_shell_flyte_against_a_cluster(remote: FakeControlPlane, tmp_path: Path) -> None:
    env = SandboxEnvironment(name="cli-sandbox", image="example.com/sandbox:test")
    remote.deploy(env.server_task)
    home = tmp_path / "home"
    (home / ".flyte").mkdir(parents=True)
    (home / ".flyte" / "config.yaml").write_text(
        f"admin:\n  endpoint: {remote.endpoint}\n  insecure: true\n"
        "  authType: ExternalCommand\n  command: [echo, tok]\n"
        "task:\n  project: p\n  domain: development\n  org: o\n"
    )
    cli = Path(sys.executable).with_name("unionai-sandbox")
    out = subprocess.run(
        [str(cli), "shell", "--flyte", "--env", "cli-sandbox", "--env", "WHO=cli"],
        input='echo "hello $WHO"\nexit 4\n',
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1"},
        check=False,
    )
    assert out.returncode == 4, out.stderr
    assert out.stdout == "hello cli\n"
    name = re.search(
        r"launching sandbox (sbx-[0-9a-f]{16}) \(http://127\.0\.0\.1:\d+/v2/", out.stderr
    )
    assert name, out.stderr
    steps = re.findall(r"\] (submitted|pod scheduled|image pulled|server ready)", out.stderr)
    assert steps == ["submitted", "pod scheduled", "image pulled", "server ready"], out.stderr
    assert remote.wait_phase(name.group(1), {"ABORTED"}) == "ABORTED"
    assert ("CreateRun", name.group(1), "task_id") in remote.calls
