"""Argument validation and session lifecycle errors, with the messages of reference-api §2.13;
the lifecycle forms of §2.4 / §2.6 (``async with``, ``await session(...)``, ``.open()``)."""

from __future__ import annotations

import os
import re

import pytest

from union import sandbox as sb
from union.sandbox.core import on_device as core_on_device

pytestmark = pytest.mark.anyio

NOT_OPEN = (
    "session is not open; either 'async with session(...) as sbx:' or "
    "'sbx = await session(...).open()'"
)

MODE_MSG = "network_mode must be 'blocked', 'open', or 'allowlist'; got 'bogus'"
ALLOWLIST_NEEDS_LIST = "network_mode='allowlist' requires network_allowlist=[...]"
ALLOWLIST_NEEDS_MODE = "network_allowlist=[...] is only valid with network_mode='allowlist'"
DENYLIST_NEEDS_MODE = "network_denylist=[...] is only valid with network_mode='open' or 'allowlist'"


# -- network arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"network_mode": "bogus"}, MODE_MSG),
        ({"network_mode": "allowlist"}, ALLOWLIST_NEEDS_LIST),
        ({"network_mode": "allowlist", "network_allowlist": []}, ALLOWLIST_NEEDS_LIST),
        ({"network_allowlist": ["pypi.org"]}, ALLOWLIST_NEEDS_MODE),
        ({"network_mode": "open", "network_allowlist": ["pypi.org"]}, ALLOWLIST_NEEDS_MODE),
        ({"network_denylist": ["169.254.0.0/16"]}, DENYLIST_NEEDS_MODE),
        (
            {"network_mode": "blocked", "network_denylist": ["169.254.0.0/16"]},
            DENYLIST_NEEDS_MODE,
        ),
    ],
)
def test_session_network_validation(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sb.on_device.session(backend="userns", **kwargs)


def test_valid_network_combinations_construct() -> None:
    sb.on_device.session(backend="userns", network_mode="open")
    sb.on_device.session(backend="userns", network_mode="open", network_denylist=["10.0.0.0/8"])
    sb.on_device.session(
        backend="userns", network_mode="allowlist", network_allowlist=sb.PYPI_HOSTS
    )
    sb.on_device.session(
        backend="userns",
        network_mode="allowlist",
        network_allowlist=sb.PYPI_HOSTS,
        network_denylist=sb.CLOUD_METADATA_DENY,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"network_mode": "bogus"}, MODE_MSG),
        ({"network_mode": "allowlist"}, ALLOWLIST_NEEDS_LIST),
        ({"network_allowlist": ["pypi.org"]}, ALLOWLIST_NEEDS_MODE),
        ({"network_mode": "open", "network_allowlist": ["pypi.org"]}, ALLOWLIST_NEEDS_MODE),
    ],
)
async def test_per_call_network_validation(sbx, kwargs, message: str) -> None:
    pattern = f"^{re.escape(message)}$"
    with pytest.raises(ValueError, match=pattern):
        await sbx.run("true", **kwargs)
    with pytest.raises(ValueError, match=pattern):
        await sbx.exec("true", **kwargs)
    with pytest.raises(ValueError, match=pattern):
        await sbx.run_code("print(1)", **kwargs)
    # Nothing ran, and the session is fine.
    assert (await sbx.exec("echo ok")).stdout == "ok\n"


def test_allowlist_given_as_a_single_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="list"):
        sb.on_device.session(
            backend="userns", network_mode="allowlist", network_allowlist="pypi.org"
        )


# -- other run() arguments -------------------------------------------------------------


async def test_bad_script_type(sbx) -> None:
    with pytest.raises(ValueError, match="script_type"):
        await sbx.run("true", script_type="ruby")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
