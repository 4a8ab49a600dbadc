"""The tables, as SQLAlchemy Core objects on one MetaData shared with Alembic.

Describes the schema for queries and for autogenerate; never creates it (migrations do).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from monitord.store.dialects import ID_TYPE

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

# The time series: one row per probe. No foreign key to providers, so history outlives the config.
probes = Table(
    "probes",
    metadata,
    Column("id", ID_TYPE, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("provider", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_class", String(32), nullable=True),
    Column("error", Text, nullable=True),
    Column("connect_ms", Float, nullable=True),
    Column("ttfb_ms", Float, nullable=True),
    Column("total_ms", Float, nullable=False),
    Column("http_status", Integer, nullable=True),
    Column("model_count", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    # History of one provider over a time range, and its latest row.
    Index(None, "provider", "ts"),
    # All providers since a time (state rebuild) and pruning by age.
    Index(None, "ts"),
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
