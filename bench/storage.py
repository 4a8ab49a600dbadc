"""Storage: bytes per provider per day as monitord's store writes real probe results, on SQLite and PostgreSQL.

What runs: the probe engine (`probe_provider`) and the canary (`run_canary`) against real aiohttp doubles of the
servers (tests/doubles: vLLM and llama.cpp publishing capacity through /metrics and /slots, Ollama, and a vLLM
that refuses connections one hour in twelve), each call given the simulated time as its clock, so the results
are real ProbeResults and GenerationSamples stamped over simulated days (a probe every 30 s per provider, a canary
every 300 s per model, the defaults). The results are produced once and fed, in time order, to monitord's real
Store on each database: its writer (flushed every simulated minute, in the writer's 500-row batches) and its
retention job with the default policy (raw 7 d, minute rollups 30 d, hour rollups 365 d), run every 5 simulated
minutes (the daemon runs it every 60 s; the rows it writes are the same, only fewer upserts of the same rows).
Nothing is VACUUMed: SQLite is measured as its file (after a WAL checkpoint) and PostgreSQL as
pg_total_relation_size of the store's tables (heap, indexes, TOAST), at the end of every simulated day.

"Per provider per day" is the growth of the database over the last simulated day divided by the providers: what
one provider-day costs while the raw rows are kept (the first 7 days). The steady state with the default
retention adds the older tiers: 7 days of raw rows, 30 days of minute rollups and 365 of hour rollups, from each
tier's measured bytes per provider-day (minute rollups measured by running the job 8 simulated days later, which
rolls every minute up and prunes the raw rows, and reading the rollup tables' size). A second database in the same
run is fed the same probe results with capacity stripped and no canaries, so the capacity columns' and the
canaries' shares are differences measured side by side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from bench.common import POSTGRES_DSN, POSTGRES_TIMEOUT_S, Table, Target, busy_note
from monitord.canary import run_canary
from monitord.model import CanarySpec, GenerationSample, ProbeResult, ProviderSpec
from monitord.probe import create_session, probe_provider
from monitord.providers import ADAPTERS
from monitord.store import RetentionPolicy, Store
from monitord.store.migrate import upgrade
from monitord.store.retention import DAY_S, MINUTE_LEAD_S

ORDER = 21
TITLE = "storage per provider per day, real probe results through the store's writer and retention"

INTERVAL_S = 30  # monitor.interval's default
CANARY_INTERVAL_S = 300  # monitor.canary.interval's default
RETENTION_EVERY_S = 300
FLUSH_EVERY_S = 60
FULL_DAYS = 2
QUICK_HOURS = 3
T0 = datetime(2026, 11, 2, tzinfo=UTC)  # midnight: days line up with hour and minute buckets
GOAL_KB = {"SQLite": 200, "PostgreSQL": 400}
DEFAULT_POLICY = RetentionPolicy()
# the tables that grow with time, and those that hold a row or a few per provider whatever the days
SERIES_TABLES = ("probe_rows", "probe_rollups", "generation_samples", "generation_rollups", "names", "error_texts")
FIXED_TABLES = ("provider_models", "providers", "retention_marks")
TABLES = SERIES_TABLES + FIXED_TABLES
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# days of minute rollups at steady state: made MINUTE_LEAD_S (+ the lookback) before the raw rows go, kept until
# minute_rollups_s
MINUTE_DAYS_KEPT = (DEFAULT_POLICY.minute_rollups_s - DEFAULT_POLICY.raw_s + DEFAULT_POLICY.lookback_s
                    + MINUTE_LEAD_S) / DAY_S


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type: str
    canary: bool
    flaky: bool = False  # refuses connections one simulated hour in twelve


FLEET = (Member("vllm-gpu", "vllm", canary=True), Member("llamacpp-cpu", "llamacpp", canary=True),
         Member("ollama-mac", "ollama", canary=False), Member("vllm-flaky", "vllm", canary=False, flaky=True))

Observation = ProbeResult | GenerationSample


async def observe(seconds: int) -> list[Observation]:
    """Probe and canary the fleet of doubles over `seconds` of simulated time; the results in time order."""
    from tests.doubles import DOUBLES
    from tests.doubles.base import DoubleControl, ProviderDouble

    doubles = {m.name: await ProviderDouble(m.type, DOUBLES[m.type], DoubleControl()).start() for m in FLEET}
    specs = {m.name: ProviderSpec(name=m.name, type=m.type, base_url=doubles[m.name].url, timeout_s=2.0,
                                  max_retries=0, models=(MODEL,) if m.type == "vllm" else (),
                                  canary=CanarySpec(enabled=m.canary, models=(MODEL,) if m.type == "vllm" else ()))
             for m in FLEET}
    out: list[Observation] = []
    down = False
    try:
        async with create_session() as session:
            for tick in range(0, seconds, INTERVAL_S):
                hour = tick // 3600
                if (hour % 12 == 5) != down:
                    down = hour % 12 == 5
                    for member in FLEET:
                        if member.flaky:
                            await doubles[member.name].set("down" if down else "up")
                for offset, member in enumerate(FLEET):
                    at = T0 + timedelta(seconds=tick + offset * 7, milliseconds=offset * 13)
                    spec = specs[member.name]
                    out.append(await probe_provider(spec, ADAPTERS[spec.type], session, now=lambda at=at: at))
                    if member.canary and tick % CANARY_INTERVAL_S == 0:
                        listed = out[-1].models if isinstance(out[-1], ProbeResult) else ()
                        model = MODEL if member.type == "vllm" else (listed[0].id if listed else MODEL)
                        out.append(await run_canary(spec, model, session, capacity=out[-1].capacity
                                                    if isinstance(out[-1], ProbeResult) else None,
                                                    now=lambda at=at: at + timedelta(seconds=1)))
    finally:
        for double in doubles.values():
            await double.stop()
    return out


def bare(observations: Sequence[Observation]) -> list[Observation]:
    """The same probe results without capacity, and no canary samples: the baseline for the shares."""
    return [replace(o, capacity=None) for o in observations if isinstance(o, ProbeResult)]


@dataclass
class Measured:
    days: list[dict[str, int]]  # table -> bytes at the end of each simulated day (and "total")
    tiers: dict[str, int]  # after the job ran 8 days later: rollup tables' bytes
    rows: dict[str, int]  # rollup rows by step then


async def feed(url: str, observations: Sequence[Observation], seconds: int,
               size: Any) -> Measured:
    """Write `observations` through a Store in simulated time; sizes at each day's end (and at the end)."""
    store = await Store.open(url, batch_size=500, buffer_limit=1_000_000)
    retention = store.retention(DEFAULT_POLICY)
    days: list[dict[str, int]] = []
    try:
        await store.sync_providers([ProviderSpec(name=m.name, type=m.type, base_url="http://10.0.0.1:8000")
                                    for m in FLEET], T0)
        pending = iter(observations)
        ahead = next(pending, None)
        step = min(FLUSH_EVERY_S, seconds)
        for elapsed in range(step, seconds + 1, step):
            now = T0 + timedelta(seconds=elapsed)
            while ahead is not None and ahead.started_at < now:
                store.enqueue(ahead)
                ahead = next(pending, None)
            await store.flush()
            if elapsed % RETENTION_EVERY_S == 0:
                await retention.run_once(now)
            if elapsed % DAY_S == 0 or elapsed == seconds:
                days.append(await size(url))
        await store.flush()
        await retention.run_once(T0 + timedelta(seconds=seconds) + timedelta(days=8))
        tiers = await size(url)
        rows = await _rows(url)  # rollups only now: the raw rows are gone
    finally:
        await store.close()
    return Measured(days, tiers, rows)


