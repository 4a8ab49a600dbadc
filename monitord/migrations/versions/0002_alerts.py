"""Alert outbox: alert_events and alert_deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Written out in full, like 0001: a revision is a snapshot of what it created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("silenced", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_events"),
    )
    op.create_index("ix_alert_events_created_at", "alert_events", ["created_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("webhook", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claimed_until", TS, nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["alert_events.id"], ondelete="CASCADE",
                                name="fk_alert_deliveries_event_id_alert_events"),
        sa.PrimaryKeyConstraint("event_id", "webhook", name="pk_alert_deliveries"),
    )
    op.create_index("ix_alert_deliveries_state_next_attempt_at", "alert_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_alert_deliveries_webhook_state_created_at", "alert_deliveries",
                    ["webhook", "state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_deliveries_webhook_state_created_at", table_name="alert_deliveries")
    op.drop_index("ix_alert_deliveries_state_next_attempt_at", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_events_created_at", table_name="alert_events")
    op.drop_table("alert_events")
