"""The tables, as SQLAlchemy Core objects on one MetaData shared with Alembic.

Describes the schema for queries and for autogenerate; never creates it (migrations do).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
)

from monitord.store.dialects import CLUSTERED_BY_PRIMARY_KEY

# Constraint names are fixed so migrations can refer to them on every database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    Databases without a timezone-aware type keep the UTC wall time and return it naive;
    this puts the UTC zone back. Naive values given to it are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Free-form names (providers, models, versions) are Text: a long one must never fail a batch.

# Configuration snapshot of each provider: what was monitored, never its secrets.
providers = Table(
    "providers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("endpoint", Text, nullable=False),  # base URL with userinfo redacted
    Column("enabled", Boolean, nullable=False),
    Column("settings", JSON, nullable=False),  # non-secret settings (see store.rows)
    Column("first_seen", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("server_version", Text, nullable=True),
)

# Capacity counts: SMALLINT on PostgreSQL (revision 0009), where it halves their bytes; SQLite sizes every integer
# by its value anyway.
SMALL_COUNT = Integer().with_variant(SmallInteger(), "postgresql")

# Names the time series refer to by a small integer id (NAME_PROVIDER, NAME_MODEL): a row carries 1-2 bytes of
# id instead of the name, repeated 2,880 times a day per provider at a 30 s interval. `digest` (store.rows.digest:
# 63 bits of BLAKE2b of kind and name) is the unique key, so a long or odd name never meets an index's size limit.
# Ids are never reused: a name stays once written, like the history that mentions it.
names = Table(
    "names",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", SmallInteger, nullable=False),
    Column("digest", BigInteger, nullable=False, unique=True),
    Column("name", Text, nullable=False),
)

# Error texts, each stored once; the id is the text's digest (store.rows.digest), so the writer needs no round trip
# to learn it. last_used_s (Unix seconds of the newest row known to cite it, refreshed at most hourly) lets the
# retention job delete texts nothing cites any more without racing a writer that is about to cite one again.
error_texts = Table(
    "error_texts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
    Column("last_used_s", BigInteger, nullable=False),
)

# The time series: one row per probe (revision 0008's compact form; the view `probes` shows it readable). Times
# are Unix microseconds and latencies integer microseconds (the API's precision), the provider a `names` id,
# status and error class small codes (store.rows), the error a reference to error_texts. The primary key
# (provider_id, ts) is the only index: it serves the history of one provider, its newest row, and (walking the
# provider ids in `names`) every "all providers since" read and the pruning; SQLite keeps the rows in it (WITHOUT
# ROWID). The writer moves a second probe of one provider stamped with the same microsecond in one batch 1 µs on,
# and takes a row whose key is already stored for the same probe written twice (a batch retried after a commit
# whose answer was lost). No foreign key, so history outlives the config. Columns are ordered widest first:
# PostgreSQL aligns each to its size, and this order pads nothing.
probes = Table(
    "probe_rows",
    metadata,
    Column("ts", BigInteger, nullable=False),
    Column("error_id", BigInteger, nullable=True),
    Column("provider_id", Integer, nullable=False),
    Column("total_us", Integer, nullable=False),
    Column("ttfb_us", Integer, nullable=True),
    Column("connect_us", Integer, nullable=True),
    # what the server published about its load (Capacity); NULL: not said or not read. kv_cache_ppm is the
    # KV-cache use in millionths (the API's ratio precision).
    Column("kv_cache_ppm", Integer, nullable=True),
    Column("slots_total", SMALL_COUNT, nullable=True),
    Column("slots_busy", SMALL_COUNT, nullable=True),
    Column("queue_depth", SMALL_COUNT, nullable=True),
    Column("requests_running", SMALL_COUNT, nullable=True),
    Column("status", SmallInteger, nullable=False),
    Column("error_class", SmallInteger, nullable=True),
    Column("http_status", SmallInteger, nullable=True),
    Column("model_count", SmallInteger, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    PrimaryKeyConstraint("provider_id", "ts"),
    **CLUSTERED_BY_PRIMARY_KEY,
)

# Each model a provider has served: when first and last seen, and how it described itself.
provider_models = Table(
    "provider_models",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("model_id", Text, primary_key=True),
    Column("details", JSON, nullable=False),  # ModelInfo.to_dict()
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
)


# --- alerts: the durable outbox ---

# Every alert event, silenced ones included; payload is AlertEvent.to_dict().
alert_events = Table(
    "alert_events",
    metadata,
    Column("id", String(36), primary_key=True),  # the event's UUID, also its X-Monitord-Delivery
    Column("type", String(32), nullable=False),
    Column("provider", Text, nullable=True),
    Column("at", UtcDateTime, nullable=False),  # when it happened
    Column("created_at", UtcDateTime, nullable=False),  # when it entered the outbox
    Column("silenced", Boolean, nullable=False),
    Column("payload", JSON, nullable=False),
    # Recent events (GET /v1/alerts) and pruning by age.
    Index(None, "created_at"),
)

# One row per event and webhook, written with the event, before any attempt; kept after delivery as the record.
alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("event_id", String(36), ForeignKey("alert_events.id", ondelete="CASCADE"), primary_key=True),
    Column("webhook", Text, primary_key=True),
    Column("state", String(16), nullable=False),  # pending | delivered | failed | silenced
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),  # the event's, so a webhook gets its events in order
    Column("next_attempt_at", UtcDateTime, nullable=True),  # set while pending
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("claimed_by", Text, nullable=True),  # the dispatcher sending it now, until claimed_until
    Column("claimed_until", UtcDateTime, nullable=True),
    # The event's provider ('' for none): a webhook gets the events of one provider in order, others meanwhile.
    Column("provider", Text, nullable=False, server_default=""),
    # Due deliveries, oldest first per webhook.
    Index(None, "state", "next_attempt_at"),
    Index(None, "webhook", "state", "created_at"),
)

# What receivers were last told of each provider (model.AlertState): a restart or a new cluster owner continues
# from here instead of guessing from the probes that are left. Written with the probe rows behind each change.
alert_state = Table(
    "alert_state",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("told", String(16), nullable=True),
    Column("incident_start", UtcDateTime, nullable=True),
    Column("reminders", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


# --- retention: rollups of the time series, kept longer than the raw rows ---

# Probes of one provider within [bucket_start_s, bucket_start_s + step_s): 60 s (minute) and 3600 s (hour) rows.
# Latency figures cover ok probes only, like store.queries.Bucket, in integer microseconds; latency_hist is
# store.histogram's sparse text, so rows merge and a p95 is estimated from any of them. The start is Unix seconds.
# The primary key is the only index (pruning walks the provider ids, as for probes).
probe_rollups = Table(
    "probe_rollups",
    metadata,
    Column("provider_id", Integer, primary_key=True),
    Column("step_s", Integer, primary_key=True),
    Column("bucket_start_s", BigInteger, primary_key=True),
    Column("latency_sum_us", BigInteger, nullable=True),
    Column("probe_count", Integer, nullable=False),
    Column("ok_count", Integer, nullable=False),
    Column("latency_min_us", Integer, nullable=True),
    Column("latency_max_us", Integer, nullable=True),
    Column("latency_hist", Text, nullable=False),
    **CLUSTERED_BY_PRIMARY_KEY,
)

# How far the retention job has got: "rollup_60" / "rollup_3600" (rolled up before `at`), "raw_pruned"
# (raw probes before `at` deleted). Queries read it to pick the source of each bucket.
retention_marks = Table(
    "retention_marks",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("at", UtcDateTime, nullable=False),
)


# --- cluster: several instances on one PostgreSQL ---

# Every instance that has taken part, with its liveness deadline; rows of long-dead instances are deleted.
cluster_instances = Table(
    "cluster_instances",
    metadata,
    Column("instance_id", Text, primary_key=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

# Who probes what: one row per provider name (or "role:<name>" for cluster-wide duties), valid until expires_at.
# A lease is taken only when free or expired (a conditional upsert), so a killed holder's leases pass on by time.
cluster_leases = Table(
    "cluster_leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Index(None, "holder"),
)

# Silences made through the API (config ones live in the config file); expired rows are pruned on load.
silences = Table(
    "silences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("provider", Text, nullable=False),  # name or glob
    Column("starts_at", UtcDateTime, nullable=True),
    Column("ends_at", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "ends_at"),
)


# --- generation canaries: one row per canary sample, and their rollups ---

# One row per canary run against one model (monitord.model.GenerationSample), compact like probes: ids from
# `names` for the provider and the model, Unix microseconds, integer microsecond timings, codes for the kind and
# the error class, error texts in error_texts. ok/skipped as the sample says: a skipped row (busy, not_loaded,
# budget_exhausted) measured nothing. Keyed like probes, with the model (canaries of several models may start
# in the same microsecond); no foreign key.
generation_samples = Table(
    "generation_samples",
    metadata,
    Column("ts", BigInteger, nullable=False),
    Column("error_id", BigInteger, nullable=True),
    Column("tokens_per_s", Float, nullable=True),
    Column("provider_id", Integer, nullable=False),
    Column("model_id", Integer, nullable=False),
    Column("ttft_us", Integer, nullable=True),
    Column("total_us", Integer, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("kind", SmallInteger, nullable=False),
    Column("error_class", SmallInteger, nullable=True),
    Column("ok", Boolean, nullable=False),
    Column("skipped", Boolean, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("stream_complete", Boolean, nullable=True),
    Column("finish_reason", Text, nullable=True),
    PrimaryKeyConstraint("provider_id", "ts", "model_id"),
    **CLUSTERED_BY_PRIMARY_KEY,
)

# Samples of one (provider, model) within [bucket_start_s, bucket_start_s + step_s), like probe_rollups:
# sample_count counts every row (skipped too) so a late row is noticed; timings cover ok samples only (integer
# microseconds), and the histograms (store.histogram's text; tokens/s in the same log buckets, read as plain
# numbers) give the TTFT p50/p95 and the tokens/s p50 of any merged range.
generation_rollups = Table(
    "generation_rollups",
    metadata,
    Column("provider_id", Integer, primary_key=True),
    Column("model_id", Integer, primary_key=True),
    Column("step_s", Integer, primary_key=True),
    Column("bucket_start_s", BigInteger, primary_key=True),
    Column("ttft_sum_us", BigInteger, nullable=True),
    Column("tokens_spent", BigInteger, nullable=False),
    Column("tps_min", Float, nullable=True),
    Column("tps_max", Float, nullable=True),
    Column("sample_count", Integer, nullable=False),
    Column("ok_count", Integer, nullable=False),
    Column("skipped_count", Integer, nullable=False),
    Column("ttft_min_us", Integer, nullable=True),
    Column("ttft_max_us", Integer, nullable=True),
    Column("ttft_hist", Text, nullable=False),
    Column("tps_hist", Text, nullable=False),
    **CLUSTERED_BY_PRIMARY_KEY,
)
