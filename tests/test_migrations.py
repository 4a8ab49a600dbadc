"""Migrations: up, down and up again on both databases, from code and from the real `alembic` CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from monitord.model import ErrorClass, ProbeResult, Status
from monitord.store import Store, dialects, migrate
from monitord.store.schema import metadata

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = Path(sys.executable).parent / "alembic"
TABLES = {"providers", "probe_rows", "names", "error_texts", "provider_models", "alert_events", "alert_deliveries",
          "probe_rollups", "generation_samples", "generation_rollups", "alert_state",
          "retention_marks", "cluster_instances", "cluster_leases", "silences"}


POSTGRES_ONLY_INDEX = "ix_probe_rows_ts_brin"  # revision 0010; not in the metadata both databases share


async def inspect_db(url: str) -> dict[str, Any]:
    """Tables, probe indexes and differences from schema.py, as the database itself reports them."""

    def look(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        indexes = {ix["name"] for ix in inspector.get_indexes("probe_rows")} if "probe_rows" in tables else set()
        drift = [diff for diff in compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                                   metadata)
                 if not (diff[0] == "remove_index" and diff[1].name == POSTGRES_ONLY_INDEX)]
        return {"tables": tables - {"alembic_version"}, "indexes": indexes, "drift": drift,
                "views": set(inspector.get_view_names())}

    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert await migrate.current(db_url) is None

    await migrate.upgrade(db_url)
    assert await migrate.current(db_url) == migrate.head()
    state = await inspect_db(db_url)
    assert state["tables"] == TABLES
    expected = {POSTGRES_ONLY_INDEX} if db_url.startswith("postgresql") else set()
    assert state["indexes"] == expected, "probe_rows has its primary key (and a BRIN on time on PostgreSQL)"
    assert state["views"] == {"probes"}
    assert state["drift"] == [], "schema.py and the migrations disagree"

    await migrate.upgrade(db_url)  # already at head: nothing to do
    await migrate.downgrade(db_url, "base")
    assert await migrate.current(db_url) is None
    assert (await inspect_db(db_url))["tables"] == set()
    assert (await inspect_db(db_url))["views"] == set()

    await migrate.upgrade(db_url)
    assert await migrate.current(db_url) == migrate.head()
    assert (await inspect_db(db_url))["tables"] == TABLES


async def test_the_store_never_creates_tables(db_url: str) -> None:
    store = await Store.open(db_url, flush_interval_s=60)
    try:
        store.enqueue(
            ProbeResult(provider="a", provider_type="vllm", started_at=datetime.now(UTC), status=Status.UP,
                        total_ms=1.0)
        )
        await store.flush()
        assert (store.pending, store.written_total) == (1, 0)  # kept, waiting for the schema
        assert (await inspect_db(db_url))["tables"] == set()

        await migrate.upgrade(db_url)
        await store.flush()
        assert (store.pending, store.written_total) == (0, 1)
    finally:
        await store.close()


# Imports everything, says so, then migrates on a newline: lets several processes start migrating at once.
MIGRATOR = """
import asyncio, sys
from monitord.store import migrate
print("ready", flush=True)
sys.stdin.readline()
asyncio.run(migrate.upgrade(sys.argv[1]))
"""


@pytest.mark.postgres
async def test_concurrent_migrators_on_postgres_take_turns(postgres_url: str) -> None:
    """Two daemons (or a daemon and `monitord migrate`) starting at once: an advisory lock serializes them."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATOR, postgres_url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), timeout=60) == b"ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
    outcomes = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=60)
    errors = [err.decode() for (_, err), p in zip(outcomes, processes, strict=True) if p.returncode != 0]
    assert errors == []
    assert await migrate.current(postgres_url) == migrate.head()


