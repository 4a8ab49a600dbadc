"""Root conftest: the shared fixtures live in plugin modules owned by their subsystems."""

pytest_plugins = [
    "tests.plugins.databases",  # sqlite_url, postgres_url, db (both dialects)
    "tests.plugins.doubles",  # provider doubles (aiohttp servers that answer like the real servers)
]
