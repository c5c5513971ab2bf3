"""Every ``python`` code block in docs/ runs, under asyncio and trio, unless an HTML comment
right before it says why it cannot run here (``<!-- not-run: needs a Flyte cluster -->``).

A block runs as a module of its own; ``anyio.run(main)`` at its end is replaced by running
``main`` on the event loop of the test, so each block is exercised under both backends.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(
    r"(?P<skip><!--\s*not-run:(?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.S
)
ALLOWED_REASONS = ("needs a Flyte cluster", "needs network access")


def _blocks() -> list[tuple[str, str, str | None]]:
    found = []
    for page in sorted(DOCS.glob("**/*.md")):
        for index, match in enumerate(FENCE.finditer(page.read_text())):
            why = match.group("why")
            found.append((f"{page.name}#{index}", match.group("code"), why and why.strip()))
    return found


BLOCKS = _blocks()


def test_docs_have_code_blocks() -> None:
    assert len(BLOCKS) >= 5


def test_every_skipped_block_says_why() -> None:
    for name, _code, why in BLOCKS:
        if why is not None:
            assert why in ALLOWED_REASONS, f"{name}: not-run reason {why!r} is not one of "
            f"{ALLOWED_REASONS}"


def _entry_point(tree: ast.Module) -> str | None:
    """The name passed to a trailing ``anyio.run(name)`` / ``asyncio.run(name())``."""
    if not tree.body:
        return None
    last = tree.body[-1]
    if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
        return None
    call = last.value
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "run" and call.args):
        return None
    target = call.args[0]
    if isinstance(target, ast.Call) and isinstance(target.func, ast.Name):
        target = target.func
    if isinstance(target, ast.Name):
        tree.body.pop()
        return target.id
    return None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "code"),
    [(n, c) for n, c, why in BLOCKS if why is None],
    ids=lambda v: v if isinstance(v, str) and "#" in v else "code",
)
async def test_docs_block_runs(name: str, code: str, tmp_path: Path) -> None:
    tree = ast.parse(code, filename=name)
    entry = _entry_point(tree)
    namespace: dict[str, object] = {"__name__": f"docs_{name}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exec(compile(tree, name, "exec"), namespace)
        if entry is not None:
            main = namespace[entry]
            assert callable(main)
            await main()