async def alembic_cli(*args: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        str(ALEMBIC), *args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def test_alembic_cli_upgrades_and_downgrades(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL comes from `-x url=...` first, else from $MONITORD_DATABASE_URL."""
    monkeypatch.setenv("MONITORD_DATABASE_URL", "sqlite+aiosqlite:////nonexistent/dir/never-used.db")
    await alembic_cli("-x", f"url={db_url}", "upgrade", "head")
    assert await migrate.current(db_url) == migrate.head()
    assert (await inspect_db(db_url))["tables"] == TABLES

    await alembic_cli("downgrade", "base", env={"MONITORD_DATABASE_URL": db_url})
    assert await migrate.current(db_url) is None
    assert (await inspect_db(db_url))["tables"] == set()


def test_offline_sql_renders_for_both_databases() -> None:
    """`alembic upgrade head --sql` (for DBAs who apply DDL by hand) needs no server."""
    for url, marker in [
        ("sqlite+aiosqlite:///unused.db", "DATETIME"),
        ("postgresql+asyncpg://u@127.0.0.1/unused", "TIMESTAMP WITH TIME ZONE"),
    ]:
        out = subprocess.run(
            [str(ALEMBIC), "-x", f"url={url}", "upgrade", "head", "--sql"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        assert "CREATE TABLE probes" in out and marker in out


# -- 0008: the compact series, with rows written at 0007 ---------------------------------------------------------

OLD = sa.MetaData()
OLD_PROBES = sa.Table(
    "probes", OLD, sa.Column("id", sa.Integer, primary_key=True), sa.Column("ts", sa.DateTime(timezone=True)),
    sa.Column("provider", sa.Text), sa.Column("status", sa.String), sa.Column("error_class", sa.String),
    sa.Column("error", sa.Text), sa.Column("connect_ms", sa.Float), sa.Column("ttfb_ms", sa.Float),
    sa.Column("total_ms", sa.Float), sa.Column("http_status", sa.Integer), sa.Column("model_count", sa.Integer),
    sa.Column("attempts", sa.Integer), sa.Column("slots_total", sa.Integer), sa.Column("slots_busy", sa.Integer),
    sa.Column("queue_depth", sa.Integer), sa.Column("requests_running", sa.Integer),
    sa.Column("kv_cache_usage", sa.Float))
OLD_ROLLUPS = sa.Table(
    "probe_rollups", OLD, sa.Column("provider", sa.Text), sa.Column("step_s", sa.Integer),
    sa.Column("bucket_start_s", sa.BigInteger), sa.Column("probe_count", sa.Integer),
    sa.Column("ok_count", sa.Integer), sa.Column("latency_sum_ms", sa.Float), sa.Column("latency_min_ms", sa.Float),
    sa.Column("latency_max_ms", sa.Float), sa.Column("latency_hist", sa.Text))
OLD_SAMPLES = sa.Table(
    "generation_samples", OLD, sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True)), sa.Column("provider", sa.Text), sa.Column("model", sa.Text),
    sa.Column("kind", sa.String), sa.Column("ok", sa.Boolean), sa.Column("skipped", sa.Boolean),
    sa.Column("error_class", sa.String), sa.Column("error", sa.Text), sa.Column("ttft_ms", sa.Float),
    sa.Column("total_ms", sa.Float), sa.Column("tokens_per_s", sa.Float), sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer), sa.Column("finish_reason", sa.Text),
    sa.Column("streamed", sa.Boolean), sa.Column("stream_complete", sa.Boolean))
OLD_MARKS = sa.Table("retention_marks", OLD, sa.Column("name", sa.String),
                     sa.Column("at", sa.DateTime(timezone=True)))
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def old_probe(n: int, provider: str) -> dict[str, Any]:
    failed = n % 5 == 0
    return {"ts": T0 + timedelta(seconds=30 * n, microseconds=123_456), "provider": provider,
            "status": "down" if failed else "up", "error_class": "refused" if failed else None,
            "error": f"connection refused ({provider})" if failed else None, "connect_ms": None if n % 2 else 1.25,
            "ttfb_ms": None if failed else 7.5 + n % 11, "total_ms": 12.345 + n % 17, "http_status": None if failed
            else 200, "model_count": 0 if failed else 2, "attempts": 3 if failed else 1,
            "slots_total": 4, "slots_busy": n % 5, "queue_depth": 0, "requests_running": n % 5,
            "kv_cache_usage": 0.25 if provider == "gpu" else None}


async def test_an_upgrade_from_0007_keeps_the_history_queryable(db_url: str) -> None:
    """Rows written at 0007 (probes, rollups, marks, canary samples) read back the same through the store at
    0008, the view shows them as the old table did, and a downgrade puts them back."""
    await migrate.upgrade(db_url, "0007")
    probes = [old_probe(n, provider) for provider in ("gpu", "cpu") for n in range(240)]  # two hours
    hour = {"provider": "gpu", "step_s": 3600, "bucket_start_s": int((T0 - timedelta(hours=1)).timestamp()),
            "probe_count": 120, "ok_count": 100, "latency_sum_ms": 1500.5, "latency_min_ms": 2.5,
            "latency_max_ms": 80.25, "latency_hist": "41:60,50:40"}
    sample = {"ts": T0 + timedelta(seconds=5), "provider": "gpu", "model": "llama-3-8b", "kind": "generation",
              "ok": False, "skipped": False, "error_class": "stream_stalled", "error": "no chunk for 10 s",
              "ttft_ms": 150.5, "total_ms": 10_200.0, "tokens_per_s": None, "prompt_tokens": 12,
              "completion_tokens": 3, "finish_reason": None, "streamed": True, "stream_complete": False}
    engine = dialects.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(OLD_PROBES.insert(), probes)
            await conn.execute(OLD_ROLLUPS.insert(), [hour])
            await conn.execute(OLD_SAMPLES.insert(), [sample])
            await conn.execute(OLD_MARKS.insert(), [{"name": "rollup_3600", "at": T0}, {"name": "rollup_60",
                                                                                         "at": T0}])
    finally:
        await engine.dispose()

    await migrate.upgrade(db_url)
    store = await Store.open(db_url)
    try:
        history = await store.history("gpu", limit=10_000)
        assert len(history) == 240 and len(await store.history("cpu", limit=10_000)) == 240
        newest, failed = history[0], history[-1]  # n = 239 (up), n = 0 (down)
        assert newest.ts == T0 + timedelta(seconds=30 * 239, microseconds=123_456)
        assert (newest.status, newest.error, newest.total_ms, newest.ttfb_ms) == (Status.UP, None, 12.345 + 239 % 17,
                                                                                   7.5 + 239 % 11)
        assert newest.capacity is not None and newest.capacity.kv_cache_usage == 0.25
        assert newest.capacity.slots_busy == 239 % 5
        assert (failed.status, failed.error_class, failed.error) == (Status.DOWN, ErrorClass.REFUSED,
                                                                     "connection refused (gpu)")
        assert (failed.connect_ms, failed.http_status, failed.attempts) == (1.25, None, 3)
        # the hour before T0 from the migrated rollup, the two hours after from the raw rows
        buckets = await store.aggregate("gpu", step_s=3600, since=T0 - timedelta(hours=1),
                                        until=T0 + timedelta(hours=2))
        assert [(b.start, b.count, b.ok_count) for b in buckets] == [
            (T0 - timedelta(hours=1), 120, 100), (T0, 120, 96), (T0 + timedelta(hours=1), 120, 96)]
        assert buckets[0].latency_avg_ms == pytest.approx(15.005)
        samples = await store.generation_history("gpu")
        assert [(s.model, s.error_class, s.error, s.ttft_ms, s.stream_complete) for s in samples] == [
            ("llama-3-8b", ErrorClass.STREAM_STALLED, "no chunk for 10 s", 150.5, False)]
        # new rows join the migrated ones under the same provider id
        store.enqueue(ProbeResult(provider="gpu", provider_type="vllm", started_at=T0 + timedelta(hours=3),
                                  status=Status.DOWN, total_ms=3.0, error_class=ErrorClass.REFUSED,
                                  error="connection refused (gpu)"))
        await store.flush()
        assert len(await store.history("gpu", limit=10_000)) == 241
    finally:
        await store.close()

    engine = dialects.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            view = (await conn.execute(sa.text(
                "SELECT provider, status, error, total_ms FROM probes WHERE provider = 'cpu' AND status = 'down' "
                "ORDER BY ts"))).all()
            texts = (await conn.execute(sa.text("SELECT count(*) FROM error_texts"))).scalar_one()
    finally:
        await engine.dispose()
    assert len(view) == 48 and view[0][:3] == ("cpu", "down", "connection refused (cpu)")
    assert float(view[0][3]) == pytest.approx(12.345)
    assert texts == 3  # each error text once, however many rows cite it

    await migrate.downgrade(db_url, "0007")
    engine = dialects.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            back = (await conn.execute(sa.select(OLD_PROBES.c.ts, OLD_PROBES.c.error, OLD_PROBES.c.kv_cache_usage)
                                       .where(OLD_PROBES.c.provider == "gpu").order_by(OLD_PROBES.c.ts))).all()
    finally:
        await engine.dispose()
    assert len(back) == 241 and back[0][1] == "connection refused (gpu)" and back[0][2] == 0.25
    assert back[0][0].replace(tzinfo=UTC) == T0 + timedelta(microseconds=123_456)
