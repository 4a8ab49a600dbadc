"""Generation canaries: generation_samples (one row per canary run) and generation_rollups.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Written out in full, like 0001: a revision is a snapshot of what it created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "generation_samples",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("error_class", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("stream_complete", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_generation_samples"),
    )
    op.create_index("ix_generation_samples_provider_ts", "generation_samples", ["provider", "ts"])
    op.create_index("ix_generation_samples_ts", "generation_samples", ["ts"])
    op.create_table(
        "generation_rollups",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start_s", sa.BigInteger(), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("ttft_sum_ms", sa.Float(), nullable=True),
        sa.Column("ttft_min_ms", sa.Float(), nullable=True),
        sa.Column("ttft_max_ms", sa.Float(), nullable=True),
        sa.Column("ttft_hist", sa.Text(), nullable=False),
        sa.Column("tps_min", sa.Float(), nullable=True),
        sa.Column("tps_max", sa.Float(), nullable=True),
        sa.Column("tps_hist", sa.Text(), nullable=False),
        sa.Column("tokens_spent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "model", "step_s", "bucket_start_s", name="pk_generation_rollups"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_generation_rollups_step_s_bucket_start_s", "generation_rollups",
                    ["step_s", "bucket_start_s"])


def downgrade() -> None:
    op.drop_index("ix_generation_rollups_step_s_bucket_start_s", table_name="generation_rollups")
    op.drop_table("generation_rollups")
    op.drop_index("ix_generation_samples_ts", table_name="generation_samples")
    op.drop_index("ix_generation_samples_provider_ts", table_name="generation_samples")
    op.drop_table("generation_samples")
