"""Endpoint resolvers: from a running sandbox's pod (namespace, name) to the URL a client
opens, once the launcher has seen the pod in the run's details.

- :class:`DataproxyResolver` (Union): ``{base}/dataplane/pod/v1/{namespace}/{pod}``, through
  the dataplane's proxy, which reaches pods on the caller's behalf (a caller pod has no
  pod-read RBAC and may not reach pod IPs at all). ``base`` is ``UNION_SANDBOX_DATAPROXY_URL``
  when set, else ``http://union-operator-proxy.{org}.svc.cluster.local:8080`` (as 0.0.0.1b15).
- :class:`PodIPResolver` (clusters whose pods reach each other directly, e.g. open-source
  Flyte): ``http://{pod IP}:8080``, the IP read from the Kubernetes API with the caller's
  service account (it needs ``get`` on pods in the sandbox's namespace).

:func:`choose_resolver` picks one: an explicit argument, else ``UNION_SANDBOX_RESOLVER``
(``dataproxy`` or ``pod-ip``), else the dataproxy when a URL or an org is known (Union
always has an org), else the pod IP.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio
import httpx

from union.sandbox.core.constants import SANDBOX_PORT

__all__ = [
    "DATAPROXY_PATH",
    "DATAPROXY_URL_ENV",
    "RESOLVER_ENV",
    "DataproxyResolver",
    "EndpointResolver",
    "PodIPResolver",
    "PodRef",
    "Resolved",
    "choose_resolver",
]

DATAPROXY_URL_ENV = "UNION_SANDBOX_DATAPROXY_URL"
RESOLVER_ENV = "UNION_SANDBOX_RESOLVER"
DATAPROXY_TEMPLATE = "http://union-operator-proxy.{org}.svc.cluster.local:8080"
DATAPROXY_PATH = "/dataplane/pod/v1"
_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_POD_IP_POLL_S = 0.25


@dataclass(frozen=True)
class PodRef:
    """The pod a sandbox run got: ``namespace`` and ``pod_name`` (from the run's latest
    attempt), and the ``org`` it runs in (``""`` when unknown)."""

    namespace: str
    pod_name: str
    org: str = ""


@dataclass(frozen=True)
class Resolved:
    """A resolver's answer: the endpoint URL and the pod IP when the resolver learned it."""

    url: str
    ip: str = ""


@runtime_checkable
class EndpointResolver(Protocol):
    """Turns a sandbox's pod into the URL a client opens. ``check(org)`` raises
    ``ValueError`` before anything is launched when the resolver cannot work here."""

    name: str

    def check(self, org: str) -> None: ...

    async def resolve(self, pod: PodRef) -> Resolved: ...


class DataproxyResolver:
    """Through the Union dataplane's pod proxy: ``{base}/dataplane/pod/v1/{namespace}/{pod}``.

    ``base_url`` defaults to ``$UNION_SANDBOX_DATAPROXY_URL``, else
    ``http://union-operator-proxy.{org}.svc.cluster.local:8080``. A base that already ends
    with ``/dataplane/pod/v1`` is used as it is.
    """

    name = "dataproxy"

    def __init__(self, base_url: str | None = None) -> None:
        if base_url is not None and "://" not in base_url:
            raise ValueError(f"base_url must be a URL such as 'http://host:8080', got {base_url!r}")
        self.base_url = base_url

    def _base(self, org: str) -> str:
        base = self.base_url or os.environ.get(DATAPROXY_URL_ENV, "")
        if not base:
            if not org:
                raise ValueError(
                    "the dataproxy endpoint needs the Union org, and none is configured: "
                    "initialise flyte with an org (flyte.init(..., org=...) or the config), "
                    f"or set {DATAPROXY_URL_ENV} to the dataproxy's base URL, or choose the "
                    f"pod-IP resolver ({RESOLVER_ENV}=pod-ip)"
                )
            base = DATAPROXY_TEMPLATE.format(org=org)
        base = base.rstrip("/")
        return base if base.endswith(DATAPROXY_PATH) else base + DATAPROXY_PATH

    def check(self, org: str) -> None:
        self._base(org)

    async def resolve(self, pod: PodRef) -> Resolved:
        return Resolved(f"{self._base(pod.org)}/{pod.namespace}/{pod.pod_name}")

    def __repr__(self) -> str:
        return f"DataproxyResolver(base_url={self.base_url!r})"


