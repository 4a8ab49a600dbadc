"""Retention: the latency histogram, where aggregates read from, rollups that match the raw rows, pruning in
batches, and weeks of simulated probes that leave the database bounded (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from monitord.model import (
    AlertEvent,
    AlertProvider,
    AlertType,
    DeliveryState,
    ErrorClass,
    OutboxEntry,
    PlannedDelivery,
    ProbeResult,
    Status,
)
from monitord.store import RetentionPolicy, Store, dialects, histogram, migrate, queries
from monitord.store.retention import HOUR_S, MINUTE_S, RAW_PRUNED, Rollup, floor_time, mark_name
from monitord.store.schema import error_texts, names, probe_rollups, probes
from tests.plugins.databases import StoreFactory

T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)  # a Monday, midnight: day and hour boundaries line up
DAY = timedelta(days=1)


def result(provider: str, at: datetime, total_ms: float = 10.0, status: Status = Status.UP) -> ProbeResult:
    failed = status is Status.DOWN
    return ProbeResult(provider=provider, provider_type="vllm", started_at=at, status=status, total_ms=total_ms,
                       error_class=ErrorClass.REFUSED if failed else None,
                       error="connection refused" if failed else None)


def exact_percentile(values: list[float], fraction: float) -> float:
    value = queries.percentile_cont(values, fraction)
    assert value is not None
    return value


# -- the histogram (pure) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("latency_ms", [0.0, 0.05, 0.1, 0.99, 1.0, 7.3, 50.0, 999.0, 12_345.0, 99_999.0, 5e6])
def test_every_latency_falls_inside_its_bucket(latency_ms: float) -> None:
    lower, upper = histogram.bucket_bounds(histogram.bucket_index(latency_ms))
    assert lower <= latency_ms < upper


def test_bucket_width_is_the_promised_ratio() -> None:
    widths = [upper / lower for lower, upper in map(histogram.bucket_bounds, range(1, histogram.LAST_INDEX))]
    assert all(math.isclose(width, 10 ** (1 / 16)) for width in widths)


@pytest.mark.parametrize(("text_form", "counts"), [
    ("", {}),
    ("41:2", {41: 2}),
    ("0:1,41:2,97:5", {0: 1, 41: 2, 97: 5}),
])
def test_encoding_round_trips(text_form: str, counts: dict[int, int]) -> None:
    assert histogram.encode(counts) == text_form
    assert histogram.decode(text_form) == counts


@pytest.mark.parametrize(("name", "draw"), [
    ("uniform 5-500 ms", lambda rng: rng.uniform(5, 500)),
    ("lognormal around 40 ms", lambda rng: rng.lognormvariate(math.log(40), 0.6)),
    ("bimodal cache hit/miss", lambda rng: rng.choice([rng.uniform(2, 4), rng.uniform(300, 900)])),
    ("constant", lambda rng: 123.0),
])
def test_p95_estimate_is_within_one_bucket_and_merges(name: str, draw: Any) -> None:
    rng = random.Random(name)
    values = [draw(rng) for _ in range(2000)]
    halves = [histogram.histogram(values[:700]), histogram.histogram(values[700:])]
    merged = histogram.merge(halves)
    assert merged == histogram.histogram(values)
    estimate = histogram.quantile(merged, 0.95, min_ms=min(values), max_ms=max(values))
    exact = exact_percentile(values, 0.95)
    assert estimate is not None and abs(estimate - exact) / exact < 0.08, (estimate, exact)


def test_quantile_of_one_value_is_that_value_and_of_nothing_is_none() -> None:
    assert histogram.quantile(histogram.histogram([42.0]), 0.95, min_ms=42.0, max_ms=42.0) == 42.0
    assert histogram.quantile({}, 0.95) is None


# -- where aggregates read from (pure) ---------------------------------------------------------------------------

H = T0 + timedelta(hours=100)  # hours rolled up before H
M = H + timedelta(hours=2, minutes=37)  # minutes rolled up before M
R = T0 + timedelta(hours=10, minutes=30)  # raw rows deleted before R
MARKS = {mark_name(HOUR_S): H, mark_name(MINUTE_S): M, RAW_PRUNED: R}


@pytest.mark.parametrize(("step_s", "since", "until", "marks", "expected"), [
    pytest.param(3600, T0, H, {}, [(None, T0, H)], id="no retention run yet: raw only"),
    pytest.param(3600, T0, M + DAY, MARKS, [
        (HOUR_S, T0, H), (MINUTE_S, H, floor_time(M, 3600)), (None, floor_time(M, 3600), M + DAY)],
        id="1h: hour rollups, then minute rollups, then raw"),
    pytest.param(86400, T0, M + DAY, MARKS, [(HOUR_S, T0, T0 + 4 * DAY), (None, T0 + 4 * DAY, M + DAY)],
                 id="1d: cut points aligned to days (H and M fall on the same day)"),
    pytest.param(3600, T0, T0 + DAY, MARKS, [(HOUR_S, T0, T0 + DAY)], id="1h, all of it rolled up"),
    pytest.param(300, T0, H, MARKS, [(MINUTE_S, T0, R), (None, R, H)],
                 id="5m: minute rollups where raw rows are gone, raw after"),
    pytest.param(60, R + DAY, H, MARKS, [(None, R + DAY, H)], id="1m, all raw"),
    pytest.param(300, T0, H, {mark_name(MINUTE_S): M}, [(None, T0, H)], id="5m, nothing pruned yet"),
    pytest.param(45, T0, H, MARKS, [(None, T0, H)], id="odd step: raw only"),
])
def test_plan_sources(step_s: int, since: datetime, until: datetime, marks: dict[str, datetime],
                      expected: list[tuple[int | None, datetime, datetime]]) -> None:
    assert queries.plan_sources(step_s, since, until, marks) == expected


# -- rollups against the raw rows (both databases) ---------------------------------------------------------------

def latencies(index: int) -> float:
    return 5.0 + (index * 37) % 400  # spread over two decades, deterministic


def workload(providers: int, start: datetime, minutes: int, per_minute: int) -> list[ProbeResult]:
    """Probes every 60/per_minute s; every 7th one down."""
    out = []
    for n in range(minutes * per_minute):
        at = start + timedelta(seconds=n * 60 / per_minute)
        for p in range(providers):
            status = Status.DOWN if (n + p) % 7 == 0 else Status.UP
            out.append(result(f"p{p}", at, latencies(n + 13 * p), status))
    return out


async def write_all(store: Store, results: list[ProbeResult]) -> None:
    for one in results:
        store.enqueue(one)
    await store.flush()
    assert store.pending == 0


async def rollup_rows(url: str, step_s: int) -> list[dict[str, Any]]:
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            r = probe_rollups
            rows = (await conn.execute(select(r, names.c.name.label("provider"))
                                       .join(names, names.c.id == r.c.provider_id).where(r.c.step_s == step_s)
                                       .order_by(names.c.name, r.c.bucket_start_s))).all()
    finally:
        await engine.dispose()
    return [{**row._mapping, "bucket_start": datetime.fromtimestamp(row.bucket_start_s, UTC)} for row in rows]


async def count_rows(url: str, table: Any) -> int:
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    finally:
        await engine.dispose()


POLICY = RetentionPolicy(raw_s=2 * 86400, minute_rollups_s=4 * 86400, hour_rollups_s=8 * 86400, batch_size=500,
                         settle_s=60, lookback_s=600)


# Raw rows kept an hour: minute rollups are due as soon as a minute settles (they are made shortly before the raw
# rows they sum reach the raw retention; see test_minute_rollups_wait_for_the_raw_retention).
EAGER = RetentionPolicy(raw_s=3600, minute_rollups_s=4 * 86400, hour_rollups_s=8 * 86400, batch_size=500,
                        settle_s=60, lookback_s=600)


async def test_rollups_match_the_raw_rows(store: Store, db_url: str) -> None:
    results = workload(providers=3, start=T0, minutes=150, per_minute=4)
    await write_all(store, results)
    report = await store.retention(EAGER).run_once(T0 + timedelta(hours=3))

    assert not report.skipped
    minutes = await rollup_rows(db_url, MINUTE_S)
    assert report.rolled_up[MINUTE_S] == len(minutes) == 3 * 150
    for row in minutes:
        mine = [r for r in results if r.provider == row["provider"]
                and floor_time(r.started_at, 60) == row["bucket_start"]]
        ok = [r.total_ms for r in mine if r.status is Status.UP]
        assert (row["probe_count"], row["ok_count"]) == (len(mine), len(ok))
        assert row["latency_sum_us"] == round(sum(ok) * 1000)
        assert (row["latency_min_us"], row["latency_max_us"]) == (round(min(ok) * 1000), round(max(ok) * 1000))
        assert histogram.decode(row["latency_hist"]) == histogram.histogram(ok)
    hours = await rollup_rows(db_url, HOUR_S)
    assert [(r["provider"], r["bucket_start"]) for r in hours] == [
        (f"p{p}", T0 + timedelta(hours=h)) for p in range(3) for h in range(2)]  # the third hour is not over
    for row in hours:
        merged = Rollup()
        for minute in minutes:
            if minute["provider"] == row["provider"] and floor_time(minute["bucket_start"], 3600) == \
                    row["bucket_start"]:
                merged.merge(Rollup.from_row(SimpleNamespace(**minute)))
        assert row["probe_count"] == merged.probe_count == 240
        assert histogram.decode(row["latency_hist"]) == merged.hist

    again = await store.retention(EAGER).run_once(T0 + timedelta(hours=3))
    assert again.rolled_up == {MINUTE_S: 0, HOUR_S: 0}, "a second run finds nothing to redo"
    assert await rollup_rows(db_url, MINUTE_S) == minutes


async def test_hour_steps_read_rollups_and_agree_with_raw(store: Store) -> None:
    results = workload(providers=1, start=T0, minutes=6 * 60, per_minute=2)
    await write_all(store, results)
    raw = await store.aggregate("p0", step_s=3600, since=T0, until=T0 + timedelta(hours=6))
    await store.retention(POLICY).run_once(T0 + timedelta(hours=6, minutes=5))
    rolled = await store.aggregate("p0", step_s=3600, since=T0, until=T0 + timedelta(hours=6))

    assert [b.start for b in rolled] == [b.start for b in raw] == [T0 + timedelta(hours=h) for h in range(6)]
    for exact, estimate in zip(raw, rolled, strict=True):
        assert (estimate.count, estimate.ok_count) == (exact.count, exact.ok_count)
        assert estimate.latency_avg_ms == pytest.approx(exact.latency_avg_ms)
        assert exact.latency_p95_ms is not None and estimate.latency_p95_ms is not None
        assert abs(estimate.latency_p95_ms - exact.latency_p95_ms) / exact.latency_p95_ms < 0.08


async def test_late_rows_within_the_lookback_are_rolled_up(store: Store, db_url: str) -> None:
    await write_all(store, workload(providers=1, start=T0, minutes=30, per_minute=1))
    retention = store.retention(EAGER)
    await retention.run_once(T0 + timedelta(minutes=32))
    late = result("p0", T0 + timedelta(minutes=25, seconds=30), 999.0)  # e.g. buffered through an outage
    await write_all(store, [late])
    report = await retention.run_once(T0 + timedelta(minutes=33))

    assert report.rolled_up[MINUTE_S] == 1
    row = next(r for r in await rollup_rows(db_url, MINUTE_S) if r["bucket_start"] == T0 + timedelta(minutes=25))
    assert row["probe_count"] == 2 and row["latency_max_us"] == 999_000


async def test_minutes_with_unwritten_rows_wait(store_factory: StoreFactory, db_url: str) -> None:
    store = await store_factory(flush_interval_s=3600, batch_size=10_000, buffer_limit=10_000)
    await write_all(store, workload(providers=1, start=T0, minutes=10, per_minute=1))
    store.enqueue(result("p0", T0 + timedelta(minutes=4, seconds=10)))  # held by the writer, not in the database
    retention = store.retention(EAGER)
    await retention.run_once(T0 + timedelta(hours=1))
    assert [r["bucket_start"] for r in await rollup_rows(db_url, MINUTE_S)] == [
        T0 + timedelta(minutes=m) for m in range(4)]

    await store.flush()
    await retention.run_once(T0 + timedelta(hours=1))
    assert len(await rollup_rows(db_url, MINUTE_S)) == 10


@contextmanager
def deletes_seen(store: Store) -> Iterator[list[int]]:
    """Row counts of every DELETE the store's engine runs (observed, not altered)."""
    seen: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append(cursor.rowcount)

    engine = store._engine.sync_engine
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)