async def _rows(url: str) -> dict[str, int]:
    from sqlalchemy import text

    from monitord.store import dialects

    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            out = {}
            for table in ("probe_rows", "generation_samples"):
                out[table] = int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
            for step in (60, 3600):
                out[f"probe_rollups_{step}"] = int((await conn.execute(text(
                    f"SELECT count(*) FROM probe_rollups WHERE step_s = {step}"))).scalar_one())
    finally:
        await engine.dispose()
    return out


async def sqlite_size(url: str) -> dict[str, int]:
    path = url.split("///", 1)[1]

    def look() -> dict[str, int]:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes = {}
            for table in TABLES:
                found = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name IN (SELECT name FROM "
                                     "sqlite_master WHERE type = 'index' AND tbl_name = ?)", (table, table))
                sizes[table] = int(found.fetchone()[0] or 0)
        finally:
            conn.close()
        sizes["total"] = os.path.getsize(path)
        sizes["series"] = sum(sizes[table] for table in SERIES_TABLES)
        return sizes

    return await asyncio.to_thread(look)


def postgres_size(schema: str) -> Any:
    async def size(_url: str) -> dict[str, int]:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=POSTGRES_TIMEOUT_S)
        try:
            sizes = {table: int(await conn.fetchval("SELECT pg_total_relation_size(CAST($1 AS regclass))",
                                                    f'"{schema}".{table}')) for table in TABLES}
        finally:
            await conn.close()
        sizes["total"] = sum(sizes.values())
        sizes["series"] = sum(sizes[table] for table in SERIES_TABLES)
        return sizes
    return size


