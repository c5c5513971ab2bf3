"""An agent loop over MCP, without an LLM: the agent host's side of ``unionai-sandbox mcp``.

    uv run examples/mcp_agent_loop.py [--backend userns|bubblewrap]

An agent host (Claude Desktop, Cursor, the OpenAI Agents SDK...) starts ``unionai-sandbox
mcp`` and lets its model call the tools. Here the "model" is a deterministic script, so the
example runs offline in a few seconds and always does the same thing; everything else is
real: the server is the real command, spoken to over stdio through the ``mcp`` SDK's own
client. What it shows:

- the tools a model sees (names and descriptions, with the operator's limits in them);
- one live session across calls: a file written by one call is there for the next, and
  ``run_python`` imports the module the agent wrote;
- a result as a model reads it (exit code, how it ended, runtime, stdout/stderr), and a
  failing command as data the loop branches on, not an exception;
- the operator's flags as the ceiling: a shorter timeout is applied, a longer one and an
  open network are refused with the flag that would allow them;
- a flood of output trimmed to its head and tail, the whole of it kept in a file that
  ``read_file`` pages through;
- progress notifications carrying a long command's output while it runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

# The operator's choices: the ceiling every tool call stays within.
OPERATOR_FLAGS = ["--network", "blocked", "--timeout", "20", "--max-output", "600"]

# The "model's" drafts of a module and its test, in order; the first one is buggy.
DRAFTS = [
    "def mean(xs):\n    return sum(xs) / len(xs) + 1\n",  # an off-by-one a model might write
    "def mean(xs):\n    return sum(xs) / len(xs)\n",
]
TEST = "from stats import mean\nassert mean([1, 2, 3, 6]) == 3, mean([1, 2, 3, 6])\nprint('ok')\n"


def server(backend: str) -> StdioServerParameters:
    """How a host starts the server: the console script (or the module, from a checkout)."""
    script = shutil.which("unionai-sandbox")
    command, prefix = (script, []) if script else (sys.executable, ["-m", "union.sandbox._cli"])
    return StdioServerParameters(
        command=command, args=[*prefix, "mcp", "--backend", backend, *OPERATOR_FLAGS]
    )


def said(result: Any) -> str:
    """What the model reads: the text of a tool result."""
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def main(backend: str) -> None:
    async with Client(server(backend)) as client:
        tools = (await client.list_tools()).tools
        print(f"tools ({backend} backend): {', '.join(tool.name for tool in tools)}")
        run_shell = next(tool for tool in tools if tool.name == "run_shell")
        timeout_doc = run_shell.input_schema["properties"]["timeout_s"]["description"]
        print(f"  run_shell timeout_s: {timeout_doc}")

        # The loop: write the module, run the test, read the failure, fix, run again.
        for attempt, draft in enumerate(DRAFTS, 1):
            await client.call_tool("write_file", {"path": "stats.py", "content": draft})
            await client.call_tool("write_file", {"path": "test_stats.py", "content": TEST})
            result = await client.call_tool("run_shell", {"command": "python test_stats.py"})
            data = result.structured_content or {}
            print(f"attempt {attempt}: exit code {data['exit_code']}")
            if data["exit_code"] == 0:
                print(f"  stdout: {data['stdout']['text'].strip()}")
                break
            print(f"  the model reads: {data['stderr']['text'].strip().splitlines()[-1]}")

        # The session is live: the module is importable by a later run_python call.
        code = "import stats; print(stats.mean([2, 4]))"
        result = await client.call_tool("run_python", {"code": code})
        shown = (result.structured_content or {})["stdout"]["text"].strip()
        print(f"run_python imports the agent's stats.py: mean([2, 4]) = {shown}")

        # Narrowing within the operator's limits is applied; widening is refused.
        result = await client.call_tool("run_shell", {"command": "sleep 5", "timeout_s": 0.5})
        print(f"timeout_s=0.5 -> {said(result).splitlines()[0]}")
        for asked in ({"timeout_s": 60}, {"network": "open"}):
            result = await client.call_tool("run_shell", {"command": "true", **asked})
            flag = (result.structured_content or {}).get("flag")
            print(f"{asked} -> refused (error={result.is_error}); the operator's flag: {flag}")

        # A flood: the model gets the head and the tail; the whole is in a file.
        result = await client.call_tool("run_shell", {"command": "seq 1 100000"})
        stdout = (result.structured_content or {})["stdout"]
        print(f"seq 1 100000 -> {stdout['bytes']:,} bytes, {len(stdout['text'])} shown")
        marker = next(line for line in stdout["text"].splitlines() if "cut from the middle" in line)
        print(f"  {marker[:72]}...")
        last = stdout["bytes"] - len("100000\n")
        page = await client.call_tool("read_file", {"path": stdout["file"], "offset": last})
        print(f"  read_file {stdout['file']} from byte {last:,}: {said(page).split()[0]!r}")

        # Progress: a long command's output arrives while it runs.
        async def progress(progress: float, total: float | None, message: str | None) -> None:
            if message:  # progress: the seconds so far; total: the run's timeout
                print(f"  progress at {progress:.1f} s: {message.strip()!r}")

        command = "for i in 1 2 3; do echo step $i; sleep 0.6; done"
        await client.call_tool("run_shell", {"command": command}, progress_callback=progress)
    print("done: the client closed the server, and the server its session")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An agent loop over unionai-sandbox mcp.")
    parser.add_argument("--backend", default="userns", choices=["userns", "bubblewrap"])
    anyio.run(main, parser.parse_args().backend)
