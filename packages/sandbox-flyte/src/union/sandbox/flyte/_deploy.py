"""``unionai-sandbox-deploy [flyte deploy options...]``: deploy the two default sandbox
environments.

It is the custom-environment recipe applied to the defaults: a deploy module that binds
``DEFAULT_SANDBOX_ENV`` and ``DEFAULT_SANDBOX_ENV_BWRAP`` at module scope, written to a fresh
directory (so the code bundle holds nothing else), then
``flyte deploy --all --root-dir <dir> [options...] <module>``. The options go to
``flyte deploy`` (``--project``, ``--domain``, ``--version``, ``--dry-run``, ``--image``...);
the endpoint and credentials come from the Flyte config as for any ``flyte`` command.
Exit status: flyte's, or 127 with the install hint when the ``flyte`` CLI or ``kubernetes``
is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["DEPLOY_MODULE", "find_flyte_cli", "main"]

INSTALL_HINT = "pip install 'unionai-sandbox[deploy]'"
DEPLOY_MODULE = '''\
"""The default unionai-sandbox environments (written by unionai-sandbox-deploy)."""

from union.sandbox.flyte import DEFAULT_SANDBOX_ENV as sandbox_env
from union.sandbox.flyte import DEFAULT_SANDBOX_ENV_BWRAP as sandbox_env_bwrap

__all__ = ["sandbox_env", "sandbox_env_bwrap"]
'''


def find_flyte_cli() -> str | None:
    """The ``flyte`` command of this environment (next to this interpreter), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "flyte")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("flyte")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    flyte_cli = find_flyte_cli()
    if flyte_cli is None:
        print(
            f"unionai-sandbox-deploy: the flyte command is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 127
    if importlib.util.find_spec("kubernetes") is None:
        print(
            "unionai-sandbox-deploy: the sandbox pod templates need the kubernetes package: "
            + INSTALL_HINT,
            file=sys.stderr,
        )
        return 127
    with tempfile.TemporaryDirectory(prefix="unionai-sandbox-deploy-") as root:
        module = os.path.join(root, "deploy_sandbox.py")
        with open(module, "w", encoding="utf-8") as f:
            f.write(DEPLOY_MODULE)
        cmd = [flyte_cli, "deploy", "--all", "--root-dir", root, *args, module]
        return subprocess.call(cmd)
