"""Ingestion: probe rows per second through monitord's batched writer (Store.enqueue + flush) into SQLite and
PostgreSQL, beside the raw drivers writing the same rows to the same migrated tables.

Every variant starts from the same list of ProbeResults (mixed statuses, NULLs, 1-3 models per answer) and
writes them in transactions of the writer's batch size (500). The raw variants: sqlite3.executemany (WAL,
synchronous=NORMAL, the store's pragmas) and asyncpg copy_records_to_table for the probe rows; "same rows" also
upserts the model sightings and updates server versions exactly as the writer does (the merge of sightings reuses
monitord.store.rows so both sides write identical rows), "probe rows only" is the bare ceiling. Each database and
variant gets a fresh migrated copy per repetition; the table reports the median run, the targets (issue 16:
>= 0.8x) each repetition's ratio as min / median / max.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench.common import (
    POSTGRES_DSN,
    POSTGRES_TIMEOUT_S,
    Meter,
    Table,
    Target,
    Usage,
    busy_note,
    chunks,
    spread_text,
)
from monitord.model import Capacity, ErrorClass, HttpCall, ModelInfo, ModelKind, ProbeResult, ProviderSpec, Status
from monitord.store import Store, rows
from monitord.store.migrate import upgrade

ORDER = 20
TITLE = "probe rows/s through monitord's writer vs raw sqlite3 / asyncpg COPY"

FULL_ROWS = 100_000
QUICK_ROWS = 2_000
FULL_REPEATS = 3
PROVIDERS = 200
BATCH_SIZE = 500  # storage.batch_size's default: the raw variants commit as often as the writer
RAW_SHARE_MIN = 0.8  # issue 16: monitord >= 0.8x the raw driver's rate, identical rows

_MODELS = (
    ModelInfo("meta-llama/Llama-3.1-8B-Instruct", kind=ModelKind.LLM, context_length=32768, loaded=True,
              owned_by="vllm", capabilities=frozenset({"chat", "completion"})),
    ModelInfo("qwen2.5-coder:7b", kind=ModelKind.LLM, context_length=32768, size_bytes=4_683_087_332,
              family="qwen2", parameter_size="7.6B", quantization="Q4_K_M"),
    ModelInfo("nomic-embed-text:latest", kind=ModelKind.EMBEDDING, context_length=8192, family="nomic-bert",
              parameter_size="137M", quantization="F16", capabilities=frozenset({"embeddings"})),
    ModelInfo("mistral-7b-instruct-v0.3.Q4_K_M.gguf", context_length=4096, loaded=True),
    ModelInfo("sql-lora", kind=ModelKind.LLM, context_length=32768, loaded=True, owned_by="vllm"),
    ModelInfo("llava:13b", kind=ModelKind.VISION, context_length=4096, parameter_size="13B",
              capabilities=frozenset({"chat", "vision"})),
    ModelInfo("bge-reranker-v2-m3", kind=ModelKind.RERANK, context_length=8192),
    ModelInfo("gpt-oss-20b"),
)
_TYPES = (("vllm", "0.11.0"), ("ollama", "0.13.0"), ("llamacpp", "b7120-4a5b6c7d"), ("tgi", None),
          ("sglang", None), ("localai", "v3.7.0"), ("lmstudio", None), ("koboldcpp", "1.101"))


_PUBLISH_LOAD = frozenset({"vllm", "llamacpp", "sglang", "tgi"})  # capacity from /metrics or /slots


def make_results(count: int, *, providers: int = PROVIDERS, seed: int = 7) -> list[ProbeResult]:
    """Realistic probe results: ~88% up (the servers that publish their load with capacity), 4% degraded (no
    models), 3% loading, 5% down (refused or timed out)."""
    rng = random.Random(seed)
    fleet = []
    for index in range(providers):
        kind, version = _TYPES[index % len(_TYPES)]
        fleet.append((f"provider-{index:03d}", kind, version, tuple(rng.sample(_MODELS, rng.randint(1, 3)))))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    results = []
    for index in range(count):
        name, kind, version, models = fleet[index % providers]
        at = start + timedelta(milliseconds=10 * index)
        roll = rng.random()
        total_ms = rng.lognormvariate(3.0, 0.8)
        common: dict[str, Any] = {"provider": name, "provider_type": kind, "started_at": at}
        if roll < 0.88:
            fresh = rng.random() < 0.1
            load = Capacity(slots_total=4, slots_busy=rng.randint(0, 4), queue_depth=rng.randint(0, 2),
                            requests_running=rng.randint(0, 4), kv_cache_usage=rng.random()) \
                if kind in _PUBLISH_LOAD else None
            results.append(ProbeResult(
                **common, status=Status.UP, total_ms=total_ms, connect_ms=total_ms * 0.1 if fresh else None,
                ttfb_ms=total_ms * 0.6, http_status=200, models=models, server_version=version,
                attempts=2 if rng.random() < 0.05 else 1, capacity=load,
                calls=(HttpCall("GET", "/v1/models", 200, total_ms),)))
        elif roll < 0.92:
            results.append(ProbeResult(
                **common, status=Status.DEGRADED, total_ms=total_ms, error_class=ErrorClass.EMPTY_MODELS,
                error="serves no model", ttfb_ms=total_ms * 0.6, http_status=200, server_version=version))
        elif roll < 0.95:
            results.append(ProbeResult(
                **common, status=Status.LOADING, total_ms=total_ms, error_class=ErrorClass.LOADING,
                error="/health: HTTP 503 Loading model", ttfb_ms=total_ms * 0.8, http_status=503))
        elif roll < 0.975:
            results.append(ProbeResult(
                **common, status=Status.DOWN, total_ms=rng.uniform(0.2, 2.0), error_class=ErrorClass.REFUSED,
                error="connection refused (127.0.0.1:8000)", attempts=3))
        else:
            results.append(ProbeResult(
                **common, status=Status.DOWN, total_ms=10_000.0, error_class=ErrorClass.TIMEOUT,
                error="timed out", attempts=1))
    return results


def provider_specs(results: Sequence[ProbeResult]) -> list[ProviderSpec]:
    """The providers the results name, so the writer's server-version updates hit real rows."""
    kinds = {r.provider: r.provider_type for r in results}
    return [ProviderSpec(name=name, type=kind, base_url=f"http://10.0.0.{i % 250}:8000")
            for i, (name, kind) in enumerate(sorted(kinds.items()))]


