"""The gateway providers the stack can install, and what each one pins: chart versions, namespaces,
GatewayClass names, the Gateway API release it is built against, the label its proxy pods carry.

One table, one source per fact, so switching ``llmd:gateway.provider`` is one key in the stack file
and every other gateway setting follows the provider unless the stack sets it. The provider's
defaults are resolved here (``GatewayConfig.effective_*`` in :mod:`.models` read them); nothing else
in the project hard-codes a provider's version.

Sources (read at the tags named):

* agentgateway v1.4.1 (agentgateway/agentgateway): charts ``agentgateway`` and ``agentgateway-crds``
  published as ``oci://cr.agentgateway.dev/charts/<chart>`` with chart version = tag
  (``.github/workflows/release.yml``; ``controller/Makefile`` ``release-charts``); the controller
  creates GatewayClass ``agentgateway`` (controller ``agentgateway.dev/agentgateway``;
  ``controller/install/helm/agentgateway/values.yaml`` ``gatewayClassName``) and turns InferencePool
  support on with ``inferenceExtension.enabled`` (env ``AGW_ENABLE_INFER_EXT``); built against
  Gateway API v1.6.1 (``controller/go.mod``).
* Istio 1.30.3 (istio/istio): charts ``base`` and ``istiod`` from istio-release's Helm repository
  (chart version = release, no ``v``); pilot env ``ENABLE_GATEWAY_API_INFERENCE_EXTENSION``
  (``pilot/pkg/features/experimental.go``), set through the istiod chart's ``env`` value
  (``manifests/charts/istio-control/istio-discovery/templates/deployment.yaml``); GatewayClass
  ``istio``; built against Gateway API v1.5.1 (``go.mod``), the release llm-d's Istio guide installs
  (llm-d/llm-d ``guides/prereq/gateways/istio.md``).
* kgateway 2.1 (kgateway-dev/kgateway): charts ``oci://cr.kgateway.dev/kgateway-dev/charts/kgateway``
  and ``kgateway-crds``; values ``inferenceExtension.enabled`` and ``agentgateway.enabled`` (the
  2.1 ``install/helm/kgateway/values.yaml`` deprecates inference without agentgateway "in v2.1",
  unsupported from v2.2); GatewayClasses ``kgateway`` (Envoy) and ``agentgateway``
  (``internal/kgateway/wellknown/controller.go``); Gateway API 1.4.x and Kubernetes 1.31-1.35
  (kgateway.dev versions page, as quoted in kgateway-dev/kgateway.dev#659); v2.1.3 is the last
  2.1 patch seen (shared reference ``gateways.md``), and the v2.1.x branch left LTS in May 2026
  (kgateway-dev/kgateway#14085).
* GKE's Gateway controller: managed classes ``gke-l7-regional-external-managed`` and ``gke-l7-rilb``
  for InferencePools (llm-d/llm-d ``docs/infrastructure/gateway/gke.md``); GKE installs the Gateway
  API and InferencePool CRDs itself from 1.34.0-gke.1626000 (same page).
* Proxy pods: all three in-cluster providers label their data-plane pods
  ``gateway.networking.k8s.io/gateway-name: <Gateway name>`` (agentgateway
  ``controller/pkg/helm/agentgateway/templates/_helpers.tpl``, kgateway 2.1
  ``internal/kgateway/helm/kgateway/templates/_helpers.tpl``, Istio
  ``manifests/charts/istio-control/istio-discovery/files/kube-gateway.yaml``); a GKE gateway's
  proxies are Google's load balancers, not pods in the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class GatewayProvider(StrEnum):
    """Which Gateway API implementation serves the stack's Gateway."""

    AGENTGATEWAY = "agentgateway"
    ISTIO = "istio"
    KGATEWAY = "kgateway"
    GKE = "gke"


class KgatewayDataPlane(StrEnum):
    """kgateway 2.1's data plane for inference: agentgateway (recommended there), or Envoy (deprecated)."""

    AGENTGATEWAY = "agentgateway"
    ENVOY = "envoy"


