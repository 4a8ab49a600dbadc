"""Root conftest: the shared fixtures live in plugin modules owned by their subsystems."""

from collections.abc import Iterator
from pathlib import Path

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a slow or e2e test run first, the rest keep their order: `make test`'s two xdist workers take
    whole files in this order (--no-loadscope-reorder), so the long files start early and the many short ones
    even out the end, instead of a long file starting last while the other worker has nothing left to do."""
    slow: set[Path] = {item.path for item in items
                       if item.get_closest_marker("slow") or item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in slow)
