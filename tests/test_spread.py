"""Load spreading and sticky sessions: the pure Spreader, and POST /v1/select on a real server over three equal
providers (3,000 weighted selects share within 5 points; a session key never moves while its provider is eligible).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from monitord.model import ProviderSpec, RankedProvider, SelectStrategy, Status
from monitord.spread import Spreader, pool_size, rendezvous_weight
from tests.plugins.api import CHAT, NOW, ApiFactory, World, assert_error, probe

Client = TestClient[Any, Any]


def entry(name: str, score: float = 0.9, status: Status = Status.UP, *, suspect: bool = False,
          headroom: float | None = None, saturated: bool = False) -> RankedProvider:
    components = {"availability": 1.0} if headroom is None else {"availability": 1.0, "headroom": headroom}
    return RankedProvider(provider=name, type="llamacpp", score=score, status=status, components=components,
                          models=(), suspect=suspect, saturated=saturated)


def shares(spreader: Spreader, entries: list[RankedProvider], strategy: SelectStrategy, n: int,
           **options: Any) -> Counter[str]:
    return Counter(entries[spreader.choose(entries, strategy, **options)].provider for _ in range(n))


# --- pure ---


def test_the_pool_is_the_best_tier() -> None:
    entries = [entry("a"), entry("b", 0.5), entry("c", suspect=True), entry("d", status=Status.DEGRADED)]
    assert pool_size(entries) == 2
    assert pool_size([entry("c", suspect=True), entry("d", status=Status.DEGRADED)]) == 1
    assert pool_size([]) == 0
    assert pool_size([entry("a"), entry("b"), entry("full", saturated=True)]) == 2  # no spreading onto a full one


def test_best_is_always_the_top() -> None:
    entries = [entry("a"), entry("b"), entry("c")]
    assert shares(Spreader(random.Random(1)), entries, SelectStrategy.BEST, 100) == {"a": 100}


def test_weighted_shares_follow_the_scores_within_the_margin() -> None:
    spreader = Spreader(random.Random(7))
    entries = [entry("a", 0.9), entry("b", 0.6), entry("c", 0.8), entry("slow", 0.5)]
    entries.sort(key=lambda e: -e.score)
    counts = shares(spreader, entries, SelectStrategy.WEIGHTED, 17_000, margin=0.25)
    assert set(counts) == {"a", "c"}  # 0.6 and 0.5 are more than 25% below 0.9
    assert counts["a"] / 17_000 == pytest.approx(9 / 17, abs=0.02)
    assert shares(spreader, entries, SelectStrategy.WEIGHTED, 500, margin=0.0) == {"a": 500}
    assert set(shares(spreader, entries, SelectStrategy.WEIGHTED, 2000, margin=1.0)) == {"a", "b", "c", "slow"}


def test_round_robin_takes_each_of_the_best_tier_in_turn_per_question() -> None:
    spreader = Spreader()
    entries = [entry("a"), entry("b", 0.7), entry("c", 0.2), entry("sus", suspect=True)]
    picks = [entries[spreader.choose(entries, SelectStrategy.ROUND_ROBIN, key="q1")].provider for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    assert entries[spreader.choose(entries, SelectStrategy.ROUND_ROBIN, key="q2")].provider == "a"


def test_least_loaded_takes_the_most_headroom_then_the_score() -> None:
    spreader = Spreader()
    busy = [entry("a", 0.9, headroom=0.0), entry("b", 0.7, headroom=1.0), entry("c", 0.8, headroom=1.0)]
    assert busy[spreader.choose(busy, SelectStrategy.LEAST_LOADED)].provider == "c"
    unknown = [entry("a", 0.9), entry("b", 0.8)]  # no capacity published: the score decides
    assert unknown[spreader.choose(unknown, SelectStrategy.LEAST_LOADED)].provider == "a"


def test_a_session_stays_while_its_provider_is_eligible_and_moves_only_when_it_is_not() -> None:
    spreader = Spreader()
    three = [entry("a"), entry("b"), entry("c")]
    homes = {f"user-{i}": three[spreader.choose(three, SelectStrategy.BEST, session_key=f"user-{i}")].provider
             for i in range(300)}
    assert set(Counter(homes.values())) == {"a", "b", "c"}  # equal scores spread the sessions
    # scores move and the order changes: nobody moves
    shuffled = [entry("c", 0.95), entry("a", 0.9), entry("b", 0.85)]
    assert all(shuffled[spreader.choose(shuffled, SelectStrategy.WEIGHTED, session_key=k)].provider == home
               for k, home in homes.items())
    # b turns suspect: only b's sessions move, and they stay where they went when b is back
    without_b = [entry("a"), entry("c"), entry("b", suspect=True)]
    moved = {k: without_b[spreader.choose(without_b, SelectStrategy.BEST, session_key=k)].provider for k in homes}
    assert all(moved[k] == home for k, home in homes.items() if home != "b")
    assert all(moved[k] in ("a", "c") for k, home in homes.items() if home == "b")
    assert all(three[spreader.choose(three, SelectStrategy.BEST, session_key=k)].provider == moved[k] for k in homes)


def test_rendezvous_weights_are_stable_and_follow_the_score() -> None:
    assert rendezvous_weight("k", "a", 1.0) == rendezvous_weight("k", "a", 1.0)
    assert rendezvous_weight("k", "a", 2.0) == pytest.approx(2 * rendezvous_weight("k", "a", 1.0))
    fresh = Spreader()  # no memory: the hash alone decides, the same in every process
    entries = [entry("a"), entry("b"), entry("c")]
    assert {fresh.choose(entries, SelectStrategy.BEST, session_key="s") for _ in range(3)} == {
        Spreader().choose(entries, SelectStrategy.BEST, session_key="s")}


# --- through the API ---


def equal_specs() -> dict[str, ProviderSpec]:
    return {name: ProviderSpec(name, "llamacpp", f"http://127.0.0.1:{port}", capabilities=CHAT)
            for name, port in (("one", 8081), ("two", 8082), ("three", 8083))}


async def equal_world(api_factory: ApiFactory) -> tuple[Client, World]:
    client, world = await api_factory(feed=False, specs=equal_specs())
    for index in range(5):
        for spec in world.specs.values():
            world.feed(probe(spec, at=NOW - timedelta(seconds=10 * (5 - index)), total_ms=20.0))
    return client, world


async def select(client: Client, **body: Any) -> Any:
    resp = await client.post("/v1/select", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_three_thousand_weighted_selects_share_three_equal_providers(api_factory: ApiFactory) -> None:
    client, _ = await equal_world(api_factory)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        body = await select(client, strategy="weighted", fallbacks=2)
        assert body["strategy"] == "weighted"
        assert {body["provider"]["provider"], *(f["provider"] for f in body["fallbacks"])} == {"one", "two", "three"}
        counts[body["provider"]["provider"]] += 1
    for name in ("one", "two", "three"):
        assert abs(counts[name] / 3000 - 1 / 3) <= 0.05, counts


async def test_round_robin_and_best_through_the_api(api_factory: ApiFactory) -> None:
    client, _ = await equal_world(api_factory)
    picks = [(await select(client, strategy="round_robin"))["provider"]["provider"] for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(picks[:3]) == ["one", "three", "two"]
    best = {(await select(client))["provider"]["provider"] for _ in range(20)}
    assert len(best) == 1


async def test_a_session_key_is_stable_while_its_provider_is_eligible(api_factory: ApiFactory) -> None:
    client, world = await equal_world(api_factory)
    keys = [f"conversation-{i}" for i in range(60)]
    homes = {k: (await select(client, strategy="weighted", session_key=k))["provider"]["provider"] for k in keys}
    assert len(set(homes.values())) == 3
    for _ in range(3):  # 100% stable, whatever the strategy asked for
        for k in keys:
            assert (await select(client, strategy="round_robin", session_key=k))["provider"]["provider"] == homes[k]
    world.feed(probe(world.specs["two"], Status.DOWN, at=NOW))  # one failed probe: two is suspect at once
    for k in keys:
        now_at = (await select(client, session_key=k))["provider"]["provider"]
        assert now_at == homes[k] if homes[k] != "two" else now_at in ("one", "three")


@pytest.mark.parametrize(("body", "field"), [
    ({"strategy": "fastest"}, "strategy"),
    ({"strategy": 3}, "strategy"),
    ({"session_key": ""}, "session_key"),
    ({"session_key": 17}, "session_key"),
    ({"session_key": "x" * 257}, "session_key"),
    ({"margin": 1.5}, "margin"),
    ({"margin": "wide"}, "margin"),
])
async def test_bad_strategy_options_are_400s_that_say_which(api_factory: ApiFactory, body: dict[str, Any],
                                                            field: str) -> None:
    client, _ = await equal_world(api_factory)
    error = await assert_error(await client.post("/v1/select", json=body), 400, "invalid_criteria")
    assert error["message"].startswith(field)
