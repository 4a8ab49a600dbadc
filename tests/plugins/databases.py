"""Database fixtures: sqlite_url, postgres_url, db (parametrised over both)."""
