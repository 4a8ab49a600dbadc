"""Reads of the generation canary series: stored samples, recent ones for a rebuild, and per-model aggregates.

Plain functions over an AsyncEngine that return frozen values; nothing here writes (the writer does).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.model import ErrorClass, SampleKind
from monitord.store.queries import percentile_cont, plan_sources
from monitord.store.retention import GENERATION, GenerationRollup, read_marks
from monitord.store.schema import generation_rollups, generation_samples

P50, P95 = 0.5, 0.95


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One stored canary sample, as generation_samples holds it (fits monitord.generation.SampleRecord)."""

    started_at: datetime  # timezone-aware UTC
    provider: str
    model: str
    kind: SampleKind
    ok: bool
    skipped: bool
    error_class: ErrorClass | None
    error: str | None
    ttft_ms: float | None
    total_ms: float | None
    tokens_per_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    streamed: bool
    stream_complete: bool | None


@dataclass(frozen=True, slots=True)
class GenerationBucket:
    """Canary samples of one model within [start, start + step_s); timings of ok samples only.

    From raw rows the percentiles are exact; from rollups they are estimates within ~7 % (store.histogram).
    """

    model: str
    start: datetime
    step_s: int
    count: int  # every sample, skipped ones too
    ok_count: int
    skipped_count: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tokens_per_s_p50: float | None
    tokens_spent: int

    @property
    def failed_count(self) -> int:
        return self.count - self.ok_count - self.skipped_count


_g = generation_samples


def _error_class(value: str | None) -> ErrorClass | None:
    if value is None:
        return None
    try:
        return ErrorClass(value)
    except ValueError:  # a class a newer monitord wrote: keep that it failed
        return ErrorClass.INTERNAL


def _sample(row: Row[Any]) -> StoredSample:
    return StoredSample(
        started_at=row.ts, provider=row.provider, model=row.model, kind=SampleKind(row.kind), ok=bool(row.ok),
        skipped=bool(row.skipped), error_class=_error_class(row.error_class), error=row.error,
        ttft_ms=row.ttft_ms, total_ms=row.total_ms, tokens_per_s=row.tokens_per_s,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        finish_reason=row.finish_reason, streamed=bool(row.streamed), stream_complete=row.stream_complete,
    )


def _columns() -> Select[Any]:
    return select(*(column for column in _g.columns if column.name != "id"))


async def history(engine: AsyncEngine, provider: str, *, since: datetime | None = None,
                  until: datetime | None = None, model: str | None = None, limit: int = 1000) -> list[StoredSample]:
    """Samples of one provider (one model, if given) with since <= ts < until, newest first, at most `limit`."""
    stmt = _columns().where(_g.c.provider == provider)
    if model is not None:
        stmt = stmt.where(_g.c.model == model)
    if since is not None:
        stmt = stmt.where(_g.c.ts >= since)
    if until is not None:
        stmt = stmt.where(_g.c.ts < until)
    stmt = stmt.order_by(_g.c.ts.desc(), _g.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [_sample(row) for row in (await conn.execute(stmt)).all()]


async def recent(engine: AsyncEngine, since: datetime) -> list[StoredSample]:
    """Samples of every provider with ts >= since, oldest first: enough to rebuild the live statistics."""
    stmt = _columns().where(_g.c.ts >= since).order_by(_g.c.ts, _g.c.id)
    async with engine.connect() as conn:
        return [_sample(row) for row in (await conn.execute(stmt)).all()]


async def aggregate(engine: AsyncEngine, provider: str, *, step_s: int, since: datetime, until: datetime,
                    model: str | None = None) -> list[GenerationBucket]:
    """step_s-wide buckets per model over since <= ts < until, by model then oldest first; empty ones left out.

    Each part of the range is read from raw rows or rollups as for probes (queries.plan_sources).
    """
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    merged: dict[tuple[str, int], GenerationRollup] = {}
    exact: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    async with engine.connect() as conn:
        marks = await read_marks(conn)
        for source_step_s, start, end in plan_sources(step_s, since, until, marks, GENERATION.mark_prefix):
            if source_step_s is None:
                await _raw(conn, provider, model, step_s, start, end, merged, exact)
            else:
                await _rolled(conn, provider, model, source_step_s, step_s, start, end, merged)
    buckets = []
    for (name, index), rollup in sorted(merged.items()):
        values = exact.get((name, index))
        if values is not None:  # raw rows: exact percentiles, the same on both databases
            ttft, tps = values
            p50, p95, tps50 = percentile_cont(ttft, P50), percentile_cont(ttft, P95), percentile_cont(tps, P50)
        else:
            p50, p95, tps50 = rollup.ttft_ms(P50), rollup.ttft_ms(P95), rollup.tokens_per_s(P50)
        buckets.append(GenerationBucket(
            model=name, start=datetime.fromtimestamp(index * step_s, UTC), step_s=step_s, count=rollup.sample_count,
            ok_count=rollup.ok_count, skipped_count=rollup.skipped_count, ttft_p50_ms=p50, ttft_p95_ms=p95,
            tokens_per_s_p50=tps50, tokens_spent=rollup.tokens_spent))
    return buckets


async def _raw(conn: AsyncConnection, provider: str, model: str | None, step_s: int, since: datetime,
               until: datetime, merged: dict[tuple[str, int], GenerationRollup],
               exact: dict[tuple[str, int], tuple[list[float], list[float]]]) -> None:
    stmt = select(_g.c.ts, _g.c.model, *(_g.c[name] for name in GENERATION.raw_columns)).where(
        _g.c.provider == provider, _g.c.ts >= since, _g.c.ts < until)
    if model is not None:
        stmt = stmt.where(_g.c.model == model)
    values: dict[tuple[str, int], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in (await conn.execute(stmt)).all():
        key = (row.model, int(row.ts.timestamp() // step_s))
        rollup = merged.get(key)
        if rollup is None:
            rollup = merged[key] = GenerationRollup()
        rollup.add_raw(row)
        ttft, tps = values[key]
        if row.ok and not row.skipped:
            if row.ttft_ms is not None:
                ttft.append(float(row.ttft_ms))
            if row.tokens_per_s is not None:
                tps.append(float(row.tokens_per_s))
    exact.update(values)


async def _rolled(conn: AsyncConnection, provider: str, model: str | None, source_step_s: int, step_s: int,
                  since: datetime, until: datetime, merged: dict[tuple[str, int], GenerationRollup]) -> None:
    r = generation_rollups
    stmt = select(r).where(r.c.provider == provider, r.c.step_s == source_step_s,
                           r.c.bucket_start_s >= math.ceil(since.timestamp()),
                           r.c.bucket_start_s < math.ceil(until.timestamp()))
    if model is not None:
        stmt = stmt.where(r.c.model == model)
    for row in (await conn.execute(stmt)).all():
        key = (row.model, row.bucket_start_s // step_s)
        rollup = merged.get(key)
        if rollup is None:
            rollup = merged[key] = GenerationRollup()
        rollup.merge(GenerationRollup.from_row(row))
