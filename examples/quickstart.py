"""Quick start: one on-device sandbox session, several runs, files in and out.

    uv run examples/quickstart.py [--backend bubblewrap|userns|none]

No server, no cluster: the sandboxed processes are children of this script, isolated by
bubblewrap (default) or by user namespaces + Landlock + seccomp (``--backend userns``).
"""

from __future__ import annotations

import argparse
import json

import anyio

from union import sandbox as sb

ANALYSE = """
import json, statistics
rows = json.load(open("data.json"))
summary = {"n": len(rows), "mean": statistics.mean(rows), "max": max(rows)}
json.dump(summary, open("summary.json", "w"))
print("wrote summary.json:", summary)
"""


async def main(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        print(f"session work dir: {sbx.work_dir}")

        # 1. A shell command; output streams back live, line by line.
        proc = await sbx.run("for i in 1 2 3; do echo tick $i; sleep 0.2; done")
        async for line in proc.iter_stdout_lines():
            print("  streamed:", line.rstrip())
        await proc.wait()
        print(f"  exit {proc.returncode} in {proc.runtime_ms} ms on {proc.backend}")

        # 2. Stage a file, run Python on it, fetch the result.
        await sbx.put_bytes(f"{sbx.work_dir}/data.json", json.dumps([3, 1, 4, 1, 5]).encode())
        print(" ", (await sbx.run_code(ANALYSE)).strip())
        summary = json.loads(await sbx.get_bytes(f"{sbx.work_dir}/summary.json"))
        print(f"  fetched summary.json: {summary}")

        # 3. A failing command is data, not an exception. Host secrets stay out of reach.
        result = await sbx.exec("cat /etc/shadow")
        print(f"  `cat /etc/shadow` -> exit {result.returncode}: {result.stderr.strip()}")

        # 4. The network is blocked unless a run asks for more.
        result = await sbx.exec(
            "python -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)\""
        )
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        print(f"  network probe -> exit {result.returncode}: {last}")

        # 5. What the backend actually enforced for that run.
        proc = await sbx.run("true")
        await proc.wait()
        iso = proc.isolation
        assert iso is not None
        print(
            f"  isolation: namespaces={','.join(iso.namespaces) or 'none'} "
            f"landlock_abi={iso.landlock_abi} seccomp={iso.seccomp} host_uid={iso.uid}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="bubblewrap", choices=["bubblewrap", "userns"])
    args = parser.parse_args()
    anyio.run(main, args.backend)