async def test_pruning_deletes_in_batches_and_history_survives(store: Store, db_url: str) -> None:
    await write_all(store, workload(providers=2, start=T0, minutes=3 * 24 * 60 // 10, per_minute=1))
    retention = store.retention(POLICY)
    await retention.run_once(T0 + timedelta(hours=2))  # hours rolled up, nothing old enough to delete yet
    since, until = T0, T0 + timedelta(hours=10)
    before = {step: await store.aggregate("p1", step_s=step, since=since, until=until) for step in (300, 3600)}

    now = T0 + 3 * DAY + timedelta(minutes=5)
    with deletes_seen(store) as deletes:
        report = await retention.run_once(now)

    raw_cutoff = floor_time(now - timedelta(seconds=POLICY.raw_s), 3600)
    assert report.deleted["probes"] == sum(1 for r in workload(2, T0, 432, 1) if r.started_at < raw_cutoff)
    assert deletes and max(deletes) <= POLICY.batch_size and len(deletes) > report.deleted["probes"] // 500
    assert await count_rows(db_url, probes) == 2 * 432 - report.deleted["probes"]
    after = {step: await store.aggregate("p1", step_s=step, since=since, until=until) for step in (300, 3600)}
    for step in (300, 3600):
        assert [(b.start, b.count, b.ok_count) for b in after[step]] == \
            [(b.start, b.count, b.ok_count) for b in before[step]]
        assert [b.latency_avg_ms for b in after[step]] == pytest.approx([b.latency_avg_ms for b in before[step]])


async def test_minute_rollups_wait_for_the_raw_retention(store: Store, db_url: str) -> None:
    """Hour rows come as soon as an hour is over; minute rows only shortly before the raw rows they sum are pruned,
    and every step reads the same counts before and after."""
    results = workload(providers=1, start=T0, minutes=6 * 60, per_minute=2)
    await write_all(store, results)
    retention = store.retention(POLICY)
    report = await retention.run_once(T0 + timedelta(hours=6, minutes=5))
    assert report.rolled_up == {MINUTE_S: 0, HOUR_S: 6} and await rollup_rows(db_url, MINUTE_S) == []
    exact = {step: await store.aggregate("p0", step_s=step, since=T0, until=T0 + timedelta(hours=6))
             for step in (60, 3600)}
    assert sum(b.count for b in exact[60]) == sum(b.count for b in exact[3600]) == len(results)

    # two days on: the first hours' raw rows reach the raw retention; their minutes are rolled up first
    now = T0 + timedelta(seconds=POLICY.raw_s, hours=3)
    report = await retention.run_once(now)
    due = floor_time(now - timedelta(seconds=POLICY.raw_s - POLICY.lookback_s - 3600), MINUTE_S)
    minutes = await rollup_rows(db_url, MINUTE_S)
    assert [r["bucket_start"] for r in minutes] == [T0 + timedelta(minutes=m) for m in range(
        int((due - T0).total_seconds() // 60))]
    assert report.deleted["probes"] == sum(r.started_at < T0 + timedelta(hours=3) for r in results)
    after = {step: await store.aggregate("p0", step_s=step, since=T0, until=T0 + timedelta(hours=6))
             for step in (60, 3600)}
    for step in (60, 3600):
        assert [(b.start, b.count, b.ok_count) for b in after[step]] == \
            [(b.start, b.count, b.ok_count) for b in exact[step]]


async def test_rollups_expire_too(store: Store, db_url: str) -> None:
    await write_all(store, workload(providers=1, start=T0, minutes=120, per_minute=1))
    retention = store.retention(POLICY)
    await retention.run_once(T0 + timedelta(hours=3))
    assert await count_rows(db_url, probe_rollups) == 2  # hours at once, minutes only when the raw rows are due

    report = await retention.run_once(T0 + 9 * DAY)
    assert report.deleted == {"probes": 120, "rollup_60": 0, "rollup_3600": 2}  # minutes past their retention: not made
    assert await count_rows(db_url, probe_rollups) == 0 and await count_rows(db_url, probes) == 0


async def test_alert_events_are_pruned_unless_still_pending(store: Store) -> None:
    def entry(n: int, *webhooks: str) -> OutboxEntry:
        event = AlertEvent(id=f"00000000-0000-4000-8000-{n:012d}", type=AlertType.PROVIDER_DOWN, at=T0,
                           provider=AlertProvider("gpu", "vllm", "http://10.0.0.5:8000"))
        return OutboxEntry(event, tuple(PlannedDelivery(name, DeliveryState.PENDING) for name in webhooks))

    assert await store.outbox.put([entry(1, "ops"), entry(2, "ops"), entry(3)], T0) == 3
    assert await store.outbox.delivered(entry(1).event.id, "ops", T0, 200)
    retention = store.retention(RetentionPolicy(alerts_s=30 * 86400, batch_size=500))
    assert (await retention.run_once(T0 + 29 * DAY)).alert_events == 0
    assert (await retention.run_once(T0 + 31 * DAY)).alert_events == 2  # delivered, and no webhook
    assert [row.id for row in await store.outbox.recent()] == [entry(2).event.id]  # pending: kept until it ends


@pytest.mark.postgres
async def test_one_instance_prunes_at_a_time(postgres_url: str) -> None:
    await migrate.upgrade(postgres_url)
    store = await Store.open(postgres_url)
    engine = dialects.create_engine(postgres_url)
    try:
        async with engine.connect() as other:  # another instance, mid-run
            assert await dialects.try_session_lock(other, "monitord.retention")
            assert (await store.retention(POLICY).run_once(T0)).skipped
            await dialects.session_unlock(other, "monitord.retention")
        assert not (await store.retention(POLICY).run_once(T0)).skipped
    finally:
        await engine.dispose()
        await store.close()


# -- weeks of probes: the database stays bounded -----------------------------------------------------------------

SIM_PROVIDERS = 12
SIM_DAYS = 14
SIM_INTERVAL_S = 300
SIM_POLICY = RetentionPolicy(raw_s=2 * 86400, minute_rollups_s=4 * 86400, hour_rollups_s=8 * 86400,
                             batch_size=2000)


async def table_bytes(url: str) -> dict[str, int]:
    """On-disk bytes of each table with its indexes, after the vacuum that reclaims deleted rows' space.

    SQLite: VACUUM rebuilds the file, then dbstat counts each table's and index's pages. PostgreSQL: plain VACUUM
    (what autovacuum does) marks the space free for reuse, and pg_total_relation_size reports what the table holds.
    """
    engine = dialects.create_engine(url)
    sizes: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            sqlite = conn.dialect.name == "sqlite"
            await conn.execute(text("VACUUM" if sqlite else "VACUUM probe_rows, probe_rollups"))
            for table in ("probe_rows", "probe_rollups"):
                if sqlite:
                    stmt = text("SELECT sum(pgsize) FROM dbstat WHERE name = :t OR name IN "
                                "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t)")
                else:
                    stmt = text("SELECT pg_total_relation_size(CAST(:t AS regclass))")
                label = "probes" if table == "probe_rows" else table
                sizes[f"{label}_bytes"] = int((await conn.execute(stmt, {"t": table})).scalar_one() or 0)
            if sqlite:
                pages = (await conn.execute(text("PRAGMA page_count"))).scalar_one()
                sizes["file_bytes"] = int(pages) * int((await conn.execute(text("PRAGMA page_size"))).scalar_one())
    finally:
        await engine.dispose()
    return sizes


async def rollup_counts(url: str) -> dict[str, int]:
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(probe_rollups.c.step_s, func.count())
                                       .group_by(probe_rollups.c.step_s))).all()
    finally:
        await engine.dispose()
    return {f"rollup_{int(step)}_rows": int(n) for step, n in rows}


@pytest.mark.slow
async def test_weeks_of_probes_stay_bounded(store_factory: StoreFactory, db_url: str) -> None:
    """Two weeks of a 12-provider fleet probed every 5 minutes, with shortened retention (raw 2d, minutes 4d,
    hours 8d) so the last days are at steady state: row counts stop moving and bytes plateau (or dip when a
    vacuum hands pages back). Bytes per row then give the cost of a provider-day at any interval."""
    store = await store_factory(batch_size=5000, buffer_limit=50_000, flush_interval_s=3600)
    retention = store.retention(SIM_POLICY)
    rng = random.Random(7)
    per_day = 86400 // SIM_INTERVAL_S
    daily: list[dict[str, Any]] = []
    for day in range(SIM_DAYS):
        for step in range(per_day):
            at = T0 + day * DAY + timedelta(seconds=step * SIM_INTERVAL_S)
            for p in range(SIM_PROVIDERS):
                down = rng.random() < 0.05
                store.enqueue(result(f"provider-{p:02d}", at + timedelta(milliseconds=rng.randrange(1000)),
                                     rng.lognormvariate(math.log(40 + 10 * p), 0.5),
                                     Status.DOWN if down else Status.UP))
            if step % (per_day // 4) == per_day // 4 - 1:  # every simulated 6 hours: write, then the job
                await store.flush()
                await retention.run_once(at + timedelta(seconds=SIM_INTERVAL_S))
        daily.append({"day": day + 1, "probes_rows": await count_rows(db_url, probes), **await rollup_counts(db_url),
                      **await table_bytes(db_url)})

    steady = daily[-4:]  # hour rollups fill their 8 days on day 9: from then on nothing should move
    for key in ("probes_rows", "rollup_60_rows", "rollup_3600_rows"):
        assert len({d[key] for d in steady}) == 1, f"{key} still moving: {[d[key] for d in daily]}"
    assert steady[-1]["probes_rows"] <= SIM_PROVIDERS * per_day * (SIM_POLICY.raw_s / 86400 + 1)
    # No real new highs once steady (vacuum may dip). SQLite's VACUUM rebuilds the file: 10 %. PostgreSQL's plain
    # VACUUM recycles emptied index pages only a cycle later and autovacuum runs on its own schedule (on a loaded
    # machine a plateau wobbled by 13 %): 25 %. A leak adds a day's rows every day, a third of the raw rows kept
    # here (2 days of raw retention) per day: over the four steady days it passes either bound.
    bound = 1.10 if db_url.startswith("sqlite") else 1.25
    for key in [k for k in steady[-1] if k.endswith("_bytes")]:
        before, high = max(d[key] for d in daily[:-len(steady)]), max(d[key] for d in steady)
        assert high <= before * bound, f"{key} still growing: {[d[key] for d in daily]}"
    last = max(steady, key=lambda d: d["probes_bytes"])
    raw_row = last["probes_bytes"] / last["probes_rows"]
    rollup_row = last["probe_rollups_bytes"] / (last["rollup_60_rows"] + last["rollup_3600_rows"])
    per_provider_day = {"raw_every_60s": raw_row * 1440, "raw_every_30s": raw_row * 2880,
                        "minute_rollups": rollup_row * 1440, "hour_rollups": rollup_row * 24}
    defaults = (7 * per_provider_day["raw_every_30s"] + 30 * per_provider_day["minute_rollups"]
                + 365 * per_provider_day["hour_rollups"])
    print(json.dumps({"database": store.dialect, "daily": daily, "bytes_per_raw_row": raw_row,
                      "bytes_per_rollup_row": rollup_row, "bytes_per_provider_day": per_provider_day,
                      "steady_bytes_per_provider_default_retention_30s_interval": defaults}))


async def test_error_texts_go_with_the_last_raw_row_that_cites_them(store: Store, db_url: str) -> None:
    """Each error text is stored once however many rows cite it, and deleted once no raw row can cite it."""
    old = [result("p0", T0 + timedelta(minutes=m), status=Status.DOWN) for m in range(30)]
    fresh = ProbeResult(provider="p0", provider_type="vllm", started_at=T0 + 3 * DAY, status=Status.DOWN,
                        total_ms=1.0, error_class=ErrorClass.TIMEOUT, error="timed out")
    await write_all(store, [*old, fresh])
    assert await count_rows(db_url, error_texts) == 2
    retention = store.retention(POLICY)
    await retention.run_once(T0 + 3 * DAY + timedelta(minutes=5))  # raw rows before day 1 are gone
    assert await count_rows(db_url, error_texts) == 1
    assert [s.error for s in await store.history("p0")] == ["timed out"]


async def test_a_late_row_reaches_its_hour_when_the_next_hour_ends(store: Store) -> None:
    """Hours are rolled up (from the raw rows) once an hour ends, not on every run; a row that lands late for an
    hour already rolled up is counted when the next hour is."""
    await write_all(store, workload(providers=1, start=T0, minutes=120, per_minute=1))
    retention = store.retention(POLICY)
    assert (await retention.run_once(T0 + timedelta(hours=1, minutes=5))).rolled_up[HOUR_S] == 1
    assert (await retention.run_once(T0 + timedelta(hours=1, minutes=6))).rolled_up[HOUR_S] == 0
    await write_all(store, [result("p0", T0 + timedelta(minutes=30, seconds=30), 999.0)])
    report = await retention.run_once(T0 + timedelta(hours=2, minutes=5))
    assert report.rolled_up[HOUR_S] == 2  # the late row's hour again, and the one that just ended
    hours = await store.aggregate("p0", step_s=3600, since=T0, until=T0 + timedelta(hours=2))
    assert [b.count for b in hours] == [61, 60]
