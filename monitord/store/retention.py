"""Retention: roll raw probes up into minute and hour rows, then delete what has aged out, in small batches.

Rollups are recomputed from their source (raw rows for minutes, minute rows for hours) and upserted, so a run is
idempotent and a crashed run is simply repeated. Raw rows are deleted only once rolled up, minute rows only once
merged into hours. Each delete is one short transaction of at most `batch_size` rows, so writers never wait long.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.model import Status
from monitord.store import dialects, histogram
from monitord.store.schema import probe_rollups, probes, retention_marks

log = structlog.get_logger("monitord.store")

MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86400
STEPS_S = (MINUTE_S, HOUR_S)
LOCK_NAME = "monitord.retention"
CHUNK_ROWS = 20_000  # source rows read per rollup transaction (more only when one bucket holds more)


def mark_name(step_s: int) -> str:
    """The retention_marks row saying rollups of step_s are complete before its time."""
    return f"rollup_{step_s}"


RAW_PRUNED = "raw_pruned"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of row is kept, and how the job paces itself. Durations in seconds."""

    raw_s: float = 7 * DAY_S
    minute_rollups_s: float = 30 * DAY_S
    hour_rollups_s: float = 365 * DAY_S
    batch_size: int = 5000  # rows per delete transaction
    settle_s: float = 120.0  # a minute is rolled up once this far in the past (rows land a flush or a probe late)
    lookback_s: float = 900.0  # rolled-up minutes are checked again this far back for rows that landed later

    def __post_init__(self) -> None:
        if min(self.raw_s, self.minute_rollups_s, self.hour_rollups_s) < HOUR_S:
            raise ValueError("retention periods must be at least one hour")
        if self.batch_size < 1 or self.settle_s < 0 or self.lookback_s < 0:
            raise ValueError("need batch_size >= 1, settle_s >= 0 and lookback_s >= 0")


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one run did. `skipped`: another instance holds the retention lock, so this one did nothing."""

    rolled_up: Mapping[int, int] = field(default_factory=dict)  # step_s -> rollup rows written
    deleted: Mapping[str, int] = field(default_factory=dict)  # "probes", "rollup_60", "rollup_3600" -> rows
    elapsed_s: float = 0.0
    skipped: bool = False


@dataclass(slots=True)
class Rollup:
    """Probes of one provider in one bucket; mergeable, so hours are built from minutes."""

    probe_count: int = 0
    ok_count: int = 0
    latency_sum_ms: float | None = None
    latency_min_ms: float | None = None
    latency_max_ms: float | None = None
    hist: histogram.Histogram = field(default_factory=dict)

    def add_probe(self, ok: bool, total_ms: float) -> None:
        self.probe_count += 1
        if ok:
            self.ok_count += 1
            self._add_latency(total_ms, total_ms, total_ms)
            histogram.add(self.hist, histogram.bucket_index(total_ms))

    def merge(self, other: Rollup) -> None:
        self.probe_count += other.probe_count
        self.ok_count += other.ok_count
        if other.latency_sum_ms is not None:
            assert other.latency_min_ms is not None and other.latency_max_ms is not None
            self._add_latency(other.latency_sum_ms, other.latency_min_ms, other.latency_max_ms)
        histogram.merge_into(self.hist, other.hist)

    def _add_latency(self, sum_ms: float, min_ms: float, max_ms: float) -> None:
        self.latency_sum_ms = sum_ms if self.latency_sum_ms is None else self.latency_sum_ms + sum_ms
        self.latency_min_ms = min_ms if self.latency_min_ms is None else min(self.latency_min_ms, min_ms)
        self.latency_max_ms = max_ms if self.latency_max_ms is None else max(self.latency_max_ms, max_ms)

    @classmethod
    def from_row(cls, row: Any) -> Rollup:
        return cls(row.probe_count, row.ok_count, row.latency_sum_ms, row.latency_min_ms, row.latency_max_ms,
                   histogram.decode(row.latency_hist))

    def row(self, provider: str, step_s: int, start_s: int) -> dict[str, Any]:
        return {
            "provider": provider,
            "step_s": step_s,
            "bucket_start_s": start_s,
            "probe_count": self.probe_count,
            "ok_count": self.ok_count,
            "latency_sum_ms": self.latency_sum_ms,
            "latency_min_ms": self.latency_min_ms,
            "latency_max_ms": self.latency_max_ms,
            "latency_hist": histogram.encode(self.hist),
        }


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
                 oldest_pending: Callable[[], datetime | None] = lambda: None) -> None:
        self._engine = engine
        self.policy = policy
        # The writer's oldest unwritten row: minutes at or after it are not complete in the database yet.
        self._oldest_pending = oldest_pending

    async def run_once(self, now: datetime) -> RetentionReport:
        """Roll up complete buckets, then delete rows past their retention. Raises if the database is away."""
        started = time.monotonic()
        async with self._engine.connect() as lock_conn:
            got = await dialects.try_session_lock(lock_conn, LOCK_NAME)
            await lock_conn.commit()
            if not got:
                return RetentionReport(skipped=True)
            try:
                rolled = {MINUTE_S: await self._roll_minutes(now), HOUR_S: await self._roll_hours()}
                deleted = await self._prune(now)
            finally:
                await _unlock(lock_conn)
        report = RetentionReport(rolled, deleted, time.monotonic() - started)
        if any(rolled.values()) or any(deleted.values()):
            log.info("store.retention_done", rolled_up={str(k): v for k, v in rolled.items()}, deleted=deleted,
                     elapsed_s=round(report.elapsed_s, 3))
        return report

    # -- rollups -------------------------------------------------------------------------------------------------

    async def _roll_minutes(self, now: datetime) -> int:
        complete_until = floor_time(now - timedelta(seconds=self.policy.settle_s), MINUTE_S)
        pending = self._oldest_pending()
        if pending is not None:
            complete_until = min(complete_until, floor_time(pending, MINUTE_S))
        async with self._engine.connect() as conn:
            mark = (await read_marks(conn)).get(mark_name(MINUTE_S))
            oldest = (await conn.execute(select(func.min(probes.c.ts)))).scalar_one_or_none()
        if oldest is None:
            return 0
        start = floor_time(oldest, MINUTE_S) if mark is None else max(
            floor_time(mark - timedelta(seconds=self.policy.lookback_s), MINUTE_S), floor_time(oldest, MINUTE_S))
        return await self._roll(MINUTE_S, start, complete_until, mark, self._minute_chunk)

    async def _roll_hours(self) -> int:
        async with self._engine.connect() as conn:
            marks = await read_marks(conn)
            oldest_s = (await conn.execute(select(func.min(probe_rollups.c.bucket_start_s))
                                           .where(probe_rollups.c.step_s == MINUTE_S))).scalar_one_or_none()
        minutes_done = marks.get(mark_name(MINUTE_S))
        if minutes_done is None or oldest_s is None:
            return 0
        oldest = datetime.fromtimestamp(oldest_s, UTC)
        mark = marks.get(mark_name(HOUR_S))
        lookback_s = max(self.policy.lookback_s, HOUR_S)
        start = floor_time(oldest, HOUR_S) if mark is None else max(
            floor_time(mark - timedelta(seconds=lookback_s), HOUR_S), floor_time(oldest, HOUR_S))
        return await self._roll(HOUR_S, start, floor_time(minutes_done, HOUR_S), mark, self._hour_chunk)

    async def _roll(self, step_s: int, start: datetime, until: datetime, mark: datetime | None,
                    chunk: Callable[[AsyncConnection, datetime, datetime], Any]) -> int:
        """Roll [start, until) up chunk by chunk, each in one transaction that also moves the mark forward
        (never back: a writer still holding old rows shortens the run, not what is already done)."""
        written = 0
        while start < until:
            async with self._engine.begin() as conn:
                span = await _next_chunk(conn, step_s, start, until)
                if span is None:  # no source rows left before `until`: the rest is done at once
                    end, rows = until, []
                else:
                    start, end = span
                    rows = await chunk(conn, start, end)
                if rows:
                    await conn.execute(_rollup_upsert(conn.dialect.name), rows)
                if mark is None or end > mark:
                    await _set_mark(conn, mark_name(step_s), end)
            written += len(rows)
            start = end
            await asyncio.sleep(0)  # one chunk at a time: let probes and the API run in between
        return written

    async def _minute_chunk(self, conn: AsyncConnection, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Minute rows for [start, end) whose raw rows outnumber what is rolled up (new minutes, late rows)."""
        minute = dialects.epoch_bucket(conn.dialect.name, probes.c.ts, MINUTE_S).label("bucket")
        counts = await conn.execute(select(probes.c.provider, minute, func.count().label("n"))
                                    .where(probes.c.ts >= start, probes.c.ts < end)
                                    .group_by(probes.c.provider, minute))
        dirty = await self._dirty(conn, MINUTE_S, start, end,
                                  {(row.provider, int(row.bucket) * MINUTE_S): int(row.n) for row in counts})
        if not dirty:
            return []
        low_s, high_s = min(s for _, s in dirty), max(s for _, s in dirty) + MINUTE_S
        stmt = (select(probes.c.provider, minute, probes.c.status, probes.c.total_ms)
                .where(probes.c.ts >= datetime.fromtimestamp(low_s, UTC),
                       probes.c.ts < datetime.fromtimestamp(high_s, UTC),
                       probes.c.provider.in_(sorted({provider for provider, _ in dirty}))))
        rollups: dict[tuple[str, int], Rollup] = defaultdict(Rollup)
        up = Status.UP.value
        for row in (await conn.execute(stmt)).all():
            key = (row.provider, int(row.bucket) * MINUTE_S)
            if key in dirty:
                rollups[key].add_probe(row.status == up, float(row.total_ms))
        return _rows(rollups, MINUTE_S)

    async def _hour_chunk(self, conn: AsyncConnection, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Hour rows for [start, end), merged from minute rows, where those count more probes than the hour row."""
        r = probe_rollups
        minutes = and_(r.c.step_s == MINUTE_S, r.c.bucket_start_s >= epoch_s(start),
                       r.c.bucket_start_s < epoch_s(end))
        hour = (r.c.bucket_start_s // HOUR_S).label("bucket")
        counts = await conn.execute(select(r.c.provider, hour, func.sum(r.c.probe_count).label("n"))
                                    .where(minutes).group_by(r.c.provider, hour))
        dirty = await self._dirty(conn, HOUR_S, start, end,
                                  {(row.provider, int(row.bucket) * HOUR_S): int(row.n) for row in counts})
        if not dirty:
            return []
        low_s, high_s = min(s for _, s in dirty), max(s for _, s in dirty) + HOUR_S
        stmt = select(r).where(r.c.step_s == MINUTE_S, r.c.bucket_start_s >= low_s, r.c.bucket_start_s < high_s,
                               r.c.provider.in_(sorted({provider for provider, _ in dirty})))
        rollups: dict[tuple[str, int], Rollup] = defaultdict(Rollup)
        for row in (await conn.execute(stmt)).all():
            key = (row.provider, row.bucket_start_s // HOUR_S * HOUR_S)
            if key in dirty:
                rollups[key].merge(Rollup.from_row(row))
        return _rows(rollups, HOUR_S)

    @staticmethod
    async def _dirty(conn: AsyncConnection, step_s: int, start: datetime, end: datetime,
                     source_counts: Mapping[tuple[str, int], int]) -> set[tuple[str, int]]:
        """(provider, bucket start_s) whose source holds more probes than their rollup row: never fewer, so a
        source already pruned (or pruned half-way) never shrinks a rollup."""
        r = probe_rollups
        stmt = select(r.c.provider, r.c.bucket_start_s, r.c.probe_count).where(
            r.c.step_s == step_s, r.c.bucket_start_s >= epoch_s(start), r.c.bucket_start_s < epoch_s(end))
        rolled = {(row.provider, row.bucket_start_s): row.probe_count for row in (await conn.execute(stmt)).all()}
        return {key for key, count in source_counts.items() if count > rolled.get(key, 0)}

    # -- pruning -------------------------------------------------------------------------------------------------

    async def _prune(self, now: datetime) -> dict[str, int]:
        """Delete rows past retention, but never source rows whose rollup is not complete yet."""
        policy = self.policy
        async with self._engine.connect() as conn:
            marks = await read_marks(conn)
        deleted = {"probes": 0, mark_name(MINUTE_S): 0, mark_name(HOUR_S): 0}
        minutes_done, hours_done = marks.get(mark_name(MINUTE_S)), marks.get(mark_name(HOUR_S))
        if minutes_done is not None:
            cutoff = min(floor_time(now - timedelta(seconds=policy.raw_s), HOUR_S),
                         floor_time(minutes_done - timedelta(seconds=policy.lookback_s), MINUTE_S))
            deleted["probes"] = await self._delete_raw(cutoff)
            if marks.get(RAW_PRUNED) is None or marks[RAW_PRUNED] < cutoff:
                async with self._engine.begin() as conn:
                    await _set_mark(conn, RAW_PRUNED, cutoff)
        if hours_done is not None:
            lookback_s = max(policy.lookback_s, HOUR_S)
            cutoff = min(floor_time(now - timedelta(seconds=policy.minute_rollups_s), HOUR_S),
                         floor_time(hours_done - timedelta(seconds=lookback_s), HOUR_S))
            deleted[mark_name(MINUTE_S)] = await self._delete_rollups(MINUTE_S, cutoff)
        hour_cutoff = floor_time(now - timedelta(seconds=policy.hour_rollups_s), HOUR_S)
        deleted[mark_name(HOUR_S)] = await self._delete_rollups(HOUR_S, hour_cutoff)
        return deleted

    async def _delete_raw(self, before: datetime) -> int:
        oldest_first = select(probes.c.id).where(probes.c.ts < before).order_by(probes.c.ts)
        return await self._delete_in_batches(lambda: delete(probes).where(
            probes.c.id.in_(oldest_first.limit(self.policy.batch_size).scalar_subquery())))

    async def _delete_rollups(self, step_s: int, before: datetime) -> int:
        r = probe_rollups
        key = tuple_(r.c.provider, r.c.step_s, r.c.bucket_start_s)
        oldest_first = (select(r.c.provider, r.c.step_s, r.c.bucket_start_s)
                        .where(r.c.step_s == step_s, r.c.bucket_start_s < epoch_s(before))
                        .order_by(r.c.bucket_start_s))
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


def _rows(rollups: Mapping[tuple[str, int], Rollup], step_s: int) -> list[dict[str, Any]]:
    return [rollup.row(provider, step_s, start_s) for (provider, start_s), rollup in sorted(rollups.items())]


async def _next_chunk(conn: AsyncConnection, step_s: int, start: datetime,
                      until: datetime) -> tuple[datetime, datetime] | None:
    """The next span of whole buckets in [start, until) holding about CHUNK_ROWS source rows (raw probes for
    minutes, minute rollups for hours), skipping empty time; None when no source row is left before `until`."""
    if step_s == MINUTE_S:
        source = select(probes.c.ts).where(probes.c.ts >= start, probes.c.ts < until).order_by(probes.c.ts)
    else:
        r = probe_rollups
        source = (select(r.c.bucket_start_s)
                  .where(r.c.step_s == MINUTE_S, r.c.bucket_start_s >= epoch_s(start),
                         r.c.bucket_start_s < epoch_s(until)).order_by(r.c.bucket_start_s))
    first = _as_time((await conn.execute(source.limit(1))).scalar_one_or_none())
    if first is None:
        return None
    start = max(start, floor_time(first, step_s))
    nth = _as_time((await conn.execute(source.offset(CHUNK_ROWS).limit(1))).scalar_one_or_none())
    if nth is None:
        return start, until
    return start, min(until, max(floor_time(nth, step_s), start + timedelta(seconds=step_s)))


def _as_time(value: datetime | int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else value


def _rollup_upsert(dialect_name: str) -> Any:
    columns = ("probe_count", "ok_count", "latency_sum_ms", "latency_min_ms", "latency_max_ms", "latency_hist")
    return dialects.upsert(dialect_name, probe_rollups, ("provider", "step_s", "bucket_start_s"),
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