@dataclass(frozen=True, slots=True)
class Run:
    rows: int
    usage: Usage

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.usage.wall_s


# --- monitord's writer -------------------------------------------------------------------------------------------


async def write_with_store(url: str, results: Sequence[ProbeResult]) -> Run:
    """Enqueue every result (yielding to the writer task every batch) and flush; time all of it."""
    store = await Store.open(url, batch_size=BATCH_SIZE, buffer_limit=max(len(results), BATCH_SIZE))
    try:
        await store.sync_providers(provider_specs(results), datetime.now(UTC))
        await store.start()
        with Meter() as meter:
            for batch in chunks(results, BATCH_SIZE):
                for result in batch:
                    store.enqueue(result)
                await asyncio.sleep(0)
            await store.flush()
        if store.written_total != len(results) or store.dropped_total:
            raise RuntimeError(f"writer wrote {store.written_total} and dropped {store.dropped_total} "
                               f"of {len(results)} rows")
    finally:
        await store.close()
    return Run(len(results), meter.usage)


# --- raw drivers: the same compact rows (store.rows' encodings), built by plain code -------------------------

_MODEL_UPSERT = """
INSERT INTO provider_models (provider, model_id, details, first_seen, last_seen) VALUES ({0}, {1}, {2}, {3}, {4})
ON CONFLICT (provider, model_id) DO UPDATE SET
  details = CASE WHEN excluded.last_seen >= provider_models.last_seen THEN excluded.details
                 ELSE provider_models.details END,
  last_seen = CASE WHEN excluded.last_seen >= provider_models.last_seen THEN excluded.last_seen
                   ELSE provider_models.last_seen END,
  first_seen = CASE WHEN excluded.first_seen < provider_models.first_seen THEN excluded.first_seen
                    ELSE provider_models.first_seen END
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite (provider_models)


def _us(ms: float | None) -> int | None:
    return None if ms is None else round(ms * 1000)


def _probe_tuple(r: ProbeResult, provider_id: int, error_id: int | None) -> tuple[Any, ...]:
    """The row monitord's writer stores for `r` (rows.PROBE_COLUMNS order), written out by hand."""
    load = r.capacity
    return (provider_id, (r.started_at - _EPOCH) // _US, rows.STATUS_CODES[r.status],
            None if r.error_class is None else rows.ERROR_CLASS_CODES[r.error_class], error_id, _us(r.connect_ms),
            _us(r.ttfb_ms), _us(r.total_ms), r.http_status, len(r.models), r.attempts,
            None if load is None else load.slots_total, None if load is None else load.slots_busy,
            None if load is None else load.queue_depth, None if load is None else load.requests_running,
            None if load is None or load.kv_cache_usage is None else round(load.kv_cache_usage * 1_000_000))


