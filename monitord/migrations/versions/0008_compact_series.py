"""Compact time series: probe_rows (with a readable `probes` view), names, error_texts, and compact
generation_samples and rollups; the data is moved over.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

A probe row was 150-177 bytes on SQLite (the provider name, status and error texts, ISO timestamps, doubles) plus
two indexes; it is now a few dozen: Unix microseconds, integer microsecond latencies, small codes, a provider id
from `names`, error texts stored once in `error_texts`, and the primary key (provider_id, ts) as the only index
(SQLite keeps the rows in it: WITHOUT ROWID). The rollup and canary tables change the same way. The view `probes`
shows probe_rows as the old table did (names, texts, milliseconds, timestamps) for people and scripts reading SQL.

Written out in full, codes and digest included: a revision is a snapshot and must keep meaning the same thing when
the store's modules move on. Rows of one provider stamped with the same microsecond (the old table allowed them)
keep the first one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WITHOUT_ROWID = {"sqlite_with_rowid": False}

PROVIDER, MODEL, ERROR = 1, 2, 0
STATUS = {"unknown": 0, "up": 1, "degraded": 2, "loading": 3, "down": 4, "stalled": 5, "misconfigured": 6,
          "disabled": 7}
ERROR_CLASS = {"refused": 1, "dns": 2, "timeout": 3, "tls": 4, "connection": 5, "redirect": 6, "auth": 7,
               "rate_limited": 8, "http_4xx": 9, "http_5xx": 10, "bad_payload": 11, "too_large": 12, "loading": 13,
               "empty_models": 14, "model_missing": 15, "internal": 16, "generation_timeout": 17,
               "stream_stalled": 18, "stream_broken": 19, "empty_generation": 20, "busy": 21, "not_loaded": 22,
               "budget_exhausted": 23, "wrong_server": 24}
KIND = {"generation": 1, "embedding": 2}
INT32_MAX = 2**31 - 1


def digest(kind: int, text: str) -> int:
    raw = hashlib.blake2b(f"{kind}\0{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _copy(statement: str) -> None:
    """Move rows with a live connection; an offline script (`alembic upgrade --sql`) cannot compute the digests of
    names and error texts, so it keeps the 0007 tables (renamed *_0007) for the rows to be moved by hand."""
    if not context.is_offline_mode():
        op.execute(statement)


def _drop_old(table: str) -> None:
    if not context.is_offline_mode():
        op.drop_table(table)


def _case(column: str, codes: dict[str, int], *, to_text: bool = False) -> str:
    pairs = " ".join(f"WHEN {code} THEN '{name}'" if to_text else f"WHEN '{name}' THEN {code}"
                     for name, code in codes.items())
    fallback = "NULL" if to_text else ("16" if codes is ERROR_CLASS else "0")  # an unknown class: internal
    return f"CASE {column} {pairs} ELSE {fallback} END"


def _us(column: str, *, cap: bool = True) -> str:
    """Milliseconds (double) to integer microseconds in SQL."""
    value = f"round({column} * 1000)"
    if cap:
        value = f"CASE WHEN {value} > {INT32_MAX} THEN {INT32_MAX} ELSE {value} END"
    return f"CAST({value} AS {'INTEGER' if cap else 'BIGINT'})"


def _epoch_us(column: str) -> str:
    if _sqlite():  # SQLAlchemy keeps SQLite times as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        return (f"(CAST(strftime('%s', {column}) AS INTEGER) * 1000000 "
                f"+ CAST(substr({column}, 21, 6) AS INTEGER))")
    return f"CAST(extract(epoch FROM {column}) * 1000000 AS BIGINT)"


def _timestamp(column: str) -> str:
    """Unix microseconds back to the timestamp type each database stored before (and the view shows)."""
    if _sqlite():
        return f"(datetime({column} / 1000000, 'unixepoch') || '.' || printf('%06d', {column} % 1000000))"
    return f"(timestamptz 'epoch' + {column} * interval '1 microsecond')"


def _insert_ignore(table: str) -> tuple[str, str]:
    """(INSERT prefix, suffix) that skip rows whose key is already there."""
    if _sqlite():
        return f"INSERT OR IGNORE INTO {table}", ""
    return f"INSERT INTO {table}", " ON CONFLICT DO NOTHING"


def _retire(table: str, indexes: Sequence[str]) -> str:
    """Rename a 0007 table out of the way (its indexes dropped, its primary key renamed on PostgreSQL)."""
    for index in indexes:
        op.drop_index(index, table_name=table)
    old = f"{table}_0007"
    op.rename_table(table, old)
    if not _sqlite():
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    return old


def upgrade() -> None:
    op.create_table(
        "names",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("digest", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_names"),
        sa.UniqueConstraint("digest", name="uq_names_digest"),
    )
    op.create_table(
        "error_texts",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("last_used_s", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_error_texts"),
    )
    op.create_table(
        "probe_rows",
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("error_id", sa.BigInteger(), nullable=True),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("total_us", sa.Integer(), nullable=False),
        sa.Column("ttfb_us", sa.Integer(), nullable=True),
        sa.Column("connect_us", sa.Integer(), nullable=True),
        sa.Column("kv_cache_ppm", sa.Integer(), nullable=True),
        sa.Column("slots_total", sa.Integer(), nullable=True),
        sa.Column("slots_busy", sa.Integer(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=True),
        sa.Column("requests_running", sa.Integer(), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("error_class", sa.SmallInteger(), nullable=True),
        sa.Column("http_status", sa.SmallInteger(), nullable=True),
        sa.Column("model_count", sa.SmallInteger(), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "ts", name="pk_probe_rows"),
        **WITHOUT_ROWID,
    )
    if context.is_offline_mode():
        op.execute("-- 0008: the rows of the 0007 tables are not moved by an offline script: they stay in the "
                   "*_0007 tables; `monitord migrate` on a live database moves them")
    else:
        _move_names_and_errors(op.get_bind())

    old = _retire("probes", ["ix_probes_ts", "ix_probes_provider_ts"])
    insert, ignore = _insert_ignore("probe_rows")
    _copy(
        f"{insert} (provider_id, ts, status, error_class, error_id, connect_us, ttfb_us, total_us, http_status, "
        "model_count, attempts, slots_total, slots_busy, queue_depth, requests_running, kv_cache_ppm) "
        f"SELECT n.id, {_epoch_us('p.ts')}, {_case('p.status', STATUS)}, "
        f"CASE WHEN p.error_class IS NULL THEN NULL ELSE {_case('p.error_class', ERROR_CLASS)} END, "
        f"e.id, {_us('p.connect_ms')}, {_us('p.ttfb_ms')}, {_us('p.total_ms')}, p.http_status, "
        f"CASE WHEN p.model_count > 32767 THEN 32767 ELSE p.model_count END, p.attempts, p.slots_total, "
        "p.slots_busy, p.queue_depth, p.requests_running, "
        f"CAST(round(p.kv_cache_usage * 1000000) AS INTEGER) "
        f"FROM {old} p JOIN names n ON n.kind = {PROVIDER} AND n.name = p.provider "
        f"LEFT JOIN error_texts e ON e.text = p.error{ignore}")
    _drop_old(old)
    _create_view()

    old = _retire("probe_rollups", ["ix_probe_rollups_step_s_bucket_start_s"])
    op.create_table(
        "probe_rollups",
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start_s", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_us", sa.BigInteger(), nullable=True),
        sa.Column("probe_count", sa.Integer(), nullable=False),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("latency_min_us", sa.Integer(), nullable=True),
        sa.Column("latency_max_us", sa.Integer(), nullable=True),
        sa.Column("latency_hist", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "step_s", "bucket_start_s", name="pk_probe_rollups"),
        **WITHOUT_ROWID,
    )
    _copy(
        "INSERT INTO probe_rollups (provider_id, step_s, bucket_start_s, latency_sum_us, probe_count, ok_count, "
        "latency_min_us, latency_max_us, latency_hist) "
        f"SELECT n.id, r.step_s, r.bucket_start_s, {_us('r.latency_sum_ms', cap=False)}, r.probe_count, "
        f"r.ok_count, {_us('r.latency_min_ms')}, {_us('r.latency_max_ms')}, r.latency_hist "
        f"FROM {old} r JOIN names n ON n.kind = {PROVIDER} AND n.name = r.provider")
    _drop_old(old)

    old = _retire("generation_samples", ["ix_generation_samples_ts", "ix_generation_samples_provider_ts"])
    op.create_table(
        "generation_samples",
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("error_id", sa.BigInteger(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("ttft_us", sa.Integer(), nullable=True),
        sa.Column("total_us", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("error_class", sa.SmallInteger(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("stream_complete", sa.Boolean(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("provider_id", "ts", "model_id", name="pk_generation_samples"),
        **WITHOUT_ROWID,
    )
    insert, ignore = _insert_ignore("generation_samples")
    _copy(
        f"{insert} (provider_id, model_id, ts, kind, ok, skipped, error_class, error_id, ttft_us, total_us, "
        "tokens_per_s, prompt_tokens, completion_tokens, finish_reason, streamed, stream_complete) "
        f"SELECT p.id, m.id, {_epoch_us('g.ts')}, {_case('g.kind', KIND)}, g.ok, g.skipped, "
        f"CASE WHEN g.error_class IS NULL THEN NULL ELSE {_case('g.error_class', ERROR_CLASS)} END, e.id, "
        f"{_us('g.ttft_ms')}, {_us('g.total_ms')}, g.tokens_per_s, g.prompt_tokens, g.completion_tokens, "
        "g.finish_reason, g.streamed, g.stream_complete "
        f"FROM {old} g JOIN names p ON p.kind = {PROVIDER} AND p.name = g.provider "
        f"JOIN names m ON m.kind = {MODEL} AND m.name = g.model LEFT JOIN error_texts e ON e.text = g.error{ignore}")
    _drop_old(old)

    old = _retire("generation_rollups", ["ix_generation_rollups_step_s_bucket_start_s"])
    op.create_table(
        "generation_rollups",
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start_s", sa.BigInteger(), nullable=False),
        sa.Column("ttft_sum_us", sa.BigInteger(), nullable=True),
        sa.Column("tokens_spent", sa.BigInteger(), nullable=False),
        sa.Column("tps_min", sa.Float(), nullable=True),
        sa.Column("tps_max", sa.Float(), nullable=True),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("ttft_min_us", sa.Integer(), nullable=True),
        sa.Column("ttft_max_us", sa.Integer(), nullable=True),
        sa.Column("ttft_hist", sa.Text(), nullable=False),
        sa.Column("tps_hist", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "model_id", "step_s", "bucket_start_s",
                                name="pk_generation_rollups"),
        **WITHOUT_ROWID,
    )
    _copy(
        "INSERT INTO generation_rollups (provider_id, model_id, step_s, bucket_start_s, ttft_sum_us, tokens_spent, "
        "tps_min, tps_max, sample_count, ok_count, skipped_count, ttft_min_us, ttft_max_us, ttft_hist, tps_hist) "
        f"SELECT p.id, m.id, r.step_s, r.bucket_start_s, {_us('r.ttft_sum_ms', cap=False)}, r.tokens_spent, "
        f"r.tps_min, r.tps_max, r.sample_count, r.ok_count, r.skipped_count, {_us('r.ttft_min_ms')}, "
        f"{_us('r.ttft_max_ms')}, r.ttft_hist, r.tps_hist "
        f"FROM {old} r JOIN names p ON p.kind = {PROVIDER} AND p.name = r.provider "
        f"JOIN names m ON m.kind = {MODEL} AND m.name = r.model")
    _drop_old(old)


def _move_names_and_errors(bind: sa.Connection) -> None:
    """Every provider and model name and every error text the 0007 tables hold, with their digests."""
    providers = {row[0] for row in bind.exec_driver_sql(
        "SELECT provider FROM probes UNION SELECT provider FROM probe_rollups "
        "UNION SELECT provider FROM generation_samples UNION SELECT provider FROM generation_rollups")}
    models = {row[0] for row in bind.exec_driver_sql(
        "SELECT model FROM generation_samples UNION SELECT model FROM generation_rollups")}
    names = sa.table("names", sa.column("kind"), sa.column("digest"), sa.column("name"))
    rows = [{"kind": kind, "digest": digest(kind, name), "name": name}
            for kind, found in ((PROVIDER, providers), (MODEL, models)) for name in sorted(found)]
    if rows:
        bind.execute(names.insert(), rows)
    errors = {row[0] for row in bind.exec_driver_sql(
        "SELECT error FROM probes WHERE error IS NOT NULL "
        "UNION SELECT error FROM generation_samples WHERE error IS NOT NULL")}
    texts = sa.table("error_texts", sa.column("id"), sa.column("text"), sa.column("last_used_s"))
    now_s = int(time.time())
    if errors:
        bind.execute(texts.insert(), [{"id": digest(ERROR, text), "text": text, "last_used_s": now_s}
                                      for text in sorted(errors)])


def _create_view() -> None:
    """`probes` as the 0007 table read: provider names, status and error texts, milliseconds and timestamps."""
    op.execute(
        f"CREATE VIEW probes AS SELECT {_timestamp('r.ts')} AS ts, n.name AS provider, "
        f"{_case('r.status', STATUS, to_text=True)} AS status, "
        f"{_case('r.error_class', ERROR_CLASS, to_text=True)} AS error_class, e.text AS error, "
        "r.connect_us / 1000.0 AS connect_ms, r.ttfb_us / 1000.0 AS ttfb_ms, r.total_us / 1000.0 AS total_ms, "
        "r.http_status, r.model_count, r.attempts, r.slots_total, r.slots_busy, r.queue_depth, "
        "r.requests_running, r.kv_cache_ppm / 1000000.0 AS kv_cache_usage "
        "FROM probe_rows r JOIN names n ON n.id = r.provider_id LEFT JOIN error_texts e ON e.id = r.error_id")


def downgrade() -> None:
    """Back to 0007's tables, with the data (times and latencies as the compact rows hold them)."""
    op.execute("DROP VIEW probes")
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
        sa.Column("slots_total", sa.Integer(), nullable=True),
        sa.Column("slots_busy", sa.Integer(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=True),
        sa.Column("requests_running", sa.Integer(), nullable=True),
        sa.Column("kv_cache_usage", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_probes"),
    )
    op.create_index("ix_probes_provider_ts", "probes", ["provider", "ts"])
    op.create_index("ix_probes_ts", "probes", ["ts"])
    op.execute(
        "INSERT INTO probes (ts, provider, status, error_class, error, connect_ms, ttfb_ms, total_ms, http_status, "
        "model_count, attempts, slots_total, slots_busy, queue_depth, requests_running, kv_cache_usage) "
        f"SELECT {_timestamp('r.ts')}, n.name, {_case('r.status', STATUS, to_text=True)}, "
        f"{_case('r.error_class', ERROR_CLASS, to_text=True)}, e.text, r.connect_us / 1000.0, "
        "r.ttfb_us / 1000.0, r.total_us / 1000.0, r.http_status, r.model_count, r.attempts, r.slots_total, "
        "r.slots_busy, r.queue_depth, r.requests_running, r.kv_cache_ppm / 1000000.0 "
        "FROM probe_rows r JOIN names n ON n.id = r.provider_id LEFT JOIN error_texts e ON e.id = r.error_id "
        "ORDER BY r.ts")
    op.drop_table("probe_rows")

    op.rename_table("probe_rollups", "probe_rollups_0008")
    if not _sqlite():
        op.execute("ALTER TABLE probe_rollups_0008 RENAME CONSTRAINT pk_probe_rollups TO pk_probe_rollups_0008")
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
        **WITHOUT_ROWID,
    )
    op.create_index("ix_probe_rollups_step_s_bucket_start_s", "probe_rollups", ["step_s", "bucket_start_s"])
    op.execute(
        "INSERT INTO probe_rollups SELECT n.name, r.step_s, r.bucket_start_s, r.probe_count, r.ok_count, "
        "r.latency_sum_us / 1000.0, r.latency_min_us / 1000.0, r.latency_max_us / 1000.0, r.latency_hist "
        "FROM probe_rollups_0008 r JOIN names n ON n.id = r.provider_id")
    op.drop_table("probe_rollups_0008")

    op.rename_table("generation_samples", "generation_samples_0008")
    if not _sqlite():
        op.execute("ALTER TABLE generation_samples_0008 RENAME CONSTRAINT pk_generation_samples "
                   "TO pk_generation_samples_0008")
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
    op.execute(
        "INSERT INTO generation_samples (ts, provider, model, kind, ok, skipped, error_class, error, ttft_ms, "
        "total_ms, tokens_per_s, prompt_tokens, completion_tokens, finish_reason, streamed, stream_complete) "
        f"SELECT {_timestamp('g.ts')}, p.name, m.name, {_case('g.kind', KIND, to_text=True)}, g.ok, g.skipped, "
        f"{_case('g.error_class', ERROR_CLASS, to_text=True)}, e.text, g.ttft_us / 1000.0, g.total_us / 1000.0, "
        "g.tokens_per_s, g.prompt_tokens, g.completion_tokens, g.finish_reason, g.streamed, g.stream_complete "
        "FROM generation_samples_0008 g JOIN names p ON p.id = g.provider_id JOIN names m ON m.id = g.model_id "
        "LEFT JOIN error_texts e ON e.id = g.error_id ORDER BY g.ts")
    op.drop_table("generation_samples_0008")

    op.rename_table("generation_rollups", "generation_rollups_0008")
    if not _sqlite():
        op.execute("ALTER TABLE generation_rollups_0008 RENAME CONSTRAINT pk_generation_rollups "
                   "TO pk_generation_rollups_0008")
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
        **WITHOUT_ROWID,
    )
    op.create_index("ix_generation_rollups_step_s_bucket_start_s", "generation_rollups",
                    ["step_s", "bucket_start_s"])
    op.execute(
        "INSERT INTO generation_rollups SELECT p.name, m.name, r.step_s, r.bucket_start_s, r.sample_count, "
        "r.ok_count, r.skipped_count, r.ttft_sum_us / 1000.0, r.ttft_min_us / 1000.0, r.ttft_max_us / 1000.0, "
        "r.ttft_hist, r.tps_min, r.tps_max, r.tps_hist, r.tokens_spent "
        "FROM generation_rollups_0008 r JOIN names p ON p.id = r.provider_id JOIN names m ON m.id = r.model_id")
    op.drop_table("generation_rollups_0008")
    op.drop_table("error_texts")
    op.drop_table("names")
