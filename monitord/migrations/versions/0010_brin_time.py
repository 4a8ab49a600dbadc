"""A BRIN index on probe_rows.ts, on PostgreSQL only: "every provider's rows since t" without a B-tree on time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Cluster instances read each other's new probe rows every second (Store.results_since); through the primary key
that is one index descent per provider. PostgreSQL appends rows to its heap in about time order, so a BRIN index
(the least and greatest ts of each 16 pages: kilobytes for weeks of rows) finds the newest pages at once.
Autovacuum summarizes each range as it fills (autosummarize); the few newest pages not summarized yet are read.
SQLite has no BRIN and runs one instance per file (it reads all providers only at start-up): nothing changes
there. The index is not in schema.py's metadata, which describes both databases.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_probe_rows_ts_brin"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX {NAME} ON probe_rows USING brin (ts) WITH (pages_per_range = 16, autosummarize = on)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP INDEX {NAME}")
