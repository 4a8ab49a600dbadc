"""The Store facade: the only thing other modules import from the store.

One class for SQLite and PostgreSQL; it connects and reads and writes, but never creates the schema
(that is `monitord.store.migrate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from monitord.model import AlertEvent, AlertState, GenerationSample, OutboxEntry, ProbeResult, ProviderSpec
from monitord.store import dialects, generation, queries, rows
from monitord.store.generation import GenerationBucket, StoredSample
from monitord.store.leases import LeaseStore
from monitord.store.outbox import ClaimedDelivery, DeliveryRow, EventRow, OutboxStore, PendingFigures
from monitord.store.queries import Bucket, ProbeSample, StoredModel
from monitord.store.retention import Retention, RetentionPolicy, RetentionReport
from monitord.store.schema import providers
from monitord.store.silences import SilenceStore
from monitord.store.writer import (
    FORGET_MODELS_AFTER_S,
    MAX_MODELS_PER_PROVIDER,
    WRITE_TIMEOUT_S,
    HealthTracker,
    StoreHealth,
    Writer,
    describe_error,
)
from monitord.text import redact_url

__all__ = ["Bucket", "ClaimedDelivery", "DeliveryRow", "EventRow", "GenerationBucket", "LeaseStore", "OutboxStore",
           "PendingFigures", "ProbeSample", "Retention", "RetentionPolicy", "RetentionReport", "Store", "StoreHealth",
           "StoredModel", "StoredSample"]

DISPOSE_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0  # readiness asks often; a database slower than this to say "1" counts as away


class Store:
    """Probe history and model sightings, written in batches and read by the API and at start-up."""

    def __init__(self, engine: AsyncEngine, writer: Writer) -> None:
        self._engine = engine
        self._writer = writer
        self._health = writer.health

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        buffer_limit: int = 100_000,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_models_per_provider: int = MAX_MODELS_PER_PROVIDER,
        forget_models_after_s: float = FORGET_MODELS_AFTER_S,
    ) -> Store:
        """Connect to `url` (see dialects.create_engine for the URL options). Does not migrate.

        An unreachable database is reported, not raised: writes are buffered until it answers.
        """
        engine = dialects.create_engine(url)
        writer = Writer(engine, batch_size=batch_size, flush_interval_s=flush_interval_s, buffer_limit=buffer_limit,
                        health=HealthTracker(), write_timeout_s=write_timeout_s,
                        max_models_per_provider=max_models_per_provider, forget_models_after_s=forget_models_after_s)
        store = cls(engine, writer)
        if not await store.ping():
            structlog.get_logger("monitord.store").warning(
                "store.unreachable", url=redact_url(url))
        return store

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def outbox(self) -> OutboxStore:
        """The alert outbox tables (see monitord.alerts.outbox for what goes in and when)."""
        return OutboxStore(self._engine)

    @property
    def pending(self) -> int:
        """Rows buffered and not yet committed."""
        return self._writer.pending

    @property
    def dropped_total(self) -> int:
        """Rows given up on: buffer overflow during an outage, rejected batches, or lost at close."""
        return self._writer.dropped_total

    @property
    def written_total(self) -> int:
        return self._writer.written_total

    @property
    def healthy(self) -> bool:
        """Whether the last write or ping reached the database (no round trip: cheap enough for every scrape)."""
        return self._health.healthy

    def health(self) -> StoreHealth:
        """The store's view of the database now, without a round trip."""
        return StoreHealth(healthy=self._health.healthy, since=self._health.since, error=self._health.error,
                           pending=self.pending, dropped_total=self.dropped_total)

    @property
    def silences(self) -> SilenceStore:
        """Silences made through the API (config silences stay in the config)."""
        return SilenceStore(self._engine)

    @property
    def leases(self) -> LeaseStore:
        """The cluster tables (see monitord.cluster for who takes which lease and when)."""
        return LeaseStore(self._engine)

    def retention(self, policy: RetentionPolicy) -> Retention:
        """The pruning and rollup job on this store; it never rolls up minutes whose rows are still buffered."""
        return Retention(self._engine, policy, oldest_pending=self._writer.oldest_pending_at)

    @property
    def writer_settings(self) -> tuple[int, float, int, float, int, float]:
        """(batch_size, flush_interval_s, buffer_limit, write_timeout_s, max_models_per_provider,
        forget_models_after_s) in force."""
        return self._writer.settings

    def configure_writer(self, *, batch_size: int, flush_interval_s: float, buffer_limit: int,
                         write_timeout_s: float, max_models_per_provider: int, forget_models_after_s: float) -> None:
        """A reload's new batching (raises ValueError for settings the writer cannot take, changing nothing)."""
        self._writer.configure(batch_size=batch_size, flush_interval_s=flush_interval_s, buffer_limit=buffer_limit,
                               write_timeout_s=write_timeout_s, max_models_per_provider=max_models_per_provider,
                               forget_models_after_s=forget_models_after_s)

    async def start(self) -> None:
        """Start the writer task (batches by size, or every flush_interval_s)."""
        self._writer.start()

    async def close(self) -> None:
        """Flush pending rows, stop the writer and release every connection. Never raises for the database."""
        await self._writer.close()
        try:
            # a pooled connection to a silent peer would wait for ever for its goodbye to be read
            async with asyncio.timeout(DISPOSE_TIMEOUT_S):
                await self._engine.dispose()
        except TimeoutError:
            structlog.get_logger("monitord.store").warning("store.close_timed_out", timeout_s=DISPOSE_TIMEOUT_S)

    def enqueue(self, result: ProbeResult | GenerationSample) -> None:
        """Queue one probe result or canary sample for writing. Non-blocking; never raises."""
        self._writer.enqueue(result)

    def enqueue_alerts(self, entries: Iterable[OutboxEntry], states: Iterable[AlertState] = ()) -> None:
        """Queue alert events and states: committed with the next batch, which carries every probe result
        enqueued before them (so an alert is never durable later than its probe). Non-blocking; never raises."""
        self._writer.enqueue_alerts(entries, states)

    def on_alerts_written(self, callback: Callable[[], None] | None) -> None:
        """Called after each batch that stored alert events (the dispatcher wakes up on it)."""
        self._writer.on_alerts_written = callback

    @property
    def alerts_unsaved(self) -> int:
        """Alert events buffered and not yet committed."""
        return self._writer.alerts_unsaved

    async def replan_alerts(self, plan: Callable[[AlertEvent], OutboxEntry]) -> None:
        """Plan the deliveries of the alert events not stored yet again (a reload swapped the webhooks); waits for
        a batch in flight, whose events may come back to the buffer."""
        await self._writer.replan_alerts(plan)

    @property
    def alerts_pending(self) -> int:
        """Alert events and states buffered and not yet committed."""
        return self._writer.alerts_pending

    async def flush(self) -> None:
        """Write everything buffered now; if the database is away the rows stay buffered (see `pending`)."""
        await self._writer.flush()

    async def sync_providers(self, specs: Sequence[ProviderSpec], now: datetime) -> None:
        """Upsert the configuration snapshot of `specs` (no secrets; endpoints redacted)."""
        if not specs:
            return
        stmt = dialects.upsert(
            self.dialect,
            providers,
            ("name",),
            lambda excluded: {
                "type": excluded.type,
                "endpoint": excluded.endpoint,
                "enabled": excluded.enabled,
                "settings": excluded.settings,
                "updated_at": excluded.updated_at,
            },
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [rows.provider_row(spec, now) for spec in specs])
        self._writer.forget_versions()  # a row made now has no version yet

    async def history(
        self,
        provider: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[ProbeSample]:
        """Samples of one provider with since <= ts < until, newest first."""
        return await queries.history(self._engine, provider, since=since, until=until, limit=limit)

    async def latest(self) -> dict[str, ProbeSample]:
        """The newest sample of every provider that has one."""
        return await queries.latest(self._engine)

    async def recent(self, since: datetime) -> list[ProbeSample]:
        """Samples of every provider with ts >= since, oldest first (to rebuild live state)."""
        return await queries.recent(self._engine, since)

    async def models(self, provider: str | None = None) -> list[StoredModel]:
        return await queries.models(self._engine, provider)

    async def aggregate(self, provider: str, *, step_s: int, since: datetime, until: datetime) -> list[Bucket]:
        """step_s-wide buckets over since <= ts < until, oldest first; empty buckets are left out.

        Reads raw rows or rollups per part of the range (see queries.plan_sources): hour steps come from hour
        rollups, minute steps from raw rows while they are kept and from minute rollups after.
        """
        return await queries.aggregate(self._engine, provider, step_s=step_s, since=since, until=until)

    async def generation_history(self, provider: str, *, since: datetime | None = None,
                                 until: datetime | None = None, model: str | None = None,
                                 limit: int = 1000) -> list[StoredSample]:
        """Canary samples of one provider (one model, if given) with since <= ts < until, newest first."""
        return await generation.history(self._engine, provider, since=since, until=until, model=model, limit=limit)

    async def generation_recent(self, since: datetime) -> list[StoredSample]:
        """Canary samples of every provider with ts >= since, oldest first (to rebuild the live statistics)."""
        return await generation.recent(self._engine, since)

    async def generation_aggregate(self, provider: str, *, step_s: int, since: datetime, until: datetime,
                                   model: str | None = None) -> list[GenerationBucket]:
        """step_s-wide buckets per model over since <= ts < until (raw rows or rollups, as `aggregate`)."""
        return await generation.aggregate(self._engine, provider, step_s=step_s, since=since, until=until,
                                          model=model)

    async def results_since(self, since: datetime, *, exclude: Collection[str] = (),
                            newer_than: Mapping[str, datetime] | None = None) -> list[ProbeResult]:
        """Stored probes with ts >= since as results, oldest first (other instances' probes, in cluster mode);
        without `exclude`d providers and probes not newer than newer_than[provider]."""
        return await queries.results_since(self._engine, since, exclude=exclude, newer_than=newer_than)

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> bool:
        """True if the database answers a trivial query within `timeout_s` and the writer's last batch did not fail;
        updates `healthy`. Never raises."""
        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach or query the database in time means "no"
            self._health.failed(f"{type(exc).__name__}: no answer within {timeout_s:g}s"
                                if isinstance(exc, TimeoutError) else describe_error(exc))
            return False
        if self._writer.failing:  # it answers reads but refuses writes (disk full, locked): only a write clears it
            return False
        self._health.ok()
        return True

