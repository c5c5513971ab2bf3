"""The Flyte layer against the Flyte runtime: the ``sandbox_server`` task in Flyte's local
mode and as a pod runs it (``a0`` as PID 1), the deploy command and the seed page's recipes,
and ``sb.session()`` in local mode and against a fake Flyte cluster (``fake_cp.py``).

Every test runs with ``DO_NOT_TRACK=1`` and a temporary ``HOME`` holding a Flyte config
whose endpoint is a closed port (enough for ``flyte deploy --dry-run``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from union.sandbox.flyte.testing import isolated_flyte

from .fake_cp import FakeControlPlane


@pytest.fixture(scope="session")
def flyte_home_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flyte-home")


@pytest.fixture(autouse=True)
def flyte_home(flyte_home_dir: Path) -> Iterator[Path]:
    # Per test, so that the rest of a session that runs other suites keeps its own HOME.
    with isolated_flyte(flyte_home_dir) as home:
        yield home


@pytest.fixture
def no_cluster() -> Iterator[None]:
    """No Flyte control plane configured for the test (``sb.session()`` runs locally)."""
    with flyte_config():
        yield


@contextmanager
def flyte_config() -> Iterator[None]:
    """Restore flyte's process-wide init config (``flyte.init`` has no undo) after the
    block, starting from none."""
    from flyte import _initialize

    saved = _initialize._init_config
    _initialize._init_config = None
    try:
        yield
    finally:
        _initialize._init_config = saved


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeControlPlane]:
    """A fake Flyte cluster for the module (its runs execute the real task body)."""
    cp = FakeControlPlane(workdir=tmp_path_factory.mktemp("fake-cp"), grace_s=10.0)
    try:
        yield cp
    finally:
        cp.close()


@pytest.fixture
def remote(
    cluster: FakeControlPlane, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeControlPlane]:
    """``flyte.init`` against the fake cluster, its dataproxy as ``UNION_SANDBOX_DATAPROXY_URL``;
    the cluster's knobs are reset afterwards."""
    monkeypatch.setenv("UNION_SANDBOX_DATAPROXY_URL", cluster.dataplane.url)
    monkeypatch.delenv("UNION_SANDBOX_RESOLVER", raising=False)
    with flyte_config():
        cluster.init_flyte()
        try:
            yield cluster
        finally:
            cluster.hold_pods = cluster.break_pods = False
            cluster.token = None
            cluster.executor, cluster.pid1 = "thread", False
            cluster.executors.clear()