class PodIPResolver:
    """Straight to the pod: ``http://{pod IP}:{port}``, the IP from the Kubernetes API
    (``GET /api/v1/namespaces/{ns}/pods/{pod}``, ``status.podIP``).

    In a pod the API, its CA and the service-account token come from the standard in-cluster
    locations (``KUBERNETES_SERVICE_HOST`` / ``_PORT``, ``/var/run/secrets/kubernetes.io/
    serviceaccount``); ``api_url`` and ``token_path`` / ``ca_path`` override them.
    """

    name = "pod-ip"

    def __init__(
        self,
        *,
        port: int = SANDBOX_PORT,
        api_url: str | None = None,
        token_path: str | None = None,
        ca_path: str | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be a TCP port number, got {port!r}")
        self.port = port
        self.api_url = api_url
        self.token_path = token_path
        self.ca_path = ca_path

    def _api(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise ValueError(
                "the pod-IP endpoint reads the sandbox pod's IP from the Kubernetes API, and "
                "this process is not in a pod (no KUBERNETES_SERVICE_HOST): run in the "
                "cluster, pass PodIPResolver(api_url=...), or use the dataproxy resolver"
            )
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}"

    def check(self, org: str) -> None:
        self._api()

    def _client(self) -> httpx.AsyncClient:
        token_path = self.token_path or f"{_SA_DIR}/token"
        headers = {}
        if os.path.exists(token_path):
            with open(token_path, encoding="utf-8") as f:
                headers["authorization"] = f"Bearer {f.read().strip()}"
        ca_path = self.ca_path or f"{_SA_DIR}/ca.crt"
        verify: ssl.SSLContext | bool = True
        if os.path.exists(ca_path):
            verify = ssl.create_default_context(cafile=ca_path)
        return httpx.AsyncClient(headers=headers, verify=verify, timeout=10.0, trust_env=False)

    async def resolve(self, pod: PodRef) -> Resolved:
        """The pod's IP, polled until the API reports one (a pod is named before it has an
        IP). Errors of the API (403: no RBAC to read pods...) raise at once."""
        url = f"{self._api()}/api/v1/namespaces/{pod.namespace}/pods/{pod.pod_name}"
        async with self._client() as client:
            while True:
                response = await client.get(url)
                if response.status_code == 404:  # not visible yet
                    await anyio.sleep(_POD_IP_POLL_S)
                    continue
                if response.status_code != 200:
                    raise PermissionError(
                        f"the Kubernetes API refused to read pod {pod.namespace}/{pod.pod_name} "
                        f"(HTTP {response.status_code}): the pod-IP resolver needs 'get' on pods "
                        "in that namespace; grant it, or use the dataproxy resolver"
                    )
                ip = str((response.json().get("status") or {}).get("podIP") or "")
                if ip:
                    host = f"[{ip}]" if ":" in ip else ip
                    return Resolved(f"http://{host}:{self.port}", ip)
                await anyio.sleep(_POD_IP_POLL_S)

    def __repr__(self) -> str:
        return f"PodIPResolver(port={self.port}, api_url={self.api_url!r})"


def choose_resolver(resolver: EndpointResolver | str | None, org: str) -> EndpointResolver:
    """The resolver for ``resolver`` (an instance, ``"dataproxy"``, ``"pod-ip"`` or ``None``
    for the default, see the module docstring), checked against ``org``."""
    if resolver is None:
        resolver = os.environ.get(RESOLVER_ENV) or None
    if resolver is None:
        resolver = "dataproxy" if os.environ.get(DATAPROXY_URL_ENV) or org else "pod-ip"
    if isinstance(resolver, str):
        if resolver == "dataproxy":
            resolver = DataproxyResolver()
        elif resolver == "pod-ip":
            resolver = PodIPResolver()
        else:
            raise ValueError(
                f"resolver must be 'dataproxy', 'pod-ip' or an EndpointResolver, got {resolver!r}"
                f" (from the argument or {RESOLVER_ENV})"
            )
    if not isinstance(resolver, EndpointResolver):
        raise TypeError(
            "resolver must be 'dataproxy', 'pod-ip' or an object with name, check(org) and "
            f"async resolve(pod), got {type(resolver).__name__}"
        )
    resolver.check(org)
    return resolver
