"""Alembic environment for monitord: one MetaData, async engines, SQLite and PostgreSQL.

Run from code (monitord.store.migrate hands over a connection) or from the `alembic` CLI, where the URL
comes from `-x url=...`, else $MONITORD_DATABASE_URL, else alembic.ini's sqlalchemy.url.
Each applied revision is one structlog line, `migration.upgraded` / `migration.downgraded` (revision, from,
description), so Alembic's steps read like the rest of monitord's log.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

import structlog
from alembic import context
from alembic.runtime.migration import MigrationInfo
from sqlalchemy import Connection

from monitord.store import dialects
from monitord.store.schema import metadata

DEFAULT_URL = "sqlite+aiosqlite:///monitord.db"

config = context.config
log = structlog.get_logger("monitord.migrations")


def database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("MONITORD_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_URL
    )


def log_step(*, step: MigrationInfo, **_: Any) -> None:
    revision, previous = (step.up_revision_id, step.down_revision_ids) if step.is_upgrade else (
        step.down_revision_ids[0] if step.down_revision_ids else None, (step.up_revision_id,))
    log.info("migration.upgraded" if step.is_upgrade else "migration.downgraded", revision=revision,
             previous=",".join(previous) or None, description=step.up_revision.doc.splitlines()[0])


def run_migrations(connection: Connection) -> None:
    dialects.prepare_for_migrations(connection)
    # Batch mode lets future ALTERs work on SQLite (table copy); elsewhere it emits plain ALTERs.
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True,
        on_version_apply=log_step,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_cli() -> None:
    engine = dialects.create_engine(database_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_migrations)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=dialects.normalize_url(database_url()),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
elif (shared := config.attributes.get("connection")) is not None:
    run_migrations(shared)
else:
    asyncio.run(run_from_cli())
