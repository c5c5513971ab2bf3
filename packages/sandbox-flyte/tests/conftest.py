"""Every test here runs with ``DO_NOT_TRACK=1`` and a temporary ``HOME`` (flyte otherwise
starts telemetry and writes its config and caches under ``~``)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from union.sandbox.flyte import SandboxEnvironment
from union.sandbox.flyte.testing import isolated_flyte


@pytest.fixture(scope="session")
def flyte_home_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flyte-home")


@pytest.fixture(autouse=True)
def flyte_home(flyte_home_dir: Path) -> Iterator[None]:
    # Per test, so that the rest of a session that runs other suites keeps its own HOME.
    with isolated_flyte(flyte_home_dir):
        yield


_names = itertools.count(1)


@pytest.fixture
def env_name(request: pytest.FixtureRequest) -> Callable[[], str]:
    """``env_name()``: a name no other environment of this process has (the process-wide
    registry refuses a known name with a different shape)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.split("[")[0].lower())[:30].strip("-")
    return lambda: f"{stem}-{next(_names)}"


@pytest.fixture(
    params=[
        ("userns", None, False),
        ("bwrap", None, True),
        ("userns", True, True),
        ("bwrap", False, False),
        ("userns", False, False),
        ("bwrap", True, True),
    ],
    ids=lambda case: "-".join(map(str, case)),
)
def cap_sys_admin_case(
    request: pytest.FixtureRequest, env_name: Callable[[], str]
) -> tuple[SandboxEnvironment, bool]:
    """An environment of each ``sandbox_mode`` with ``sys_cap_admin`` unset, on and off, and
    whether its pod must get ``CAP_SYS_ADMIN`` (bwrap's default; userns's only if asked)."""
    mode, override, granted = request.param
    env = SandboxEnvironment(name=env_name(), sandbox_mode=mode, sys_cap_admin=override)
    return env, granted
