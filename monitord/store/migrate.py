"""Apply the Alembic migrations from code (`monitord migrate`, `monitord run`), on either database.

The revisions ship inside the package (monitord/migrations/), so a wheel or `pip install .` carries them; the
Alembic config is built here in code, so no alembic.ini has to exist on disk (the repository's alembic.ini is
only for developers' `alembic` CLI).
Alembic's context is process-wide: run one migration at a time per process (processes may race; see dialects).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from monitord.store import dialects

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    """A file-less Alembic config; env.py takes the connection from `attributes`, never from a URL here."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision` (idempotent)."""
    await _run(url, lambda config: command.upgrade(config, revision))


async def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` ("base" removes every table)."""
    await _run(url, lambda config: command.downgrade(config, revision))


async def current(url: str) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        await engine.dispose()


def head() -> str:
    """The newest revision this code knows."""
    head_revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head_revision is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head_revision


async def _run(url: str, step: Callable[[Config], None]) -> None:
    engine = dialects.create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_with_connection, step)
    finally:
        await engine.dispose()


def _with_connection(connection: Connection, step: Callable[[Config], None]) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    step(config)
