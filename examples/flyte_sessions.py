"""A sandbox in a Flyte run of its own (``sb.session()``), handed to another task.

    uv run examples/flyte_sessions.py [--backend userns|bubblewrap]

``main`` launches a sandbox with ``await sb.session(...)``, stages a file in it, and passes the
session to ``count_words``, a second task, which uses the same sandbox as a *reference* (its
``close()`` would close only its own connection); leaving ``async with`` aborts the run. Then
a *detached* session: no ``async with``, ``close()`` ends it.

With no Flyte cluster configured (as here), Flyte's local executor runs the tasks in this
process and ``sb.session()`` runs the sandbox task's body in a process of this machine. On a
cluster, after ``unionai-sandbox-deploy``, ``flyte run examples/flyte_sessions.py main`` runs
the same code: each sandbox is then a pod of its own.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

import flyte

from union import sandbox as sb

env = flyte.TaskEnvironment(name="flyte-sessions-example")

TEXT = b"the quick brown fox jumps over the lazy dog\n"


@env.task
async def count_words(sbx: sb.SandboxSession, path: str) -> str:
    # This task did not launch the sandbox: it got a reference, whose first call connects.
    result = await sbx.exec(f"wc -w < {path}", check=True)
    return f"count_words (owner: {sbx.is_owner}) counted {result.stdout.strip()} words"


@env.task
async def main(sandbox_mode: str = "userns") -> list[str]:
    said = []
    async with await sb.session(sandbox_mode=sandbox_mode, timeout=timedelta(minutes=10)) as sbx:
        said.append(f"launched {sbx.name} (run log: {sbx.url})")
        proc = await sbx.run("uname -sr", stdout=True)
        out, _ = await proc.communicate_text()
        said.append(f"uname in the sandbox (backend {proc.backend}): {out.strip()}")
        path = f"{sbx.work_dir}/fox.txt"
        await sbx.put_bytes(path, TEXT)
        said.append(await count_words(sbx, path))
        said.extend(f"  {step}" for step in sbx.progress)
    said.append(f"after async with: {sbx.phase}")
    return said


async def detached(sandbox_mode: str) -> list[str]:
    sbx = await sb.session(sandbox_mode=sandbox_mode, timeout=timedelta(minutes=10))
    await sbx  # the sandbox is addressable
    try:
        result = await sbx.exec("echo detached")
        return [f"detached session {sbx.name}: {result.stdout.split()}"]
    finally:
        await sbx.close()  # closes the connection and aborts the run (owner side)


async def run(backend: str) -> None:
    mode = "bwrap" if backend == "bubblewrap" else "userns"
    outputs = await flyte.with_runcontext(mode="local").run.aio(main, sandbox_mode=mode)
    for line in (await outputs.outputs.aio())[0]:
        print(line)
    for line in await detached(mode):
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("userns", "bubblewrap"), default="userns")
    asyncio.run(run(parser.parse_args().backend))
