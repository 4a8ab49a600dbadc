"""Capacity counts as SMALLINT on PostgreSQL: 8 bytes less per probe row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Slots, busy slots, queue depth and running requests are small counts; PostgreSQL stores an INTEGER in 4 bytes
and a SMALLINT in 2, and a probe row carries four of them. Values past SMALLINT's range are capped (no server has
32,767 slots). SQLite stores every integer in as few bytes as its value needs: nothing changes there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("slots_total", "slots_busy", "queue_depth", "requests_running")
STATUS = {"unknown": 0, "up": 1, "degraded": 2, "loading": 3, "down": 4, "stalled": 5, "misconfigured": 6,
          "disabled": 7}
ERROR_CLASS = {"refused": 1, "dns": 2, "timeout": 3, "tls": 4, "connection": 5, "redirect": 6, "auth": 7,
               "rate_limited": 8, "http_4xx": 9, "http_5xx": 10, "bad_payload": 11, "too_large": 12, "loading": 13,
               "empty_models": 14, "model_missing": 15, "internal": 16, "generation_timeout": 17,
               "stream_stalled": 18, "stream_broken": 19, "empty_generation": 20, "busy": 21, "not_loaded": 22,
               "budget_exhausted": 23, "wrong_server": 24}


def _case(column: str, codes: dict[str, int]) -> str:
    return f"CASE {column} " + " ".join(f"WHEN {code} THEN '{name}'" for name, code in codes.items()) + " END"


# The `probes` view of revision 0008 (PostgreSQL's form): a column it reads cannot change type under it.
VIEW = (
    "CREATE VIEW probes AS SELECT (timestamptz 'epoch' + r.ts * interval '1 microsecond') AS ts, n.name AS provider, "
    f"{_case('r.status', STATUS)} AS status, {_case('r.error_class', ERROR_CLASS)} AS error_class, e.text AS error, "
    "r.connect_us / 1000.0 AS connect_ms, r.ttfb_us / 1000.0 AS ttfb_ms, r.total_us / 1000.0 AS total_ms, "
    "r.http_status, r.model_count, r.attempts, r.slots_total, r.slots_busy, r.queue_depth, r.requests_running, "
    "r.kv_cache_ppm / 1000000.0 AS kv_cache_usage "
    "FROM probe_rows r JOIN names n ON n.id = r.provider_id LEFT JOIN error_texts e ON e.id = r.error_id")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    changes = ", ".join(f"ALTER COLUMN {name} TYPE SMALLINT USING LEAST(GREATEST({name}, -32767), 32767)"
                        for name in COLUMNS)
    op.execute("DROP VIEW probes")
    op.execute(f"ALTER TABLE probe_rows {changes}")
    op.execute(VIEW)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP VIEW probes")
    op.execute("ALTER TABLE probe_rows " + ", ".join(f"ALTER COLUMN {name} TYPE INTEGER" for name in COLUMNS))
    op.execute(VIEW)
