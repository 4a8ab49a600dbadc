"""The incremental default ranking (ranking.Standing) against a from-scratch rank() after random changes.

The Standing re-scores only providers whose inputs changed, keeps the fleet-relative figures (least latency,
canary TTFT, reported TTFT, most tokens/s) as values come and go, and refreshes recency at most every stale_s:
its scores must equal rank()'s within the documented recency tolerance, its order must agree wherever scores are
further apart than that, and its exclusions and spliced bytes must be exactly rank()'s when nothing is stale.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitord.api.selection import ranking_body
from monitord.model import (
    Capacity,
    Criteria,
    ErrorClass,
    GenerationStats,
    ModelInfo,
    ProviderSpec,
    ProviderState,
    QualityPreference,
    ResidentModel,
    ServedModel,
    Status,
    TaskType,
)
from monitord.ranking import RECENCY_STEP, SCALE_TOLERANCE, Ranker, RankingPolicy, Standing, rank

START = datetime(2025, 1, 1, 12, tzinfo=UTC)
POLICY = RankingPolicy()
STALE_S = 5.0
# weight x status_factor x warm <= 2 x 1 x 1 here; w_recency = 0.10, w_speed at most 0.40 (fast)
TOLERANCE = 2.0 * (0.10 * RECENCY_STEP + 0.40 * SCALE_TOLERANCE)
SETTLED_S = POLICY.recovery_tau_s * math.log(1 / RECENCY_STEP)  # recency within RECENCY_STEP of 1
MODELS = (ModelInfo("llama3.1:8b", parameter_size="8B", context_length=8192),
          ModelInfo("qwen2.5:32b", parameter_size="32B", context_length=32768),
          ModelInfo("nomic-embed-text", context_length=2048),
          ModelInfo("llava:13b", parameter_size="13B", context_length=4096))
STATUSES = (Status.UP, Status.UP, Status.UP, Status.UP, Status.DEGRADED, Status.LOADING, Status.DOWN, Status.STALLED,
            Status.UNKNOWN, Status.MISCONFIGURED)


def random_state(rng: random.Random, name: str, now: datetime) -> ProviderState:
    status = rng.choice(STATUSES)
    models = tuple(ServedModel(m.id, m, START, now) for m in rng.sample(MODELS, rng.randint(0, 3)))
    samples = rng.randint(0, 40)
    latency = rng.choice((None, rng.uniform(1, 400), rng.uniform(1, 400)))
    failed = rng.choice((None, now - timedelta(seconds=rng.uniform(0, 4000)),
                         now - timedelta(seconds=rng.uniform(0, 60))))
    load = rng.choice((None, None, Capacity(slots_total=4, slots_busy=rng.randint(0, 4)),
                       Capacity(queue_depth=rng.randint(0, 3), kv_cache_usage=rng.random(),
                                resident_models=tuple(ResidentModel(m.id) for m in rng.sample(MODELS, 1)))))
    reports = rng.choice((0, 0, rng.randint(1, 20)))
    return ProviderState(
        name=name, type="vllm", status=status, since=START, last_probe_at=now - timedelta(seconds=rng.uniform(0, 30)),
        samples=samples, samples_ok=rng.randint(0, samples), latency_ewma_ms=latency, latency_p50_ms=latency,
        request_latency_ms=rng.choice((None, latency)), request_samples=rng.randint(0, 5),
        last_failure_at=failed, models=models, capacity=load, suspect=rng.random() < 0.1,
        last_error_class=ErrorClass.REFUSED if status is Status.DOWN else None,
        reports=reports, reports_ok=rng.randint(0, reports),
        report_ttft_p50_ms=rng.uniform(20, 900) if reports and rng.random() < 0.7 else None,
        last_report_at=now if reports else None,
    )


def random_stats(rng: random.Random, name: str, state: ProviderState, now: datetime) -> dict[str, GenerationStats]:
    stats = {}
    for served in state.models:
        if rng.random() < 0.6:
            ok = rng.randint(0, 10)
            stats[served.id] = GenerationStats(
                provider=name, model=served.id, samples=ok + rng.randint(0, 2), samples_ok=ok,
                ttft_p50_ms=rng.choice((None, rng.uniform(30, 2000))),
                tokens_per_s_p50=rng.choice((None, rng.uniform(5, 90))),
                total_p50_ms=rng.choice((None, rng.uniform(50, 3000))), last_sample_at=now, last_ok_at=now)
    return stats


def random_spec(rng: random.Random, name: str) -> ProviderSpec:
    capabilities = {"chat", "completion", "streaming"} | ({"vision"} if rng.random() < 0.3 else set())
    return ProviderSpec(name, "vllm", f"http://{name}:8000", capabilities=frozenset(capabilities),
                        priority=rng.choice((0, 0, 1, -2)), weight=rng.choice((1.0, 1.0, 0.5, 2.0)),
                        enabled=rng.random() < 0.95, models=("llama3.1:8b",) if rng.random() < 0.3 else ())


def assert_agrees(standing: Standing, states: dict[str, ProviderState], specs: dict[str, ProviderSpec],
                  generation: dict[str, dict[str, GenerationStats]], now: datetime, criteria: Criteria) -> None:
    expected = rank(states, specs, criteria, now, generation=generation, policy=POLICY)
    got = standing.ranking()
    assert got.excluded == expected.excluded
    scores = {e.provider: e.score for e in expected.entries}
    assert [e.provider for e in got.entries] != [] or not scores
    assert {e.provider for e in got.entries} == scores.keys()
    for entry in got.entries:
        assert entry.score == pytest.approx(scores[entry.provider], abs=TOLERANCE), entry.provider
    # order: the tier decides first; within it only scores closer than twice the tolerance may swap
    place = {e.provider: i for i, e in enumerate(expected.entries)}
    for before, after in zip(got.entries, got.entries[1:], strict=False):
        if place[before.provider] > place[after.provider]:
            assert abs(scores[before.provider] - scores[after.provider]) <= 2 * TOLERANCE, (before, after)
    head = standing.ranking(limit=3).entries
    assert [e.provider for e in head] == [e.provider for e in got.entries[:3]]


CRITERIA = (
    Criteria(),
    Criteria(task_type=TaskType.CHAT, max_tokens=8192),
    Criteria(required_capabilities=frozenset({"vision"}), quality_preference=QualityPreference.FAST),
    Criteria(model="llama*", max_queue=1, quality_preference=QualityPreference.QUALITY),
    Criteria(providers=frozenset({"p00", "p01", "p03", "p05", "nowhere"}), task_type=TaskType.EMBEDDING),
)


@pytest.mark.parametrize("criteria", CRITERIA, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.to_dict().items()
                                                                     if v not in (None, [], "balanced")) or "default")
@pytest.mark.parametrize("seed", range(8))
def test_after_random_changes_the_standing_equals_a_fresh_ranking(seed: int, criteria: Criteria) -> None:
    rng = random.Random(seed)
    now = START
    names = [f"p{i:02d}" for i in range(rng.randint(1, 40))]
    specs = {name: random_spec(rng, name) for name in names}
    states = {name: random_state(rng, name, now) for name in names if rng.random() < 0.9}
    generation = {name: random_stats(rng, name, states[name], now) for name in states if rng.random() < 0.5}
    standing = Standing(Ranker(POLICY), criteria, stale_s=STALE_S)
    standing.update(states, specs, generation, now)
    assert standing.body() == ranking_body(rank(states, specs, criteria, now, generation=generation, policy=POLICY))
    for _ in range(60):
        now += timedelta(seconds=rng.choice((0.0, 0.5, 1.0, 3.0, 30.0, 600.0)))
        changed: set[str] = set()
        for _ in range(rng.randint(0, 6)):
            name = rng.choice(names)
            roll = rng.random()
            if roll < 0.55:
                states[name] = random_state(rng, name, now)
            elif roll < 0.65 and name in states:
                states[name] = replace(states[name], latency_ewma_ms=rng.uniform(0.5, 500),
                                       request_latency_ms=None)  # the fleet's fastest may move, either way
            elif roll < 0.8 and name in states:
                generation[name] = random_stats(rng, name, states[name], now)
            elif roll < 0.85:
                generation.pop(name, None)
            elif roll < 0.9:
                specs = {**specs, name: random_spec(rng, name)}  # a reload: a new specs object
            elif roll < 0.95:
                specs = {k: v for k, v in specs.items() if k != name}  # removed from the config
                states.pop(name, None)
            else:
                specs = {**specs, name: random_spec(rng, name)}
            changed.add(name)
        standing.update(states, specs, generation, now, changed if rng.random() < 0.9 else None)
        assert_agrees(standing, states, specs, generation, now, criteria)


def test_nothing_changed_means_nothing_rescored_and_the_same_bytes() -> None:
    rng = random.Random(1)
    specs = {f"p{i}": random_spec(rng, f"p{i}") for i in range(50)}
    states = {name: replace(random_state(rng, name, START), last_failure_at=None) for name in specs}
    standing = Standing(Ranker(POLICY), stale_s=STALE_S)
    standing.update(states, specs, {}, START)
    body, version, rescored = standing.body(), standing.version, standing.rescored
    standing.update(states, specs, {}, START, ())
    assert (standing.body() is body, standing.version, standing.rescored) == (True, version, rescored)
    name = next(n for n, s in states.items() if s.latency_ewma_ms is not None and s.request_latency_ms is None
                and s.latency_ewma_ms > min(x.latency_ewma_ms or 1e9 for x in states.values()))
    states[name] = replace(states[name], samples=states[name].samples + 1)
    standing.update(states, specs, {}, START, {name})
    assert standing.rescored == rescored + (1 if name in {e.provider for e in standing.ranking().entries} else 0)


def test_a_recent_failure_is_rescored_as_recency_moves_and_settles_after_a_few_tau() -> None:
    tau = POLICY.recovery_tau_s
    specs = {"a": ProviderSpec("a", "vllm", "http://a:8000"), "b": ProviderSpec("b", "vllm", "http://b:8000")}
    states = {name: ProviderState(name=name, type="vllm", status=Status.UP, samples=10, samples_ok=10,
                                  latency_ewma_ms=20.0, last_probe_at=START) for name in specs}
    states["a"] = replace(states["a"], last_failure_at=START)
    standing = Standing(Ranker(POLICY), stale_s=STALE_S)
    standing.update(states, specs, {}, START)
    recency = [standing.ranking().entries[-1].components["recency"]]
    for seconds in (1.0, STALE_S, 2 * STALE_S, tau, SETTLED_S + 60):
        now = START + timedelta(seconds=seconds)
        standing.update(states, specs, {}, now, ())
        entry = next(e for e in standing.ranking().entries if e.provider == "a")
        recency.append(entry.components["recency"])
        exact = next(e for e in rank(states, specs, Criteria(), now).entries if e.provider == "a")
        assert entry.components["recency"] == pytest.approx(exact.components["recency"], abs=RECENCY_STEP)
    assert recency == sorted(recency) and recency[1] == recency[0]  # 1 s later: not due yet
    settled = standing.rescored
    standing.update(states, specs, {}, START + timedelta(seconds=SETTLED_S + 3600), ())
    assert standing.rescored == settled  # within RECENCY_STEP of 1: nobody is re-scored for time


def test_evidence_ages_are_rebuilt_once_older_than_stale_s() -> None:
    specs = {"a": ProviderSpec("a", "vllm", "http://a:8000")}
    states = {"a": ProviderState(name="a", type="vllm", status=Status.UP, samples=3, samples_ok=3,
                                 latency_ewma_ms=20.0, last_probe_at=START)}
    standing = Standing(Ranker(POLICY), stale_s=STALE_S)
    standing.update(states, specs, {}, START)
    assert standing.ranking().entries[0].evidence["availability"].age_s == 0.0
    standing.update(states, specs, {}, START + timedelta(seconds=STALE_S / 2), ())
    assert standing.ranking().entries[0].evidence["availability"].age_s == 0.0  # within stale_s: kept
    later = START + timedelta(seconds=STALE_S * 2)
    standing.update(states, specs, {}, later, ())
    assert standing.ranking().entries[0].evidence["availability"].age_s == STALE_S * 2
    assert b'"age_s":10.0' in standing.body()
    assert standing.body() == ranking_body(rank(states, specs, Criteria(), later))


@pytest.mark.parametrize("seed", range(6))
def test_max_tokens_moved_to_the_next_known_context_ranks_the_same(seed: int) -> None:
    """RankingCache shares one ranking per interval between the fleet's context lengths (Ranker.canonical)."""
    rng = random.Random(seed)
    specs = {f"p{i:02d}": random_spec(rng, f"p{i:02d}") for i in range(30)}
    states = {name: random_state(rng, name, START) for name in specs}
    generation = {name: random_stats(rng, name, states[name], START) for name in states if rng.random() < 0.5}
    ranker = Ranker(POLICY)
    ranker.rank(states, specs, Criteria(), START, generation=generation)  # prepares every provider
    bounds = ranker.context_bounds()
    assert bounds == sorted({m.info.context_length for s in states.values() for m in s.models
                             if m.info is not None and m.info.context_length is not None})
    for wanted in (1, 2047, 2048, 2049, 4096, 5000, 8192, 32767, 32768, 40000, rng.randint(1, 50000)):
        for task in (None, "chat"):
            asked = Criteria(max_tokens=wanted, task_type=task)  # type: ignore[arg-type]
            moved = Ranker.canonical(asked, bounds)
            assert moved.max_tokens is not None and (moved.max_tokens >= wanted or moved.max_tokens > bounds[-1])
            plain = rank(states, specs, asked, START, generation=generation, policy=POLICY)
            shared = rank(states, specs, moved, START, generation=generation, policy=POLICY)
            assert (shared.entries, shared.excluded) == (plain.entries, plain.excluded), wanted


