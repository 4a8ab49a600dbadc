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
from monitord.store.queries import percentile_cont, plan_sources, provider_id
from monitord.store.retention import GENERATION, GenerationRollup, read_marks
from monitord.store.rows import (
    ERROR_CLASS_BY_CODE,
    KIND_BY_CODE,
    NAME_MODEL,
    NAME_PROVIDER,
    digest,
    epoch_us,
    from_epoch_us,
    from_us,
)
from monitord.store.schema import error_texts, generation_rollups, generation_samples, names

P50, P95 = 0.5, 0.95


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One stored canary sample, as generation_samples holds it decoded (fits monitord.generation.SampleRecord)."""

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
_models = names.alias("model_names")


def _error_class(code: int | None) -> ErrorClass | None:
    if code is None:
        return None
    return ERROR_CLASS_BY_CODE.get(code, ErrorClass.INTERNAL)  # a class a newer monitord wrote: keep that it failed


def _sample(row: Row[Any]) -> StoredSample:
    return StoredSample(
        started_at=from_epoch_us(row.ts), provider=row.provider, model=row.model,
        kind=KIND_BY_CODE.get(row.kind, SampleKind.GENERATION), ok=bool(row.ok), skipped=bool(row.skipped),
        error_class=_error_class(row.error_class), error=row.error, ttft_ms=from_us(row.ttft_us),
        total_ms=from_us(row.total_us), tokens_per_s=row.tokens_per_s, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, finish_reason=row.finish_reason, streamed=bool(row.streamed),
        stream_complete=row.stream_complete,
    )


def _columns() -> Select[Any]:
    """Sample rows with the provider and model names and the error text joined back."""
    return (select(_g.c.ts, names.c.name.label("provider"), _models.c.name.label("model"), _g.c.kind, _g.c.ok,
                   _g.c.skipped, _g.c.error_class, error_texts.c.text.label("error"), _g.c.ttft_us, _g.c.total_us,
                   _g.c.tokens_per_s, _g.c.prompt_tokens, _g.c.completion_tokens, _g.c.finish_reason,
                   _g.c.streamed, _g.c.stream_complete)
            .select_from(_g.join(names, names.c.id == _g.c.provider_id).join(_models, _models.c.id == _g.c.model_id)
                         .outerjoin(error_texts, error_texts.c.id == _g.c.error_id)))


def _model_id(model: str) -> Any:
    return select(names.c.id).where(names.c.digest == digest(NAME_MODEL, model)).scalar_subquery()


async def history(engine: AsyncEngine, provider: str, *, since: datetime | None = None,
                  until: datetime | None = None, model: str | None = None, limit: int = 1000) -> list[StoredSample]:
    """Samples of one provider (one model, if given) with since <= ts < until, newest first, at most `limit`."""
    stmt = _columns().where(_g.c.provider_id == provider_id(provider))
    if model is not None:
        stmt = stmt.where(_g.c.model_id == _model_id(model))
    if since is not None:
        stmt = stmt.where(_g.c.ts >= epoch_us(since))
    if until is not None:
        stmt = stmt.where(_g.c.ts < epoch_us(until))
    stmt = stmt.order_by(_g.c.ts.desc(), _g.c.model_id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [_sample(row) for row in (await conn.execute(stmt)).all()]


async def recent(engine: AsyncEngine, since: datetime) -> list[StoredSample]:
    """Samples of every provider with ts >= since, oldest first: enough to rebuild the live statistics."""
    stmt = (_columns().where(_g.c.provider_id.in_(select(names.c.id).where(names.c.kind == NAME_PROVIDER)),
                             _g.c.ts >= epoch_us(since))
            .order_by(_g.c.ts, _g.c.provider_id, _g.c.model_id))
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
    stmt = (select(_g.c.ts, _models.c.name.label("model"), *(_g.c[name] for name in GENERATION.raw_columns))
            .select_from(_g.join(_models, _models.c.id == _g.c.model_id))
            .where(_g.c.provider_id == provider_id(provider), _g.c.ts >= epoch_us(since), _g.c.ts < epoch_us(until)))
    if model is not None:
        stmt = stmt.where(_g.c.model_id == _model_id(model))
    values: dict[tuple[str, int], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in (await conn.execute(stmt)).all():
        key = (row.model, row.ts // (step_s * 1_000_000))
        rollup = merged.get(key)
        if rollup is None:
            rollup = merged[key] = GenerationRollup()
        rollup.add_raw(row)
        ttft, tps = values[key]
        if row.ok and not row.skipped:
            if row.ttft_us is not None:
                ttft.append(row.ttft_us / 1000)
            if row.tokens_per_s is not None:
                tps.append(float(row.tokens_per_s))
    exact.update(values)


async def _rolled(conn: AsyncConnection, provider: str, model: str | None, source_step_s: int, step_s: int,
                  since: datetime, until: datetime, merged: dict[tuple[str, int], GenerationRollup]) -> None:
    r = generation_rollups
    stmt = (select(r, _models.c.name.label("model")).select_from(r.join(_models, _models.c.id == r.c.model_id))
            .where(r.c.provider_id == provider_id(provider), r.c.step_s == source_step_s,
                           r.c.bucket_start_s >= math.ceil(since.timestamp()),
                   r.c.bucket_start_s < math.ceil(until.timestamp())))
    if model is not None:
        stmt = stmt.where(r.c.model_id == _model_id(model))
    for row in (await conn.execute(stmt)).all():
        key = (row.model, row.bucket_start_s // step_s)
        rollup = merged.get(key)
        if rollup is None:
            rollup = merged[key] = GenerationRollup()
        rollup.merge(GenerationRollup.from_row(row))
