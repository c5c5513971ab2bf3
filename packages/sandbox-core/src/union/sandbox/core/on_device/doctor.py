"""Preflight report: what this host offers a sandbox, and what blocks each backend."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from typing import Any

from . import backends, cgroups
from .availability import backend_report
from .fs import uv_binary

__all__ = ["doctor_report", "format_doctor"]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, 0, 1))  # landlock_create_ruleset(VERSION)
    return abi if abi > 0 else 0


def _seccomp_available() -> bool:
    status = _read("/proc/self/status") or ""
    return any(line.startswith("Seccomp:") for line in status.splitlines())


def _bwrap_version(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        return f"cannot run: {exc.strerror}"
    return (out.stdout or out.stderr).strip()


def doctor_report() -> dict[str, Any]:
    """Host facts and every backend's availability, probed for real (JSON-serialisable)."""
    support = cgroups.detect()
    bwrap = backends.bwrap_binary()
    return {
        "host": {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "root": os.getuid() == 0,
            "python": sys.executable,
            "uv": uv_binary(),
            "bwrap": bwrap,
            "bwrap_version": _bwrap_version(bwrap),
            "landlock_abi": _landlock_abi(),
            "seccomp": _seccomp_available(),
            "user_namespaces": {
                "max_user_namespaces": _read("/proc/sys/user/max_user_namespaces"),
                "unprivileged_userns_clone": _read("/proc/sys/kernel/unprivileged_userns_clone"),
                "apparmor_restrict_unprivileged_userns": _read(
                    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
                ),
            },
            "cgroups": {
                "version": support.version or None,
                "controllers": sorted(support.bases),
                "problem": support.problem or None,
            },
        },
        "backends": [
            {"name": s.name, "available": s.available, "problems": list(s.problems)}
            for s in backend_report()
        ],
    }


def format_doctor(report: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`doctor_report`."""
    host = report["host"]
    lines = ["unionai-sandbox doctor", ""]
    lines.append(
        f"  kernel        {host['kernel']} ({host['machine']})"
        + ("  running as root: sandboxes run as uid 65534" if host["root"] else "")
    )
    lines.append(f"  python        {host['python']}")
    lines.append(f"  uv            {host['uv'] or 'not found (uv pip install in sessions fails)'}")
    lines.append(
        f"  bwrap         {host['bwrap'] or 'not found'}"
        + (f" ({host['bwrap_version']})" if host["bwrap_version"] else "")
    )
    abi = host["landlock_abi"]
    lines.append(f"  landlock      {'ABI ' + str(abi) if abi else 'unavailable'}")
    lines.append(f"  seccomp       {'available' if host['seccomp'] else 'unavailable'}")
    cg = host["cgroups"]
    if cg["version"]:
        lines.append(f"  cgroups       {cg['version']} ({', '.join(cg['controllers'])})")
    else:
        lines.append(f"  cgroups       unavailable: {cg['problem']}")
    lines.append("")
    lines.append("backends:")
    for backend in report["backends"]:
        mark = "ok" if backend["available"] else "UNAVAILABLE"
        note = "  (no isolation: development only)" if backend["name"] == "none" else ""
        lines.append(f"  {backend['name']:<13} {mark}{note}")
        for problem in backend["problems"]:
            lines.append(f"      - {problem}")
    return "\n".join(lines)
