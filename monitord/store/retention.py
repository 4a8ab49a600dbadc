"""Retention: roll raw rows up into minute and hour rows, then delete what has aged out, in small batches.

Two series take the same path (SERIES): probes (per provider) and generation canary samples (per provider and
model), each with its own rollup table and its own marks.

Both rollups are computed from the raw rows and upserted, so a run is idempotent and a crashed run is simply
repeated. Hour rows are made as soon as an hour is complete; minute rows only shortly before the raw rows reach their
retention (MINUTE_LEAD_S ahead): until then minute steps read the raw rows, and a minute row beside them would
double what a probe costs to keep (at a 30 s interval a minute row is nearly as big as the two raw rows it sums).
Raw rows are deleted only once both rollups hold them. Each delete is one short transaction of at most
`batch_size` rows, so writers never wait long.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import Table, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.aio import wait_event
from monitord.model import Status
from monitord.store import dialects, histogram
from monitord.store.outbox import OutboxStore
from monitord.store.rows import ERROR_REFRESH_S, NAME_PROVIDER, STATUS_CODES, epoch_us, from_epoch_us
from monitord.store.schema import (
    error_texts,
    generation_rollups,
    generation_samples,
    names,
    probe_rollups,
    probes,
    retention_marks,
)

log = structlog.get_logger("monitord.store")

MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86400
STEPS_S = (MINUTE_S, HOUR_S)
LOCK_NAME = "monitord.retention"
CHUNK_ROWS = 20_000  # raw rows read per rollup transaction (more only when one bucket holds more)
MINUTE_LEAD_S = HOUR_S  # minute rollups are made this long before their raw rows reach the raw retention


def mark_name(step_s: int, prefix: str = "") -> str:
    """The retention_marks row saying rollups of step_s are complete before its time ("" prefix: probes)."""
    return f"{prefix}rollup_{step_s}"


RAW_PRUNED = "raw_pruned"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of row is kept, and how the job paces itself. Durations in seconds."""

    raw_s: float = 7 * DAY_S
    minute_rollups_s: float = 30 * DAY_S
    hour_rollups_s: float = 365 * DAY_S
    alerts_s: float = 30 * DAY_S  # alert events and their deliveries (pending ones are kept until they end)
    batch_size: int = 5000  # rows per delete transaction
    settle_s: float = 120.0  # a minute is rolled up once this far in the past (rows land a flush or a probe late)
    lookback_s: float = 900.0  # rolled-up minutes are checked again this far back for rows that landed later

    def __post_init__(self) -> None:
        if min(self.raw_s, self.minute_rollups_s, self.hour_rollups_s, self.alerts_s) < HOUR_S:
            raise ValueError("retention periods must be at least one hour")
        if self.batch_size < 1 or self.settle_s < 0 or self.lookback_s < 0:
            raise ValueError("need batch_size >= 1, settle_s >= 0 and lookback_s >= 0")


