"""An on-device sandbox inside a Flyte task: the seed deployment page's "Running an on-device
sandbox in a task pod", run as a plain script through Flyte's local executor.

    uv run examples/on_device_task_pod.py [--backend userns|bubblewrap]

The two environments share the sandbox base image; only the pod differs: ``userns`` runs in
a vanilla pod, ``bubblewrap`` needs ``flyte.PodTemplate().allow_nested_sandboxing()``
(CAP_SYS_ADMIN + unconfined AppArmor, not privileged). Here both tasks run in this process
(no cluster, no image build); on a cluster, ``flyte run examples/on_device_task_pod.py
run_bwrap`` runs the same task in a pod of ``sb.base_sandbox_image``.
"""

from __future__ import annotations

import argparse
import asyncio

import flyte

from union import sandbox as sb

# userns: vanilla pod, no special capabilities.
userns_env = flyte.TaskEnvironment(
    name="sandboxed-userns",
    image=sb.base_sandbox_image,
)
# bwrap: same image, but the pod grants CAP_SYS_ADMIN + unconfined AppArmor.
bwrap_env = flyte.TaskEnvironment(
    name="sandboxed-bwrap",
    image=sb.base_sandbox_image,
    pod_template=flyte.PodTemplate().allow_nested_sandboxing(),
)


@userns_env.task
async def run_userns() -> str:
    async with sb.on_device.session(backend="userns") as sbx:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        return out


@bwrap_env.task
async def run_bwrap() -> str:
    async with sb.on_device.session(backend="bubblewrap") as sbx:
        proc = await sbx.run("uname -a", stdout=True)
        out, _ = await proc.communicate_text()
        return out


async def main(backend: str) -> None:
    task = run_userns if backend == "userns" else run_bwrap
    run = await flyte.with_runcontext(mode="local").run.aio(task)
    outputs = await run.outputs.aio()
    print(f"{task.name} ran through Flyte's local executor (backend {backend})")
    print(f"  uname -a in the sandbox: {outputs[0].strip()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("userns", "bubblewrap"), default="userns")
    asyncio.run(main(parser.parse_args().backend))
