"""Root conftest: the shared fixtures live in plugin modules owned by their subsystems."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.plugins.databases",  # sqlite_url, postgres_url, db_url (both dialects), store, store_factory
    "tests.plugins.doubles",  # provider doubles (aiohttp servers that answer like the real servers)
    "tests.plugins.api",  # the query API served over a fed LiveState; assert_error
]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Whatever a test configures (monitord.logs.configure sets a level filter), the next starts from defaults:
    capture_logs() swaps processors but not the level filter, so a leftover filter would hide info events."""
    yield
    structlog.reset_defaults()
