"""The ``flowControl`` section of an EndpointPickerConfig, parsed as llm-d parses it.

Schema and defaults: llm-d-router ``apix/config/v1alpha1/endpointpickerconfig_types.go``
(``FlowControlConfig``, ``PriorityBandConfig``), ``pkg/epp/flowcontrol/registry/config.go`` and
``pkg/epp/flowcontrol/controller/config.go``:

* ``maxBytes`` / ``maxRequests``: optional global limits over all bands (Kubernetes quantities,
  "1Gi", "5k"; omitted or 0 = no global limit).
* ``defaultRequestTTL``: queue-wait budget while the pool has endpoints (60s; "0s" = wait until the
  client goes away). ``noEndpointRequestTTL``: the budget while the pool is empty (follows
  ``defaultRequestTTL`` when unset).
* ``priorityBands[]``: ``{priority, maxRequests, maxBytes, fairnessPolicyRef, orderingPolicyRef}``
  per priority; ``defaultPriorityBand`` is the template for any other priority and
  ``defaultNegativePriorityBand`` the one for priorities below zero. A band's ``maxRequests``
  defaults to 5,000 and ``maxBytes`` to 1 GB (0 also means the default: a band is always bounded).
* ``usageLimitPolicyPluginRef`` (default ``static-usage-limit-policy``), ``saturationDetector``
  ``{pluginRef}`` (default ``utilization-detector``; the deprecated top-level field is read too),
  ``enableEviction`` (in-flight eviction; not implemented here, a warning says so).

Unknown keys are errors naming the key (llm-d decodes the config strictly).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from epp.flowcontrol.framework import FairnessPolicy, OrderingPolicy, UsageLimitPolicy
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import Plugin, SaturationDetector
from epp.scheduling.params import INT64_MAX, parse_duration, short_repr

FEATURE_GATE = "flowControl"
DEFAULT_REQUEST_TTL = 60.0
DEFAULT_BAND_MAX_REQUESTS = 5000
DEFAULT_BAND_MAX_BYTES = 1_000_000_000
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"
DEFAULT_SATURATION_DETECTOR = "utilization-detector"

_SECTION_KEYS = {
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "noEndpointRequestTTL",
    "defaultPriorityBand",
    "defaultNegativePriorityBand",
    "priorityBands",
    "usageLimitPolicyPluginRef",
    "saturationDetector",
    "enableEviction",
}
# Keys besides the detector: setting any of them with the gate off is what llm-d warns about.
SETTINGS_KEYS = _SECTION_KEYS - {"saturationDetector"}
_BAND_KEYS = {"priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef"}

P = TypeVar("P", bound=Plugin)
Resolve = Callable[[str, type[P], str], P]


@dataclass(frozen=True, slots=True)
class BandConfig:
    priority: int
    max_requests: int
    max_bytes: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy

    def for_priority(self, priority: int) -> BandConfig:
        return BandConfig(priority, self.max_requests, self.max_bytes, self.fairness, self.ordering)


@dataclass(frozen=True, slots=True)
class FlowControlConfig:
    detector: SaturationDetector
    usage_limit: UsageLimitPolicy
    default_request_ttl: float = DEFAULT_REQUEST_TTL
    no_endpoint_request_ttl: float = DEFAULT_REQUEST_TTL
    max_requests: int = 0  # global; 0 = none
    max_bytes: int = 0
    bands: Mapping[int, BandConfig] = field(default_factory=dict)
    default_band: BandConfig | None = None  # template for unlisted priorities
    default_negative_band: BandConfig | None = None  # template for unlisted priorities < 0

    def band_for(self, priority: int) -> BandConfig:
        """The configuration of ``priority``'s band: listed, or provisioned from a template."""
        band = self.bands.get(priority)
        if band is not None:
            return band
        template = self.default_negative_band if priority < 0 and self.default_negative_band else None
        template = template or self.default_band
        assert template is not None
        return template.for_priority(priority)

    @property
    def longest_ttl(self) -> float:
        """The longest a request may wait in the queue (0 = unbounded: until the client leaves)."""
        if self.default_request_ttl == 0 or self.no_endpoint_request_ttl == 0:
            return 0.0
        return max(self.default_request_ttl, self.no_endpoint_request_ttl)


