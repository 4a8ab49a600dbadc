"""Capacity on probe rows: slots, queue, running requests and KV-cache use as the server published them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Five nullable columns on the existing rows (NULL: the server said nothing, or the route could not be read): a
probe row stays one row, and a server that publishes nothing costs only the null bitmap.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("slots_total", sa.Integer()),
    ("slots_busy", sa.Integer()),
    ("queue_depth", sa.Integer()),
    ("requests_running", sa.Integer()),
    ("kv_cache_usage", sa.Float()),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("probes", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("probes") as batch:  # SQLite drops columns by copying the table
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
