"""Reads of the time series: history, latest per provider, recent samples, models and aggregates.

Plain functions over an AsyncEngine that return frozen values; nothing here writes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, ScalarSelect, Select, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.model import Capacity, ErrorClass, ModelInfo, ProbeResult, Status
from monitord.store import dialects, histogram
from monitord.store.retention import (
    HOUR_S,
    MINUTE_S,
    RAW_PRUNED,
    Rollup,
    ceil_time,
    floor_time,
    mark_name,
    read_marks,
)
from monitord.store.rows import (
    ERROR_CLASS_BY_CODE,
    MODEL_REFRESH_S,
    NAME_PROVIDER,
    STATUS_BY_CODE,
    STATUS_CODES,
    digest,
    epoch_us,
    from_epoch_us,
    from_ppm,
    from_us,
)
from monitord.store.schema import error_texts, names, probe_rollups, probes, provider_models, providers

P95 = 0.95


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """One stored probe, as the probes table holds it."""

    ts: datetime  # timezone-aware UTC
    provider: str
    status: Status
    error_class: ErrorClass | None
    error: str | None
    connect_ms: float | None
    ttfb_ms: float | None
    total_ms: float
    http_status: int | None
    model_count: int
    attempts: int
    capacity: Capacity | None = None  # the load the server published at this probe (no resident models kept)


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model a provider has served, and when it was first and last seen doing so."""

    provider: str
    model_id: str
    info: ModelInfo
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Bucket:
    """Probes of one provider within [start, start + step_s).

    ok means status up; latency figures cover ok probes only (a failed probe's time is its timeout).
    """

    start: datetime
    step_s: int
    count: int
    ok_count: int
    latency_avg_ms: float | None
    latency_p95_ms: float | None

    @property
    def availability(self) -> float:
        return self.ok_count / self.count if self.count else 0.0


def _samples() -> Select[Any]:
    """Probe rows as ProbeSample fields: the provider's name and the error text joined back, codes kept."""
    p = probes
    return (select(p.c.ts, names.c.name.label("provider"), p.c.status, p.c.error_class,
                   error_texts.c.text.label("error"), p.c.connect_us, p.c.ttfb_us, p.c.total_us, p.c.http_status,
                   p.c.model_count, p.c.attempts, p.c.slots_total, p.c.slots_busy, p.c.queue_depth,
                   p.c.requests_running, p.c.kv_cache_ppm)
            .select_from(p.join(names, names.c.id == p.c.provider_id)
                         .outerjoin(error_texts, error_texts.c.id == p.c.error_id)))


def provider_id(name: str) -> ScalarSelect[Any]:
    """names.id of provider `name` (NULL if it never wrote a row), for a WHERE clause."""
    return select(names.c.id).where(names.c.digest == digest(NAME_PROVIDER, name)).scalar_subquery()


def _error_class(code: int | None) -> ErrorClass | None:
    if code is None:
        return None
    return ERROR_CLASS_BY_CODE.get(code, ErrorClass.INTERNAL)  # a class a newer monitord wrote: it failed


def _sample(row: Row[*tuple[Any, ...]]) -> ProbeSample:
    return ProbeSample(
        ts=from_epoch_us(row.ts),
        provider=row.provider,
        status=STATUS_BY_CODE.get(row.status, Status.UNKNOWN),
        error_class=_error_class(row.error_class),
        error=row.error,
        connect_ms=from_us(row.connect_us),
        ttfb_ms=from_us(row.ttfb_us),
        total_ms=row.total_us / 1000,
        http_status=row.http_status,
        model_count=row.model_count,
        attempts=row.attempts,
        capacity=_capacity(row),
    )


def _capacity(row: Row[*tuple[Any, ...]]) -> Capacity | None:
    values = {"slots_total": row.slots_total, "slots_busy": row.slots_busy, "queue_depth": row.queue_depth,
              "requests_running": row.requests_running, "kv_cache_usage": from_ppm(row.kv_cache_ppm)}
    return Capacity(**values) if any(v is not None for v in values.values()) else None


async def history(
    engine: AsyncEngine,
    provider: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[ProbeSample]:
    """Samples of one provider with since <= ts < until, newest first, at most `limit` (the primary key's range)."""
    stmt = _samples().where(probes.c.provider_id == provider_id(provider))
    if since is not None:
        stmt = stmt.where(probes.c.ts >= epoch_us(since))
    if until is not None:
        stmt = stmt.where(probes.c.ts < epoch_us(until))
    stmt = stmt.order_by(probes.c.ts.desc()).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_sample(row) for row in rows]


async def latest(engine: AsyncEngine) -> dict[str, ProbeSample]:
    """The newest sample of every provider that has one: per provider name, one descent of the primary key."""
    inner = probes.alias("inner_probes")
    newest = select(func.max(inner.c.ts)).where(inner.c.provider_id == names.c.id).scalar_subquery()
    stmt = _samples().where(names.c.kind == NAME_PROVIDER, probes.c.ts == newest)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {row.provider: _sample(row) for row in rows}


