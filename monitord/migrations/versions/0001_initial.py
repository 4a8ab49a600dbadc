"""Initial schema: providers, probes (the time series) and provider_models.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full rather than importing monitord.store.schema: a revision is a snapshot and must
keep meaning the same thing when the schema module moves on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT ids, except where only an INTEGER primary key autoincrements.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "providers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("server_version", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_providers"),
    )
    op.create_table(
        "probes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_class", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("connect_ms", sa.Float(), nullable=True),
        sa.Column("ttfb_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("model_count", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_probes"),
    )
    op.create_index("ix_probes_provider_ts", "probes", ["provider", "ts"])
    op.create_index("ix_probes_ts", "probes", ["ts"])
    op.create_table(
        "provider_models",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("provider", "model_id", name="pk_provider_models"),
    )


def downgrade() -> None:
    op.drop_table("provider_models")
    op.drop_index("ix_probes_ts", table_name="probes")
    op.drop_index("ix_probes_provider_ts", table_name="probes")
    op.drop_table("probes")
    op.drop_table("providers")