def _errors(batch: Sequence[ProbeResult]) -> dict[str, int]:
    return {r.error: rows.error_id(r.error) for r in batch if r.error is not None}


def write_sqlite_raw(path: Path, results: Sequence[ProbeResult], *, same_rows: bool) -> Run:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        columns = rows.PROBE_COLUMNS
        insert = f"INSERT INTO probe_rows ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        upsert = _MODEL_UPSERT.format(*"?????")
        with Meter() as meter:
            ids: dict[str, int] = {}
            known: set[int] = set()  # error texts written (committed) already
            for batch in chunks(results, BATCH_SIZE):
                conn.execute("BEGIN")
                new = {r.provider for r in batch} - ids.keys()
                if new:
                    conn.executemany("INSERT OR IGNORE INTO names (kind, digest, name) VALUES (1, ?, ?)",
                                     [(rows.digest(rows.NAME_PROVIDER, name), name) for name in new])
                    ids.update((name, id_) for id_, name in conn.execute("SELECT id, name FROM names"))
                errors = _errors(batch)
                new_errors = [(v, k) for k, v in errors.items() if v not in known]
                if new_errors:
                    conn.executemany("INSERT INTO error_texts (id, text, last_used_s) VALUES (?, ?, 0) "
                                     "ON CONFLICT (id) DO NOTHING", new_errors)
                conn.executemany(insert, [_probe_tuple(r, ids[r.provider], None if r.error is None
                                                       else errors[r.error]) for r in batch])
                if same_rows:
                    conn.executemany(upsert, [
                        (m["provider"], m["model_id"], json.dumps(m["details"]), m["first_seen"].strftime(_SQLITE_TS),
                         m["last_seen"].strftime(_SQLITE_TS)) for m in rows.model_rows(batch)])
                    conn.executemany("UPDATE providers SET server_version = ? WHERE name = ?",
                                     [(v, name) for name, v in rows.server_versions(batch).items()])
                conn.execute("COMMIT")
                known.update(v for v, _ in new_errors)
    finally:
        conn.close()
    return Run(len(results), meter.usage)


async def write_postgres_raw(conn: asyncpg.Connection, results: Sequence[ProbeResult], *, same_rows: bool) -> Run:
    upsert = _MODEL_UPSERT.format("$1", "$2", "$3", "$4", "$5")
    with Meter() as meter:
        ids: dict[str, int] = {}
        known: set[int] = set()  # error texts written (committed) already
        for batch in chunks(results, BATCH_SIZE):
            async with conn.transaction():
                new = {r.provider for r in batch} - ids.keys()
                if new:
                    await conn.executemany("INSERT INTO names (kind, digest, name) VALUES (1, $1, $2) "
                                           "ON CONFLICT DO NOTHING",
                                           [(rows.digest(rows.NAME_PROVIDER, name), name) for name in new])
                    ids.update((row["name"], row["id"]) for row in await conn.fetch("SELECT id, name FROM names"))
                errors = _errors(batch)
                new_errors = [(v, k) for k, v in errors.items() if v not in known]
                if new_errors:
                    await conn.executemany("INSERT INTO error_texts (id, text, last_used_s) VALUES ($1, $2, 0) "
                                           "ON CONFLICT (id) DO NOTHING", new_errors)
                await conn.copy_records_to_table(
                    "probe_rows", records=[_probe_tuple(r, ids[r.provider], None if r.error is None
                                                        else errors[r.error]) for r in batch],
                    columns=rows.PROBE_COLUMNS)
                if same_rows:
                    await conn.executemany(upsert, [
                        (m["provider"], m["model_id"], json.dumps(m["details"]), m["first_seen"], m["last_seen"])
                        for m in rows.model_rows(batch)])
                    await conn.executemany("UPDATE providers SET server_version = $1 WHERE name = $2",
                                           [(v, name) for name, v in rows.server_versions(batch).items()])
            known.update(v for v, _ in new_errors)
    return Run(len(results), meter.usage)


