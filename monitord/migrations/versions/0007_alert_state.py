"""Alert state per provider (alert_state) and the provider of each delivery, for per-provider ordering.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Written out in full, like 0001: a revision is a snapshot of what it created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("told", sa.String(length=16), nullable=True),
        sa.Column("incident_start", TS, nullable=True),
        sa.Column("reminders", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("provider", name="pk_alert_state"),
    )
    with op.batch_alter_table("alert_deliveries") as batch:
        batch.add_column(sa.Column("provider", sa.Text(), nullable=False, server_default=""))
    # Deliveries stored before this revision: their event's provider.
    op.execute("UPDATE alert_deliveries SET provider = COALESCE((SELECT provider FROM alert_events "
               "WHERE alert_events.id = alert_deliveries.event_id), '')")


def downgrade() -> None:
    with op.batch_alter_table("alert_deliveries") as batch:
        batch.drop_column("provider")
    op.drop_table("alert_state")