@dataclass(frozen=True)
class ProviderPins:
    """What one provider installs and expects."""

    control_plane_version: str | None  # chart version; None: nothing to install (GKE)
    namespace: str | None  # control-plane namespace
    class_name: str  # the GatewayClass the Gateway uses by default
    gateway_api_version: str | None  # Gateway API release to install; None: the platform owns the CRDs
    # Gateway API minors the provider is documented for (inclusive); None: no documented bound.
    gateway_api_minors: tuple[int, int] | None = None
    # Kubernetes minors the provider is documented for (inclusive); None: no documented bound.
    kubernetes_minors: tuple[int, int] | None = None
    # Whether the provider's proxies are pods in the cluster (NetworkPolicies can select them).
    in_cluster_proxies: bool = True
    # Whether the provider dials the EPP over TLS without verification, unconditionally.
    dials_epp_with_tls: bool = True


AGENTGATEWAY_CHARTS = "oci://cr.agentgateway.dev/charts"
KGATEWAY_CHARTS = "oci://cr.kgateway.dev/kgateway-dev/charts"
ISTIO_CHARTS = "https://istio-release.storage.googleapis.com/charts"

PINS: dict[GatewayProvider, ProviderPins] = {
    GatewayProvider.AGENTGATEWAY: ProviderPins(
        control_plane_version="v1.4.1",
        namespace="agentgateway-system",
        class_name="agentgateway",
        gateway_api_version="v1.6.1",
    ),
    GatewayProvider.ISTIO: ProviderPins(
        control_plane_version="1.30.3",
        namespace="istio-system",
        class_name="istio",
        gateway_api_version="v1.5.1",
        # Istio dials whatever the EPP Service's DestinationRule says; the stack adds one with TLS.
        dials_epp_with_tls=False,
    ),
    GatewayProvider.KGATEWAY: ProviderPins(
        control_plane_version="v2.1.3",
        namespace="kgateway-system",
        class_name="agentgateway",
        gateway_api_version="v1.4.1",
        gateway_api_minors=(4, 4),
        kubernetes_minors=(31, 35),
    ),
    GatewayProvider.GKE: ProviderPins(
        control_plane_version=None,
        namespace=None,
        class_name="gke-l7-regional-external-managed",
        gateway_api_version=None,
        in_cluster_proxies=False,
        # Not proven from GKE's source (it is closed); llm-d's chart never turns EPP TLS off for gke.
        dials_epp_with_tls=False,
    ),
}

# kgateway 2.1's GatewayClass for its (deprecated) Envoy data plane.
KGATEWAY_ENVOY_CLASS = "kgateway"
# GKE's managed classes start with this; other providers' Gateways must not use them.
GKE_CLASS_PREFIX = "gke-l7-"
# GKE installs the Gateway API and InferencePool CRDs itself from this Kubernetes minor (1.34.0-gke.1626000).
GKE_MANAGES_INFERENCE_CRDS_FROM_MINOR = 34
# kgateway's inference support on Envoy was deprecated in 2.1 and removed in 2.2: the last usable line.
KGATEWAY_INFERENCE_LINE = "v2.1."

# The Istio helm value that turns InferencePool support on in istiod.
ISTIO_INFERENCE_ENV = "ENABLE_GATEWAY_API_INFERENCE_EXTENSION"


def pins(provider: GatewayProvider) -> ProviderPins:
    return PINS[provider]


def kgateway_upstream_notice() -> str:
    """What `pulumi preview` says when a stack still uses kgateway."""
    return (
        "llmd:gateway.provider is kgateway: kgateway 2.1 is the last line with inference support "
        "(Envoy-based inference was deprecated in 2.1 and removed in 2.2; the 2.1.x branch is no longer "
        "LTS), and upstream has moved on to agentgateway. Set `llmd:gateway.provider: agentgateway` to "
        "switch; nothing else in the stack file has to change."
    )
