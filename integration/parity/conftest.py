"""The transport-parity suite: every test runs against an on-device session and a remote
session (a real ``sandbox-server`` on loopback), under asyncio and trio.

The server is started once per test session (``--no-auth``, backend ``userns``); remote tests
share its work dir, so tests use unique file names. On-device sessions are fresh per test.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from union.sandbox.client import RemoteSession
from union.sandbox.client import session as remote_session
from union.sandbox.core.on_device import OnDeviceSession
from union.sandbox.core.on_device import session as on_device_session
from union.sandbox.core.testing import host_pids_with
from union.sandbox.server.testing import RunningServer, spawn_server

BACKEND = "userns"
TRANSPORTS = ("on_device", "remote")

Session = OnDeviceSession | RemoteSession


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    with spawn_server(backend=BACKEND) as running:
        yield running


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_session(transport: str, request: pytest.FixtureRequest) -> Callable[..., Session]:
    """``make_session(**kwargs)``: a new (unopened) session of the transport under test."""

    def make(**kwargs: Any) -> Session:
        if transport == "on_device":
            return on_device_session(backend=BACKEND, **kwargs)
        server: RunningServer = request.getfixturevalue("server")
        return remote_session(endpoint=server.endpoint, token=server.token, **kwargs)

    return make


@pytest.fixture
async def sbx(make_session: Callable[..., Session]) -> AsyncIterator[Session]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session = make_session()
        await session.open()
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
def unique() -> str:
    """A fresh name for files in the (possibly shared) work dir."""
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def unique_sleep() -> Iterator[str]:
    """A ``sleep`` argument no other process uses, so the host can see whether a sandboxed
    sleep survived; survivors are killed at the end."""
    arg = f"{4000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"
    yield arg
    for pid in host_pids_with(arg):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
