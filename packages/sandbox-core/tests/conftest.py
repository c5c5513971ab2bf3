"""Fixtures for the on-device behaviour suite.

Every async test runs under asyncio and trio (the root ``conftest.py`` parametrises
``anyio_backend``) and, through the ``backend`` fixtures here, under each isolating backend.
Sessions are function-scoped: opening one costs a few tens of milliseconds, and a fresh
session per test keeps tests independent of each other.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from union import sandbox as sb
from union.sandbox.core.testing import host_pids_with as _host_pids_with
from union.sandbox.core.testing import open_checking_warnings

ISOLATING_BACKENDS = ("bubblewrap", "userns")
ALL_BACKENDS = ("bubblewrap", "userns", "none")


@pytest.fixture(params=ISOLATING_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """An isolating on-device backend."""
    return str(request.param)


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> str:
    """Any Linux on-device backend, ``none`` included (for behaviour that must not depend
    on isolation: output, exit codes, timeouts)."""
    return str(request.param)


@pytest.fixture
async def sbx(backend: str) -> AsyncIterator[sb.on_device.OnDeviceSession]:
    """An open session of an isolating backend."""
    async with sb.on_device.session(backend=backend) as session:
        yield session


@pytest.fixture
async def any_sbx(any_backend: str) -> AsyncIterator[sb.on_device.OnDeviceSession]:
    """An open session of any backend; ``none`` must warn loudly when it opens."""
    session = sb.on_device.session(backend=any_backend)
    await open_checking_warnings(session)
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
def host_pids_with() -> Callable[[str], list[int]]:
    """``host_pids_with(needle)``: live host processes whose argv contains ``needle``."""
    return _host_pids_with


@pytest.fixture
def survivors(request: pytest.FixtureRequest) -> Callable[[str], list[int]]:
    """``survivors(needle)``: host processes still matching ``needle`` once a run is over.

    Isolating backends end a run with its pid namespace, so nothing may be left the moment
    the result is in. Backend ``none`` kills the command's process group with SIGKILL and
    reports without waiting for grandchildren to finish dying, so it gets a short grace."""
    params = getattr(request.node, "callspec", None)
    backend = params.params.get("any_backend") if params else None

    def check(needle: str) -> list[int]:
        if backend == "none":
            wait_until(lambda: not _host_pids_with(needle), timeout=2.0)
        return _host_pids_with(needle)

    return check


@pytest.fixture
def unique_sleep() -> Iterator[str]:
    """A ``sleep`` argument no other process on the host uses (e.g. ``"4321.73519"``), so
    the host can tell whether a sandboxed sleep survived. Any survivor is killed at the end
    so that one failing test does not leave processes behind."""
    arg = f"{4000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"
    yield arg
    for pid in _host_pids_with(arg):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (every thread's children list)."""
    kids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


@pytest.fixture
def children() -> Callable[[int], set[int]]:
    """``children(pid)``: the direct children of any process."""
    return children_of


@pytest.fixture
def my_children() -> Callable[[], set[int]]:
    """``my_children()``: the test process's direct child pids."""
    return lambda: children_of(os.getpid())


def descendants(pid: int) -> set[int]:
    """Every descendant of ``pid`` (children, grandchildren, ...)."""
    found: set[int] = set()
    frontier = children_of(pid)
    while frontier:
        found |= frontier
        frontier = set().union(*(children_of(p) for p in frontier)) - found
    return found


@pytest.fixture
def my_descendants() -> Callable[[], set[int]]:
    """``my_descendants()``: every process below the test process."""
    return lambda: descendants(os.getpid())


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def public_tmp() -> Iterator[str]:
    """A fresh directory directly under /tmp that every uid may traverse (pytest's own
    ``tmp_path`` lives under a root-only 0700 directory, which a sandbox running as uid
    65534 cannot traverse)."""
    path = tempfile.mkdtemp(prefix="union-sbx-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
