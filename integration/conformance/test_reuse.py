"""Hostile runs against init reuse: a run changes everything it can about the environment it
was given, then a later run must observe exactly what a run on a fresh init observes.

A run that leaves its namespaces clean hands its init to the next run with the same settings
(``docs/design.md``, "Reusing a clean run's init and cgroups"); whatever a run can change and
the init's check does not see is a channel to later runs, and a way to break them (an init
left with ``nofile=40``, or a default ACL on ``/tmp`` that makes every new file mode 000).
Each probe does one part of :data:`~union.sandbox.core.testing_fresh.TAMPER_PARTS` (kernel
knobs, the init's attributes, the scratch mounts, IPC, loopback traffic) and compares what
the next run observes (:data:`~union.sandbox.core.testing_fresh.OBSERVE`) with what a run saw
before it.

Each probe runs in a ``blocked`` and an ``allowlist`` session (an ``allowlist`` init keeps its
proxy listeners from run to run); one more probe checks that a later run on a reused
``allowlist`` init gets only its own rules and decisions.

Over the remote transport the later run is another client's, on the same server: the
server's idle inits (and their proxy listeners) are shared by its clients. On ``none`` the
probes are not run (they would renice and prlimit the host's own pid 1 and tamper with the
host's ``/tmp``).

The outcome does not depend on the event loop: asyncio only.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from union.sandbox.core.testing_fresh import (
    TAMPER_PARTS,
    differences,
    observe_program,
    observed,
    tamper_program,
    tampered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


#: What the runs observe, down to the ids the System V allocators hand out next.
OBSERVE_ALL = observe_program(allocate=True)


async def _observe(sbx: Any) -> dict[str, Any]:
    return observed((await sbx.exec(OBSERVE_ALL, script_type="python", timeout_s=60)).stdout)


#: Network postures whose inits are reused: ``allowlist`` inits keep their proxy listeners
#: from run to run (the host re-arms them for each run's rules).
POSTURES = {
    "blocked": {},
    "allowlist": {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]},
}


@pytest.mark.parametrize("posture", sorted(POSTURES))
@pytest.mark.parametrize("part", sorted(TAMPER_PARTS))
async def test_tampering_reaches_a_later_run(
    target, open_sandbox, probe, part: str, posture: str
) -> None:
    name = f"reuse: {part} changed by a run" + (f" ({posture})" if posture != "blocked" else "")
    expected = "next run sees a fresh init"
    if not target.isolated:
        probe.not_run(name, expected, "would change the host's pid 1, sysctls and /tmp")
        return
    async with contextlib.AsyncExitStack() as stack:
        sbx = await stack.enter_async_context(open_sandbox(**POSTURES[posture]))
        # The run after the tampering one: the same session on-device; over the remote
        # transport, another client of the same server.
        later = sbx
        if target.transport == "remote":
            later = await stack.enter_async_context(open_sandbox(**POSTURES[posture]))
        before = await _observe(sbx)
        result = await sbx.exec(tamper_program(part), script_type="python", timeout_s=60)
        done = tampered(result.stdout)
        seen = await _observe(later)
    diffs = differences(before, seen)
    took = sorted(k for k, v in done.items() if v == "ok")
    probe.verdict(
        name,
        expected,
        let_through=bool(diffs),
        detail="; ".join(diffs[:6]) if diffs else f"nothing reached it (changed: {len(took)})",
    )


PRELUDE_FOR_PROXY = """
import json, os, socket


def verdict(let_through, detail, **extra):
    print("RESULT " + json.dumps(dict(extra, let_through=bool(let_through), detail=detail)))
"""

#: A CONNECT through the run's own HTTP proxy to the host's loopback server; reports the
#: status and the run's pid (2 on a fresh init).
CONNECT_THROUGH_PROXY = """
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["HTTP_PROXY"])
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\n" % PORT)
head = s.recv(64)
status = int(head.split()[1]) if head else 0
verdict(status == 200, "CONNECT answered %d (run pid %d)" % (status, os.getpid()),
        status=status, pid=os.getpid())
"""


async def test_a_later_run_gets_only_its_own_proxies(
    target, open_sandbox, probe, loopback_servers
) -> None:
    """A run whose rules allow the host's loopback leaves its init (and its proxy
    listeners) idle; a later run whose rules do not, on that init (over the remote
    transport: another client's run on the same server), must be refused, and see none of
    the earlier run's decisions, nor leave any in its log."""
    name = "reuse: a proxied run's rules and decisions reach a later run"
    expected = "refused under its own rules; logs apart"
    if not target.isolated:
        probe.not_run(name, expected, "backend none never reuses a proxied run's init")
        return
    wide = {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]}
    narrow = {"network_mode": "allowlist", "network_allowlist": ["192.0.2.1/32"]}
    async with contextlib.AsyncExitStack() as stack:
        sbx = await stack.enter_async_context(open_sandbox(**wide))
        first = await sbx.run("true")
        await first.wait()
        if target.transport == "remote":
            later = await stack.enter_async_context(open_sandbox(**narrow))
            run_kwargs: dict[str, Any] = {}
        else:
            later, run_kwargs = sbx, {"network_allowlist": narrow["network_allowlist"]}
        code = f"PORT = {loopback_servers['tcp4']}\n" + CONNECT_THROUGH_PROXY
        proc = await later.run(
            PRELUDE_FOR_PROXY + code,
            script_type="python",
            env={"NO_PROXY": "", "no_proxy": ""},
            **run_kwargs,
        )
        out, _err = await proc.communicate_text()
    result = _verdict_of(out)
    # The probe is about a reused init: a later run on a fresh one (pid 2) proves nothing.
    assert result.get("pid", 2) > 2, f"the later run got a fresh init: {result['detail']}"
    decisions = [(d.host, d.port, d.allowed) for d in proc.network_decisions]
    own = decisions == [("127.0.0.1", loopback_servers["tcp4"], False)]
    probe.verdict(
        name,
        expected,
        let_through=result["let_through"] or not own or bool(first.network_decisions),
        detail=f"{result['detail']}; later run's decisions {decisions}; "
        f"earlier run's {len(first.network_decisions)}",
    )


def _verdict_of(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    pytest.fail(f"the probe reported no verdict: {stdout[-2000:]!r}", pytrace=False)