@pytest.mark.parametrize("seed", range(4))
def test_the_cache_keeps_a_standing_for_criteria_asked_again_and_it_follows_every_change(seed: int) -> None:
    """RankingCache ranks a criteria asked once with rank(); asked in a later generation it keeps a Standing,
    brought up lazily with the providers reported since (or all of them after an unreported change)."""
    from monitord.generation import GenerationState
    from monitord.health import LiveState
    from monitord.model import ProbeResult
    from monitord.ranking_service import RankingService

    rng = random.Random(seed)
    specs = {f"p{i:02d}": random_spec(rng, f"p{i:02d}") for i in range(30)}
    live, generation = LiveState(), GenerationState()
    clock = [START]
    service = RankingService(live, lambda: specs, clock=lambda: clock[0], generation=generation)
    cache = service.cache
    asked = Criteria(task_type=TaskType.CHAT, max_tokens=3000)

    def probe(name: str) -> None:
        spec = specs[name]
        status = rng.choice((Status.UP, Status.UP, Status.UP, Status.DOWN, Status.DEGRADED))
        models = tuple(rng.sample(MODELS, rng.randint(0, 2)))
        result = ProbeResult(provider=name, provider_type=spec.type, started_at=clock[0], status=status,
                             total_ms=rng.uniform(5, 300), models=models if status is not Status.DOWN else (),
                             error_class=ErrorClass.REFUSED if status is Status.DOWN else None)
        live.fold(result, clock[0])

    for name in specs:
        probe(name)
    for step in range(40):
        clock[0] += timedelta(seconds=rng.choice((1.0, 2.0, 6.0)))
        for name in rng.sample(list(specs), rng.randint(0, 5)):
            probe(name)
            if rng.random() < 0.9:  # now and then a change nobody reports: the cache must notice it anyway
                service.observed(name, rng.random() < 0.3)
        got = cache.ranking(asked, limit=5)
        assert got.criteria == asked
        # as of the generation's `now` (a generation lives up to max_age_s when nothing changes)
        expected = rank(live.all(), specs, asked, got.generated_at, limit=5, generation=generation.all())
        assert got.excluded == expected.excluded
        for mine, theirs in zip(got.entries, expected.entries, strict=True):
            assert mine.score == pytest.approx(theirs.score, abs=TOLERANCE), (step, mine.provider)
    assert len(cache._standings) == 1  # asked in many generations: kept


