"""The same steps on an on-device session and on a remote one: only the constructor changes.

    uv run examples/remote_session.py [--backend userns|bubblewrap]

``demo(sbx)`` below streams a command's output, stages a file with ``put_bytes``, runs
Python on it with ``run_code`` and fetches the result with ``get_bytes``. It is called
twice with no change:

1. on ``sb.on_device.session(backend=...)``: the sandboxed processes are children of this
   script;
2. on ``sb.remote.session(endpoint=..., token=...)``: the sandbox lives in a
   ``sandbox-server``. In production that is its own pod; here ``spawn_server`` starts one
   locally on a free loopback port, with a freshly generated bearer token.
"""

from __future__ import annotations

import argparse
import json

import anyio

from union import sandbox as sb
from union.sandbox.on_device import OnDeviceSession
from union.sandbox.remote import RemoteSession
from union.sandbox.server.testing import spawn_server

ANALYSE = """
import json, statistics
rows = json.load(open("data.json"))
summary = {"n": len(rows), "mean": statistics.mean(rows), "max": max(rows)}
json.dump(summary, open("summary.json", "w"))
print("wrote summary.json:", summary)
"""


async def demo(sbx: OnDeviceSession | RemoteSession) -> dict[str, float]:
    """The steps of the quick start. Works on any session, on-device or remote."""
    work = sbx.work_dir
    print(f"  work dir: {work}")

    # 1. Output streams back live, line by line.
    proc = await sbx.run("for i in 1 2 3; do echo tick $i; sleep 0.1; done")
    async for line in proc.iter_stdout_lines():
        print(f"    streamed: {line.rstrip()}")
    await proc.wait()
    print(f"    exit {proc.returncode} in {proc.runtime_ms} ms on {proc.backend}")

    # 2. Stage a file, run Python on it, fetch the result.
    await sbx.put_bytes(f"{work}/data.json", json.dumps([3, 1, 4, 1, 5]).encode())
    print(f"    {(await sbx.run_code(ANALYSE)).strip()}")
    summary: dict[str, float] = json.loads(await sbx.get_bytes(f"{work}/summary.json"))
    print(f"    fetched summary.json: {summary}")

    # 3. A failing command is data on both transports.
    result = await sbx.exec("cat /etc/shadow")
    print(f"    `cat /etc/shadow` -> exit {result.returncode}: {result.stderr.strip()}")
    return summary


async def main(backend: str) -> None:
    # On-device: sandboxed children of this process.
    print(f"== on-device session (backend {backend})")
    async with sb.on_device.session(backend=backend) as sbx:
        local = await demo(sbx)

    # Remote: a sandbox-server (here a local one, started for the demo), over HTTP.
    print(f"\n== remote session (a local sandbox-server, backend {backend})")
    with spawn_server(backend=backend, token=True) as server:
        print(f"  sandbox-server listening at {server.endpoint} (pid {server.pid})")
        async with sb.remote.session(endpoint=server.endpoint, token=server.token) as rsbx:
            remote = await demo(rsbx)

    assert local == remote, (local, remote)
    print("\nsame steps, same results; only the session constructor changed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns", choices=["bubblewrap", "userns"])
    args = parser.parse_args()
    anyio.run(main, args.backend)
