"""``sb.session()`` refuses bad input before anything is launched, ``SandboxSession``
crosses task boundaries as Flyte carries it, and the endpoint resolvers (no processes here:
the launch itself is covered by ``integration/flyte``)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import flyte
import pytest
from flyte.types import TypeEngine

from union import sandbox as sb
from union.sandbox.flyte import DataproxyResolver, PodIPResolver, PodRef, SandboxEnvironment
from union.sandbox.flyte._resolve import choose_resolver

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sandbox_mode": "gvisor"}, ValueError, "sandbox_mode must be 'userns' or 'bwrap'"),
        ({"name": "Has_Caps"}, ValueError, "name must be 1-30 lowercase"),
        ({"name": "x" * 31}, ValueError, "name must be 1-30"),
        ({"timeout": datetime.timedelta(hours=25)}, ValueError, "hard ceiling of 1 day"),
        ({"timeout": datetime.timedelta(0)}, ValueError, "timeout must be positive"),
        ({"timeout": "1h"}, TypeError, "timeout must be a datetime.timedelta"),
        ({"network_mode": "internet"}, ValueError, "network_mode must be 'blocked'"),
        ({"network_mode": "allowlist"}, ValueError, "requires network_allowlist"),
        ({"network_denylist": ["10.0.0.0/8"]}, ValueError, "network_denylist=.* is only valid"),
        ({"max_runtime_s": -1}, ValueError, "max_runtime_s must be positive"),
        ({"fsize_ceiling_mb": 1.5}, ValueError, "fsize_ceiling_mb must be an int"),
        ({"cpu_ceiling_milli": 0}, ValueError, "cpu_ceiling_milli must be an int >= 1"),
        (
            {"resources": flyte.Resources(cpu="1", memory="1Gi"), "mem_ceiling_mb": 4096},
            ValueError,
            "mem_ceiling_mb=4096 is more than the sandbox pod has \\(768",
        ),
        (
            {"resources": flyte.Resources(cpu="4", memory="16Gi", gpu="L4:1")},
            ValueError,
            "GPU sandboxes need the bubblewrap backend",
        ),
        ({"environment": 3}, TypeError, "environment must be a SandboxEnvironment"),
        ({"environment": "Not A Name"}, ValueError, "name of a deployed one"),
        ({"task_version": ""}, ValueError, "task_version must be"),
        ({"project": ""}, ValueError, "project must be a non-empty string"),
    ],
)
async def test_bad_arguments_raise_before_launch(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await sb.session(**kwargs)


async def test_gpu_environment_needs_bwrap(env_name: Callable[[], str]) -> None:
    # The seed page's ml_sandbox: a GPU with sandbox_mode="userns".
    with pytest.warns(UserWarning, match="GPU sandboxes need sandbox_mode='bwrap'"):
        ml = SandboxEnvironment(
            name=env_name(),
            image="example.com/ml:1",
            resources=flyte.Resources(cpu="8", memory="32Gi", gpu="L4:1"),
            sandbox_mode="userns",
        )
    with pytest.raises(ValueError, match="asks for 1 GPU\\(s\\) with sandbox_mode='userns'"):
        await sb.session(environment=ml)
    with pytest.raises(ValueError, match="GPU sandboxes need the bubblewrap backend"):
        await ml.new_session()


async def test_new_session_takes_neither_environment_nor_mode(
    env_name: Callable[[], str],
) -> None:
    env = SandboxEnvironment(name=env_name(), image="example.com/s:1")
    with pytest.raises(TypeError, match="new_session\\(\\) got environment="):
        await env.new_session(environment=env)
    with pytest.raises(TypeError, match="new_session\\(\\) got sandbox_mode="):
        await env.new_session(sandbox_mode="bwrap")


async def test_environment_wins_over_sandbox_mode(env_name: Callable[[], str]) -> None:
    env = SandboxEnvironment(name=env_name(), image="example.com/s:1")
    with (
        pytest.warns(UserWarning, match="sandbox_mode is ignored"),
        pytest.raises(ValueError, match="network_mode must be"),
    ):
        await sb.session(environment=env, sandbox_mode="bwrap", network_mode="nope")


def session_fields(**extra: Any) -> dict[str, Any]:
    return {
        "name": "sbx-0123456789abcdef",
        "endpoint": "http://proxy:8080/dataplane/pod/v1/p-d/sbx-0123456789abcdef-a0-0",
        "ip": "",
        "network_mode": "allowlist",
        "network_allowlist": ["pypi.org"],
        "token": "t0k3n-" + "x" * 40,
        **extra,
    }


async def test_serialized_as_flyte_carries_it() -> None:
    """Through Flyte's type engine, as a task input goes; by name, the caller only has the
    JSON schema of the type (a dataclass with a datetime fails there: notes §11)."""
    sbx = sb.SandboxSession(**session_fields())
    literal_type = TypeEngine.to_literal_type(sb.SandboxSession)
    literal = await TypeEngine.to_literal(sbx, sb.SandboxSession, literal_type)
    back = await TypeEngine.to_python_value(literal, sb.SandboxSession)
    assert isinstance(back, sb.SandboxSession) and back == sbx
    assert back.created_at == sbx.created_at and back.created_at.tzinfo is not None
    assert not back.is_owner and back.url is None and back.phase is None
    # The remote interface: the type guessed back from the schema takes the same literal.
    guessed = TypeEngine.guess_python_type(literal_type)
    await TypeEngine.to_python_value(literal, guessed)


def test_token_stays_out_of_repr_and_str() -> None:
    sbx = sb.SandboxSession(**session_fields())
    for text in (repr(sbx), str(sbx), f"{sbx}"):
        assert sbx.token not in text and "token" not in text
    assert sbx.model_dump()["token"] == sbx.token  # the receiver needs it


def test_is_a_session() -> None:
    sbx = sb.SandboxSession(**session_fields())
    assert isinstance(sbx, sb.Session)
    assert isinstance(sbx.created_at, datetime.datetime)


async def test_dataproxy_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNION_SANDBOX_DATAPROXY_URL", raising=False)
    pod = PodRef(namespace="proj-dev", pod_name="sbx-1-a0-0", org="acme")
    resolved = await DataproxyResolver().resolve(pod)
    assert resolved.url == (
        "http://union-operator-proxy.acme.svc.cluster.local:8080"
        "/dataplane/pod/v1/proj-dev/sbx-1-a0-0"
    )
    monkeypatch.setenv("UNION_SANDBOX_DATAPROXY_URL", "https://proxy.example:8443/")
    url = (await DataproxyResolver().resolve(pod)).url
    assert url == "https://proxy.example:8443/dataplane/pod/v1/proj-dev/sbx-1-a0-0"
    monkeypatch.setenv("UNION_SANDBOX_DATAPROXY_URL", "https://proxy.example/dataplane/pod/v1")
    url = (await DataproxyResolver().resolve(pod)).url
    assert url == "https://proxy.example/dataplane/pod/v1/proj-dev/sbx-1-a0-0"


def test_resolver_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("UNION_SANDBOX_DATAPROXY_URL", "UNION_SANDBOX_RESOLVER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert choose_resolver(None, "acme").name == "dataproxy"  # Union: an org
    assert choose_resolver(None, "").name == "pod-ip"  # open-source Flyte: none
    monkeypatch.setenv("UNION_SANDBOX_RESOLVER", "dataproxy")
    with pytest.raises(ValueError, match="set UNION_SANDBOX_DATAPROXY_URL"):
        choose_resolver(None, "")
    monkeypatch.setenv("UNION_SANDBOX_DATAPROXY_URL", "http://proxy:8080")
    assert choose_resolver(None, "").name == "dataproxy"
    monkeypatch.setenv("UNION_SANDBOX_RESOLVER", "dns")
    with pytest.raises(ValueError, match="resolver must be 'dataproxy', 'pod-ip'"):
        choose_resolver(None, "acme")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(ValueError, match="not in a pod"):
        choose_resolver(PodIPResolver(), "acme")
    with pytest.raises(TypeError, match="resolver must be"):
        choose_resolver(object(), "acme")  # type: ignore[arg-type]