@dataclass(frozen=True, slots=True)
class SeriesReport:
    """What one run did to one series."""

    rolled_up: Mapping[int, int] = field(default_factory=dict)  # step_s -> rollup rows written
    deleted: Mapping[str, int] = field(default_factory=dict)  # raw table name and mark names -> rows deleted


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one run did, by series name. `skipped`: another instance holds the retention lock, so this one did
    nothing."""

    series: Mapping[str, SeriesReport] = field(default_factory=dict)
    elapsed_s: float = 0.0
    skipped: bool = False
    alert_events: int = 0  # alert events (with their deliveries) past storage.retention.alerts

    @property
    def rolled_up(self) -> Mapping[int, int]:
        """Probe rollup rows written, by step_s."""
        return self.series["probes"].rolled_up if "probes" in self.series else {}

    @property
    def deleted(self) -> Mapping[str, int]:
        """Probe rows deleted: "probes", "rollup_60", "rollup_3600" -> rows."""
        return self.series["probes"].deleted if "probes" in self.series else {}


@dataclass(slots=True)
class Rollup:
    """Probes of one provider in one bucket; mergeable, so hours are built from minutes. Latencies in integer µs."""

    probe_count: int = 0
    ok_count: int = 0
    latency_sum_us: int | None = None
    latency_min_us: int | None = None
    latency_max_us: int | None = None
    hist: histogram.Histogram = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.probe_count

    def add_raw(self, row: Any) -> None:
        self.add_probe(row.status == _UP, int(row.total_us))

    def add_probe(self, ok: bool, total_us: int) -> None:
        self.probe_count += 1
        if ok:
            self.ok_count += 1
            self._add_latency(total_us, total_us, total_us)
            histogram.add(self.hist, histogram.bucket_index(total_us / 1000))

    def merge(self, other: Any) -> None:
        assert isinstance(other, Rollup)
        self.probe_count += other.probe_count
        self.ok_count += other.ok_count
        if other.latency_sum_us is not None:
            assert other.latency_min_us is not None and other.latency_max_us is not None
            self._add_latency(other.latency_sum_us, other.latency_min_us, other.latency_max_us)
        histogram.merge_into(self.hist, other.hist)

    def _add_latency(self, sum_us: int, min_us: int, max_us: int) -> None:
        self.latency_sum_us = sum_us if self.latency_sum_us is None else self.latency_sum_us + sum_us
        self.latency_min_us = min_us if self.latency_min_us is None else min(self.latency_min_us, min_us)
        self.latency_max_us = max_us if self.latency_max_us is None else max(self.latency_max_us, max_us)

    @classmethod
    def from_row(cls, row: Any) -> Rollup:
        return cls(row.probe_count, row.ok_count, row.latency_sum_us, row.latency_min_us, row.latency_max_us,
                   histogram.decode(row.latency_hist))

    def row(self, key: tuple[int, ...], step_s: int, start_s: int) -> dict[str, Any]:
        return {
            "provider_id": key[0],
            "step_s": step_s,
            "bucket_start_s": start_s,
            "probe_count": self.probe_count,
            "ok_count": self.ok_count,
            "latency_sum_us": self.latency_sum_us,
            "latency_min_us": self.latency_min_us,
            "latency_max_us": self.latency_max_us,
            "latency_hist": histogram.encode(self.hist),
        }


_UP = STATUS_CODES[Status.UP]


@dataclass(slots=True)
class GenerationRollup:
    """Canary samples of one (provider, model) in one bucket; mergeable like Rollup. Timings of ok samples only."""

    sample_count: int = 0  # every row, skipped ones too (a late row must raise the count)
    ok_count: int = 0
    skipped_count: int = 0
    ttft_sum_us: int | None = None
    ttft_min_us: int | None = None
    ttft_max_us: int | None = None
    ttft_hist: histogram.Histogram = field(default_factory=dict)
    tps_min: float | None = None
    tps_max: float | None = None
    tps_hist: histogram.Histogram = field(default_factory=dict)
    tokens_spent: int = 0

    @property
    def count(self) -> int:
        return self.sample_count

    def add_raw(self, row: Any) -> None:
        self.add_sample(bool(row.ok), bool(row.skipped), row.ttft_us, row.tokens_per_s,
                        (row.prompt_tokens or 0) + (row.completion_tokens or 0))

    def add_sample(self, ok: bool, skipped: bool, ttft_us: int | None, tokens_per_s: float | None,
                   tokens: int) -> None:
        self.sample_count += 1
        self.tokens_spent += tokens
        if skipped:
            self.skipped_count += 1
            return
        if not ok:
            return
        self.ok_count += 1
        if ttft_us is not None:
            self._ttft(ttft_us, ttft_us, ttft_us)
            histogram.add(self.ttft_hist, histogram.bucket_index(ttft_us / 1000))
        if tokens_per_s is not None:
            self._tps(tokens_per_s, tokens_per_s)
            histogram.add(self.tps_hist, histogram.bucket_index(tokens_per_s))

    def merge(self, other: Any) -> None:
        assert isinstance(other, GenerationRollup)
        self.sample_count += other.sample_count
        self.ok_count += other.ok_count
        self.skipped_count += other.skipped_count
        self.tokens_spent += other.tokens_spent
        if other.ttft_sum_us is not None:
            assert other.ttft_min_us is not None and other.ttft_max_us is not None
            self._ttft(other.ttft_sum_us, other.ttft_min_us, other.ttft_max_us)
        if other.tps_min is not None and other.tps_max is not None:
            self._tps(other.tps_min, other.tps_max)
        histogram.merge_into(self.ttft_hist, other.ttft_hist)
        histogram.merge_into(self.tps_hist, other.tps_hist)

    def _ttft(self, sum_us: int, min_us: int, max_us: int) -> None:
        self.ttft_sum_us = sum_us if self.ttft_sum_us is None else self.ttft_sum_us + sum_us
        self.ttft_min_us = min_us if self.ttft_min_us is None else min(self.ttft_min_us, min_us)
        self.ttft_max_us = max_us if self.ttft_max_us is None else max(self.ttft_max_us, max_us)

    def _tps(self, low: float, high: float) -> None:
        self.tps_min = low if self.tps_min is None else min(self.tps_min, low)
        self.tps_max = high if self.tps_max is None else max(self.tps_max, high)

    def ttft_ms(self, fraction: float) -> float | None:
        return histogram.quantile(self.ttft_hist, fraction, min_ms=_ms(self.ttft_min_us),
                                  max_ms=_ms(self.ttft_max_us))

    def tokens_per_s(self, fraction: float) -> float | None:
        return histogram.quantile(self.tps_hist, fraction, min_ms=self.tps_min, max_ms=self.tps_max)

    @classmethod
    def from_row(cls, row: Any) -> GenerationRollup:
        return cls(row.sample_count, row.ok_count, row.skipped_count, row.ttft_sum_us, row.ttft_min_us,
                   row.ttft_max_us, histogram.decode(row.ttft_hist), row.tps_min, row.tps_max,
                   histogram.decode(row.tps_hist), row.tokens_spent)

    def row(self, key: tuple[int, ...], step_s: int, start_s: int) -> dict[str, Any]:
        provider_id, model_id = key
        return {
            "provider_id": provider_id, "model_id": model_id, "step_s": step_s, "bucket_start_s": start_s,
            "sample_count": self.sample_count, "ok_count": self.ok_count, "skipped_count": self.skipped_count,
            "ttft_sum_us": self.ttft_sum_us, "ttft_min_us": self.ttft_min_us, "ttft_max_us": self.ttft_max_us,
            "ttft_hist": histogram.encode(self.ttft_hist), "tps_min": self.tps_min, "tps_max": self.tps_max,
            "tps_hist": histogram.encode(self.tps_hist), "tokens_spent": self.tokens_spent,
        }


class Mergeable(Protocol):
    @property
    def count(self) -> int: ...
    def add_raw(self, row: Any) -> None: ...
    def merge(self, other: Any) -> None: ...
    def row(self, key: tuple[int, ...], step_s: int, start_s: int) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Series:
    """One time series the job rolls up and prunes: raw rows -> minute rows -> hour rows, keyed by `keys`."""

    name: str
    raw: Table
    rollups: Table
    keys: tuple[str, ...]  # columns that key a rollup besides step and start: ("provider_id",) or + ("model_id",)
    raw_columns: tuple[str, ...]  # what add_raw reads of a raw row
    count_column: str  # the rollup column counting its source rows
    new: Callable[[], Mergeable]
    from_row: Callable[[Any], Mergeable]
    mark_prefix: str = ""
    raw_label: str = ""  # the raw rows' key in SeriesReport.deleted (the table's name unless set)

    def mark(self, step_s: int) -> str:
        return mark_name(step_s, self.mark_prefix)

    @property
    def raw_pruned(self) -> str:
        return f"{self.mark_prefix}{RAW_PRUNED}"


PROBES = Series("probes", probes, probe_rollups, ("provider_id",), ("status", "total_us"), "probe_count", Rollup,
                Rollup.from_row, raw_label="probes")
GENERATION = Series("generation", generation_samples, generation_rollups, ("provider_id", "model_id"),
                    ("ok", "skipped", "ttft_us", "tokens_per_s", "prompt_tokens", "completion_tokens"),
                    "sample_count", GenerationRollup, GenerationRollup.from_row, mark_prefix="generation_")
SERIES = (PROBES, GENERATION)


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000


def _provider_ids() -> Any:
    """Every provider id, as an IN (...) subquery: raw rows and rollups are keyed by provider first, so "all rows
    in a time range" is one primary-key range per provider (no index on time alone)."""
    return select(names.c.id).where(names.c.kind == NAME_PROVIDER)