# --- the benchmark -------------------------------------------------------------------------------------------------

Variant = Callable[[Sequence[ProbeResult]], Awaitable[Run]]
OURS, RAW, OURS_BARE, RAW_BARE = ("monitord writer", "raw driver", "monitord writer, probe rows only",
                                  "raw driver, probe rows only")
VARIANTS = (OURS, RAW, OURS_BARE, RAW_BARE)
BARE = frozenset({OURS_BARE, RAW_BARE})  # fed results without models or versions: the probes table alone


def sqlite_variants(workdir: Path) -> dict[str, Variant]:
    async def fresh(name: str) -> tuple[Path, str]:
        path = workdir / f"{name}-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade(url)
        return path, url

    async def ours(results: Sequence[ProbeResult]) -> Run:
        _, url = await fresh("monitord")
        return await write_with_store(url, results)

    def raw(same_rows: bool) -> Variant:
        async def variant(results: Sequence[ProbeResult]) -> Run:
            path, url = await fresh("raw")
            await _sync_providers(url, results)
            return write_sqlite_raw(path, results, same_rows=same_rows)
        return variant

    return dict(zip(VARIANTS, (ours, raw(True), ours, raw(False)), strict=True))


async def _sync_providers(url: str, results: Sequence[ProbeResult]) -> None:
    """The providers rows exist in every copy (set up through the store, not timed)."""
    store = await Store.open(url)
    try:
        await store.sync_providers(provider_specs(results), datetime.now(UTC))
    finally:
        await store.close()


def postgres_variants(admin: asyncpg.Connection, schemas: list[str]) -> dict[str, Variant]:
    async def fresh() -> tuple[str, str]:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        url = make_url(POSTGRES_DSN).set(drivername="postgresql+asyncpg").update_query_dict(
            {"search_path": schema}).render_as_string(hide_password=False)
        await upgrade(url)  # creates the schema and the tables in it
        return schema, url

    async def ours(results: Sequence[ProbeResult]) -> Run:
        _, url = await fresh()
        return await write_with_store(url, results)

    def raw(same_rows: bool) -> Variant:
        async def variant(results: Sequence[ProbeResult]) -> Run:
            schema, url = await fresh()
            await _sync_providers(url, results)
            conn = await asyncpg.connect(POSTGRES_DSN, timeout=POSTGRES_TIMEOUT_S,
                                         server_settings={"search_path": schema})
            try:
                return await write_postgres_raw(conn, results, same_rows=same_rows)
            finally:
                await conn.close()
        return variant

    return dict(zip(VARIANTS, (ours, raw(True), ours, raw(False)), strict=True))


async def measure_all(variants: dict[str, Variant], results: Sequence[ProbeResult],
                      repeats: int) -> dict[str, list[Run]]:
    """Each variant `repeats` times, interleaved so a burst of load elsewhere hits them alike."""
    bare = [replace(result, models=(), server_version=None) for result in results]
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            runs[name].append(await variant(bare if name in BARE else results))
    return runs


def _median(runs: list[Run]) -> Run:
    rate = statistics.median_low(r.rows_per_s for r in runs)
    return next(r for r in runs if r.rows_per_s == rate)


async def run(quick: bool) -> list[Table]:
    count, repeats = (QUICK_ROWS, 1) if quick else (FULL_ROWS, FULL_REPEATS)
    results = make_results(count)
    measured: dict[str, dict[str, list[Run]]] = {}
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="monitord-bench-") as tmp:
        measured["SQLite"] = await measure_all(sqlite_variants(Path(tmp)), results, repeats)
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=POSTGRES_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL skipped: no server at {make_url(POSTGRES_DSN).render_as_string()} ({exc!r})"
        print(reason)
        skipped.append(reason)
    else:
        schemas: list[str] = []
        try:
            measured["PostgreSQL"] = await measure_all(postgres_variants(admin, schemas), results, repeats)
        finally:
            for schema in schemas:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
    return tables(measured, results, repeats, skipped, quick)