async def measure(database: str, full: Sequence[Observation], baseline: Sequence[Observation], seconds: int,
                  workdir: Path, schemas: list[str]) -> tuple[Measured, Measured]:
    found = []
    for observations in (full, baseline):
        if database == "SQLite":
            url = f"sqlite+aiosqlite:///{workdir / f'storage-{uuid.uuid4().hex[:8]}.db'}"
            size = sqlite_size
        else:
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            schemas.append(schema)
            url = make_url(POSTGRES_DSN).set(drivername="postgresql+asyncpg").update_query_dict(
                {"search_path": schema}).render_as_string(hide_password=False)
            size = postgres_size(schema)
        await upgrade(url)
        found.append(await feed(url, observations, seconds, size))
    return found[0], found[1]


async def run(quick: bool) -> list[Table]:
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # a line per job run
    try:
        return await _run(quick)
    finally:
        structlog.configure(**saved)


async def _run(quick: bool) -> list[Table]:
    seconds = QUICK_HOURS * 3600 if quick else FULL_DAYS * DAY_S
    note = busy_note()
    observations = await observe(seconds)
    baseline = bare(observations)
    measured: dict[str, tuple[Measured, Measured]] = {}
    skipped: list[str] = []
    schemas: list[str] = []
    with tempfile.TemporaryDirectory(prefix="monitord-bench-") as tmp:
        measured["SQLite"] = await measure("SQLite", observations, baseline, seconds, Path(tmp), schemas)
        try:
            admin = await asyncpg.connect(POSTGRES_DSN, timeout=POSTGRES_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            skipped.append(f"PostgreSQL not measured: no server ({exc!r})")
        else:
            try:
                measured["PostgreSQL"] = await measure("PostgreSQL", observations, baseline, seconds, Path(tmp),
                                                       schemas)
            finally:
                for schema in schemas:
                    await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await admin.close()
    return tables(measured, observations, seconds, quick, skipped, note)


def _per_day(days: list[dict[str, int]], key: str, seconds: int) -> float:
    """Bytes per provider per day of `key`: growth over the last simulated day (the whole run when shorter)."""
    if len(days) >= 2:
        return (days[-1][key] - days[-2][key]) / len(FLEET)
    return days[-1][key] / len(FLEET) * DAY_S / seconds


def tables(measured: dict[str, tuple[Measured, Measured]], observations: Sequence[Observation], seconds: int,
           quick: bool, skipped: list[str], note: str) -> list[Table]:
    main = Table("Storage per provider per day (30 s interval, capacity and canaries on, no VACUUM)",
                 ("database", "per provider-day", "raw probes", "canary samples", "rollups", "capacity share",
                  "canary share", "whole database", "steady state, default retention"))
    probes = sum(isinstance(o, ProbeResult) for o in observations)
    samples = len(observations) - probes
    failed = sum(isinstance(o, ProbeResult) and o.error is not None for o in observations)
    with_capacity = sum(isinstance(o, ProbeResult) and o.capacity is not None for o in observations)
    tiers_row = Table("Storage per provider-day by retention tier (default retention)",
                      ("database", "raw probes (kept 7 d)", f"minute rollups (kept ~{MINUTE_DAYS_KEPT:.0f} d)",
                       "hour rollups (kept 365 d)", "steady state"))
    figures: dict[str, Any] = {}
    quick_note = "quick mode: a few simulated hours, scaled to a day; not the figure" if quick else ""
    for database, (full, base) in measured.items():
        day = _per_day(full.days, "series", seconds)
        base_day = _per_day(base.days, "series", seconds)
        whole = _per_day(full.days, "total", seconds)
        fixed = sum(full.days[-1][table] for table in FIXED_TABLES) / len(FLEET)
        raw = _per_day(full.days, "probe_rows", seconds)
        canary = (_per_day(full.days, "generation_samples", seconds)
                  + _per_day(full.days, "generation_rollups", seconds))
        rollups = _per_day(full.days, "probe_rollups", seconds) + _per_day(full.days, "generation_rollups", seconds)
        capacity_share = (_per_day(full.days, "probe_rows", seconds) - _per_day(base.days, "probe_rows", seconds)) / day
        canary_share = (day - base_day) / day - capacity_share
        # older tiers: the rollup tables once the job rolled every minute up (8 days on), per provider-day
        days_simulated = seconds / DAY_S
        minute_and_hour = (full.tiers["probe_rollups"] + full.tiers["generation_rollups"]) / len(FLEET) / days_simulated
        # the rollup tables' bytes split between the tiers by their rows (an hour row's histogram is a little
        # longer than a minute row's: the hour tier is slightly under-, the minute tier over-counted)
        hour_rows = full.rows["probe_rollups_3600"] / max(1, full.rows["probe_rollups_60"] + full.rows[
            "probe_rollups_3600"])
        minute_day, hour_day = minute_and_hour * (1 - hour_rows), minute_and_hour * hour_rows
        steady = (DEFAULT_POLICY.raw_s / DAY_S * (raw + _per_day(full.days, "generation_samples", seconds))
                  + MINUTE_DAYS_KEPT * minute_day + DEFAULT_POLICY.hour_rollups_s / DAY_S * hour_day)
        main.add(database, f"{day / 1024:,.0f} KB", f"{raw / 1024:,.0f} KB", f"{canary / 1024:,.1f} KB",
                 f"{rollups / 1024:,.1f} KB", f"{capacity_share:.0%}", f"{canary_share:.0%}",
                 f"{whole / 1024:,.0f} KB", f"{steady / 1024 / 1024:,.1f} MB")
        tiers_row.add(database, f"{raw / 1024:,.0f} KB", f"{minute_day / 1024:,.1f} KB",
                      f"{hour_day / 1024:,.2f} KB", f"{steady / 1024 / 1024:,.1f} MB")
        figures[database] = {"whole_database_bytes_per_day": whole, "fixed_bytes_per_provider": fixed,
                             "minute_rollup_bytes_per_day": minute_day, "hour_rollup_bytes_per_day": hour_day,
                             "per_provider_day_bytes": day, "raw_bytes": raw, "canary_bytes": canary,
                             "rollup_bytes": rollups, "capacity_share": capacity_share, "canary_share": canary_share,
                             "steady_bytes": steady, "days": full.days, "tiers": full.tiers, "rows": full.rows}
        goal = GOAL_KB[database]
        main.targets.append(Target(
            f"storage per provider per day, {database}, 30 s interval, as written by monitord's store (rows, "
            "indexes, rollups; canaries and capacity on; no VACUUM)", f"< {goal} KB", f"{day / 1024:,.0f} KB",
            None if quick else day < goal * 1024, "; ".join(filter(None, [
                quick_note or note, f"the time-series tables; the whole database grew {whole / 1024:,.0f} KB per "
                f"provider-day, the per-provider tables that do not grow with days (provider_models, providers, "
                f"retention_marks) held {fixed / 1024:,.0f} KB per provider at the end"]))))
    main.notes += [
        f"{probes:,} real ProbeResults and {samples:,} canary samples of {len(FLEET)} providers (vLLM and llama.cpp "
        f"with capacity, Ollama, a vLLM refusing one hour in twelve) over {seconds / 3600:g} simulated hours; "
        f"{with_capacity / max(probes, 1):.0%} carry capacity, {failed / max(probes, 1):.0%} failed with an error "
        "text.",
        "per provider-day: the growth of the time-series tables (probe_rows, probe_rollups, generation_samples, "
        "generation_rollups, names, error_texts: rows and indexes; SQLite: their pages by dbstat after a WAL "
        "checkpoint; PostgreSQL: pg_total_relation_size) over the last simulated day / providers. Whole database: "
        "the SQLite file's growth, or every store table's on PostgreSQL, which adds the per-provider tables that do "
        "not grow with days but whose updated rows (provider_models' last sighting every minute) leave dead versions "
        "that autovacuum reclaims on its own schedule, outrun here by days that pass in seconds. raw probes, canary "
        "samples and rollups: those tables' part. Capacity share: probe_rows' growth minus that of a second "
        "database fed the same results without capacity; canary share: the rest of the two databases' difference.",
        "Steady state with the default retention: 7 days of raw rows and canary samples, the minute rollups of days "
        "7 to 30 and 365 days of hour rollups, from each tier's measured bytes per provider-day (rollups measured "
        "after running the job 8 simulated days later, which rolls every simulated minute up and prunes the raw rows).",
        *skipped,
    ]
    if quick:
        main.notes.append("Quick mode: a few simulated hours, scaled to a day; figures are not meaningful.")
    main.figures["storage"] = figures
    tiers_row.notes.append("Minute rollups are made from the raw rows an hour before those reach the raw "
                           "retention, so they are kept from day 7 to day 30 (until then minute steps read the raw "
                           "rows); hour rollups as each hour ends. A provider-day costs at most its raw rows plus its "
                           "hour row: the minute tier is smaller.")
    return [main, tiers_row]
