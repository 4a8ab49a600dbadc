"""Generation samples in the store, on SQLite and PostgreSQL: the one writer takes them beside probe results,
history and aggregates read them back, and retention rolls them up (TTFT p50/p95, tokens/s) and prunes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitord.generation import GenerationState
from monitord.model import ErrorClass, GenerationSample, ProbeResult, SampleKind, Status
from monitord.store import RetentionPolicy, Store, queries
from monitord.store.retention import GENERATION, HOUR_S, MINUTE_S
from monitord.store.schema import generation_rollups, generation_samples, probes
from tests.test_retention import count_rows
from tests.test_store import dump_tables

T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)
POLICY = RetentionPolicy(raw_s=2 * 86400, minute_rollups_s=4 * 86400, hour_rollups_s=8 * 86400, batch_size=50,
                         settle_s=60, lookback_s=600)
# raw samples kept an hour: minute rollups are due as soon as a minute settles
EAGER = RetentionPolicy(raw_s=3600, minute_rollups_s=4 * 86400, hour_rollups_s=8 * 86400, batch_size=50,
                        settle_s=60, lookback_s=600)


def sample(at: datetime, *, model: str = "qwen", ok: bool = True, provider: str = "vllm",
           **fields: Any) -> GenerationSample:
    if ok and not fields.get("skipped"):
        fields.setdefault("ttft_ms", 120.0)
        fields.setdefault("tokens_per_s", 40.0)
        fields.setdefault("total_ms", 320.0)
        fields.setdefault("prompt_tokens", 11)
        fields.setdefault("completion_tokens", 8)
        fields.setdefault("finish_reason", "length")
        fields.setdefault("streamed", True)
        fields.setdefault("stream_complete", True)
    return GenerationSample(provider=provider, provider_type="vllm", model=model, started_at=at, ok=ok, **fields)


def workload(start: datetime, minutes: int, models: tuple[str, ...] = ("qwen", "llama")) -> list[GenerationSample]:
    """A canary every 30 s per model; every 9th fails, every 11th is skipped (busy)."""
    out = []
    for n in range(minutes * 2):
        at = start + timedelta(seconds=30 * n)
        for m, model in enumerate(models):
            k = n + 5 * m
            if k % 11 == 0:
                out.append(sample(at, model=model, ok=False, skipped=True, error_class=ErrorClass.BUSY))
            elif k % 9 == 0:
                out.append(sample(at, model=model, ok=False, error_class=ErrorClass.STREAM_STALLED,
                                  error="no chunk for 10s", prompt_tokens=11, completion_tokens=2))
            else:
                out.append(sample(at, model=model, ttft_ms=50.0 + (k * 37) % 400, tokens_per_s=10.0 + (k * 13) % 90))
    return out


async def test_one_batch_holds_probes_and_samples_and_both_land(store: Store, db_url: str) -> None:
    probe = ProbeResult(provider="vllm", provider_type="vllm", started_at=T0, status=Status.UP, total_ms=5.0)
    failed = sample(T0, ok=False, error_class=ErrorClass.GENERATION_TIMEOUT, error="x" * 5000)
    for one in (probe, sample(T0), failed, probe):
        store.enqueue(one)
    await store.flush()
    assert store.pending == 0 and store.written_total == 4
    tables = await dump_tables(db_url)
    assert len(tables["probe_rows"]) == 2
    assert len(tables["generation_samples"]) == 2 and len(tables["error_texts"]) == 1
    rows = await store.generation_history("vllm")  # newest first: the second sample, moved 1 µs on
    assert [(row.ok, row.skipped, row.error_class) for row in rows] == [
        (False, False, ErrorClass.GENERATION_TIMEOUT), (True, False, None)]
    assert rows[1].ttft_ms == 120.0 and rows[1].finish_reason == "length" and rows[1].streamed is True
    assert rows[0].error is not None and len(rows[0].error) == 2000  # capped like a probe error


async def test_history_and_recent_read_samples_back_as_written(store: Store) -> None:
    written = [sample(T0 + timedelta(minutes=i), model="a" if i % 2 else "b", ttft_ms=float(i)) for i in range(6)]
    written.append(sample(T0, provider="other"))
    written.append(sample(T0 + timedelta(minutes=9), ok=False, skipped=True, error_class=ErrorClass.NOT_LOADED,
                          kind=SampleKind.EMBEDDING, error="not resident"))
    for one in written:
        store.enqueue(one)
    await store.flush()
    newest_first = await store.generation_history("vllm")
    assert [s.started_at for s in newest_first] == sorted((s.started_at for s in written if s.provider == "vllm"),
                                                        reverse=True)
    skipped = newest_first[0]
    assert (skipped.skipped, skipped.ok, skipped.error_class, skipped.kind) == (
        True, False, ErrorClass.NOT_LOADED, SampleKind.EMBEDDING)
    only_a = await store.generation_history("vllm", model="a", since=T0 + timedelta(minutes=2), limit=2)
    assert [s.ttft_ms for s in only_a] == [5.0, 3.0]
    oldest_first = await store.generation_recent(T0 + timedelta(minutes=4))
    assert [s.started_at for s in oldest_first] == [T0 + timedelta(minutes=m) for m in (4, 5, 9)]

    # What a restart rebuilds from the store equals what the live fold saw.
    now = T0 + timedelta(minutes=10)
    live, rebuilt = GenerationState(), GenerationState()
    for one in written:
        live.fold(one, one.started_at)
    live.expire(now)
    rebuilt.rebuild(await store.generation_recent(T0 - timedelta(hours=1)), now, ["vllm", "other"])
    assert rebuilt.all() == live.all()


async def test_aggregates_from_raw_rows_then_from_rollups_agree(store: Store, db_url: str) -> None:
    written = workload(T0, minutes=3 * 60)
    for one in written:
        store.enqueue(one)
    await store.flush()
    until = T0 + timedelta(hours=3)
    raw = await store.generation_aggregate("vllm", step_s=HOUR_S, since=T0, until=until)
    assert [(b.model, b.start) for b in raw] == [(m, T0 + timedelta(hours=h)) for m in ("llama", "qwen")
                                                 for h in range(3)]
    for bucket in raw:
        mine = [s for s in written if s.model == bucket.model and bucket.start <= s.started_at
                < bucket.start + timedelta(hours=1)]
        ok = [s for s in mine if s.ok]
        assert (bucket.count, bucket.ok_count, bucket.skipped_count) == (
            len(mine), len(ok), sum(s.skipped for s in mine))
        assert bucket.failed_count == sum(not s.ok and not s.skipped for s in mine)
        assert bucket.ttft_p50_ms == queries.percentile_cont([s.ttft_ms or 0.0 for s in ok], 0.5)
        assert bucket.ttft_p95_ms == queries.percentile_cont([s.ttft_ms or 0.0 for s in ok], 0.95)
        assert bucket.tokens_per_s_p50 == queries.percentile_cont([s.tokens_per_s or 0.0 for s in ok], 0.5)
        assert bucket.tokens_spent == sum((s.prompt_tokens or 0) + (s.completion_tokens or 0) for s in mine)

    report = await store.retention(EAGER).run_once(until + timedelta(minutes=5))
    assert report.series["generation"].rolled_up == {MINUTE_S: 2 * 180, HOUR_S: 2 * 3}
    rolled = await store.generation_aggregate("vllm", step_s=HOUR_S, since=T0, until=until)
    assert [(b.model, b.start, b.count, b.ok_count, b.skipped_count, b.tokens_spent) for b in rolled] == [
        (b.model, b.start, b.count, b.ok_count, b.skipped_count, b.tokens_spent) for b in raw]
    for exact, estimate in zip(raw, rolled, strict=True):  # hour rollups: histogram estimates within one bucket
        for name in ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s_p50"):
            assert getattr(estimate, name) == pytest.approx(getattr(exact, name), rel=0.08), name
    one_model = await store.generation_aggregate("vllm", step_s=HOUR_S, since=T0, until=until, model="qwen")
    assert {b.model for b in one_model} == {"qwen"} and len(one_model) == 3
    again = await store.retention(EAGER).run_once(until + timedelta(minutes=5))
    assert again.series["generation"].rolled_up == {MINUTE_S: 0, HOUR_S: 0}


async def test_a_late_sample_is_rolled_up_again(store: Store, db_url: str) -> None:
    for one in workload(T0, minutes=10, models=("qwen",)):
        store.enqueue(one)
    await store.flush()
    await store.retention(EAGER).run_once(T0 + timedelta(minutes=15))
    store.enqueue(sample(T0 + timedelta(minutes=6, seconds=10), ttft_ms=9000.0))  # within the lookback
    await store.flush()
    report = await store.retention(EAGER).run_once(T0 + timedelta(minutes=16))
    assert report.series["generation"].rolled_up[MINUTE_S] == 1
    buckets = await store.generation_aggregate("vllm", step_s=60, since=T0 + timedelta(minutes=6),
                                               until=T0 + timedelta(minutes=7))
    assert buckets[0].count == 3 and buckets[0].ttft_p95_ms is not None and buckets[0].ttft_p95_ms > 1000


async def test_samples_age_out_and_the_rollups_outlive_them(store: Store, db_url: str) -> None:
    for one in workload(T0, minutes=60):
        store.enqueue(one)
    store.enqueue(ProbeResult(provider="vllm", provider_type="vllm", started_at=T0, status=Status.UP, total_ms=5.0))
    await store.flush()
    before = await store.generation_aggregate("vllm", step_s=HOUR_S, since=T0, until=T0 + timedelta(hours=1))
    report = await store.retention(POLICY).run_once(T0 + timedelta(days=3))
    deleted = report.series["generation"].deleted
    assert deleted[generation_samples.name] == 2 * 120
    assert deleted[GENERATION.mark(MINUTE_S)] == 0  # minute rollups are kept 4 days here
    assert await count_rows(db_url, generation_samples) == 0
    assert await count_rows(db_url, generation_rollups) == 2 * 60 + 2
    assert report.deleted["probes"] == 1 and await count_rows(db_url, probes) == 0  # each series its own way
    after = await store.generation_aggregate("vllm", step_s=HOUR_S, since=T0, until=T0 + timedelta(hours=1))
    assert [(b.model, b.count, b.tokens_spent) for b in after] == [(b.model, b.count, b.tokens_spent)
                                                                  for b in before]
    assert await store.generation_history("vllm") == []
    report = await store.retention(POLICY).run_once(T0 + timedelta(days=9))
    assert await count_rows(db_url, generation_rollups) == 0
    assert report.series["generation"].deleted[GENERATION.mark(HOUR_S)] == 2
