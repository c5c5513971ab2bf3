"""Session-wide limits: the pids budget of all runs together, the session's share of the
per-user kernel quotas, and a session configuration of any size.

The adversarial side (host root's and other sessions' quotas, fork bombs across runs) is
in integration/conformance/test_quotas.py; this is the behaviour through the API."""

from __future__ import annotations

import array
import fcntl
import os
import resource
import secrets
from pathlib import Path
from typing import Any

import pytest

from union import sandbox as sb
from union.sandbox.core.on_device import cgroups, quotas
from union.sandbox.core.on_device.limits import DEFAULT_SESSION_PIDS, session_pids_budget
from union.sandbox.core.resources import Resources

pytestmark = pytest.mark.anyio
SUPPORT = cgroups.detect()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "100", True])
def test_session_pids_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="session_pids must be a positive int"):
        sb.on_device.session(backend="userns", session_pids=bad)


def test_the_default_budget_is_within_a_quarter_of_pid_max() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert session_pids_budget(None, 0) == min(DEFAULT_SESSION_PIDS, pid_max // 4)
    # Never below what one run of the session may have, and what the caller asked for.
    assert session_pids_budget(None, 100_000) == 100_000
    assert session_pids_budget(64, 4096) == 64


@pytest.mark.skipif(not SUPPORT.can("pids"), reason=f"no pids cgroup: {SUPPORT.problem}")
async def test_runs_together_stay_within_the_session_budget(backend: str) -> None:
    async with sb.on_device.session(backend=backend, session_pids=40) as sbx:
        holder = await sbx.run("for i in $(seq 25); do sleep 30 & done; echo up; wait")
        assert await holder.stdout.readline() == b"up\n"
        # 25 sleeps, their shell and init: the next run can fork only what is left, even
        # though its own limit (the default 4096) would allow more.
        proc = await sbx.run("for i in $(seq 25); do sleep 30 & done; wait")
        await proc.wait()
        assert proc.termination is not None
        assert proc.termination.kind.value == "pids-limit", proc.termination
        assert proc.isolation is not None
        assert "40 for all runs together" in proc.isolation.limits["session_pids"]
        await holder.kill()
        await holder.wait()
        # Once the first run is gone the session has its whole budget again.
        result = await sbx.exec("for i in $(seq 25); do sleep 0.1 & done; wait; echo ok")
        assert result.stdout == "ok\n", result.stderr


def _no_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    """This host as one without writable cgroups (many containers)."""
    monkeypatch.setattr(
        cgroups, "detect", lambda: cgroups.CgroupSupport("", {}, "test: no cgroups")
    )


async def test_a_limit_nothing_enforces_fails_unless_best_effort(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_cgroups(monkeypatch)
    strict = sb.on_device.session(backend=backend, resources=Resources(cpu=1))
    with pytest.raises(sb.errors.LimitUnavailableError, match="best_effort_limits=True"):
        await strict.open()
    # What the error advises works, and the run's report is honest about it.
    async with sb.on_device.session(
        backend=backend, resources=Resources(cpu=1), best_effort_limits=True
    ) as sbx:
        proc = await sbx.run("echo ok")
        assert await proc.communicate() == (b"ok\n", b"")
    assert proc.isolation is not None
    assert proc.isolation.limits["cpu"] == "not enforced"


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_best_effort_limits_must_be_a_bool(bad: Any) -> None:
    with pytest.raises(TypeError, match="best_effort_limits must be True or False"):
        sb.on_device.session(backend="userns", best_effort_limits=bad)


@pytest.mark.skipif(os.getuid() != 0, reason="RLIMIT_NPROC binds a root caller's sandbox")
async def test_without_cgroups_the_nproc_limit_holds_the_budget(
    backend: str, host_pids_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host without a writable pids cgroup (many containers): the session's RLIMIT_NPROC,
    # counted for the session's own accounting uid, is then all that bounds its runs
    # together. Two runs each try to hold 30 sleeps under a budget of 40.
    _no_cgroups(monkeypatch)
    tag = f"1000.{secrets.randbelow(10**9)}"
    hold = f"for i in $(seq 30); do sleep {tag} & done; echo up; wait"
    async with sb.on_device.session(
        backend=backend, session_pids=40, best_effort_limits=True
    ) as sbx:
        first = await sbx.run(hold, timeout_s=60)
        second = None
        try:
            assert await first.stdout.readline() == b"up\n"
            # The second run gets what is left of the budget and its shell then cannot fork:
            # "up" once its loop is done, or the end of its output when the shell gave up.
            second = await sbx.run(hold, timeout_s=60)
            await second.stdout.readline()
            held = len(host_pids_with(tag))
        finally:
            for proc in (first, second):
                if proc is not None:
                    await proc.kill()
                    await proc.wait()
    # The budget and the slack for the supervisor and prepared inits (quotas.NPROC_SLACK);
    # each run's shell and init take part of it too.
    assert 0 < held <= 40 + quotas.NPROC_SLACK, held


@pytest.mark.skipif(os.getuid() != 0, reason="an unprivileged caller: test_quotas.py")
async def test_the_sandbox_gets_the_sessions_quotas(backend: str) -> None:
    async with sb.on_device.session(backend=backend, resources=Resources(pids=100)) as sbx:
        result = await sbx.exec(
            "import resource as r\n"
            "for n in ('SIGPENDING', 'NPROC'):\n"
            "    print(*r.getrlimit(getattr(r, 'RLIMIT_' + n)))",
            script_type="python",
        )
        iso = (await sbx.run("true")).isolation
    sigpending, nproc = (tuple(map(int, line.split())) for line in result.stdout.splitlines())
    # As root the session's counts are its own: the host's pending-signal limit; its tasks
    # are the session's budget and room for its supervisor and prepared inits.
    assert sigpending == resource.getrlimit(resource.RLIMIT_SIGPENDING)
    budget = session_pids_budget(None, 100)
    assert nproc[0] == nproc[1] == min(budget + 16, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    assert iso is not None
    assert "accounting uid" in iso.limits["per_user_quotas"]


async def test_a_session_with_thousands_of_granted_paths_opens(backend: str) -> None:
    # The session's configuration used to travel in one socket message: ~5000 paths were
    # more than its send buffer, and open() then waited forever. (Paths that do not exist
    # grant nothing, and outside /tmp they cost the runs nothing.)
    paths = [f"/opt/union-sandbox-test-missing/granted-{'x' * 40}-{i}" for i in range(5000)]
    async with sb.on_device.session(backend=backend, read_only_paths=paths) as sbx:
        result = await sbx.exec("echo ok")
    assert result.stdout == "ok\n"


def test_a_v2_session_cgroup_carries_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cgroup v2 cannot be mounted beside this host's v1 controllers: a v2 tree made of the
    # files the code writes and reads.
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    monkeypatch.setattr(cgroups, "ROOT", str(tmp_path))
    monkeypatch.setattr(cgroups, "_own_path", lambda controller: "/")
    monkeypatch.setattr(cgroups, "_enable_v2_children", _as_the_kernel_would)
    support = cgroups.detect()
    assert support.version == "v2"
    session = cgroups.CgroupSession(support, "v2test", pids_max=123)
    (path,) = {Path(p) for p in session.dirs.values()}
    assert (path / "pids.max").read_text() == "123"
    (path / "pids.events").write_text("max 2\n")
    assert session.pids_limit_hits() == 2
    session.cleanup(final=True)


def _as_the_kernel_would(name: str) -> None:
    """A new v2 cgroup directory's files (and its children's controllers enabled)."""
    path = Path(name)
    (path / "cgroup.subtree_control").write_text("+cpu +memory +pids")
    (path / "pids.events").write_text("max 0\n")


NS_GET_OWNER_UID = 0xB704


@pytest.mark.skipif(os.getuid() != 0, reason="the accounting uid is for a root caller")
async def test_a_root_callers_sandbox_namespace_is_owned_by_an_accounting_uid(
    backend: str, host_pids_with: Any
) -> None:
    owners = []
    async with (
        sb.on_device.session(backend=backend) as one,
        sb.on_device.session(backend=backend) as two,
    ):
        for sbx in (one, two):
            tag = f"1000.{secrets.randbelow(10**9)}"
            proc = await sbx.run(f"echo up; sleep {tag}")
            assert await proc.stdout.readline() == b"up\n"
            pid = host_pids_with(tag)[0]  # the shell: its command line has the tag
            fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
            try:
                owner = array.array("I", [0])
                fcntl.ioctl(fd, NS_GET_OWNER_UID, owner)
            finally:
                os.close(fd)
            owners.append(owner[0])
            await proc.kill()
            await proc.wait()
    # Not host root, and not the same for two sessions: neither shares the sandbox's counts.
    for owner in owners:
        assert (
            quotas.ACCOUNT_UID_FIRST <= owner < quotas.ACCOUNT_UID_FIRST + quotas.ACCOUNT_UID_SPAN
        )
    assert owners[0] != owners[1]


def test_accounting_uids_are_distinct_for_distinct_pids() -> None:
    uids = {quotas.accounting_uid(pid) for pid in range(1, 1 << 16)}
    assert len(uids) == (1 << 16) - 1
    assert quotas.with_accounting_uid({"quota": {"account": False}}, 5) == {
        "quota": {"account": False}
    }
    completed = quotas.with_accounting_uid({"quota": {"account": True}}, 5)
    assert completed["quota"]["account_uid"] == quotas.accounting_uid(5)


@pytest.mark.skipif(not SUPPORT.can("pids"), reason=f"no pids cgroup: {SUPPORT.problem}")
async def test_a_session_pids_refusal_is_blamed_only_on_a_run_it_happened_during(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cgroup v2 counts refusals of the session's own limit in the session's cgroup, not the
    # run's (this host is v1): the counter stands in for that file.
    refused = [0]
    monkeypatch.setattr(sb.on_device.OnDeviceSession, "_session_pids_hits", lambda _: refused[0])
    async with sb.on_device.session(backend="userns") as sbx:
        refused[0] += 1  # before the run: another run's refusal, which it handled
        proc = await sbx.run("exit 3")
        await proc.wait()
        assert proc.termination is not None
        assert proc.termination.kind.value == "exit"
        proc = await sbx.run("read line; exit 3", stdin=sb.PIPE)
        refused[0] += 1  # while it runs
        assert proc.stdin is not None
        await proc.stdin.aclose()
        await proc.wait()
        assert proc.termination is not None
        assert proc.termination.kind.value == "pids-limit"