def parse_quantity(value: Any, where: str) -> int:
    """A Kubernetes resource quantity ("5000", "5k", "1Gi", "1.5M", "1e3") → an integer, rounded up
    as ``resource.Quantity.Value()`` does; must not be negative."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where} must be a quantity like '5000', '5k' or '1Gi', got {value!r}")
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        number = _quantity_text(value.strip(), where)
    else:
        raise ConfigError(f"{where} must be a quantity like '5000', '5k' or '1Gi', got {value!r}")
    shown = short_repr(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite quantity, got {shown}")
    if number < 0:
        raise ConfigError(f"{where} must be non-negative, got {shown}")
    # A limit is an int64 in llm-d (resource.Quantity.Value()); past it, float() of the value raised
    # OverflowError (a traceback) or ceil(inf) did, instead of this error naming the key.
    if number > INT64_MAX:
        raise ConfigError(f"{where} must be at most {INT64_MAX} (an int64), got {shown}")
    return math.ceil(number)


_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"
)
_SUFFIX = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def _quantity_text(text: str, where: str) -> float:
    match = _QUANTITY.match(text)
    if match is None:
        raise ConfigError(f"{where} must be a quantity like '5000', '5k' or '1Gi', got {text!r}")
    number, exponent, suffix = match.groups()
    value = float(number)
    if exponent:
        power = int(exponent[1:])
        value = math.inf if power > 308 else value * 10.0**power  # 10.0**400 raises OverflowError
    elif suffix:
        value *= _SUFFIX[suffix]
    return value


def parse_go_duration(value: Any, where: str) -> float:
    """A ``metav1.Duration`` ("60s", "1m30s", "500ms", "0s") → seconds; only strings, as llm-d's
    JSON decoding accepts only strings for it."""
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a duration string like '60s' or '500ms', got {value!r}")
    text = value.strip()
    if text in {"0", "+0", "-0"}:
        return 0.0
    negative = text.startswith("-")
    seconds = parse_duration(text.lstrip("+-"), lambda problem: ConfigError(f"{where} {problem}"))
    if negative and seconds > 0:
        raise ConfigError(f"{where} must not be negative, got {value!r}")
    return seconds


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )


def _ref(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a plugin name, got {value!r}")
    return value


def _band(
    raw: Any,
    where: str,
    resolve: Resolve[Any],
    defaults: tuple[FairnessPolicy, OrderingPolicy],
    *,
    priority_required: bool,
) -> BandConfig:
    section = _mapping(raw, where)
    _check_keys(section, _BAND_KEYS, where)
    priority = section.get("priority", 0)
    if priority_required and "priority" not in section:
        raise ConfigError(f"{where}.priority is required")
    # Bounded as llm-d's ``Priority int`` (int64) is: a 30-digit priority was accepted here.
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -INT64_MAX - 1 <= priority <= INT64_MAX
    ):
        raise ConfigError(f"{where}.priority must be an integer (int64), got {priority!r}")
    max_requests = DEFAULT_BAND_MAX_REQUESTS
    if section.get("maxRequests") is not None:
        max_requests = parse_quantity(section["maxRequests"], f"{where}.maxRequests") or max_requests
    max_bytes = DEFAULT_BAND_MAX_BYTES
    if section.get("maxBytes") is not None:
        max_bytes = parse_quantity(section["maxBytes"], f"{where}.maxBytes") or max_bytes
    fairness, ordering = defaults
    if section.get("fairnessPolicyRef"):
        ref = _ref(section["fairnessPolicyRef"], f"{where}.fairnessPolicyRef")
        fairness = resolve(ref, FairnessPolicy, f"{where}.fairnessPolicyRef")
    if section.get("orderingPolicyRef"):
        ref = _ref(section["orderingPolicyRef"], f"{where}.orderingPolicyRef")
        ordering = resolve(ref, OrderingPolicy, f"{where}.orderingPolicyRef")
    return BandConfig(priority, max_requests, max_bytes, fairness, ordering)


def check_section(raw: Any) -> Mapping[str, Any]:
    """Shape check of the whole section (done whether or not the feature gate is on, as llm-d
    decodes the config strictly before it looks at the gate)."""
    if raw is None:
        return {}
    section = _mapping(raw, "flowControl")
    _check_keys(section, _SECTION_KEYS, "flowControl")
    return section


def parse_flow_control(
    raw: Mapping[str, Any], detector: SaturationDetector, resolve: Resolve[Any], warn: Callable[[str], None]
) -> FlowControlConfig:
    """Build the flow-control configuration. ``resolve(name, kind, where)`` returns the plugin of
    that name (creating llm-d's default policies on demand) or raises ConfigError."""
    section = check_section(raw)
    defaults = (
        resolve(DEFAULT_FAIRNESS_POLICY, FairnessPolicy, "flowControl (default fairness policy)"),
        resolve(DEFAULT_ORDERING_POLICY, OrderingPolicy, "flowControl (default ordering policy)"),
    )
    usage_ref = DEFAULT_USAGE_LIMIT_POLICY
    if section.get("usageLimitPolicyPluginRef"):
        usage_ref = _ref(section["usageLimitPolicyPluginRef"], "flowControl.usageLimitPolicyPluginRef")
    usage_limit = resolve(usage_ref, UsageLimitPolicy, "flowControl.usageLimitPolicyPluginRef")

    default_ttl = DEFAULT_REQUEST_TTL
    if section.get("defaultRequestTTL") is not None:
        default_ttl = parse_go_duration(section["defaultRequestTTL"], "flowControl.defaultRequestTTL")
    no_endpoint_ttl = default_ttl  # follows defaultRequestTTL unless set on its own
    if section.get("noEndpointRequestTTL") is not None:
        no_endpoint_ttl = parse_go_duration(
            section["noEndpointRequestTTL"], "flowControl.noEndpointRequestTTL"
        )

    global_requests = global_bytes = 0
    if section.get("maxRequests") is not None:
        global_requests = parse_quantity(section["maxRequests"], "flowControl.maxRequests")
    if section.get("maxBytes") is not None:
        global_bytes = parse_quantity(section["maxBytes"], "flowControl.maxBytes")

    default_band = BandConfig(0, DEFAULT_BAND_MAX_REQUESTS, DEFAULT_BAND_MAX_BYTES, *defaults)
    if section.get("defaultPriorityBand") is not None:
        default_band = _band(
            section["defaultPriorityBand"],
            "flowControl.defaultPriorityBand",
            resolve,
            defaults,
            priority_required=False,
        )
    negative_band = None
    if section.get("defaultNegativePriorityBand") is not None:
        negative_band = _band(
            section["defaultNegativePriorityBand"],
            "flowControl.defaultNegativePriorityBand",
            resolve,
            defaults,
            priority_required=False,
        )

    raw_bands = section.get("priorityBands") or []
    if not isinstance(raw_bands, list):
        raise ConfigError(f"flowControl.priorityBands must be a list, got {raw_bands!r}")
    bands: dict[int, BandConfig] = {}
    for index, entry in enumerate(raw_bands):
        band = _band(entry, f"flowControl.priorityBands[{index}]", resolve, defaults, priority_required=True)
        if band.priority in bands:
            raise ConfigError(f"flowControl.priorityBands[{index}]: duplicate priority {band.priority}")
        bands[band.priority] = band
    # Priority 0 always exists: the band of every request without an InferenceObjective.
    bands.setdefault(0, default_band.for_priority(0))

    eviction = section.get("enableEviction", False)
    if not isinstance(eviction, bool):
        raise ConfigError(f"flowControl.enableEviction must be true or false, got {eviction!r}")
    if eviction:
        warn(
            "flowControl.enableEviction ignored: in-flight eviction of sheddable requests is not "
            "implemented; queued requests are still shed by TTL and band capacity"
        )
    return FlowControlConfig(
        detector=detector,
        usage_limit=usage_limit,
        default_request_ttl=default_ttl,
        no_endpoint_request_ttl=no_endpoint_ttl,
        max_requests=global_requests,
        max_bytes=global_bytes,
        bands=bands,
        default_band=default_band,
        default_negative_band=negative_band,
    )
