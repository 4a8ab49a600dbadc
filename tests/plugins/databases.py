"""Database fixtures: sqlite_url, postgres_url, db_url (parametrised over both), store and store_factory.

PostgreSQL tests get a fresh schema each (named through the URL's search_path) on the server at
$MONITORD_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test); they skip when no
server answers, and fail instead when $CI is set, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from monitord.store import Store, migrate

DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 3.0

StoreFactory = Callable[..., Awaitable[Store]]


def _server_dsn() -> str:
    return os.environ.get("MONITORD_TEST_POSTGRES", DEFAULT_TEST_POSTGRES)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'monitord.db'}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose tables live in a schema of their own, dropped after the test."""
    dsn = _server_dsn()
    try:
        admin = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        reason = f"no PostgreSQL at {make_url(dsn).render_as_string(hide_password=True)}: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: PostgreSQL tests must run, not skip)")
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        url = make_url(dsn).set(drivername="postgresql+asyncpg").update_query_dict({"search_path": schema})
        yield url.render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite_url", id="sqlite"),
        pytest.param("postgres_url", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty, unmigrated database: the test runs once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
async def store_factory(db_url: str) -> AsyncIterator[StoreFactory]:
    """Opens (and later closes) started Stores on the migrated db_url; keyword arguments go to Store.open."""
    await migrate.upgrade(db_url)
    opened: list[Store] = []

    async def open_store(**options: Any) -> Store:
        store = await Store.open(db_url, **options)
        opened.append(store)
        await store.start()
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """A migrated, started Store with a short flush interval, closed after the test."""
    return await store_factory(flush_interval_s=0.05)