async def test_bad_timeout(sbx, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        await sbx.run("true", timeout_s=timeout)


@pytest.mark.parametrize("timeout", ["10", True])
async def test_timeout_of_the_wrong_type(sbx, timeout: object) -> None:
    with pytest.raises(TypeError, match="timeout_s"):
        await sbx.run("true", timeout_s=timeout)


def test_bad_session_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        sb.on_device.session(backend="userns", timeout_s=0)


async def test_cmd_must_be_a_string(sbx) -> None:
    with pytest.raises(TypeError, match="cmd"):
        await sbx.run(["echo", "hi"])


def test_relative_host_work_dir_is_rejected() -> None:
    with pytest.raises(ValueError, match="host_work_dir"):
        sb.on_device.session(backend="userns", host_work_dir="relative/dir")


def test_relative_extra_paths_are_rejected() -> None:
    with pytest.raises(ValueError, match="read_only_paths"):
        sb.on_device.session(backend="userns", read_only_paths=["opt/models"])
    with pytest.raises(ValueError, match="read_write_paths"):
        sb.on_device.session(backend="userns", read_write_paths=["scratch"])


def test_bad_max_output_bytes() -> None:
    with pytest.raises(ValueError, match="max_output_bytes"):
        sb.on_device.session(backend="userns", max_output_bytes=0)


def test_unknown_backend_is_a_value_error() -> None:
    message = (
        'unknown sandbox backend "nope"; expected one of "bubblewrap", "userns", '
        '"sandbox-exec", or "none"'
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sb.on_device.session(backend="nope")


def test_default_backend_is_bubblewrap() -> None:
    assert sb.on_device.session().backend == "bubblewrap"


# -- lifecycle -------------------------------------------------------------------------


async def test_run_before_open_is_a_runtime_error(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    with pytest.raises(RuntimeError, match=f"^{re.escape(NOT_OPEN)}$"):
        await session.run("true")
    with pytest.raises(RuntimeError, match=re.escape(NOT_OPEN)):
        await session.exec("true")
    with pytest.raises(RuntimeError, match=re.escape(NOT_OPEN)):
        await session.run_code("print(1)")


async def test_await_returns_an_open_session(backend: str) -> None:
    sbx = await sb.on_device.session(backend=backend)
    try:
        assert isinstance(sbx, sb.on_device.OnDeviceSession)
        assert (await sbx.exec("echo awaited")).stdout == "awaited\n"
    finally:
        await sbx.close()


async def test_open_method_returns_the_session(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    sbx = await session.open()
    try:
        assert sbx is session
        assert (await sbx.exec("echo opened")).stdout == "opened\n"
    finally:
        await sbx.close()


async def test_async_with_yields_the_session(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    async with session as sbx:
        assert sbx is session
        assert (await sbx.exec("echo with")).stdout == "with\n"
    with pytest.raises(RuntimeError):
        await session.run("true")


async def test_open_and_close_are_idempotent(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    assert await session.open() is session
    work = session.work_dir
    assert await session.open() is session
    assert session.work_dir == work  # the same session, not a second one
    await session.exec("echo state > keep.txt", check=True)
    assert await session.open() is session
    assert (await session.exec("cat keep.txt")).stdout == "state\n"
    await session.close()
    await session.close()


async def test_close_without_open_is_harmless(backend: str) -> None:
    await sb.on_device.session(backend=backend).close()


async def test_run_after_close_is_a_runtime_error(backend: str) -> None:
    session = await sb.on_device.session(backend=backend)
    await session.close()
    with pytest.raises(RuntimeError):
        await session.run("true")
    with pytest.raises(RuntimeError):
        await session.put_bytes("/tmp/x", b"")


async def test_session_is_closed_when_the_body_raises(backend: str) -> None:
    session = sb.on_device.session(backend=backend)
    with pytest.raises(KeyError):  # noqa: PT012
        async with session as sbx:
            work = sbx.work_dir
            raise KeyError("boom")
    assert not os.path.exists(work)
    with pytest.raises(RuntimeError):
        await session.run("true")


def test_core_and_facade_are_the_same() -> None:
    assert sb.on_device.session is core_on_device.session
    assert sb.local is sb.on_device
    assert sb.SandboxExecutionError is sb.errors.ExecutionError
    assert sb.SandboxProcess is sb.Process
    assert issubclass(sb.errors.ExecutionError, RuntimeError)
    assert issubclass(sb.errors.CommandError, RuntimeError)
    assert issubclass(sb.errors.BackendUnavailableError, RuntimeError)


async def test_execution_error_fields() -> None:
    err = sb.errors.ExecutionError("server crashed", backend="userns", runtime_ms=12)
    assert str(err) == "sandbox process terminated abnormally: server crashed (backend=userns)"
    assert err.reason == "server crashed"
    assert err.returncode == -1
    assert err.backend == "userns"
    assert err.runtime_ms == 12
    assert str(sb.errors.ExecutionError("x")) == "sandbox process terminated abnormally: x"


async def test_fs_allowlist_shape(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        allow = sbx.fs_allowlist()
    assert set(allow) == {"read_only", "read_write"}
    defaults = sb.on_device.default_fs_allowlist()
    assert set(defaults["read_only"]) <= set(allow["read_only"])
    assert set(defaults["read_write"]) <= set(allow["read_write"])
    assert sbx.work_dir in allow["read_write"]
    for path in ("/usr", "/etc", "/proc", "/sys", "/dev"):
        assert path in defaults["read_only"]
    for path in ("/tmp", "/dev/shm", "/dev/null"):
        assert path in defaults["read_write"]
    for entries in allow.values():
        assert len(entries) == len(set(entries))  # de-duplicated
