"""The pod template of a sandbox pod, derived from its isolation settings.

- container ``primary`` exposing port 8080 (``http1``, the dataproxy's default target) and
  ``POD_IP`` from the downward API;
- ``allowPrivilegeEscalation: false`` always; CAP_SYS_ADMIN only when granted, and then
  ``flyte.PodTemplate.allow_nested_sandboxing()`` (SYS_ADMIN, the unconfined-AppArmor
  annotation) plus ``securityContext.appArmorProfile: Unconfined`` (the field Kubernetes
  >= 1.30 reads; the annotation covers older clusters);
- ``runtimeClassName: gvisor`` for ``runtime="gvisor"``;
- a termination grace period that outlasts the task body's own SIGTERM -> SIGKILL ladder.

Every template needs the ``kubernetes`` package (flyte's helpers and serializer import it).
"""

from __future__ import annotations

import flyte
from union.sandbox.core.constants import SANDBOX_PORT

from ._settings import DEPLOY_HINT, POD_GRACE_S, PORT_NAME, PRIMARY_CONTAINER

__all__ = ["sandbox_pod_template"]


def sandbox_pod_template(*, cap_sys_admin: bool, runtime: str) -> flyte.PodTemplate:
    """The template for a pod with (or without) CAP_SYS_ADMIN on ``runtime``."""
    try:
        from kubernetes.client import (
            V1AppArmorProfile,
            V1Container,
            V1ContainerPort,
            V1EnvVar,
            V1EnvVarSource,
            V1ObjectFieldSelector,
            V1PodSpec,
            V1SecurityContext,
        )
    except ImportError as exc:
        raise ImportError(f"{DEPLOY_HINT} ({exc})") from exc

    pod_ip = V1EnvVar(
        name="POD_IP",
        value_from=V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path="status.podIP")),
    )
    container = V1Container(
        name=PRIMARY_CONTAINER,
        ports=[V1ContainerPort(container_port=SANDBOX_PORT, name=PORT_NAME, protocol="TCP")],
        env=[pod_ip],
        security_context=V1SecurityContext(allow_privilege_escalation=False),
    )
    spec = V1PodSpec(
        containers=[container],
        runtime_class_name="gvisor" if runtime == "gvisor" else None,
        termination_grace_period_seconds=POD_GRACE_S,
    )
    template = flyte.PodTemplate(pod_spec=spec, primary_container_name=PRIMARY_CONTAINER)
    if not cap_sys_admin:
        return template
    template = template.allow_nested_sandboxing()
    assert template.pod_spec is not None
    primary = next(c for c in template.pod_spec.containers if c.name == PRIMARY_CONTAINER)
    assert primary.security_context is not None  # allow_nested_sandboxing() set it
    primary.security_context.app_armor_profile = V1AppArmorProfile(type="Unconfined")
    return template
