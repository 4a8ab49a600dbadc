"""Root conftest: the shared fixtures live in plugin modules owned by their subsystems."""

pytest_plugins = [
    "tests.plugins.databases",  # sqlite_url, postgres_url, db_url (both dialects), store, store_factory
    "tests.plugins.doubles",  # provider doubles (aiohttp servers that answer like the real servers)
    "tests.plugins.api",  # the query API served over a fed LiveState; assert_error
]