async def recent(engine: AsyncEngine, since: datetime) -> list[ProbeSample]:
    """Samples of every provider with ts >= since, oldest first: enough to rebuild live state."""
    stmt = (_samples().where(names.c.kind == NAME_PROVIDER, probes.c.ts >= epoch_us(since))
            .order_by(probes.c.ts, probes.c.provider_id))
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_sample(row) for row in rows]


async def models(engine: AsyncEngine, provider: str | None = None) -> list[StoredModel]:
    """Models ever seen, by provider then model id."""
    stmt = select(provider_models).order_by(provider_models.c.provider, provider_models.c.model_id)
    if provider is not None:
        stmt = stmt.where(provider_models.c.provider == provider)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        StoredModel(
            provider=row.provider,
            model_id=row.model_id,
            info=ModelInfo.from_dict(row.details),
            first_seen=row.first_seen,
            last_seen=row.last_seen,
        )
        for row in rows
    ]


async def aggregate(
    engine: AsyncEngine, provider: str, *, step_s: int, since: datetime, until: datetime
) -> list[Bucket]:
    """Per-bucket counts, availability and latency of one provider over since <= ts < until.

    Buckets are aligned to multiples of step_s since the Unix epoch; empty buckets are left out. Each bucket is
    read from one source (see `plan_sources`): raw rows give an exact p95, rollups an estimate within ~7 %.
    """
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    buckets: list[Bucket] = []
    async with engine.connect() as conn:
        marks = await read_marks(conn)
        for source_step_s, start, end in plan_sources(step_s, since, until, marks):
            if source_step_s is None:
                buckets += await _raw_buckets(conn, provider, step_s, start, end)
            else:
                buckets += await _rollup_buckets(conn, provider, source_step_s, step_s, start, end)
    return buckets


def plan_sources(step_s: int, since: datetime, until: datetime, marks: Mapping[str, datetime],
                 prefix: str = "") -> list[tuple[int | None, datetime, datetime]]:
    """Where each part of [since, until) is read from: (rollup step_s, or None for raw rows, start, end).

    Hour multiples (1h, 1d) always read hour rollups where every hour is rolled up, then minute rollups, then raw
    rows for the latest part: a year of hours is 8760 rows, a week of raw probes can be 20,000. Other minute
    multiples (1m, 5m) read raw rows while they are kept (exact p95) and minute rollups before that. Cut points
    are aligned to step_s, so no bucket mixes two sources. `prefix` names the series' marks ("": probes).
    """
    minutes_done = marks.get(mark_name(MINUTE_S, prefix))
    plan: list[tuple[int, datetime | None]] = []
    if step_s % HOUR_S == 0:
        hours_done = marks.get(mark_name(HOUR_S, prefix))
        plan = [(HOUR_S, floor_time(hours_done, step_s) if hours_done else None),
                (MINUTE_S, floor_time(minutes_done, step_s) if minutes_done else None)]
    elif step_s % MINUTE_S == 0:
        raw_pruned = marks.get(prefix + RAW_PRUNED)
        plan = [(MINUTE_S, ceil_time(raw_pruned, step_s) if raw_pruned and minutes_done else None)]
    segments: list[tuple[int | None, datetime, datetime]] = []
    start = since
    for source_step_s, boundary in plan:
        end = min(until, boundary) if boundary is not None else start
        if start < end:
            segments.append((source_step_s, start, end))
            start = end
    if start < until:
        segments.append((None, start, until))
    return segments


async def _rollup_buckets(conn: AsyncConnection, provider: str, source_step_s: int, step_s: int,
                          since: datetime, until: datetime) -> list[Bucket]:
    r = probe_rollups
    stmt = (select(r).where(r.c.provider_id == provider_id(provider), r.c.step_s == source_step_s,
                            r.c.bucket_start_s >= math.ceil(since.timestamp()),
                            r.c.bucket_start_s < math.ceil(until.timestamp())).order_by(r.c.bucket_start_s))
    merged: dict[int, Rollup] = {}
    for row in (await conn.execute(stmt)).all():
        index = row.bucket_start_s // step_s
        merged.setdefault(index, Rollup()).merge(Rollup.from_row(row))
    return [
        Bucket(
            start=datetime.fromtimestamp(index * step_s, UTC),
            step_s=step_s,
            count=rollup.probe_count,
            ok_count=rollup.ok_count,
            latency_avg_ms=rollup.latency_sum_us / rollup.ok_count / 1000
            if rollup.ok_count and rollup.latency_sum_us is not None else None,
            latency_p95_ms=histogram.quantile(rollup.hist, P95, min_ms=from_us(rollup.latency_min_us),
                                              max_ms=from_us(rollup.latency_max_us)),
        )
        for index, rollup in sorted(merged.items())
    ]


