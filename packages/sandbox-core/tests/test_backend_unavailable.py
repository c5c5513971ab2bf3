"""No silent downgrade: a backend that cannot run here makes ``run()`` fail loudly, naming
the missing host feature and the fix (reference-api §2.4, §2.13, §2.19; ARCHITECTURE)."""

from __future__ import annotations

import sys

import anyio
import pytest

from union import sandbox as sb
from union.sandbox.core.on_device import backends

pytestmark = pytest.mark.anyio


def test_available_backends_on_this_host() -> None:
    result = sb.on_device.available_backends()
    assert dict(result) == {
        "bubblewrap": True,
        "userns": True,
        "sandbox-exec": sys.platform == "darwin",
        "none": True,
    }
    assert [name for name, _ in result] == ["bubblewrap", "userns", "sandbox-exec", "none"]


def test_backend_report_explains_the_unavailable_ones() -> None:
    report = {status.name: status for status in sb.on_device.backend_report()}
    assert report["sandbox-exec"].available is False
    assert report["sandbox-exec"].problems
    assert "macOS" in " ".join(report["sandbox-exec"].problems)
    assert report["userns"].problems == ()


async def test_available_backends_from_inside_an_event_loop() -> None:
    # A sync probe must also work when called from async code.
    assert ("userns", True) in sb.on_device.available_backends()


async def test_missing_bwrap_fails_loudly(monkeypatch: pytest.MonkeyPatch, host_pids_with) -> None:
    monkeypatch.setattr(backends, "bwrap_binary", lambda: None)
    session = sb.on_device.session(backend="bubblewrap")
    async with session as sbx:
        with pytest.raises(sb.errors.BackendUnavailableError) as info:
            await sbx.run("echo should-not-run")
        err = info.value
        assert isinstance(err, RuntimeError)
        assert sb.BackendUnavailableError is sb.errors.BackendUnavailableError
        message = str(err)
        assert "bwrap" in message
        assert "bubblewrap" in message
        assert "apt-get install bubblewrap" in message or "pip install" in message
        assert "downgrad" in message
        assert err.backend == "bubblewrap"
        # Still refused on every later call: never a silent fallback to something weaker.
        with pytest.raises(sb.errors.BackendUnavailableError):
            await sbx.exec("echo should-not-run")
        with pytest.raises(sb.errors.BackendUnavailableError):
            await sbx.run_code("print('should-not-run')")


async def test_broken_bwrap_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that exists but cannot set up the sandbox is reported, not hung on."""
    monkeypatch.setattr(backends, "bwrap_binary", lambda: "/bin/false")
    async with sb.on_device.session(backend="bubblewrap") as sbx:
        with anyio.fail_after(15):
            with pytest.raises(sb.errors.BackendUnavailableError) as info:
                await sbx.run("echo should-not-run")
    assert "bubblewrap" in str(info.value)


async def test_unexecutable_bwrap_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "bwrap_binary", lambda: "/nonexistent/bin/bwrap")
    async with sb.on_device.session(backend="bubblewrap") as sbx:
        with anyio.fail_after(15):
            with pytest.raises(sb.errors.BackendUnavailableError, match="bwrap"):
                await sbx.run("echo should-not-run")


@pytest.mark.skipif(sys.platform == "darwin", reason="sandbox-exec exists on macOS")
async def test_sandbox_exec_on_linux_fails_loudly() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a deprecation warning for sandbox-exec is allowed
        async with sb.on_device.session(backend="sandbox-exec") as sbx:
            with pytest.raises(sb.errors.BackendUnavailableError) as info:
                await sbx.run("echo should-not-run")
    assert "sandbox-exec" in str(info.value)
    assert "macOS" in str(info.value)


def test_unknown_backend_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match='unknown sandbox backend "firejail"'):
        sb.on_device.session(backend="firejail")


async def test_backend_none_warns_loudly() -> None:
    with pytest.warns(UserWarning, match="NO isolation") as record:
        sbx = await sb.on_device.session(backend="none")
    await sbx.close()
    message = str(record[0].message)
    assert "untrusted" in message
