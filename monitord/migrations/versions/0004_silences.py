"""Silences made through the API (config silences live in the config file).

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04

Written out in full, like 0001: a revision is a snapshot of what it created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "silences",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("starts_at", TS, nullable=True),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_silences"),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])


def downgrade() -> None:
    op.drop_index("ix_silences_ends_at", table_name="silences")
    op.drop_table("silences")