def tables(measured: dict[str, dict[str, list[Run]]], results: Sequence[ProbeResult], repeats: int,
           skipped: list[str], quick: bool) -> list[Table]:
    main = Table("Ingestion", ("database", "writer", "rows", "rows/s", "client CPU µs/row", "monitord / raw"))
    figures: dict[str, Any] = {}
    pairs = ((OURS, RAW, "same rows: probe rows, model sightings and server versions"),
             (OURS_BARE, RAW_BARE, "probe rows only"))
    note = "quick mode: a few thousand rows, one run" if quick else busy_note()
    for database, all_runs in measured.items():
        runs = {name: _median(found) for name, found in all_runs.items()}
        for name, found in runs.items():
            ours = runs[OURS_BARE] if name == RAW_BARE else runs[OURS] if name == RAW else None
            main.add(database, name, found.rows, found.rows_per_s, found.usage.cpu_us_per(found.rows),
                     None if ours is None else f"{ours.rows_per_s / found.rows_per_s:.0%}")
            figures[f"{database}/{name}"] = {"rows_per_s": found.rows_per_s,
                                             "cpu_us_per_row": found.usage.cpu_us_per(found.rows)}
        for ours_name, raw_name, label in pairs:
            # each repetition's ratio (the variants of one repetition ran back to back, under the same load)
            shares = [mine.rows_per_s / theirs.rows_per_s
                      for mine, theirs in zip(all_runs[ours_name], all_runs[raw_name], strict=True)]
            cpu = [(mine.usage.cpu_us_per(mine.rows) or 0.0, theirs.usage.cpu_us_per(theirs.rows) or 0.0)
                   for mine, theirs in zip(all_runs[ours_name], all_runs[raw_name], strict=True)]
            median = statistics.median(shares)
            main.targets.append(Target(
                f"ingestion rows/s, monitord's writer vs the raw driver writing the identical rows into the same "
                f"schema, {database}, {label} ({len(results):,} probe results, batches of {BATCH_SIZE})",
                f">= {RAW_SHARE_MIN:g}x", spread_text(shares, "x", lambda v: f"{v:.2f}"),
                None if quick else median >= RAW_SHARE_MIN,
                "; ".join(filter(None, [note, "client CPU µs/row monitord vs raw: " + ", ".join(
                    f"{a:.1f} vs {b:.1f}" for a, b in cpu)]))))
    statuses = {s: sum(r.status is s for r in results) / len(results) for s in Status if s is not Status.UNKNOWN}
    sightings = len(rows.model_rows(results[:BATCH_SIZE]))
    main.notes += [
        f"{len(results):,} ProbeResults of {PROVIDERS} providers: " + ", ".join(
            f"{share:.0%} {status.value}" for status, share in statuses.items() if share) + "; NULLs where a server "
        f"did not answer; 1-3 models per answer, so each {BATCH_SIZE}-row batch also carries ~{sightings} model "
        "sightings (provider_models) and server versions.",
        "Both sides write the identical rows into the same migrated schema (revision 0008's compact probe_rows: "
        "provider ids from names, error texts in error_texts, Unix-µs times, integer-µs latencies, codes); the raw "
        "side builds them with plain code (bench/ingest.py's _probe_tuple) and resolves names and error texts "
        "itself. \"probe rows only\": the same results without models or server versions.",
        "Raw: sqlite3 executemany; asyncpg copy_records_to_table for probe rows and executemany for the rest (it "
        "upserts every sighting and version of a batch, the writer those changed since it wrote them; both write "
        "an error text once). Transactions "
        f"of {BATCH_SIZE} rows everywhere (storage.batch_size's default); {repeats} interleaved repetition(s), each "
        "into a fresh migrated database; the table shows the median run, the targets each repetition's ratio.",
        "rows/s is probe rows per second of wall time from the first enqueue to the end of the flush; client CPU "
        "is this process's (all threads); the database server's own CPU is not in it.",
        *skipped,
    ]
    if quick:
        main.notes.append("Quick mode: a few thousand rows, one run; figures are not meaningful.")
    main.figures["ingest"] = figures
    return [main]