def epoch_s(at: datetime) -> int:
    """Whole Unix seconds of `at` (rounded down)."""
    return math.floor(at.timestamp())


def floor_time(at: datetime, step_s: int) -> datetime:
    """The start of the step_s-wide bucket (aligned to the Unix epoch) that `at` falls in."""
    seconds = int(at.timestamp() // step_s) * step_s
    return datetime.fromtimestamp(seconds, UTC)


def ceil_time(at: datetime, step_s: int) -> datetime:
    floor = floor_time(at, step_s)
    return floor if floor == at else floor + timedelta(seconds=step_s)


async def read_marks(conn: AsyncConnection) -> dict[str, datetime]:
    return {row.name: row.at for row in (await conn.execute(select(retention_marks))).all()}


class Retention:
    """The periodic job. `run_once(now)` is safe to repeat, to interrupt, and to run from several instances
    (one works at a time; the others skip)."""

    def __init__(self, engine: AsyncEngine, policy: RetentionPolicy, *,
                 oldest_pending: Callable[[], datetime | None] = lambda: None,
                 series: tuple[Series, ...] = SERIES) -> None:
        self._engine = engine
        self.policy = policy
        # The writer's oldest unwritten row: minutes at or after it are not complete in the database yet.
        self._oldest_pending = oldest_pending
        self.series = series

    async def run_once(self, now: datetime) -> RetentionReport:
        """Roll up complete buckets, then delete rows past their retention. Raises if the database is away."""
        started = time.monotonic()
        async with self._engine.connect() as lock_conn:
            got = await dialects.try_session_lock(lock_conn, LOCK_NAME)
            await lock_conn.commit()
            if not got:
                return RetentionReport(skipped=True)
            try:
                reports = {series.name: await self._run_series(series, now) for series in self.series}
                await self._prune_error_texts()
                alerts = await OutboxStore(self._engine).prune(now - timedelta(seconds=self.policy.alerts_s))
            finally:
                await _unlock(lock_conn)
        report = RetentionReport(reports, time.monotonic() - started, alert_events=alerts)
        if alerts:
            log.info("store.retention_done", series="alert_events", deleted={"alert_events": alerts})
        for name, done in reports.items():
            if any(done.rolled_up.values()) or any(done.deleted.values()):
                log.info("store.retention_done", series=name,
                         rolled_up={str(k): v for k, v in done.rolled_up.items()}, deleted=dict(done.deleted),
                         elapsed_s=round(report.elapsed_s, 3))
        return report

    async def _run_series(self, series: Series, now: datetime) -> SeriesReport:
        rolled = {MINUTE_S: await self._roll_minutes(series, now), HOUR_S: await self._roll_hours(series, now)}
        return SeriesReport(rolled, await self._prune(series, now))

    # -- rollups -------------------------------------------------------------------------------------------------

    def _complete_until(self, now: datetime, step_s: int) -> datetime:
        """Buckets of step_s ending by this are complete: settled, and no row of theirs still in the writer."""
        until = floor_time(now - timedelta(seconds=self.policy.settle_s), step_s)
        pending = self._oldest_pending()
        return until if pending is None else min(until, floor_time(pending, step_s))

    async def _roll_minutes(self, series: Series, now: datetime) -> int:
        """Minute rollups are made from the raw rows shortly before those are pruned (MINUTE_LEAD_S ahead of the
        raw retention, plus the lookback), not as soon as a minute is over: while the raw rows are kept, minute
        steps read them (exact), and a minute row beside them would only double what a probe costs to keep."""
        policy = self.policy
        due = floor_time(now - timedelta(seconds=policy.raw_s - policy.lookback_s - MINUTE_LEAD_S), MINUTE_S)
        until = min(self._complete_until(now, MINUTE_S), due)
        async with self._engine.connect() as conn:
            mark = (await read_marks(conn)).get(series.mark(MINUTE_S))
            oldest = await _oldest(conn, series)
        if oldest is None:
            return 0
        # minutes past their own retention would be deleted by this very run: not made at all
        floor = max(floor_time(oldest, MINUTE_S), floor_time(now - timedelta(seconds=policy.minute_rollups_s), HOUR_S))
        start = floor if mark is None else max(floor_time(mark - timedelta(seconds=policy.lookback_s), MINUTE_S),
                                                floor)
        return await self._roll(series, MINUTE_S, start, until, mark, self._raw_chunk(MINUTE_S))

    async def _roll_hours(self, series: Series, now: datetime) -> int:
        """Hour rollups are made from the raw rows as soon as an hour is complete (queries with hour steps read
        them at once, and the raw rows that make them are pruned only after); the hour before is looked at again
        then, for rows that landed late."""
        until = self._complete_until(now, HOUR_S)
        async with self._engine.connect() as conn:
            mark = (await read_marks(conn)).get(series.mark(HOUR_S))
            if mark is not None and until <= mark:
                # no hour ended since the last roll: nothing to read (an hour of every provider's raw rows); late
                # rows of the hours before are looked for when the next one ends
                return 0
            oldest = await _oldest(conn, series)
        if oldest is None:
            return 0
        lookback_s = max(self.policy.lookback_s, HOUR_S)
        start = floor_time(oldest, HOUR_S) if mark is None else max(
            floor_time(mark - timedelta(seconds=lookback_s), HOUR_S), floor_time(oldest, HOUR_S))
        return await self._roll(series, HOUR_S, start, until, mark, self._raw_chunk(HOUR_S))

    async def _roll(self, series: Series, step_s: int, start: datetime, until: datetime, mark: datetime | None,
                    chunk: Callable[[AsyncConnection, Series, datetime, datetime], Any]) -> int:
        """Roll [start, until) up chunk by chunk, each in one transaction that also moves the mark forward
        (never back: a writer still holding old rows shortens the run, not what is already done)."""
        written = 0
        while start < until:
            async with self._engine.begin() as conn:
                span = await _next_chunk(conn, series, step_s, start, until)
                if span is None:  # no source rows left before `until`: the rest is done at once
                    end, rows = until, []
                else:
                    start, end = span
                    rows = await chunk(conn, series, start, end)
                if rows:
                    await conn.execute(_rollup_upsert(conn.dialect.name, series), rows)
                if mark is None or end > mark:
                    await _set_mark(conn, series.mark(step_s), end)
            written += len(rows)
            start = end
            await asyncio.sleep(0)  # one chunk at a time: let probes and the API run in between
        return written

    def _raw_chunk(self, step_s: int) -> Callable[[AsyncConnection, Series, datetime, datetime], Any]:
        async def chunk(conn: AsyncConnection, series: Series, start: datetime,
                        end: datetime) -> list[dict[str, Any]]:
            """step_s rows for [start, end) whose raw rows outnumber what is rolled up (new buckets, late rows)."""
            raw = series.raw
            keys = [raw.c[name] for name in series.keys]
            bucket = (raw.c.ts // (step_s * 1_000_000)).label("bucket")
            counts = await conn.execute(select(*keys, bucket, func.count().label("n"))
                                        .where(raw.c.provider_id.in_(_provider_ids()), raw.c.ts >= epoch_us(start),
                                               raw.c.ts < epoch_us(end)).group_by(*keys, bucket))
            dirty = await self._dirty(conn, series, step_s, start, end,
                                      {(*row[:-2], int(row.bucket) * step_s): int(row.n) for row in counts})
            if not dirty:
                return []
            low_s, high_s = min(key[-1] for key in dirty), max(key[-1] for key in dirty) + step_s
            stmt = (select(*keys, bucket, *(raw.c[name] for name in series.raw_columns))
                    .where(raw.c.provider_id.in_(sorted({key[0] for key in dirty})), raw.c.ts >= low_s * 1_000_000,
                           raw.c.ts < high_s * 1_000_000))
            rollups: dict[tuple[Any, ...], Mergeable] = {}
            width = len(keys)
            for row in (await conn.execute(stmt)).all():
                key = (*row[:width], int(row.bucket) * step_s)
                if key in dirty:
                    rollup = rollups.get(key)
                    if rollup is None:
                        rollup = rollups[key] = series.new()
                    rollup.add_raw(row)
            return _rows(rollups, step_s)

        return chunk

    @staticmethod
    async def _dirty(conn: AsyncConnection, series: Series, step_s: int, start: datetime, end: datetime,
                     source_counts: Mapping[tuple[Any, ...], int]) -> set[tuple[Any, ...]]:
        """(keys..., bucket start_s) whose source holds more rows than their rollup row: never fewer, so a
        source already pruned (or pruned half-way) never shrinks a rollup."""
        r = series.rollups
        stmt = select(*(r.c[name] for name in series.keys), r.c.bucket_start_s, r.c[series.count_column]).where(
            r.c.provider_id.in_(_provider_ids()), r.c.step_s == step_s, r.c.bucket_start_s >= epoch_s(start),
            r.c.bucket_start_s < epoch_s(end))
        rolled = {tuple(row[:-1]): row[-1] for row in (await conn.execute(stmt)).all()}
        return {key for key, count in source_counts.items() if count > rolled.get(key, 0)}

    # -- pruning -------------------------------------------------------------------------------------------------

    async def _prune_error_texts(self) -> int:
        """Delete error texts no stored raw row can cite any more: last cited (give or take the writer's hourly
        refresh) before every series' raw rows were pruned. Rollups keep no texts."""
        async with self._engine.connect() as conn:
            marks = await read_marks(conn)
            cutoffs = []
            for series in self.series:
                pruned = marks.get(series.raw_pruned)
                if pruned is not None:
                    cutoffs.append(pruned)
                elif await _oldest(conn, series) is not None:
                    return 0  # rows never pruned yet may cite any text
        if not cutoffs:
            return 0
        before_s = epoch_s(min(cutoffs)) - ERROR_REFRESH_S
        async with self._engine.begin() as conn:
            deleted = int((await conn.execute(delete(error_texts).where(error_texts.c.last_used_s < before_s)))
                          .rowcount)
        if deleted:
            log.info("store.retention_done", series="error_texts", deleted={"error_texts": deleted})
        return deleted

    async def _prune(self, series: Series, now: datetime) -> dict[str, int]:
        """Delete rows past retention, but never source rows whose rollup is not complete yet."""
        policy = self.policy
        async with self._engine.connect() as conn:
            marks = await read_marks(conn)
        minute_mark, hour_mark = series.mark(MINUTE_S), series.mark(HOUR_S)
        raw_label = series.raw_label or series.raw.name
        deleted = {raw_label: 0, minute_mark: 0, hour_mark: 0}
        minutes_done, hours_done = marks.get(minute_mark), marks.get(hour_mark)
        lookback_s = max(policy.lookback_s, HOUR_S)
        if minutes_done is not None and hours_done is not None:  # both are made from the raw rows
            cutoff = min(floor_time(now - timedelta(seconds=policy.raw_s), HOUR_S),
                         floor_time(minutes_done - timedelta(seconds=policy.lookback_s), MINUTE_S),
                         floor_time(hours_done - timedelta(seconds=lookback_s), HOUR_S))
            deleted[raw_label] = await self._delete_raw(series.raw, cutoff)
            pruned = marks.get(series.raw_pruned)
            if pruned is None or pruned < cutoff:
                async with self._engine.begin() as conn:
                    await _set_mark(conn, series.raw_pruned, cutoff)
        cutoff = floor_time(now - timedelta(seconds=policy.minute_rollups_s), HOUR_S)
        deleted[minute_mark] = await self._delete_rollups(series, MINUTE_S, cutoff)
        hour_cutoff = floor_time(now - timedelta(seconds=policy.hour_rollups_s), HOUR_S)
        deleted[hour_mark] = await self._delete_rollups(series, HOUR_S, hour_cutoff)
        return deleted

    async def _delete_raw(self, raw: Table, before: datetime) -> int:
        key = tuple_(*raw.primary_key.columns)
        old = select(*raw.primary_key.columns).where(raw.c.provider_id.in_(_provider_ids()),
                                                     raw.c.ts < epoch_us(before))
        return await self._delete_in_batches(lambda: delete(raw).where(key.in_(old.limit(self.policy.batch_size))))

    async def _delete_rollups(self, series: Series, step_s: int, before: datetime) -> int:
        r = series.rollups
        columns = (*(r.c[name] for name in series.keys), r.c.step_s, r.c.bucket_start_s)
        key = tuple_(*columns)
        oldest_first = select(*columns).where(r.c.provider_id.in_(_provider_ids()), r.c.step_s == step_s,
                                              r.c.bucket_start_s < epoch_s(before))
        return await self._delete_in_batches(lambda: delete(r).where(key.in_(oldest_first.limit(
            self.policy.batch_size))))

    async def _delete_in_batches(self, statement: Callable[[], Any]) -> int:
        total = 0
        while True:
            async with self._engine.begin() as conn:
                count = int((await conn.execute(statement())).rowcount)
            total += count
            if count < self.policy.batch_size:
                return total
            await asyncio.sleep(0)  # between batches, other transactions get the table


def _rows(rollups: Mapping[tuple[Any, ...], Mergeable], step_s: int) -> list[dict[str, Any]]:
    return [rollup.row(key[:-1], step_s, key[-1]) for key, rollup in sorted(rollups.items())]


async def _next_chunk(conn: AsyncConnection, series: Series, step_s: int, start: datetime,
                      until: datetime) -> tuple[datetime, datetime] | None:
    """The next span of whole buckets in [start, until) holding about CHUNK_ROWS source rows (raw rows for
    minutes, minute rollups for hours), skipping empty time; None when no source row is left before `until`."""
    raw = series.raw
    source = (select(raw.c.ts).where(raw.c.provider_id.in_(_provider_ids()), raw.c.ts >= epoch_us(start),
                                     raw.c.ts < epoch_us(until)).order_by(raw.c.ts))
    first = _as_time((await conn.execute(source.limit(1))).scalar_one_or_none())
    if first is None:
        return None
    start = max(start, floor_time(first, step_s))
    nth = _as_time((await conn.execute(source.offset(CHUNK_ROWS).limit(1))).scalar_one_or_none())
    if nth is None:
        return start, until
    return start, min(until, max(floor_time(nth, step_s), start + timedelta(seconds=step_s)))


def _as_time(value: int | None) -> datetime | None:
    """Unix microseconds (how raw rows and, multiplied, rollup starts are read here) as a time."""
    return None if value is None else from_epoch_us(int(value))


async def _oldest(conn: AsyncConnection, series: Series) -> datetime | None:
    """The oldest raw row's time: one descent of the primary key per provider."""
    raw = series.raw
    oldest = select(func.min(raw.c.ts)).where(raw.c.provider_id == names.c.id).scalar_subquery()
    found = [value for value in (await conn.execute(
        select(oldest).where(names.c.kind == NAME_PROVIDER))).scalars() if value is not None]
    return from_epoch_us(min(found)) if found else None


def _rollup_upsert(dialect_name: str, series: Series) -> Any:
    table = series.rollups
    key_columns = (*series.keys, "step_s", "bucket_start_s")
    columns = [column.name for column in table.columns if column.name not in key_columns]
    return dialects.upsert(dialect_name, table, key_columns,
                           lambda excluded: {name: getattr(excluded, name) for name in columns})


async def _set_mark(conn: AsyncConnection, name: str, at: datetime) -> None:
    stmt = dialects.upsert(conn.dialect.name, retention_marks, ("name",), lambda excluded: {"at": excluded.at})
    await conn.execute(stmt, [{"name": name, "at": at}])


async def _unlock(conn: AsyncConnection) -> None:
    try:
        await dialects.session_unlock(conn, LOCK_NAME)
        await conn.commit()
    except Exception:  # the session is broken: close it rather than pool it, and the lock ends with it
        await conn.invalidate()


async def prune_periodically(retention_for: Callable[[RetentionPolicy], Retention],
                             schedule: Callable[[], tuple[float, RetentionPolicy]],
                             clock: Callable[[], datetime], *, rescheduled: asyncio.Event | None = None) -> None:
    """Roll up and prune every interval; schedule() is read before each wait, and setting `rescheduled` (a reload
    changed it) starts the wait over by the new interval. Until cancelled.

    A database outage skips a run (logged); the next one catches up.
    """
    wake = rescheduled or asyncio.Event()
    while True:
        interval_s, policy = schedule()
        wake.clear()
        await wait_event(wake, interval_s)
        if wake.is_set():
            continue
        try:
            await retention_for(policy).run_once(clock())
        except Exception as exc:  # the database is away: the next run catches up
            log.warning("store.retention_failed", error=type(exc).__name__)