async def _raw_buckets(conn: AsyncConnection, provider: str, step_s: int, since: datetime,
                       until: datetime) -> list[Bucket]:
    dialect_name = conn.dialect.name
    p = probes
    bucket = (p.c.ts // (step_s * 1_000_000)).label("bucket")
    is_ok = p.c.status == STATUS_CODES[Status.UP]
    ok_us = case((is_ok, p.c.total_us))
    p95_expr = dialects.percentile(dialect_name, P95, ok_us)
    columns = [
        bucket,
        func.count().label("probe_count"),
        func.sum(case((is_ok, 1), else_=0)).label("ok_count"),
        func.avg(ok_us).label("latency_avg_us"),
    ]
    if p95_expr is not None:
        columns.append(p95_expr.label("latency_p95_us"))
    in_range = and_(p.c.provider_id == provider_id(provider), p.c.ts >= epoch_us(since), p.c.ts < epoch_us(until))
    stmt = select(*columns).where(in_range).group_by(bucket).order_by(bucket)
    rows = (await conn.execute(stmt)).all()
    if p95_expr is None:
        p95_by_bucket = await _p95_in_python(conn, bucket, in_range, is_ok)
    else:
        p95_by_bucket = {int(row.bucket): row.latency_p95_us for row in rows}
    return [
        Bucket(
            start=datetime.fromtimestamp(int(row.bucket) * step_s, UTC),
            step_s=step_s,
            count=int(row.probe_count),
            ok_count=int(row.ok_count or 0),
            latency_avg_ms=float(row.latency_avg_us) / 1000 if row.latency_avg_us is not None else None,
            latency_p95_ms=_ms_or_none(p95_by_bucket.get(int(row.bucket))),
        )
        for row in rows
    ]


async def _p95_in_python(conn: Any, bucket: Any, in_range: Any, is_ok: Any) -> dict[int, float | None]:
    stmt = select(bucket, probes.c.total_us).where(in_range, is_ok)
    latencies: dict[int, list[float]] = defaultdict(list)
    for row in (await conn.execute(stmt)).all():
        latencies[int(row.bucket)].append(float(row.total_us))
    return {key: percentile_cont(values, P95) for key, values in latencies.items()}


def percentile_cont(values: Sequence[float], fraction: float) -> float | None:
    """The same linear interpolation as SQL's percentile_cont, so both databases give one answer."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _ms_or_none(us: Any) -> float | None:
    return float(us) / 1000 if us is not None else None


async def results_since(engine: AsyncEngine, since: datetime, *, exclude: Collection[str] = (),
                        newer_than: Mapping[str, datetime] | None = None) -> list[ProbeResult]:
    """Stored probes with ts >= since, oldest first, as ProbeResults: what another instance saw.

    Providers in `exclude` are left out, and so are probes not newer than `newer_than[provider]`. Each result
    carries the provider's type and server version from `providers`, and, when the probe listed models, the
    models provider_models says were seen then (first_seen <= ts <= last_seen); `calls` are not stored.
    """
    p = providers
    stmt = (_samples().add_columns(p.c.type, p.c.server_version)
            .join(p, p.c.name == names.c.name, isouter=True)
            .where(names.c.kind == NAME_PROVIDER, probes.c.ts >= epoch_us(since))
            .order_by(probes.c.ts, probes.c.provider_id))
    if exclude:
        stmt = stmt.where(names.c.name.not_in(sorted(exclude)))
    newer_than = newer_than or {}
    async with engine.connect() as conn:
        newer_us = {name: epoch_us(at) for name, at in newer_than.items()}
        rows = [row for row in (await conn.execute(stmt)).all()
                if row.provider not in newer_us or row.ts > newer_us[row.provider]]
        listing = {row.provider for row in rows if row.model_count}
        seen: dict[str, list[StoredModel]] = defaultdict(list)
        if listing:
            m = provider_models
            model_rows = (await conn.execute(select(m).where(m.c.provider.in_(sorted(listing)))
                                             .order_by(m.c.provider, m.c.model_id))).all()
            for model in model_rows:
                seen[model.provider].append(StoredModel(model.provider, model.model_id,
                                                        ModelInfo.from_dict(model.details), model.first_seen,
                                                        model.last_seen))
    return [_result(row, seen.get(row.provider, ())) for row in rows]


def _result(row: Row[*tuple[Any, ...]], models: Sequence[StoredModel]) -> ProbeResult:
    sample = _sample(row)
    slack = timedelta(seconds=MODEL_REFRESH_S)  # last_seen lags the newest sighting by up to this
    listed = tuple(model.info for model in models if model.first_seen <= sample.ts <= model.last_seen + slack)
    return ProbeResult(
        provider=sample.provider,
        provider_type=row.type or "openai",
        started_at=sample.ts,
        status=sample.status,
        total_ms=sample.total_ms,
        error_class=sample.error_class,
        error=sample.error,
        connect_ms=sample.connect_ms,
        ttfb_ms=sample.ttfb_ms,
        http_status=sample.http_status,
        models=listed if sample.model_count else (),
        server_version=row.server_version,
        attempts=sample.attempts,
    )
