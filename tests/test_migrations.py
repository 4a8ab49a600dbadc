"""Migrations: up, down and up again on both databases, from code and from the real `alembic` CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from monitord.model import ProbeResult, Status
from monitord.store import Store, dialects, migrate
from monitord.store.schema import metadata

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = Path(sys.executable).parent / "alembic"
TABLES = {"providers", "probes", "provider_models", "alert_events", "alert_deliveries", "probe_rollups",
          "generation_samples", "generation_rollups", "alert_state",
          "retention_marks", "cluster_instances", "cluster_leases", "silences"}


async def inspect_db(url: str) -> dict[str, Any]:
    """Tables, probe indexes and differences from schema.py, as the database itself reports them."""

    def look(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        indexes = {ix["name"] for ix in inspector.get_indexes("probes")} if "probes" in tables else set()
        drift = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        return {"tables": tables - {"alembic_version"}, "indexes": indexes, "drift": drift}

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
    assert {"ix_probes_provider_ts", "ix_probes_ts"} <= state["indexes"]
    assert state["drift"] == [], "schema.py and the migrations disagree"

    await migrate.upgrade(db_url)  # already at head: nothing to do
    await migrate.downgrade(db_url, "base")
    assert await migrate.current(db_url) is None
    assert (await inspect_db(db_url))["tables"] == set()

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
