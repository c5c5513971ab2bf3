"""Sample scripts as importable modules: :func:`importable` writes them out and puts them on
``sys.path``; and the seed deployment page's samples (``spec/seed-deployment-page.txt``),
verbatim, that more than one test module writes out."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def importable(root: Path, files: dict[str, str]) -> Iterator[Path]:
    """Write each ``name -> source`` of ``files`` (dedented) as ``root/<name>.py`` and put
    ``root`` first on ``sys.path``; on exit, take it off and forget those modules. Modules of
    the same names that other tests of this process imported are set aside meanwhile and put
    back after: as in a process of its own, the samples start without them."""
    for name, text in files.items():
        (root / f"{name}.py").write_text(textwrap.dedent(text))
    saved = {name: sys.modules.pop(name) for name in list(files) if name in sys.modules}
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in files:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


# "Defining a custom SandboxEnvironment": my_sandboxes.py
MY_SANDBOXES = """
import flyte
from union import sandbox as sb

ml_sandbox = sb.SandboxEnvironment(
    name="ml-sandbox",
    image=sb.base_sandbox_image.with_pip_packages("torch", "transformers"),
    resources=flyte.Resources(cpu="8", memory="32Gi", gpu="L4:1"),
    secrets=[flyte.Secret(group="hf", key="HF_TOKEN")],
    env_vars={"HF_HOME": "/tmp/hf"},
    sandbox_mode="userns", # "userns" | "bwrap"
    runtime="container", # "container" | "gvisor"
    description="ML inference sandbox",
)
"""
