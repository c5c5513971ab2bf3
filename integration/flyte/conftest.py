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


@pytest.fixture(scope="session", autouse=True)
def flyte_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with isolated_flyte(tmp_path_factory.mktemp("flyte-home")) as home:
        yield home