def test_the_fleet_is_rescored_only_when_its_best_figure_moves_past_the_tolerance() -> None:
    specs = {f"p{i}": ProviderSpec(f"p{i}", "vllm", f"http://p{i}:8000") for i in range(20)}
    states = {name: ProviderState(name=name, type="vllm", status=Status.UP, samples=10, samples_ok=10,
                                  latency_ewma_ms=100.0 + 10 * i, last_probe_at=START)
              for i, name in enumerate(specs)}
    standing = Standing(Ranker(POLICY), stale_s=STALE_S)
    standing.update(states, specs, {}, START)
    before = standing.rescored
    states["p0"] = replace(states["p0"], latency_ewma_ms=100.2)  # (100.2 + 50) / (100 + 50): 0.13% off
    standing.update(states, specs, {}, START, {"p0"})
    assert standing.rescored == before + 1
    states["p0"] = replace(states["p0"], latency_ewma_ms=120.0)  # the best (now p1's 110 ms) moved 6.7%
    standing.update(states, specs, {}, START, {"p0"})
    assert standing.rescored == before + 1 + len(specs)
    exact = {e.provider: e.score for e in rank(states, specs, Criteria(), START).entries}
    assert all(e.score == pytest.approx(exact[e.provider], abs=1e-12) for e in standing.ranking().entries)
