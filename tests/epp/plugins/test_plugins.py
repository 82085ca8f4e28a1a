"""Filters, scorers, pickers, the saturation detector and the profile handlers, one by one."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

import epp.plugins  # noqa: F401  (registers every plugin type: create() looks them up by name)
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import Decider, ProfileResult, SchedulerProfile
from epp.scheduling.registry import create
from tests.support.epp import endpoint, scheduling_request

ROLE = "llm-d.ai/role"


def _names(endpoints: object) -> list[str]:
    return [e.name for e in endpoints]


@pytest.mark.parametrize(
    "type_name",
    [
        "queue-scorer",
        "running-requests-size-scorer",
        "kv-cache-utilization-scorer",
        "lora-affinity-scorer",
        "prefill-filter",
        "decode-filter",
        "encode-filter",
        "single-profile-handler",
        "always-disagg-pd-decider",
        "endpoint-notification-source",
        "openai-parser",
        "vllmhttp-parser",
    ],
)
def test_types_whose_llm_d_factory_ignores_parameters_load_with_any(
    type_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """llm-d-router's factories for these types take ``_ *json.Decoder``: strict decoding never
    runs, so a config carrying parameters for them loads there. It loads here too, with a warning."""
    with caplog.at_level("WARNING"):
        create(type_name, "x", {"hashBlockSize": 64, "threshold": 0.1})
    assert "takes no parameters; ignoring 'hashBlockSize', 'threshold'" in caplog.text


def test_metrics_data_source_takes_llm_d_port_and_interval() -> None:
    """llm-d-router's metrics-data-source decodes port and interval (and TLS file paths, which
    this EPP refuses by name instead of as unknown keys)."""
    from epp.runtime import scrape_interval

    source = create("metrics-data-source", "m", {"port": 9090, "interval": "1s"})
    assert (source.port, source.interval) == (9090, 1.0)
    default = create("metrics-data-source", "m", None)
    assert (default.port, default.interval) == (None, None)
    # rounded to the nearest multiple of the base tick, at least one (interval_dispatcher.go)
    assert scrape_interval(0.05, None) == 0.05
    assert scrape_interval(0.05, 1.0) == pytest.approx(1.0)
    assert scrape_interval(0.05, 0.12) == pytest.approx(0.1)
    assert scrape_interval(0.05, 0.01) == pytest.approx(0.05)
    for params, message in (
        ({"port": 0}, "'port' must be >= 1"),
        ({"port": 70000}, "'port' must be <= 65535"),
        ({"caCertPath": "/etc/ca.pem"}, "'caCertPath' is llm-d's but not supported"),
    ):
        with pytest.raises(ConfigError, match=message):
            create("metrics-data-source", "m", params)


# ---- filters ---------------------------------------------------------------------------------
ROLES = [
    "prefill",
    "decode",
    "prefill-decode",
    "both",
    "encode",
    "encode-prefill",
    "encode-prefill-decode",
    None,
]


def _role_pool() -> list:
    return [endpoint(role or "none", labels={ROLE: role} if role else {}) for role in ROLES]


def test_prefill_filter_keeps_prefill_capable_roles_only() -> None:
    kept = create("prefill-filter", "f", None).filter(scheduling_request(), _role_pool())
    assert _names(kept) == ["prefill", "prefill-decode", "both", "encode-prefill", "encode-prefill-decode"]


def test_decode_filter_keeps_decode_roles_and_unlabelled_pods() -> None:
    kept = create("decode-filter", "f", None).filter(scheduling_request(), _role_pool())
    assert _names(kept) == ["decode", "prefill-decode", "both", "encode-prefill-decode", "none"]


def test_encode_filter() -> None:
    kept = create("encode-filter", "f", None).filter(scheduling_request(), _role_pool())
    assert _names(kept) == ["encode", "encode-prefill", "encode-prefill-decode"]


def test_label_selector_filter_match_labels_and_expressions() -> None:
    pool = [
        endpoint("a", labels={"zone": "x", "tier": "gold"}),
        endpoint("b", labels={"zone": "y", "tier": "gold"}),
        endpoint("c", labels={"zone": "x"}),
        endpoint("d", labels={"zone": "x", "tier": "gold", "drain": "1"}),
    ]
    f = create(
        "label-selector-filter",
        "f",
        {
            "matchLabels": {"zone": "x"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
                {"key": "drain", "operator": "DoesNotExist"},
            ],
        },
    )
    assert _names(f.filter(scheduling_request(), pool)) == ["a"]
    not_in = create(
        "label-selector-filter",
        "g",
        {
            "matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["y"]},
                {"key": "tier", "operator": "Exists"},
            ],
        },
    )
    assert _names(not_in.filter(scheduling_request(), pool)) == ["a", "d"]


def test_label_selector_rejects_bad_operator() -> None:
    with pytest.raises(ConfigError, match="operator must be one of"):
        create("label-selector-filter", "f", {"matchExpressions": [{"key": "a", "operator": "Like"}]})
    with pytest.raises(ConfigError, match="takes no 'values'"):
        create(
            "label-selector-filter",
            "f",
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        )


def test_by_label_filter() -> None:
    pool = [endpoint("a", labels={"k": "v"}), endpoint("b", labels={"k": "w"}), endpoint("c")]
    strict = create("by-label", "f", {"label": "k", "validValues": ["v"]})
    loose = create("by-label", "g", {"label": "k", "validValues": ["v"], "allowsNoLabel": True})
    assert _names(strict.filter(scheduling_request(), pool)) == ["a"]
    assert _names(loose.filter(scheduling_request(), pool)) == ["a", "c"]


# ---- scorers ---------------------------------------------------------------------------------
def _score(type_name: str, endpoints: list, params: dict | None = None, **request: object) -> list[float]:
    scorer = create(type_name, type_name, params)
    scores = scorer.score(scheduling_request(**request), endpoints)
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    return scores


def test_queue_scorer_min_max() -> None:
    pool = [endpoint("a", waiting=0), endpoint("b", waiting=5), endpoint("c", waiting=10)]
    assert _score("queue-scorer", pool) == [1.0, 0.5, 0.0]
    assert _score("queue-scorer", [endpoint("a", waiting=3), endpoint("b", waiting=3)]) == [1.0, 1.0]


def test_queue_scorer_counts_dispatches_the_scrape_has_not_seen() -> None:
    # "a" looked empty at the last scrape but this EPP has since sent it 4 requests that have not
    # answered: its queue is the larger of the two, so a burst does not herd onto it.
    pool = [
        endpoint("a", waiting=0, pending=4),
        endpoint("b", waiting=2),
        endpoint("c", waiting=1, pending=0),
    ]
    assert _score("queue-scorer", pool) == pytest.approx([0.0, 2 / 3, 1.0])
    # the scrape wins where it is larger (traffic from elsewhere, or requests it already queued)
    assert _score("queue-scorer", [endpoint("a", waiting=6, pending=1), endpoint("b", pending=3)]) == [
        0.0,
        1.0,
    ]


def test_token_load_scorer_reads_unanswered_prompt_tokens() -> None:
    pool = [
        endpoint("idle"),
        endpoint("quarter", pending_tokens=1000),
        endpoint("full", pending_tokens=4000),
        endpoint("over", pending_tokens=9000, in_flight=1),
    ]
    # an empty prompt adds no tokens of its own (see the next test for the request's own share)
    assert _score("token-load-scorer", pool, {"queueThresholdTokens": 4000}, prompt="") == [
        1.0,
        0.75,
        0.0,
        0.0,
    ]
    # llm-d's default threshold (4 Mi tokens) barely separates small prompts
    default = _score("token-load-scorer", pool[:2], prompt="")
    assert default[0] == 1.0 and 0.999 < default[1] < 1.0
    # in-flight requests that answered already (decode) weigh nothing
    assert _score(
        "token-load-scorer",
        [endpoint("a", in_flight=9), endpoint("b")],
        {"queueThresholdTokens": 10},
        prompt="",
    ) == [
        1.0,
        1.0,
    ]


def test_token_load_scorer_adds_the_requests_own_uncached_tokens() -> None:
    """llm-d-router's token-load scorer adds the request's own uncached prompt tokens on each
    endpoint (UncachedRequestTokens from the inflight-load-producer): an endpoint caching more of
    the prompt scores higher at equal load. Without a prefix match: the whole prompt (4 bytes/token)."""
    from epp.plugins.prefix import PrefixMatch

    pool = [endpoint("cold", pending_tokens=100), endpoint("warm", pending_tokens=100)]
    scorer = create("token-load-scorer", "t", {"queueThresholdTokens": 1000})
    request = scheduling_request("x" * 1600)  # 400 tokens
    assert scorer.score(request, pool) == pytest.approx([0.5, 0.5])
    request.state["approx-prefix-cache-producer"] = PrefixMatch(
        hashes=[0] * 6, block_tokens=64, prompt_tokens=400, matched_blocks={pool[1].hostport: 5}
    )
    # warm has 5 x 64 = 320 of the 400 tokens cached: 100 + 80 tokens of load
    assert scorer.score(request, pool) == pytest.approx([0.5, 0.82])


def test_in_flight_load_producer_name_is_taken_as_llm_d_does() -> None:
    """active-request-scorer and token-load-scorer name their inflight-load-producer
    (inFlightLoadProducerName); the name must refer to one."""
    producer = create("inflight-load-producer", "counts", None)
    for type_name in ("active-request-scorer", "token-load-scorer"):
        scorer = create(type_name, "s", {"inFlightLoadProducerName": "counts"})
        scorer.resolve({"counts": producer})
        with pytest.raises(ConfigError, match="'ghost' is not a configured inflight-load-producer"):
            create(type_name, "s", {"inFlightLoadProducerName": "ghost"}).resolve({"counts": producer})


def test_in_flight_load_producer_takes_llm_d_parameters() -> None:
    """llm-d-router's inflight-load-producer Config; holding output tokens to the end is refused."""
    create(
        "inflight-load-producer",
        "p",
        {
            "addEstimatedOutputTokens": False,
            "outputRatio": 2.0,
            "maxEstimatedOutputTokens": 512,
            "prefixMatchInfoProducerName": "approx-prefix-cache-producer",
            "syncCrossReplicaState": False,
        },
    )
    for params, message in (
        ({"addEstimatedOutputTokens": True}, "not supported"),
        ({"outputRatio": -1}, "'outputRatio' must be >= 0.0"),
        ({"maxEstimatedOutputTokens": -1}, "'maxEstimatedOutputTokens' must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            create("inflight-load-producer", "p", params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"queueThresholdTokens": 0}, "'queueThresholdTokens' must be >= 1"),
        ({"threshold": 5}, "unknown parameter(s) 'threshold'"),
    ],
)
def test_token_load_scorer_parameters_are_strict(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create("token-load-scorer", "t", params)
    assert message in str(caught.value)


def test_running_requests_scorer() -> None:
    assert _score("running-requests-size-scorer", [endpoint("a", running=2), endpoint("b", running=6)]) == [
        1.0,
        0.0,
    ]


def test_kv_cache_utilization_scorer() -> None:
    assert _score("kv-cache-utilization-scorer", [endpoint("a", kv=0.25), endpoint("b", kv=1.0)]) == [
        0.75,
        0.0,
    ]


def test_load_aware_scorer_reads_the_queue() -> None:
    """llm-d-router's load-aware-scorer reads the waiting queue (WaitingQueueSize); ours the same
    queue as queue-scorer (scraped, or this EPP's unanswered dispatches when larger)."""
    pool = [
        endpoint("idle"),
        endpoint("half", waiting=5),
        endpoint("full", pending=10),
        endpoint("over", waiting=50),
    ]
    assert _score("load-aware-scorer", pool, {"threshold": 10}) == [0.5, 0.25, 0.0, 0.0]
    # requests that are running (decoding, answered already) are no queue
    assert _score("load-aware-scorer", [endpoint("busy", in_flight=50, running=50)], {"threshold": 10}) == [
        0.5
    ]


def test_active_request_scorer() -> None:
    pool = [
        endpoint("idle"),
        endpoint("one", in_flight=1),
        endpoint("some", in_flight=2),
        endpoint("busiest", in_flight=4),
    ]
    assert _score("active-request-scorer", pool) == [1.0, 0.75, 0.5, 0.0]
    params = {"idleThreshold": 1, "maxBusyScore": 0.5, "requestTimeout": "2m"}
    assert _score("active-request-scorer", pool, params) == [1.0, 1.0, 0.25, 0.0]
    assert _score("active-request-scorer", [endpoint("a"), endpoint("b")]) == [1.0, 1.0]


def test_lora_affinity_scorer() -> None:
    pool = [
        endpoint("active", running_loras=frozenset({"sql"}), max_loras=2),
        endpoint("room", running_loras=frozenset({"other"}), max_loras=2),
        endpoint("waiting", running_loras=frozenset({"x"}), waiting_loras=frozenset({"sql"}), max_loras=2),
        endpoint("full", running_loras=frozenset({"x", "y"}), max_loras=2),
    ]
    assert _score("lora-affinity-scorer", pool, lora="sql") == [1.0, 0.8, 0.6, 0.0]
    assert _score("lora-affinity-scorer", pool) == [1.0] * 4  # base model: neutral


# ---- pickers ---------------------------------------------------------------------------------
def test_max_score_picker_picks_best_and_orders_fallbacks() -> None:
    pool = [endpoint(n) for n in "abcd"]
    picker = create("max-score-picker", "p", {"maxNumOfEndpoints": 3})
    result = picker.pick(scheduling_request(), pool, [0.1, 0.9, 0.5, 0.7])
    assert _names(result.targets) == ["b", "d", "c"]
    assert result.scores == (0.9, 0.7, 0.5)


def test_max_score_picker_breaks_ties_at_random() -> None:
    pool = [endpoint(n) for n in "abc"]
    picker = create("max-score-picker", "p", None)
    picker.rng = random.Random(7)
    seen = Counter(
        picker.pick(scheduling_request(), pool, [1.0, 1.0, 0.2]).targets[0].name for _ in range(300)
    )
    assert set(seen) == {"a", "b"} and min(seen.values()) > 100


def test_random_picker_is_uniform_without_repeats() -> None:
    pool = [endpoint(n) for n in "abcd"]
    picker = create("random-picker", "p", {"maxNumOfEndpoints": 2})
    picker.rng = random.Random(1)
    firsts = Counter()
    for _ in range(800):
        targets = picker.pick(scheduling_request(), pool, [0.0, 0.0, 9.0, 0.0]).targets
        assert len(set(targets)) == 2
        firsts[targets[0].name] += 1
    assert set(firsts) == set("abcd") and min(firsts.values()) > 140


def test_weighted_random_picker_follows_weights_and_skips_zero() -> None:
    pool = [endpoint(n) for n in "abc"]
    picker = create("weighted-random-picker", "p", None)
    picker.rng = random.Random(3)
    seen = Counter(
        picker.pick(scheduling_request(), pool, [3.0, 1.0, 0.0]).targets[0].name for _ in range(2000)
    )
    assert seen["c"] == 0
    assert 0.68 < seen["a"] / 2000 < 0.82  # expected 0.75
    fallback = picker.pick(scheduling_request(), pool, [0.0, 0.0, 0.0])
    assert len(fallback.targets) == 1  # all zero: uniform instead of nothing


def test_weighted_random_picker_fills_fallbacks_with_zero_scores() -> None:
    """llm-d-router's picker keeps zero-score endpoints (key 0) after the positive ones, so asking
    for three targets with one positive score still gives three: the positive one first."""
    pool = [endpoint(n) for n in "abcd"]
    picker = create("weighted-random-picker", "p", {"maxNumOfEndpoints": 3})
    picker.rng = random.Random(5)
    tails = Counter()
    for _ in range(200):
        result = picker.pick(scheduling_request(), pool, [0.0, 2.0, 0.0, 0.0])
        assert len(result.targets) == 3 and len(set(result.targets)) == 3
        assert result.targets[0].name == "b" and result.scores[0] == 2.0
        tails.update(e.name for e in result.targets[1:])
    assert set(tails) == {"a", "c", "d"}  # the zero-score fallbacks are drawn at random


# ---- saturation ------------------------------------------------------------------------------
def test_utilization_detector() -> None:
    detector = create(
        "utilization-detector",
        "d",
        {"queueDepthThreshold": 4, "kvCacheUtilThreshold": 0.5, "metricsStalenessThreshold": "1s"},
    )
    now = time.monotonic()
    calm = [endpoint("a", waiting=1, kv=0.1), endpoint("b", waiting=0, kv=0.2)]
    busy = [endpoint("a", waiting=8, kv=0.1), endpoint("b", waiting=0, kv=0.6)]
    assert detector.pool_saturation(calm, now) == pytest.approx((0.25 + 0.4) / 2)
    assert not detector.is_saturated(calm, now)
    assert detector.is_saturated(busy, now)  # (2.0 + 1.2) / 2
    # a burst dispatched since the last scrape counts before the scrape shows it
    burst = [endpoint("a", waiting=0, pending=8), endpoint("b", waiting=0, pending=1)]
    assert detector.pool_saturation(burst, now) == pytest.approx((2.0 + 0.25) / 2)
    assert detector.is_saturated(burst, now)
    stale = [endpoint("a", fresh=False), endpoint("b", fresh=False)]
    assert detector.is_saturated(stale, now)
    failing = endpoint("a")
    failing.scrape_failures = 1
    assert detector.is_saturated([failing], now)
    assert detector.is_saturated([], now)


def test_utilization_detector_headroom_is_the_filters_only() -> None:
    """llm-d-router sheds sheddable requests at Saturation >= 1.0 (requestcontrol/admission.go);
    headroom widens only the filter's per-endpoint limits."""
    detector = create("utilization-detector", "d", {"queueDepthThreshold": 4, "headroom": 0.5})
    now = time.monotonic()
    full = [endpoint("a", waiting=4), endpoint("b", waiting=4)]
    assert detector.pool_saturation(full, now) == pytest.approx(1.0)
    assert detector.is_saturated(full, now)


def test_utilization_detector_is_a_fail_open_filter() -> None:
    """llm-d-router's utilization-detector is also a Filter (utilization/detector.go): stale
    endpoints and those at queueDepthThreshold or kvCacheUtilThreshold x (1 + headroom) are
    dropped, unless that drops every endpoint."""
    detector = create(
        "utilization-detector", "d", {"queueDepthThreshold": 4, "kvCacheUtilThreshold": 0.5, "headroom": 0.5}
    )
    pool = [
        endpoint("ok", waiting=5, kv=0.7),
        endpoint("queue", waiting=6),
        endpoint("kv", kv=0.75),
        endpoint("stale", fresh=False),
        endpoint("burst", pending=6),
    ]
    assert _names(detector.filter(scheduling_request(), pool)) == ["ok"]
    assert _names(detector.filter(scheduling_request(), pool[1:])) == ["queue", "kv", "stale", "burst"]


def test_concurrency_detector_filter_limit_is_truncated_as_llm_d() -> None:
    """llm-d-router's Filter limit is int64(maxConcurrency x (1 + headroom)): 3 x 1.5 admits below 4."""
    detector = create("concurrency-detector", "d", {"maxConcurrency": 3, "headroom": 0.5})
    pool = [endpoint("three", in_flight=3), endpoint("four", in_flight=4)]
    assert _names(detector.filter(scheduling_request(), pool)) == ["three"]


def test_concurrency_detector_modes() -> None:
    now = time.monotonic()
    # two pods: one with 3 requests in flight (all decoding), one with 1 still in prefill
    pool = [endpoint("a", in_flight=3), endpoint("b", in_flight=1, pending=1, pending_tokens=800)]
    requests = create("concurrency-detector", "d", {"maxConcurrency": 2})
    assert requests.pool_saturation(pool, now) == pytest.approx(1.0) and requests.is_saturated(pool, now)
    assert _names(requests.filter(scheduling_request(), pool)) == ["b"]
    tokens = create(
        "concurrency-detector",
        "d",
        {"concurrencyMode": "tokens", "maxTokenConcurrency": 1000, "headroom": 0.5},
    )
    # decode-phase requests cost no prefill tokens: 800 / (2 x 1000)
    assert tokens.pool_saturation(pool, now) == pytest.approx(0.4) and not tokens.is_saturated(pool, now)
    assert _names(tokens.filter(scheduling_request(), pool)) == ["a", "b"]  # limit 1500 tokens a pod
    hybrid = create(
        "concurrency-detector",
        "d",
        {"concurrencyMode": "hybrid", "maxConcurrency": 4, "maxTokenConcurrency": 500},
    )
    # llm-d's hybrid: the mean of each pod's larger ratio: a max(3/4, 0), b max(1/4, 800/500)
    assert hybrid.pool_saturation(pool, now) == pytest.approx((0.75 + 1.6) / 2)
    assert _names(hybrid.filter(scheduling_request(), pool)) == ["a"]  # b is at its token limit
    assert hybrid.is_saturated([], now)


# ---- profile handlers and deciders -----------------------------------------------------------
def _profile(name: str, role_filter: str) -> SchedulerProfile:
    return SchedulerProfile(
        name,
        [create(role_filter, role_filter, None)],
        [(create("queue-scorer", "q", None), 1.0)],
        create("max-score-picker", "p", None),
    )


class _Fixed(Decider):
    def __init__(self, answer: bool) -> None:
        super().__init__("fixed")
        self.answer = answer
        self.asked_with: list[str] = []

    def disaggregate(self, request: object, decode_target: object) -> bool:
        self.asked_with.append(decode_target.name)
        return self.answer


def _run(handler: object, profiles: dict[str, SchedulerProfile], pool: list) -> object:
    from epp.scheduling.scheduler import Scheduler

    return Scheduler(profiles, handler).schedule(scheduling_request(), pool)


POOL = [
    endpoint("p0", labels={ROLE: "prefill"}, waiting=3),
    endpoint("p1", labels={ROLE: "prefill"}, waiting=0),
    endpoint("d0", labels={ROLE: "decode"}, waiting=0),
    endpoint("d1", labels={ROLE: "decode"}, waiting=9),
]


def test_disagg_handler_runs_prefill_when_decider_approves() -> None:
    handler = create("disagg-profile-handler", "h", {"deciders": {"prefill": "fixed"}})
    decider = _Fixed(True)
    handler.resolve({"fixed": decider})
    profiles = {
        "decode": _profile("decode", "decode-filter"),
        "prefill": _profile("prefill", "prefill-filter"),
    }
    result = _run(handler, profiles, POOL)
    assert result.primary_profile == "decode"
    assert result.primary.targets[0].name == "d0"
    assert decider.asked_with == ["d0"]  # the decision is made for the chosen decode pod
    prefill_pod = next(e for e in POOL if e.name == "p1")
    assert result.headers == {"x-prefiller-host-port": prefill_pod.hostport}


def test_disagg_handler_decode_only_when_decider_declines_or_no_prefill_pod() -> None:
    handler = create("disagg-profile-handler", "h", {"deciders": {"prefill": "fixed"}})
    handler.resolve({"fixed": _Fixed(False)})
    profiles = {
        "decode": _profile("decode", "decode-filter"),
        "prefill": _profile("prefill", "prefill-filter"),
    }
    result = _run(handler, profiles, POOL)
    assert set(result.results) == {"decode"} and result.headers == {}

    handler.resolve({"fixed": _Fixed(True)})
    decode_only_pool = [e for e in POOL if e.labels[ROLE] == "decode"]
    result = _run(handler, profiles, decode_only_pool)
    assert result.results["prefill"] is None and result.headers == {}
    assert result.primary.targets[0].name == "d0"


def test_disagg_handler_takes_llm_d_legacy_flat_parameters() -> None:
    """llm-d-router still decodes disagg-profile-handler's deprecated flat form
    (legacyDisaggProfileHandlerParameters); prefillDeciderPluginName wins over deciderPluginName.
    Mixing the flat and nested forms fits neither schema there, so it is an error here too."""
    handler = create(
        "disagg-profile-handler",
        "h",
        {
            "decodeProfile": "dec",
            "prefillProfile": "pre",
            "deciderPluginName": "old",
            "prefillDeciderPluginName": "fixed",
            "stageOrder": "Decode_First",
        },
    )
    handler.resolve({"fixed": _Fixed(True), "old": _Fixed(False)})
    profiles = {"dec": _profile("dec", "decode-filter"), "pre": _profile("pre", "prefill-filter")}
    handler.validate_profiles(list(profiles))
    result = _run(handler, profiles, POOL)
    assert result.primary_profile == "dec" and result.primary.targets[0].name == "d0"
    assert result.results["pre"].targets[0].name == "p1"
    older = create("disagg-profile-handler", "h", {"deciderPluginName": "old"})
    assert older.decider_name == "old" and older.decode_profile == "decode"
    for params, message in (
        ({"decodeProfile": "d", "deciders": {"prefill": "x"}}, "cannot be mixed"),
        ({"encodeProfile": "e"}, "E/P/D"),
        ({"stageOrder": "sideways"}, "'stageOrder' must be"),
    ):
        with pytest.raises(ConfigError, match=message):
            create("disagg-profile-handler", "h", params)


def test_disagg_handler_prefill_first_stage_order() -> None:
    """stageOrder prefill-first (llm-d-router pickPrefillFirst): prefill runs first for every
    request, with no decider; decode runs after it, also when no prefill pod was found."""
    with pytest.raises(ConfigError, match="no prefill decider"):
        create("disagg-profile-handler", "h", {"stageOrder": "prefill-first", "deciders": {"prefill": "x"}})
    handler = create("disagg-profile-handler", "h", {"stageOrder": "prefill"})
    handler.resolve({})
    assert handler.stage_order == "prefill-first"
    with pytest.raises(ConfigError, match="'prefill'"):
        handler.validate_profiles(["decode"])
    profiles = {
        "decode": _profile("decode", "decode-filter"),
        "prefill": _profile("prefill", "prefill-filter"),
    }
    result = _run(handler, profiles, POOL)
    assert list(result.results) == ["prefill", "decode"]  # prefill ran first
    assert result.primary_profile == "decode" and result.primary.targets[0].name == "d0"
    prefill_pod = next(e for e in POOL if e.name == "p1")
    assert result.headers == {"x-prefiller-host-port": prefill_pod.hostport}
    decode_only_pool = [e for e in POOL if e.labels[ROLE] == "decode"]
    result = _run(handler, profiles, decode_only_pool)
    assert result.results["prefill"] is None and result.headers == {}
    assert result.primary.targets[0].name == "d0"


def test_pd_profile_handler_reads_the_named_prefix_producer() -> None:
    """pd-profile-handler's prefixMatchInfoProducerName (llm-d-router PdProfileHandlerParameters)
    names the producer whose match info its threshold decision reads."""
    from epp.plugins.prefix import ApproxPrefixCacheProducer

    one = create("approx-prefix-cache-producer", "one", None)
    two = create("approx-prefix-cache-producer", "two", None)
    assert isinstance(one, ApproxPrefixCacheProducer) and isinstance(two, ApproxPrefixCacheProducer)
    handler = create("pd-profile-handler", "h", {"threshold": 10, "prefixMatchInfoProducerName": "two"})
    handler.resolve({"one": one, "two": two})
    assert handler.decider.producer is two
    with pytest.raises(ConfigError, match="'ghost' is not a configured producer"):
        create("pd-profile-handler", "h", {"threshold": 10, "prefixMatchInfoProducerName": "ghost"}).resolve(
            {"one": one}
        )


@pytest.mark.parametrize("type_name", ["prefill-header-handler", "disagg-headers-handler"])
def test_header_handlers_take_llm_d_parameters(type_name: str) -> None:
    """llm-d-router's headers handler decodes prefillProfile and encodeProfile."""
    handler = create(type_name, "h", {"prefillProfile": "pre", "encodeProfile": "enc"})
    assert handler.prefill_profile == "pre"
    with pytest.raises(ConfigError, match="'encodeProfile' must be a non-empty string"):
        create(type_name, "h", {"encodeProfile": 3})


def test_pd_profile_handler_defaults_to_the_decider_named_prefix_based_pd_decider() -> None:
    """llm-d-router's pd-profile-handler defaults deciderPluginName to the plugin named
    prefix-based-pd-decider (pd_profile_handler.go defaultDeciderPluginName). Without such a
    plugin and without threshold, the older generation's rule stays: always disaggregate."""
    profiles = {
        "decode": _profile("decode", "decode-filter"),
        "prefill": _profile("prefill", "prefill-filter"),
    }
    declines = _Fixed(False)
    handler = create("pd-profile-handler", "h", None)
    handler.resolve({"prefix-based-pd-decider": declines})
    result = _run(handler, profiles, POOL)
    assert declines.asked_with == ["d0"] and set(result.results) == {"decode"}
    older = create("pd-profile-handler", "h", None)
    older.resolve({})
    assert _run(older, profiles, POOL).results["prefill"] is not None
    explicit = create("pd-profile-handler", "h", {"threshold": 0})  # threshold given: no default
    explicit.resolve({"prefix-based-pd-decider": _Fixed(False)})
    assert _run(explicit, profiles, POOL).results["prefill"] is not None


def test_single_profile_handler() -> None:
    handler = create("single-profile-handler", "h", None)
    with pytest.raises(ConfigError, match="exactly one profile"):
        handler.validate_profiles(["a", "b"])
    result = _run(handler, {"only": _profile("only", "decode-filter")}, POOL)
    assert result.primary_profile == "only"


def test_always_disagg_decider() -> None:
    decider = create("always-disagg-pd-decider", "d", None)
    assert decider.disaggregate(scheduling_request(), POOL[2])


def test_profile_returns_none_when_filters_remove_everything() -> None:
    profile = _profile("prefill", "prefill-filter")
    assert profile.run(scheduling_request(), [e for e in POOL if e.labels[ROLE] == "decode"]) is None
    assert isinstance(profile.run(scheduling_request(), POOL), ProfileResult)
