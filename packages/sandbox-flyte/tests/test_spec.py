"""The deployed task spec, as Flyte's own serializer writes it (``translate_task_to_wire``,
what ``flyte deploy`` sends): image, resources, pod security, timeout, retries, secrets, env.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flyte
from flyte._internal.runtime.task_serde import translate_task_to_wire
from flyte.models import SerializationContext
from google.protobuf.json_format import MessageToDict

from union import sandbox as sb
from union.sandbox.flyte import SandboxEnvironment

Names = Callable[[], str]
APPARMOR = "container.apparmor.security.beta.kubernetes.io/primary"


def wire(env: SandboxEnvironment) -> dict[str, Any]:
    context = SerializationContext(
        project="p", domain="development", org="o", version="v1", root_dir=Path.cwd()
    )
    spec: dict[str, Any] = MessageToDict(translate_task_to_wire(env.server_task, context))
    return spec


def primary(spec: dict[str, Any]) -> dict[str, Any]:
    pod = spec["taskTemplate"]["k8sPod"]["podSpec"]
    (container,) = pod["containers"]
    assert container["name"] == "primary"
    assert spec["taskTemplate"]["config"]["primary_container_name"] == "primary"
    return dict(container)


def check_common(env: SandboxEnvironment, spec: dict[str, Any]) -> dict[str, Any]:
    """What every sandbox task carries; returns its primary container."""
    template = spec["taskTemplate"]
    assert template["id"]["name"] == f"{env.name}.sandbox_server"
    assert template["metadata"]["timeout"] == "86400s"
    assert template["metadata"]["retries"].get("retries", 0) == 0
    assert "container" not in template  # with a pod template, everything is in k8sPod
    container = primary(spec)
    assert container["image"] == env.image.uri  # type: ignore[union-attr]
    assert container["ports"] == [{"name": "http1", "protocol": "TCP", "containerPort": 8080}]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in (
        container["env"]
    )
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert template["k8sPod"]["podSpec"]["terminationGracePeriodSeconds"] == 30
    # The pod finds the task through our resolver, which needs none of the user's code.
    args = container["args"]
    assert args[0] == "a0"
    resolver = args[args.index("--resolver") + 1 :]
    assert resolver[0] == "union.sandbox.flyte._task.SandboxTaskResolver"
    assert resolver[1:5] == [
        "env",
        env.name,
        "backend",
        "bubblewrap" if env.sandbox_mode == "bwrap" else "userns",
    ]
    return container


def check_cap_sys_admin(spec: dict[str, Any], granted: bool) -> None:
    template = spec["taskTemplate"]
    container = primary(spec)
    security = container["securityContext"]
    annotations = template["k8sPod"].get("metadata", {}).get("annotations", {})
    if granted:
        assert security["capabilities"] == {"add": ["SYS_ADMIN"]}
        assert security["appArmorProfile"] == {"type": "Unconfined"}
        assert annotations[APPARMOR] == "unconfined"
        assert annotations["flyte.org/capability-nested-sandboxing"] == "true"
    else:
        assert "capabilities" not in security
        assert "appArmorProfile" not in security
        assert APPARMOR not in annotations
    assert security.get("privileged") in (None, False)


def test_default_userns() -> None:
    env = sb.DEFAULT_SANDBOX_ENV
    spec = wire(env)
    container = check_common(env, spec)
    check_cap_sys_admin(spec, granted=False)
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert "runtimeClassName" not in spec["taskTemplate"]["k8sPod"]["podSpec"]
    assert spec["environment"]["name"] == "union-sandbox"
    assert container["image"].startswith("union-sandbox-base:")


def test_default_bwrap() -> None:
    env = sb.DEFAULT_SANDBOX_ENV_BWRAP
    spec = wire(env)
    check_common(env, spec)
    check_cap_sys_admin(spec, granted=True)
    assert primary(spec)["image"] == primary(wire(sb.DEFAULT_SANDBOX_ENV))["image"]


def test_sys_cap_admin_in_the_spec(cap_sys_admin_case: tuple[SandboxEnvironment, bool]) -> None:
    env, granted = cap_sys_admin_case
    spec = wire(env)
    check_common(env, spec)
    check_cap_sys_admin(spec, granted)


def test_custom_environment(env_name: Names) -> None:
    """gVisor, bwrap, a GPU, secrets, env vars and an extended image, as the seed page's
    custom recipe and the GPU page declare them."""
    image = sb.base_sandbox_image.with_pip_packages("torch")
    env = SandboxEnvironment(
        name=env_name(),
        image=image,
        resources=flyte.Resources(cpu="4", memory="16Gi", gpu="L4:1"),
        secrets=[flyte.Secret(group="hf", key="HF_TOKEN")],
        env_vars={"HF_HOME": "/tmp/hf"},
        sandbox_mode="bwrap",
        runtime="gvisor",
        description="GPU sandbox",
    )
    spec = wire(env)
    container = check_common(env, spec)
    check_cap_sys_admin(spec, granted=True)
    template = spec["taskTemplate"]
    assert container["image"] == image.uri != sb.base_sandbox_image.uri
    assert template["k8sPod"]["podSpec"]["runtimeClassName"] == "gvisor"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "gpu": "1"}
    assert template["extendedResources"]["gpuAccelerator"]["device"] == "nvidia-l4"
    assert template["securityContext"]["secrets"] == [
        {"group": "hf", "key": "HF_TOKEN", "mountRequirement": "ENV_VAR", "envVar": "HF_HF_TOKEN"}
    ]
    assert {"name": "HF_HOME", "value": "/tmp/hf"} in container["env"]
    # The ceilings the pod derives (resources minus the supervisor reserve, GPUs as asked).
    resolver = container["args"][container["args"].index("--resolver") + 1 :]
    assert resolver[5:] == ["cpu", "3800", "mem", str(16 * 1024 - 256), "gpu", "1"]
    assert spec["environment"]["name"] == env.name
    assert spec["shortName"] == "sandbox_server"


def test_interface_inputs(env_name: Names) -> None:
    env = SandboxEnvironment(name=env_name())
    variables = spec_inputs = {
        v["key"]: v["value"]["type"]["simple"]
        for v in wire(env)["taskTemplate"]["interface"]["inputs"]["variables"]
    }
    assert spec_inputs == {
        "token": "STRING",
        "timeout_s": "FLOAT",
        "network_mode": "STRING",
        "max_runtime_s": "FLOAT",
        "cpu_ceiling_milli": "INTEGER",
        "mem_ceiling_mb": "INTEGER",
        "gpu_ceiling": "INTEGER",
        "fsize_ceiling_mb": "INTEGER",
    }, variables
