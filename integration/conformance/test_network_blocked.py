"""Network in the default ``blocked`` posture: no interface but loopback, so TCP, UDP, DNS
and IPv6 towards the outside fail at once.

The hostile code first lists the run's interfaces; it only tries to reach an outside address
when the run has no interface but ``lo`` (a fresh network namespace has no route, so the
attempt fails immediately and never leaves the machine). On ``none`` the run shares the
host's network, so nothing outside loopback is targeted there.
"""

from __future__ import annotations

import secrets
import socket
from typing import Any

import pytest

from union.sandbox.core.constants import PIPE

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

GATE = """
names = sorted(name for _, name in socket.if_nameindex())
if names != ["lo"]:
    verdict(True, "interfaces %s: the run has a way out (not attempted)" % names)
"""


def timed(expr: str) -> str:
    return f"""
start = time.monotonic()
try:
    outcome = {expr}
except socket.timeout:
    outcome = "timeout"
except socket.gaierror as exc:
    outcome = "gaierror %s" % exc.args[0]
except OSError as exc:
    outcome = err(exc.errno)
elapsed = time.monotonic() - start
"""


@asyncio_only
async def test_interfaces(sandbox: Any, probe: Any) -> None:
    code = """
names = sorted(name for _, name in socket.if_nameindex())
verdict(names != ["lo"], "interfaces: %s" % ", ".join(names))
"""
    result = await probe.run_py(sandbox, code)
    probe.verdict(
        "network interfaces of a blocked run",
        "lo only",
        let_through=result["let_through"],
        detail=result["detail"],
    )


CONNECT = """
def tcp(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        return "ok"
    finally:
        s.close()
"""


@asyncio_only
async def test_tcp_out(sandbox: Any, probe: Any) -> None:
    name, expected = "TCP to 1.1.1.1:53 and [2606:4700:4700::1111]:53", "ENETUNREACH, fast"
    if not probe.target.isolated:
        probe.not_run(name, expected, "shares the host network: would reach the internet")
        return
    code = (
        GATE
        + CONNECT
        + timed('tcp(socket.AF_INET, ("1.1.1.1", 53))')
        + "v4 = (outcome, elapsed)\n"
        + timed('tcp(socket.AF_INET6, ("2606:4700:4700::1111", 53))')
        + """
v6 = (outcome, elapsed)
slow = [o for o, t in (v4, v6) if t > 1.0]
verdict(any(o in ("ok", "timeout") for o, _ in (v4, v6)) or bool(slow),
        "v4 %s in %.0f ms, v6 %s in %.0f ms" % (v4[0], v4[1] * 1e3, v6[0], v6[1] * 1e3))
"""
    )
    result = await probe.run_py(sandbox, code)
    probe.verdict(name, expected, let_through=result["let_through"], detail=result["detail"])


@asyncio_only
async def test_udp_out(sandbox: Any, probe: Any) -> None:
    name, expected = "UDP datagram to 1.1.1.1:53", "ENETUNREACH"
    if not probe.target.isolated:
        probe.not_run(name, expected, "shares the host network: would reach the internet")
        return
    code = (
        GATE
        + """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
"""
        + timed('s.sendto(b"\\0" * 12, ("1.1.1.1", 53))')
        + """
verdict(isinstance(outcome, int), "sendto: %s" % outcome)
"""
    )
    result = await probe.run_py(sandbox, code)
    probe.verdict(name, expected, let_through=result["let_through"], detail=result["detail"])


@asyncio_only
async def test_dns(sandbox: Any, probe: Any) -> None:
    name, expected = "DNS resolution of a public name", "fails, fast"
    if not probe.target.isolated:
        probe.not_run(name, expected, "shares the host network: would query the resolver")
        return
    code = (
        GATE
        + timed('socket.getaddrinfo("example.com", 443)')
        + """
ok = isinstance(outcome, list)
verdict(ok or elapsed > 5, "%s in %.0f ms" % ("resolved" if ok else outcome, elapsed * 1e3))
"""
    )
    result = await probe.run_py(sandbox, code)
    probe.verdict(name, expected, let_through=result["let_through"], detail=result["detail"])


VSOCK = """
import select
port = int(os.environ["PORT"])
try:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
except OSError as exc:
    print("socket " + err(exc.errno), flush=True)
    sys.exit(0)
try:
    s.bind((socket.VMADDR_CID_ANY, port))
    s.listen(1)
    print("listening", flush=True)
except OSError as exc:
    print("socket ok, bind " + err(exc.errno), flush=True)
    sys.exit(0)
select.select([sys.stdin], [], [], 30)
"""


@asyncio_only
async def test_vsock(sandbox: Any, probe: Any) -> None:
    """A blocked run must not get AF_VSOCK sockets: vsock ignores network namespaces. The
    proof stays on this machine: the run binds a vsock port and the host then finds the
    same port taken (one shared port space), nothing is sent to the hypervisor."""
    name, expected = "AF_VSOCK socket (VM host sockets, not namespaced)", "EAFNOSUPPORT"
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("this Python has no AF_VSOCK")
    port = 40000 + secrets.randbelow(20000)
    proc = await sandbox.run(
        PRELUDE_FREE + VSOCK, script_type="python", env={"PORT": str(port)}, stdin=PIPE
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().strip()
    shared = "no collision"
    if line == "listening":
        try:
            host_sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        except OSError:
            shared = "host has no vsock"
        else:
            try:
                host_sock.bind((socket.VMADDR_CID_ANY, port))
            except OSError as exc:
                shared = f"host bind: {exc.strerror} (same port space as the host)"
            finally:
                host_sock.close()
    assert proc.stdin is not None
    await proc.stdin.aclose()  # the run ends on end of file (kill() would not reach it on none)
    await proc.wait()
    let_through = line == "listening" and "same port space" in shared
    probe.verdict(
        name,
        expected,
        let_through=let_through,
        detail=f"{line}; {shared}" if line == "listening" else line,
        unisolated="any",
    )


PRELUDE_FREE = "import errno, os, socket, sys\nerr = lambda e: errno.errorcode.get(e, str(e))\n"
