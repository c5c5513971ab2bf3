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

Over the remote transport the later run is another client's, on the same server: the
server's idle inits are shared by its clients. On ``none`` the probes are not run (they would
renice and prlimit the host's own pid 1 and tamper with the host's ``/tmp``).

The outcome does not depend on the event loop: asyncio only.
"""

from __future__ import annotations

import contextlib
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
