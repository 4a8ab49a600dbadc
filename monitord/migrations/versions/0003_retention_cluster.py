"""Retention and cluster: probe_rollups, retention_marks, cluster_instances and cluster_leases.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Written out in full, like 0001: a revision is a snapshot of what it created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "probe_rollups",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start_s", sa.BigInteger(), nullable=False),
        sa.Column("probe_count", sa.Integer(), nullable=False),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=True),
        sa.Column("latency_min_ms", sa.Float(), nullable=True),
        sa.Column("latency_max_ms", sa.Float(), nullable=True),
        sa.Column("latency_hist", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "step_s", "bucket_start_s", name="pk_probe_rollups"),
        sqlite_with_rowid=False,  # the row lives in the key's b-tree: a rollup row is mostly key
    )
    op.create_index("ix_probe_rollups_step_s_bucket_start_s", "probe_rollups", ["step_s", "bucket_start_s"])
    op.create_table(
        "retention_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_retention_marks"),
    )
    op.create_table(
        "cluster_instances",
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name="pk_cluster_instances"),
    )
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cluster_leases"),
    )
    op.create_index("ix_cluster_leases_holder", "cluster_leases", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_cluster_leases_holder", table_name="cluster_leases")
    op.drop_table("cluster_leases")
    op.drop_table("cluster_instances")
    op.drop_table("retention_marks")
    op.drop_index("ix_probe_rollups_step_s_bucket_start_s", table_name="probe_rollups")
    op.drop_table("probe_rollups")
