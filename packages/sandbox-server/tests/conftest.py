"""Real servers on loopback for the protocol tests (one per module where possible)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import httpx
import pytest

from union.sandbox.core.testing import host_pids_with
from union.sandbox.server.testing import RunningServer, spawn_server

SERVICE = "sandbox.v2.SandboxService"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """A server that requires a bearer token."""
    with spawn_server(token=True) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    """An HTTP client for ``server`` that sends its token."""
    assert server.token is not None
    with httpx.Client(
        base_url=server.endpoint,
        headers={"authorization": f"Bearer {server.token}"},
        timeout=60,
    ) as client:
        yield client


@pytest.fixture
def unique_sleep() -> Iterator[str]:
    arg = f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"
    yield arg
    for pid in host_pids_with(arg):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
