"""The Flyte layer against the Flyte runtime: the ``sandbox_server`` task in Flyte's local
mode and as a pod runs it (``a0`` as PID 1), the deploy command and the seed page's recipes.

Every test runs with ``DO_NOT_TRACK=1`` and a temporary ``HOME`` holding a Flyte config
whose endpoint is a closed port (enough for ``flyte deploy --dry-run``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from union.sandbox.flyte.testing import isolated_flyte


@pytest.fixture(scope="session")
def flyte_home_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flyte-home")


@pytest.fixture(autouse=True)
def flyte_home(flyte_home_dir: Path) -> Iterator[Path]:
    # Per test, so that the rest of a session that runs other suites keeps its own HOME.
    with isolated_flyte(flyte_home_dir) as home:
        yield home
