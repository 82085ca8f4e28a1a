"""Leader election on a coordination.k8s.io/v1 Lease, against the fake API server on 127.0.0.1.

Single attempts run on a hand-advanced clock (no sleeping for lease expiry); the loop, the release
on shutdown and the wiring into the runtime's readiness run for real with short timings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

from epp.cli import parse_args
from epp.config.loader import DEFAULT_CONFIG
from epp.datastore import Datastore, EndpointSpec
from epp.director import SchedulingDirector
from epp.leader import LeaderElector, LeaseTiming, lease_name
from epp.runtime import RuntimeOptions, build_runtime
from epp.scheduling.errors import ConfigError
from epp.server.health import NOT_SERVING, SERVING, HealthStatus
from tests.support.epp import wait_until
from tests.support.fake_kube import FakeKubeApi, crd_path, pods_path

NS = "llm"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
LEASE = lease_name(NS, "qwen-pool")
TIMING = LeaseTiming(lease_duration=2, renew_deadline=1.0, retry_period=0.1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = FakeKubeApi()
    server.add_collection(LEASES)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def electors(api: FakeKubeApi, clock: Clock) -> AsyncIterator[dict[str, LeaderElector]]:
    """Candidates named a and b, sharing the hand-advanced clock; closed after the test."""
    made = {name: _elector(api, name, clock=clock) for name in ("a", "b")}
    yield made
    for elector in made.values():
        await elector.close()


def _client(api: FakeKubeApi) -> AsyncClient:
    config = KubeConfig.from_one(cluster=Cluster(server=api.url), user=User(token=api.token))
    return AsyncClient(config=config, namespace=NS)


def _elector(api: FakeKubeApi, identity: str, clock: Clock | None = None) -> LeaderElector:
    client = _client(api)
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return LeaderElector(client, name=LEASE, namespace=NS, identity=identity, timing=TIMING, **extra)


def spec(api: FakeKubeApi) -> dict[str, Any]:
    lease: dict[str, Any] = api.collections[LEASES][LEASE]
    return dict(lease["spec"])


async def put_lease(api: FakeKubeApi, holder: str, transitions: int = 3) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await api.put(
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 2,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": transitions,
            },
        },
    )


# ---- single attempts -----------------------------------------------------------------------------


async def test_the_first_candidate_creates_the_lease_and_leads(
    api: FakeKubeApi, electors: dict[str, LeaderElector]
) -> None:
    assert await electors["a"].try_acquire_or_renew()
    assert electors["a"].is_leader
    created = spec(api)
    assert created["holderIdentity"] == "a"
    assert (created["leaseDurationSeconds"], created["leaseTransitions"]) == (2, 0)
    assert created["acquireTime"] == created["renewTime"]
    # The Lease lives in the pool's namespace under llm-d's name.
    assert LEASE == "epp-llm-qwen-pool.llm-d.ai"


async def test_the_leader_renews_and_the_standby_waits(
    api: FakeKubeApi, electors: dict[str, LeaderElector], clock: Clock
) -> None:
    a, b = electors["a"], electors["b"]
    assert await a.try_acquire_or_renew()
    for _ in range(5):  # well past the 2 s lease, but renewed every 0.5 s
        clock.now += 0.5
        first_renewal = spec(api)["renewTime"]
        assert await a.try_acquire_or_renew()
        assert spec(api)["renewTime"] != first_renewal
        assert not await b.try_acquire_or_renew()
        assert a.is_leader and not b.is_leader
    assert spec(api)["holderIdentity"] == "a" and spec(api)["leaseTransitions"] == 0


async def test_a_standby_takes_over_once_the_lease_expires(
    api: FakeKubeApi, electors: dict[str, LeaderElector], clock: Clock
) -> None:
    await put_lease(api, holder="crashed-pod")
    b = electors["b"]
    assert not await b.try_acquire_or_renew()
    # Expiry is counted from when b first saw the record, not from the record's timestamps.
    clock.now += 1.9
    assert not await b.try_acquire_or_renew()
    clock.now += 0.1
    assert await b.try_acquire_or_renew()
    taken = spec(api)
    assert taken["holderIdentity"] == "b"
    assert taken["leaseTransitions"] == 4
    assert taken["acquireTime"] == taken["renewTime"]


async def test_a_renewed_record_restarts_the_expiry_count(
    api: FakeKubeApi, electors: dict[str, LeaderElector], clock: Clock
) -> None:
    await put_lease(api, holder="other")
    b = electors["b"]
    assert not await b.try_acquire_or_renew()
    clock.now += 1.5
    await put_lease(api, holder="other")  # the holder renewed (new renewTime)
    clock.now += 1.5
    assert not await b.try_acquire_or_renew()


async def test_leadership_is_lost_when_another_holder_took_the_lease(
    api: FakeKubeApi, electors: dict[str, LeaderElector]
) -> None:
    a = electors["a"]
    assert await a.try_acquire_or_renew()
    await put_lease(api, holder="usurper")
    assert not await a.try_acquire_or_renew()
    assert not a.is_leader
    assert spec(api)["holderIdentity"] == "usurper"


async def test_leadership_ends_at_the_renew_deadline_when_the_api_is_unreachable(
    api: FakeKubeApi, electors: dict[str, LeaderElector], clock: Clock
) -> None:
    a = electors["a"]
    assert await a.try_acquire_or_renew()
    api.unavailable = True
    clock.now += 0.9
    assert not await a.try_acquire_or_renew()
    assert a.is_leader  # still within the 1 s renew deadline
    clock.now += 0.1
    assert not a.is_leader  # stepped down before the 2 s lease could pass to anyone else
    api.unavailable = False
    assert await a.try_acquire_or_renew()  # nobody took it meanwhile: the lease is still its own
    assert a.is_leader


@pytest.mark.parametrize("lease_before", ["released", "absent"])
async def test_of_two_candidates_racing_for_a_free_lease_one_wins(
    api: FakeKubeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch, lease_before: str
) -> None:
    if lease_before == "released":
        await put_lease(api, holder="", transitions=0)
    b = _elector(api, "b", clock=clock)
    client = _client(api)
    a = LeaderElector(client, name=LEASE, namespace=NS, identity="a", timing=TIMING, clock=clock)
    read = client.get

    async def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        # b writes between a's read and a's write, so a writes from a stale read.
        try:
            return await read(*args, **kwargs)
        finally:
            assert await b.try_acquire_or_renew()

    monkeypatch.setattr(client, "get", read_then_lose_the_race)
    try:
        assert not await a.try_acquire_or_renew()  # 409: Conflict (replace) or AlreadyExists (create)
        assert not a.is_leader and b.is_leader
        won = spec(api)
        assert won["holderIdentity"] == "b"
        assert won["leaseTransitions"] == (1 if lease_before == "released" else 0)
        writes = [r for r in api.requests if r.startswith(("PUT ", "POST "))]
        assert len(writes) == 2, f"b's write and a's refused one, got {writes}"
    finally:
        await a.close()
        await b.close()


# ---- the loop, release and readiness -----------------------------------------------------------


async def test_stopping_the_leader_releases_and_the_standby_takes_over(api: FakeKubeApi) -> None:
    a, b = _elector(api, "a"), _elector(api, "b")
    try:
        await a.start()
        await wait_until(lambda: a.is_leader)
        await b.start()
        renewed = spec(api)["renewTime"]
        await wait_until(lambda: spec(api)["renewTime"] != renewed)  # a keeps renewing
        assert not b.is_leader
        await a.stop()
        assert not a.is_leader
        released = spec(api)
        assert "holderIdentity" not in released and released["leaseDurationSeconds"] == 1
        await wait_until(lambda: b.is_leader)
        assert spec(api)["holderIdentity"] == "b"
        assert spec(api)["leaseTransitions"] == 1
    finally:
        await a.close()
        await b.close()


async def test_release_touches_only_a_lease_this_replica_still_holds(
    api: FakeKubeApi, electors: dict[str, LeaderElector]
) -> None:
    a, b = electors["a"], electors["b"]
    assert await a.try_acquire_or_renew()
    await put_lease(api, holder="a")  # a renewal of a's that landed unseen (cancelled mid-request)
    await a.stop()
    assert "holderIdentity" not in spec(api)  # the 409 was settled by reading the Lease again

    assert await b.try_acquire_or_renew()
    await put_lease(api, holder="usurper")
    await b.stop()
    assert spec(api)["holderIdentity"] == "usurper"


async def test_readiness_is_serving_only_while_leader(api: FakeKubeApi) -> None:
    a = _elector(api, "a")
    datastore = Datastore()
    director = SchedulingDirector(datastore, _config(), leadership=lambda: a.is_leader)
    health = HealthStatus(director.ready)
    try:
        datastore.replace_endpoints([EndpointSpec("p", "10.0.0.1", 8000, 8000, {})])
        assert health.status("readiness") == NOT_SERVING  # synced, but not the leader
        assert health.status("liveness") == SERVING
        await a.start()
        await wait_until(lambda: health.status("readiness") == SERVING)
        await a.stop()
        assert health.status("readiness") == NOT_SERVING
        assert health.status("liveness") == SERVING
    finally:
        await a.close()


def _config() -> Any:
    from epp.config.loader import load_config

    return load_config(DEFAULT_CONFIG)


# ---- options, runtime and CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"lease_duration": 0}, "at least 1 s"),
        ({"lease_duration": 2, "renew_deadline": 2.0, "retry_period": 0.5}, "lease duration > renew"),
        ({"lease_duration": 15, "renew_deadline": 1.0, "retry_period": 1.0}, "renew deadline > retry"),
        ({"retry_period": 0.0}, "> 0"),
    ],
)
def test_inconsistent_timings_are_refused(timing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LeaseTiming(**timing)


def test_an_overlong_lease_name_is_refused() -> None:
    client = AsyncClient(KubeConfig.from_one(cluster=Cluster(server="http://127.0.0.1:1"), user=User()))
    with pytest.raises(ConfigError, match="longer than 253 characters"):
        LeaderElector(client, name=lease_name(NS, "p" * 250), namespace=NS, identity="a")
    with pytest.raises(ConfigError, match="holder identity"):
        LeaderElector(client, name=LEASE, namespace=NS, identity="")


def test_leader_election_needs_a_pool_and_a_pod_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("endpoints: []\n")
    with pytest.raises(ConfigError, match="needs --pool-name"):
        build_runtime(RuntimeOptions(DEFAULT_CONFIG, endpoints_file=endpoints, leader_election=True))
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(ConfigError, match="POD_NAME"):
        build_runtime(RuntimeOptions(DEFAULT_CONFIG, pool_name="qwen-pool", leader_election=True))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], False), (["--ha-enable-leader-election"], True), (["--ha-enable-leader-election=false"], False)],
)
def test_cli_flag(flags: list[str], expected: bool) -> None:
    runtime_options, _, _ = parse_args(["--pool-name", "qwen-pool", *flags])
    assert runtime_options.leader_election is expected


@pytest.fixture
def kubeconfig(api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
                "users": [{"name": "epp", "user": {"token": api.token}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "epp", "namespace": NS}}
                ],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield path


async def test_runtime_with_leader_election_is_ready_only_while_it_holds_the_lease(
    api: FakeKubeApi, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools = crd_path("inference.networking.k8s.io", "v1", NS, "inferencepools")
    await api.put(
        pools,
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "qwen-pool", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
        },
    )
    api.add_collection(pods_path(NS))
    monkeypatch.setenv("POD_NAME", "epp-7d9f-abcde")
    runtime = build_runtime(
        RuntimeOptions(DEFAULT_CONFIG, pool_name="qwen-pool", pool_namespace=NS, leader_election=True)
    )
    try:
        await runtime.start()
        await wait_until(runtime.director.ready)
        assert spec(api)["holderIdentity"] == "epp-7d9f-abcde"
        await runtime.step_down()  # what SIGTERM does before draining
        assert not runtime.director.ready()
        assert "holderIdentity" not in spec(api)
    finally:
        await runtime.stop()
