"""GPU pass-through check, for a machine with an NVIDIA GPU (issue 5).

    python3 tools/gpu/gpu_check.py

Opens a bubblewrap session with ``resources=Resources(gpu=1)`` and runs ``nvidia-smi`` and
(when the interpreter has torch) a small CUDA matmul inside the sandbox; also checks that a
session without a GPU sees no NVIDIA device. Prints what it saw; exits non-zero on failure.
"""

from __future__ import annotations

import sys
import warnings

import anyio

from union.sandbox.core.on_device import backend_report, session
from union.sandbox.core.resources import Resources

TORCH_CHECK = """
import torch
print("cuda available:", torch.cuda.is_available())
a = torch.randn(2048, 2048, device="cuda")
print("matmul sum finite:", bool(torch.isfinite((a @ a).sum())))
print("device:", torch.cuda.get_device_name(0))
"""


async def main() -> int:
    warnings.simplefilter("ignore")
    for status in backend_report():
        print(f"backend {status.name}: {'ok' if status.available else status.problems}")
    failures = 0
    async with session(backend="bubblewrap", resources=Resources(gpu=1)) as sbx:
        smi = await sbx.exec("nvidia-smi -L && ls -l /dev | grep nvidia")
        print("--- nvidia-smi inside the sandbox (exit", smi.returncode, ")")
        print(smi.stdout, smi.stderr)
        failures += smi.returncode != 0
        has_torch = (await sbx.exec("python -c 'import torch'")).ok
        if has_torch:
            torch = await sbx.exec(TORCH_CHECK, script_type="python", timeout_s=300)
            print("--- torch inside the sandbox (exit", torch.returncode, ")")
            print(torch.stdout, torch.stderr[-2000:])
            failures += torch.returncode != 0
        proc = await sbx.run("true")
        await proc.wait()
        print("isolation:", proc.isolation)
    async with session(backend="bubblewrap") as plain:
        none = await plain.exec("ls /dev | grep -c nvidia || true")
        print("--- no GPU requested: nvidia nodes visible =", none.stdout.strip())
        failures += none.stdout.strip() != "0"
    print("GPU CHECK", "PASSED" if not failures else f"FAILED ({failures})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
