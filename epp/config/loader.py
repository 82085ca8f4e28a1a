"""EndpointPickerConfig YAML → a ready scheduler, with llm-d's structural defaults.

Accepted: apiVersion ``llm-d.ai/v1alpha1`` and ``inference.networking.x-k8s.io/v1alpha1``, kind
``EndpointPickerConfig``. Auto-defaults as llm-d's loader applies them: no profiles → one
``default`` profile with every filter, scorer and picker; one profile and no handler →
``single-profile-handler``; a profile without picker → the configured picker, or a
``max-score-picker`` when none is configured; no ``flowControl.saturationDetector`` → the plugin
named ``utilization-detector`` (created when absent; other detectors are not used); flow control on
(``featureGates: [flowControl]``) → the ``flowControl`` section with llm-d's default policies
(``fcfs-ordering-policy``, ``global-strict-fairness-policy``, ``static-usage-limit-policy``); no
data layer → ``metrics-data-source`` + ``core-metrics-extractor``; a data key some plugin consumes
and no configured plugin produces → the producer type registered as its default (e.g.
``approx-prefix-cache-producer`` for ``prefix-cache-scorer``), configured from the parameters its
consumers carry for it. Producers (and preparers) run producers-before-consumers of their data keys,
whatever the config's order. An endpoint extractor (``precise-prefix-cache-producer``) that no
``endpoint-notification-source`` in ``dataLayer.sources`` feeds is wired to one, with a warning:
without it, it never sees a pod.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

import epp.plugins  # noqa: F401 - registers the built-in plugins
from epp.config.scheduler_config import SchedulerConfig
from epp.flowcontrol import config as flow_config
from epp.flowcontrol.config import FlowControlConfig
from epp.plugins.parsers import RequestParser
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import (
    DataProducer,
    EndpointExtractor,
    EndpointNotifier,
    EndpointSetObserver,
    Filter,
    Lifecycle,
    MetricsExtractor,
    MetricsSource,
    Picker,
    Plugin,
    Preparer,
    PreRequest,
    ProfileHandler,
    SaturationDetector,
    SchedulerProfile,
    Scorer,
)
from epp.scheduling.params import finite_float, short_repr
from epp.scheduling.registry import create, default_producer, deprecated_replacement, is_llm_d_type
from epp.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
KIND = "EndpointPickerConfig"
DEFAULT_SCORER_WEIGHT = 1.0

DEFAULT_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""

_TOP_LEVEL = {
    "apiVersion",
    "kind",
    "metadata",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "dataLayer",
    "flowControl",
    "saturationDetector",
    "parser",
    "requestHandler",
}
# Feature gates llm-d registers, with their defaults (llm-d-router cmd/epp/runner/runner.go); any
# other name is an error, as in llm-d's loader (config/loader/validation.go validateFeatureGates).
FEATURE_GATES = {flow_config.FEATURE_GATE: False, "haPopulateNonLeaderDatastore": True}
# Gates older llm-d configs carry that llm-d-router has since removed (and refuses, as here).
_REMOVED_GATES = {
    "enableLegacyMetrics": (
        "was removed from llm-d-router (PR 1418, May 2026): metrics always come from the data "
        "layer; drop the gate"
    ),
}
# dataLayer's fields in llm-d-router (apix/config/v1alpha1/endpointpickerconfig_types.go).
_DATA_LAYER_KEYS = {
    "sources",
    "discovery",
    "peerDiscovery",
    "injectDefaults",
    "crossReplicaSyncerPluginRef",
    "crossReplicaSyncInterval",
}


T = TypeVar("T", bound=Plugin)
_BOOLEANS = {"true": True, "1": True, "t": True, "false": False, "0": False, "f": False}


def load_config(text: str | None) -> SchedulerConfig:
    """Parse and build; raises :class:`ConfigError` naming the section, plugin or key at fault."""
    if text is None or not text.strip():
        text = DEFAULT_CONFIG
    try:
        _check_depth(text)
        document = _single_document(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"EndpointPickerConfig is not valid YAML: {exc}") from exc
    if not isinstance(document, Mapping):
        raise ConfigError("EndpointPickerConfig must be a YAML mapping")
    return _Builder(document).build()


# The deepest nesting of mappings and sequences a config may have. llm-d's deepest parameters sit
# about ten levels down; PyYAML's composer and constructor recurse once per level, so a few hundred
# levels (``[[[[...]]]]``) raised RecursionError instead of an error naming the place.
MAX_DEPTH = 100


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH by scanning YAML events (the parser does not recurse)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
                raise ConfigError(f"EndpointPickerConfig nests deeper than {MAX_DEPTH} levels ({where})")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _single_document(text: str) -> Any:
    """The one document ``text`` holds, checked by :func:`_check_yaml_shape` before it is built.
    Empty documents (a leading or trailing ``---``, as many manifests end) are skipped; a second
    document with content is refused rather than dropped (llm-d's decoder reads only the first)."""
    loader = yaml.SafeLoader(text)
    try:
        nodes = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None and not (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
                nodes.append(node)
        if len(nodes) > 1:
            mark = nodes[1].start_mark
            raise ConfigError(
                f"EndpointPickerConfig holds {len(nodes)} YAML documents (the second at line "
                f"{mark.line + 1}); give one EndpointPickerConfig per file"
            )
        if not nodes:
            return None
        _check_yaml_shape(nodes[0])
        return loader.construct_document(nodes[0])
    finally:
        loader.dispose()


# The most nodes a document may hold once its aliases are expanded. Real configs hold hundreds;
# llm-d's YAML decoder (go-yaml, under sigs.k8s.io/yaml) likewise refuses "excessive aliasing".
MAX_EXPANDED_NODES = 100_000
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


def _check_yaml_shape(root: yaml.Node | None) -> None:
    """Refuse, before anything reads the document, what would otherwise hang or crash later:
    an alias bomb (PyYAML shares aliased nodes, but any error message that prints the value
    expands them all: minutes and gigabytes), a recursive alias, and a non-string mapping key
    (every unknown-field check sorts keys, and an int among strings raised TypeError; llm-d's
    JSON-based decoding has only string keys). One walk, each node visited once."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def walk(node: yaml.Node, where: str) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            raise ConfigError(f"{where or 'top level'}: a YAML alias refers to itself")
        active.add(id(node))
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(walk(item, f"{where}[{index}]") for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag not in {_STR_TAG, _MERGE_TAG}:
                    shown = key.value if isinstance(key, yaml.ScalarNode) else key.tag
                    raise ConfigError(f"{where or 'top level'}: key {shown!r} is not a string")
                # llm-d's strict decoder refuses a repeated key ("key already set in map"); PyYAML
                # kept the last silently, so `plugins:` written twice dropped the first list.
                if key.tag == _STR_TAG:
                    if key.value in seen:
                        raise ConfigError(f"{where or 'top level'}: key {key.value!r} appears twice")
                    seen.add(key.value)
                size += 1 + walk(value, f"{where}.{key.value}" if where else str(key.value))
        active.discard(id(node))
        sizes[id(node)] = size
        if size > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{where or 'top level'}: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes"
            )
        return size

    if root is not None:
        walk(root, "")


class _Builder:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.doc = document
        self.plugins: dict[str, Plugin] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        log.warning("EndpointPickerConfig: %s", message)
        self.warnings.append(message)

    def build(self) -> SchedulerConfig:
        self._check_header()
        self._build_plugins()
        self._ensure_producers()
        profiles = self._build_profiles()
        handler = self._profile_handler(profiles)
        for plugin in list(self.plugins.values()):
            plugin.resolve(self.plugins)
        handler.validate_profiles(list(profiles))
        self._parsers()
        source, extractor = self._data_layer()
        gates = self._feature_gates()
        section = flow_config.check_section(self.doc.get("flowControl"))
        detector = self._saturation_detector(section)
        flow_control = self._flow_control(section, detector, enabled=gates[flow_config.FEATURE_GATE])
        return SchedulerConfig(
            plugins=self.plugins,
            scheduler=Scheduler(profiles, handler),
            producers=_dependency_order(self._all(DataProducer)),
            pre_request=self._all(PreRequest),
            observers=self._all(EndpointSetObserver),
            saturation_detector=detector,
            metrics_source=source,
            metrics_extractor=extractor,
            flow_control=flow_control,
            feature_gates=gates,
            warnings=self.warnings,
            preparers=_dependency_order(self._all(Preparer)),
            lifecycles=self._all(Lifecycle),
        )

    # ---- sections ----------------------------------------------------------------------------
    def _check_header(self) -> None:
        api_version, kind = self.doc.get("apiVersion"), self.doc.get("kind")
        if api_version not in API_VERSIONS:
            raise ConfigError(f"apiVersion must be one of {', '.join(API_VERSIONS)}; got {api_version!r}")
        if kind != KIND:
            raise ConfigError(f"kind must be {KIND}; got {kind!r}")
        unknown = sorted(set(self.doc) - _TOP_LEVEL)
        if unknown:
            raise ConfigError(f"unknown top-level field(s): {', '.join(unknown)}")

    def _build_plugins(self) -> None:
        raw_plugins = _absent_as(self.doc.get("plugins"), [])
        if not isinstance(raw_plugins, list):
            raise ConfigError("'plugins' must be a list")
        for index, entry in enumerate(raw_plugins):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"plugins[{index}] must be a mapping with type, name, parameters")
            unknown = sorted(set(entry) - {"name", "type", "parameters"})
            if unknown:
                raise ConfigError(f"plugins[{index}]: unknown field(s) {', '.join(unknown)}")
            type_name = entry.get("type")
            if not isinstance(type_name, str) or not type_name:
                raise ConfigError(f"plugins[{index}]: 'type' is required")
            name = entry.get("name")
            if name is None or name == "":  # llm-d names a plugin after its type (applyStaticDefaults)
                name = type_name
            if not isinstance(name, str):
                raise ConfigError(f"plugins[{index}]: 'name' must be a string")
            if name in self.plugins:
                raise ConfigError(f"plugins[{index}]: duplicate plugin name {name!r}")
            replacement = deprecated_replacement(type_name)
            if replacement:
                self.warn(f"plugin {name!r}: type {type_name!r} is deprecated, use {replacement!r}")
            # Unknown parameter keys are an error, as llm-d-router's StrictDecoder makes them.
            self.plugins[name] = create(type_name, name, entry.get("parameters"))

    def _ensure_producers(self) -> None:
        """Add the default producer of every data key that a configured plugin consumes and no
        configured plugin produces, as llm-d's loader does; the plugins declare both sides."""
        produced: dict[str, list[Plugin]] = {}
        for plugin in self.plugins.values():
            for key in plugin.produces:
                produced.setdefault(key, []).append(plugin)
        wanted: dict[str, list[Plugin]] = {}
        for plugin in self.plugins.values():
            for key in sorted(plugin.consumes()):
                wanted.setdefault(key, []).append(plugin)
        for key, consumers in wanted.items():
            carried = [(c, dict(c.producer_parameters(key))) for c in consumers]
            carried = [(c, params) for c, params in carried if params]
            producers = produced.get(key)
            if producers:
                for consumer, params in carried:
                    self.warn(
                        f"plugin {consumer.name!r}: parameters {', '.join(sorted(params))} ignored; "
                        f"the configured {producers[0].type_name} plugin {producers[0].name!r} governs them"
                    )
                continue
            type_name = default_producer(key)
            if type_name is None:
                raise ConfigError(
                    f"plugin {consumers[0].name!r} (type {consumers[0].type_name}) needs {key!r}, which no "
                    "configured plugin produces and no plugin type produces by default"
                )
            if any(params != carried[0][1] for _, params in carried[1:]):
                raise ConfigError(
                    f"plugins {', '.join(repr(c.name) for c, _ in carried)} disagree on the parameters "
                    f"of the {type_name} they need; configure one {type_name} plugin instead"
                )
            name = type_name if type_name not in self.plugins else f"{type_name}-auto"
            created = create(type_name, name, carried[0][1] if carried else None)
            self.plugins[name] = created
            for produced_key in created.produces:
                produced.setdefault(produced_key, []).append(created)

    def _build_profiles(self) -> dict[str, SchedulerProfile]:
        raw_profiles = _absent_as(self.doc.get("schedulingProfiles"), [])
        if not isinstance(raw_profiles, list):
            raise ConfigError("'schedulingProfiles' must be a list")
        if not raw_profiles:
            members: list[Any] = [
                {"pluginRef": name}
                for name, plugin in self.plugins.items()
                if isinstance(plugin, Filter | Scorer | Picker)
            ]
            raw_profiles = [{"name": "default", "plugins": members}]
        profiles: dict[str, SchedulerProfile] = {}
        for index, entry in enumerate(raw_profiles):
            profile = self._build_profile(index, entry)
            if profile.name in profiles:
                raise ConfigError(f"schedulingProfiles[{index}]: duplicate profile name {profile.name!r}")
            profiles[profile.name] = profile
        return profiles

    def _build_profile(self, index: int, entry: Any) -> SchedulerProfile:
        where = f"schedulingProfiles[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping with name and plugins")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' is required")
        # llm-d decodes the config strictly (serializer.EnableStrict in configloader.go): a typo
        # such as ``plugin:`` for ``plugins:`` was silently ignored here, leaving a picker-only profile.
        unknown = sorted(set(entry) - {"name", "plugins"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        where = f"scheduling profile {name!r}"
        refs = _absent_as(entry.get("plugins"), [])
        if not isinstance(refs, list):
            raise ConfigError(f"{where}: 'plugins' must be a list")
        filters: list[Filter] = []
        scorers: list[tuple[Scorer, float]] = []
        pickers: list[Picker] = []
        for ref in refs:
            if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
                raise ConfigError(f"{where}: each entry needs a 'pluginRef' string, got {ref!r}")
            unknown = sorted(set(ref) - {"pluginRef", "weight"})
            if unknown:
                raise ConfigError(f"{where}: pluginRef {ref['pluginRef']!r} has unknown field(s) {unknown}")
            plugin = self.plugins.get(ref["pluginRef"])
            if plugin is None:
                raise ConfigError(f"{where}: pluginRef {ref['pluginRef']!r} names no plugin in 'plugins'")
            weight = ref.get("weight")
            if isinstance(plugin, Scorer):
                if weight is None:
                    weight = DEFAULT_SCORER_WEIGHT
                # finite_float: a 400-digit integer weight is refused here, as Go's float64 decoding
                # of llm-d's ``weight`` refuses it, rather than raising OverflowError.
                number = None
                if not isinstance(weight, bool) and isinstance(weight, int | float):
                    number = finite_float(weight)
                if number is None or number < 0:
                    shown = repr(weight) if len(repr(weight)) <= 40 else f"{repr(weight)[:37]}..."
                    raise ConfigError(
                        f"{where}: weight of {plugin.name!r} must be a number >= 0 and finite, got {shown}"
                    )
                scorers.append((plugin, number))
                continue
            if weight is not None:
                # llm-d applies a weight only to scorers and ignores it elsewhere (buildSchedulerConfig).
                self.warn(f"{where}: weight of {plugin.name!r} ignored: it is not a scorer")
            if isinstance(plugin, Filter):
                filters.append(plugin)
            elif isinstance(plugin, Picker):
                pickers.append(plugin)
            else:
                # llm-d's SchedulerProfile.AddPlugins adds a plugin at each scheduling extension point
                # it implements and none for the others (its router chart lists
                # predicted-latency-producer in a profile), so the config loads there.
                self.warn(
                    f"{where}: {plugin.name!r} (type {plugin.type_name}) is not a filter, scorer or "
                    "picker, so listing it in a profile does nothing"
                )
        if len(pickers) > 1:
            raise ConfigError(f"{where}: more than one picker ({', '.join(p.name for p in pickers)})")
        picker = pickers[0] if pickers else self._default_picker(where)
        return SchedulerProfile(name, filters, scorers, picker)

    def _default_picker(self, where: str) -> Picker:
        """The picker of a profile that names none. llm-d (ensureSchedulingLayer in
        config/loader/defaults.go) appends the configured picker, whatever its type, and creates a
        ``max-score-picker`` only when no picker is configured: a config with one ``random-picker``
        picked at random upstream and by max score here."""
        configured = self._all(Picker)
        if not configured:
            return self._default("max-score-picker", Picker)
        if len(configured) > 1:
            self.warn(
                f"{where} names no picker and {len(configured)} are configured "
                f"({', '.join(p.name for p in configured)}); llm-d takes any one of them, this EPP the "
                f"first, {configured[0].name!r}: name the picker in the profile"
            )
        return configured[0]

    def _profile_handler(self, profiles: Mapping[str, SchedulerProfile]) -> ProfileHandler:
        handlers = self._all(ProfileHandler)
        if len(handlers) > 1:
            raise ConfigError(f"more than one profile handler: {', '.join(h.name for h in handlers)}")
        if handlers:
            return handlers[0]
        if len(profiles) != 1:
            raise ConfigError(
                f"{len(profiles)} scheduling profiles need a profile handler plugin "
                "(e.g. disagg-profile-handler)"
            )
        return self._default("single-profile-handler", ProfileHandler)

    def _parsers(self) -> None:
        """``requestHandler.parsers`` (and its deprecated spelling, the top-level ``parser``): each
        entry must name a parser plugin, as llm-d's validateParsers and buildParserRegistry
        require; a listed parser type that is not configured is created, as ensureParsers does.
        Only parsers of the OpenAI API are registered here (the protocol layer parses those), so
        a valid list changes nothing. Both sections were ignored with a warning before, so a
        reference to a missing plugin or to a non-parser loaded here and failed under llm-d."""
        legacy = self.doc.get("parser")
        handler = self.doc.get("requestHandler")
        entries: list[Any] = []
        where = "requestHandler.parsers"
        if handler is not None:
            if not isinstance(handler, Mapping):
                raise ConfigError(
                    f"requestHandler must be a mapping with 'parsers', got {short_repr(handler)}"
                )
            unknown = sorted(set(handler) - {"parsers"})
            if unknown:
                raise ConfigError(f"requestHandler: unknown field(s) {', '.join(unknown)}")
            entries = _absent_as(handler.get("parsers"), [])
            if not isinstance(entries, list):
                raise ConfigError(f"{where} must be a list, got {short_repr(entries)}")
        if legacy is not None:
            self.warn(
                "parser is deprecated, use requestHandler.parsers"
                + (" (both are set: requestHandler.parsers is used)" if entries else "")
            )
            if not entries:
                entries, where = [legacy], "parser"
        for index, entry in enumerate(entries):
            at = where if where == "parser" else f"{where}[{index}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("pluginRef"), str):
                raise ConfigError(f"{at} must be a mapping with a 'pluginRef', got {short_repr(entry)}")
            unknown = sorted(set(entry) - {"pluginRef"})
            if unknown:
                raise ConfigError(f"{at}: unknown field(s) {', '.join(unknown)}")
            ref = entry["pluginRef"]
            plugin = self.plugins.get(ref)
            if plugin is None:
                if not is_llm_d_type(ref):
                    raise ConfigError(f"{at}: pluginRef {ref!r} names no plugin in 'plugins'")
                plugin = self.plugins[ref] = create(ref, ref, None)
            if not isinstance(plugin, RequestParser):
                raise ConfigError(f"{at}: pluginRef {ref!r} (type {plugin.type_name}) is not a parser plugin")

    def _saturation_detector(self, flow_section: Mapping[str, Any]) -> SaturationDetector:
        """``flowControl.saturationDetector.pluginRef``; the top-level ``saturationDetector`` is its
        deprecated spelling (llm-d config/loader/configloader.go: the new field wins). Without a
        reference llm-d uses the plugin *named* ``utilization-detector``, created with its defaults
        when absent (ensureSaturationDetector in config/loader/defaults.go): a detector that is only
        listed under ``plugins`` is not the saturation detector there, so it is not here either
        (this EPP used to take a lone configured detector, and refused two)."""
        legacy = self.doc.get("saturationDetector")
        current = flow_section.get("saturationDetector")
        if legacy is not None:
            self.warn(
                "saturationDetector is deprecated, use flowControl.saturationDetector"
                + (" (both are set: flowControl.saturationDetector is used)" if current is not None else "")
            )
        where = "flowControl.saturationDetector" if current is not None else "saturationDetector"
        section = current if current is not None else legacy
        ref = flow_config.DEFAULT_SATURATION_DETECTOR
        if section is not None:
            if not isinstance(section, Mapping):
                raise ConfigError(f"{where} must be a mapping with a 'pluginRef'")
            unknown = sorted(set(section) - {"pluginRef"})
            if unknown:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
            raw_ref = section.get("pluginRef")
            if raw_ref is not None and not isinstance(raw_ref, str):
                raise ConfigError(f"{where}.pluginRef must be a plugin name, got {raw_ref!r}")
            ref = raw_ref or ref
        else:
            where = "the default saturation detector (flowControl.saturationDetector unset)"
        plugin = self.plugins.get(ref)
        if plugin is None and ref == flow_config.DEFAULT_SATURATION_DETECTOR:
            plugin = self.plugins[ref] = create(ref, ref, None)
        if not isinstance(plugin, SaturationDetector):
            raise ConfigError(f"{where}: pluginRef {ref!r} is not a configured saturation detector")
        for other in self._all(SaturationDetector):
            if other is not plugin:
                self.warn(
                    f"plugin {other.name!r} (type {other.type_name}) is not the saturation detector: "
                    f"that is {ref!r}, as flowControl.saturationDetector.pluginRef "
                    + ("says" if section is not None else "defaults to")
                    + f" (name {other.name!r} there to use it)"
                )
        return plugin

    def _feature_gates(self) -> dict[str, bool]:
        raw = _absent_as(self.doc.get("featureGates"), [])
        if not isinstance(raw, list):
            raise ConfigError(f"featureGates must be a list of gate names, got {raw!r}")
        gates = dict(FEATURE_GATES)
        for index, entry in enumerate(raw):
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(
                    f"featureGates[{index}] must be a gate name like 'flowControl', got {entry!r}"
                )
            name, _, value = entry.partition("=")
            name = name.strip()
            if name in _REMOVED_GATES:
                raise ConfigError(f"featureGates[{index}]: {name!r} {_REMOVED_GATES[name]}")
            if name not in FEATURE_GATES:
                raise ConfigError(
                    f"featureGates[{index}]: unknown feature gate {name!r} "
                    f"(known: {', '.join(sorted(FEATURE_GATES))})"
                )
            enabled = True
            if value:
                text = value.strip().lower()
                if text not in _BOOLEANS:
                    raise ConfigError(
                        f"featureGates[{index}]: {value!r} is not true or false for gate {name!r}"
                    )
                enabled = _BOOLEANS[text]
            gates[name] = enabled
        return gates

    def _flow_control(
        self, section: Mapping[str, Any], detector: SaturationDetector, *, enabled: bool
    ) -> FlowControlConfig | None:
        if not enabled:
            configured = sorted(key for key in section if key in flow_config.SETTINGS_KEYS)
            if configured:
                self.warn(
                    f"flowControl settings ({', '.join(configured)}) ignored: the flowControl feature "
                    "gate is off (add featureGates: [flowControl]); only saturationDetector applies"
                )
            return None
        return flow_config.parse_flow_control(section, detector, self._policy, self.warn)

    def _policy(self, name: str, kind: type[T], where: str) -> T:
        """The plugin ``name``; llm-d's default policies are created under their type names."""
        plugin = self.plugins.get(name)
        if plugin is None:
            if name not in {
                flow_config.DEFAULT_FAIRNESS_POLICY,
                flow_config.DEFAULT_ORDERING_POLICY,
                flow_config.DEFAULT_USAGE_LIMIT_POLICY,
            }:
                raise ConfigError(f"{where}: {name!r} names no plugin in 'plugins'")
            plugin = self.plugins[name] = create(name, name, None)
        if not isinstance(plugin, kind):
            raise ConfigError(f"{where}: plugin {name!r} (type {plugin.type_name}) is not a {kind.__name__}")
        return plugin

    def _data_layer(self) -> tuple[MetricsSource, MetricsExtractor]:
        section = _absent_as(self.doc.get("dataLayer"), {})
        if not isinstance(section, Mapping):
            raise ConfigError("dataLayer must be a mapping")
        unknown = sorted(set(section) - _DATA_LAYER_KEYS)
        if unknown:
            raise ConfigError(f"dataLayer: unknown field(s) {', '.join(unknown)}")
        for ignored in ("discovery", "peerDiscovery"):
            if section.get(ignored):
                self.warn(
                    f"dataLayer.{ignored} ignored: discovery comes from --pool-name or --endpoints-file"
                )
        sources = _absent_as(section.get("sources"), [])
        if not isinstance(sources, list):
            raise ConfigError("dataLayer.sources must be a list")
        self._newer_data_layer_fields(section, sources)
        metric_sources: list[tuple[MetricsSource, MetricsExtractor | None]] = []
        wired: set[str] = set()
        for index, entry in enumerate(sources):
            where = f"dataLayer.sources[{index}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("pluginRef"), str):
                raise ConfigError(f"{where} needs a 'pluginRef'")
            # Strict, as llm-d decodes it: `extractor:` for `extractors:` silently wired nothing.
            unknown = sorted(set(entry) - {"pluginRef", "extractors"})
            if unknown:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
            listed = entry.get("extractors")
            for ext_index, ext in enumerate(listed if isinstance(listed, list) else []):
                extra = sorted(set(ext) - {"pluginRef"}) if isinstance(ext, Mapping) else []
                if extra:
                    raise ConfigError(f"{where}.extractors[{ext_index}]: unknown field(s) {', '.join(extra)}")
            source = self.plugins.get(entry["pluginRef"])
            if isinstance(source, EndpointNotifier):
                self._wire_endpoint_source(where, source, _absent_as(entry.get("extractors"), []), wired)
                continue
            if not isinstance(source, MetricsSource):
                raise ConfigError(
                    f"{where}: pluginRef {entry['pluginRef']!r} is not a metrics-data-source or "
                    "endpoint-notification-source plugin"
                )
            extractor: MetricsExtractor | None = None
            extractors = _absent_as(entry.get("extractors"), [])
            if not isinstance(extractors, list):  # a bare name or number was a TypeError, or a str iterated
                raise ConfigError(f"{where}.extractors must be a list")
            for ext_index, ext in enumerate(extractors):
                ref = ext.get("pluginRef") if isinstance(ext, Mapping) else None
                plugin = self.plugins.get(ref) if isinstance(ref, str) else None
                if not isinstance(plugin, MetricsExtractor):
                    raise ConfigError(
                        f"{where}.extractors[{ext_index}]: {ref!r} is not a core-metrics-extractor plugin"
                    )
                extractor = plugin
            metric_sources.append((source, extractor))
        self._wire_unfed_extractors(wired)
        if len(metric_sources) > 1:
            raise ConfigError("dataLayer.sources: only one metrics-data-source is supported")
        if metric_sources:
            source, extractor = metric_sources[0]
        else:
            source = self._default("metrics-data-source", MetricsSource)
            extractor = None
        return source, extractor or self._default("core-metrics-extractor", MetricsExtractor)

    def _newer_data_layer_fields(self, section: Mapping[str, Any], sources: list[Any]) -> None:
        """llm-d-router's newer ``dataLayer`` fields (apix/config/v1alpha1 DataLayerConfig), which
        were refused here as unknown. ``injectDefaults: false`` stops llm-d adding its default
        metrics source; this EPP's scorers and detector read the scrape, so it keeps one (warned).
        Cross-replica sync shares data between EPP replicas, which this EPP does not do."""
        inject = section.get("injectDefaults")
        if inject is not None and not isinstance(inject, bool):
            raise ConfigError(f"dataLayer.injectDefaults must be true or false, got {short_repr(inject)}")
        refs = [e.get("pluginRef") for e in sources if isinstance(e, Mapping)]
        listed = [self.plugins.get(ref) for ref in refs if isinstance(ref, str)]
        if inject is False and not any(isinstance(plugin, MetricsSource) for plugin in listed):
            self.warn(
                "dataLayer.injectDefaults: false ignored: with no metrics-data-source in "
                "dataLayer.sources this EPP still scrapes each endpoint's /metrics, which its scorers "
                "and saturation detector read"
            )
        syncer = section.get("crossReplicaSyncerPluginRef")
        if syncer is not None:
            if not isinstance(syncer, str):
                raise ConfigError(
                    f"dataLayer.crossReplicaSyncerPluginRef must be a plugin name, got {short_repr(syncer)}"
                )
            if syncer and syncer not in self.plugins:
                raise ConfigError(
                    f"dataLayer.crossReplicaSyncerPluginRef: {syncer!r} names no plugin in 'plugins'"
                )
        interval = section.get("crossReplicaSyncInterval")
        if interval is not None:
            flow_config.parse_go_duration(interval, "dataLayer.crossReplicaSyncInterval")
        if syncer or interval is not None:
            self.warn(
                "dataLayer.crossReplicaSyncerPluginRef/crossReplicaSyncInterval ignored: this EPP "
                "does not share data between replicas"
            )

    def _wire_endpoint_source(
        self, where: str, source: EndpointNotifier, extractors: Any, wired: set[str]
    ) -> None:
        if not isinstance(extractors, list):
            raise ConfigError(f"{where}.extractors must be a list")
        for ext_index, ext in enumerate(extractors):
            ref = ext.get("pluginRef") if isinstance(ext, Mapping) else None
            plugin = self.plugins.get(ref) if isinstance(ref, str) else None
            if not isinstance(plugin, EndpointExtractor):
                raise ConfigError(
                    f"{where}.extractors[{ext_index}]: {ref!r} is not an endpoint extractor plugin "
                    f"(e.g. precise-prefix-cache-producer), so {source.name!r} cannot feed it"
                )
            if plugin.name in wired:
                raise ConfigError(f"{where}.extractors[{ext_index}]: {ref!r} is already fed by a source")
            source.attach(plugin)
            wired.add(plugin.name)

    def _wire_unfed_extractors(self, wired: set[str]) -> None:
        unfed = [p for p in self._all(EndpointExtractor) if p.name not in wired]
        if not unfed:
            return
        source = self._default("endpoint-notification-source", EndpointNotifier)
        for extractor in unfed:
            self.warn(
                f"plugin {extractor.name!r} (type {extractor.type_name}) is not an extractor of any "
                f"endpoint-notification-source in dataLayer.sources; wired to {source.name!r} (it "
                "would otherwise never see a pod)"
            )
            source.attach(extractor)

    # ---- helpers -----------------------------------------------------------------------------
    def _all(self, kind: type[T]) -> list[T]:
        return [plugin for plugin in self.plugins.values() if isinstance(plugin, kind)]

    def _default(self, type_name: str, kind: type[T]) -> T:
        """The configured plugin of this kind if exactly one exists, else a default instance."""
        existing = self._all(kind)
        if len(existing) == 1 and existing[0].type_name == type_name:
            return existing[0]
        plugin = self.plugins.get(type_name)
        if isinstance(plugin, kind):
            return plugin
        name = type_name if type_name not in self.plugins else f"{type_name}-default"
        created = create(type_name, name, None)
        assert isinstance(created, kind)
        self.plugins[name] = created
        return created


def _absent_as(value: Any, empty: Any) -> Any:
    """``empty`` when the key is absent or null, else the value as written, for the caller's type
    check. ``value or []`` took every falsy value for absent: ``plugins: {}``, ``schedulingProfiles:
    ""`` or ``dataLayer: []`` loaded as if unset, where llm-d's decoder refuses the wrong type."""
    return empty if value is None else value


def _dependency_order(plugins: list[T]) -> list[T]:
    """Producers of a data key before the plugins that consume it; otherwise the config's order
    (llm-d orders its data producers as a DAG the same way)."""
    ordered: list[T] = []
    pending = list(plugins)
    while pending:
        waiting_keys = {key for plugin in pending for key in plugin.produces}
        ready = [p for p in pending if not (p.consumes() & (waiting_keys - p.produces))]
        if not ready:  # a cycle: keep the config's order for what is left
            ready = pending
        ordered += ready
        pending = [p for p in pending if p not in ready]
    return ordered
