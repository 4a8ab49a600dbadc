"""The one batched writer: probe rows (with model sightings and server versions) and generation canary samples,
in Core batches, with the alert events and alert states those probes caused in the same transaction (an alert is
durable no later than its probe).

Buffers while the database is away (bounded, oldest dropped and counted) and never raises to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import bindparam, case, delete, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.aio import wait_event
from monitord.model import AlertEvent, AlertState, GenerationSample, OutboxEntry, ProbeResult
from monitord.store import dialects, rows
from monitord.store.outbox import write_entries
from monitord.store.rows import EPOCH, NAME_MODEL, NAME_PROVIDER, ONE_US, epoch_us, probe_record, sample_record
from monitord.store.schema import error_texts, generation_samples, names, probes, provider_models, providers

MAX_BACKOFF_S = 30.0
WRITE_TIMEOUT_S = 15.0
# After the write timeout cuts the connection, how long the batch's own clean-up may take before it is cancelled
# (a checkout stuck in the pool's pre-ping has no connection of ours to cut yet).
ABORT_GRACE_S = 3.0
MODEL_REFRESH_S = rows.MODEL_REFRESH_S
MODELS_REMEMBERED = 100_000
MAX_MODELS_PER_PROVIDER = 1000
FORGET_MODELS_AFTER_S = 7 * 86400.0
MODEL_PRUNE_EVERY_S = 600.0
HOLD_IDLE_S = 5.0  # a connection idle this long between batches goes back to the pool
ERROR_REFRESH_S = rows.ERROR_REFRESH_S
ERRORS_REMEMBERED = 10_000

# Every kind of row the writer takes; a batch holds any mix, written in one transaction.
Observation = ProbeResult | GenerationSample


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether the database answered the last write or ping, since when, and what is waiting meanwhile."""

    healthy: bool
    since: datetime | None  # when it last turned healthy or unhealthy (None: unchanged since start)
    error: str | None  # the last failure while unhealthy
    pending: int
    dropped_total: int


class _StaleConnection(Exception):
    """A connection kept from the previous batch was found closed (database restart, network cut): try anew."""


class WriteTimedOut(Exception):
    """A batch overran the write timeout: its connection was cut and the batch goes back to the buffer."""


class HealthTracker:
    """The last verdict of every database round trip the store makes (batches and pings)."""

    def __init__(self) -> None:
        self.healthy = True
        self.since: datetime | None = None
        self.error: str | None = None

    def ok(self) -> None:
        if not self.healthy:
            self.healthy, self.since, self.error = True, datetime.now(UTC), None

    def failed(self, error: str) -> None:
        if self.healthy:
            self.healthy, self.since = False, datetime.now(UTC)
        self.error = error

# Errors of the rows themselves: retrying cannot help, so the batch is dropped instead of
# blocking everything behind it. Anything else (refused, locked, timed out) is retried.
_POISON_ERRORS = (DataError, IntegrityError)


def check_settings(*, batch_size: int, flush_interval_s: float, buffer_limit: int, write_timeout_s: float) -> None:
    if batch_size < 1 or buffer_limit < batch_size or flush_interval_s <= 0 or write_timeout_s <= 0:
        raise ValueError("need batch_size >= 1, buffer_limit >= batch_size, flush_interval_s > 0 and "
                         "write_timeout_s > 0")


class Writer:
    """Owns the buffer and the single task that drains it into the database."""

    def __init__(
        self, engine: AsyncEngine, *, batch_size: int, flush_interval_s: float, buffer_limit: int,
        health: HealthTracker | None = None, write_timeout_s: float = WRITE_TIMEOUT_S,
        max_models_per_provider: int = MAX_MODELS_PER_PROVIDER, forget_models_after_s: float = FORGET_MODELS_AFTER_S,
    ) -> None:
        self._max_models = max_models_per_provider
        self._forget_models_after_s = forget_models_after_s
        self._next_model_prune = 0.0  # monotonic; the first batch prunes
        check_settings(batch_size=batch_size, flush_interval_s=flush_interval_s, buffer_limit=buffer_limit,
                       write_timeout_s=write_timeout_s)
        self._write_timeout_s = write_timeout_s
        self._engine = engine
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._buffer_limit = buffer_limit
        self._buffer: deque[Observation] = deque()
        self._in_flight: list[Observation] = []  # taken from the buffer, not yet committed
        self._write_lock = asyncio.Lock()
        self._batch_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failures_in_a_row = 0
        self._dropping = False  # rows have been dropped for lack of room since the last good write
        self._log = structlog.get_logger("monitord.store")
        self.health = health or HealthTracker()
        self.dropped_total = 0
        self.written_total = 0
        # (provider, model id) -> (details, first_seen, last_seen) as last written: most probes list the same
        # models again, and re-upserting them every batch halved the write rate (BENCHMARKS.md, ingestion).
        self._models_written: dict[tuple[str, str], tuple[Any, datetime, datetime]] = {}
        # names.id of provider and model names, and error_texts ids with the last_used_s written, as committed
        # (an id learnt in a transaction that rolled back is never kept).
        self._provider_ids: dict[str, int] = {}
        self._model_ids: dict[str, int] = {}
        self._error_ids: dict[str, int] = {}  # error text -> its digest (a cache of rows.error_id)
        self._errors_used: dict[int, int] = {}
        # providers.server_version as last written: rewriting an unchanged one every batch only made dead rows
        self._versions_written: dict[str, str] = {}
        # the connection batches share while they keep coming (see _commit), and when it last wrote one
        self._held = _Held()
        self._held_used = 0.0
        # Alert events and states waiting for the next batch; never dropped for room (there are few of them).
        self._alerts: list[OutboxEntry] = []
        self._alert_states: dict[str, AlertState] = {}
        self.on_alerts_written: Callable[[], None] | None = None  # the dispatcher's wake-up
        self.alerts_lost_total = 0

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._in_flight)

    @property
    def settings(self) -> tuple[int, float, int, float, int, float]:
        """(batch_size, flush_interval_s, buffer_limit, write_timeout_s, max_models_per_provider,
        forget_models_after_s) in force."""
        return (self._batch_size, self._flush_interval_s, self._buffer_limit, self._write_timeout_s,
                self._max_models, self._forget_models_after_s)

    def configure(self, *, batch_size: int, flush_interval_s: float, buffer_limit: int, write_timeout_s: float,
                  max_models_per_provider: int, forget_models_after_s: float) -> None:
        """A reload: new batching takes effect at once (the writer wakes and waits by the new interval); rows
        already buffered past a lower buffer_limit stay until written."""
        check_settings(batch_size=batch_size, flush_interval_s=flush_interval_s, buffer_limit=buffer_limit,
                       write_timeout_s=write_timeout_s)
        self._batch_size, self._flush_interval_s = batch_size, flush_interval_s
        self._buffer_limit, self._write_timeout_s = buffer_limit, write_timeout_s
        self._max_models, self._forget_models_after_s = max_models_per_provider, forget_models_after_s
        self._batch_ready.set()

    @property
    def alerts_pending(self) -> int:
        """Alert events and states buffered and not yet committed."""
        return len(self._alerts) + len(self._alert_states)

    @property
    def alerts_unsaved(self) -> int:
        """Alert events buffered and not yet committed."""
        return len(self._alerts)

    async def replan_alerts(self, plan: Callable[[AlertEvent], OutboxEntry]) -> None:
        """Plan the deliveries of the events not stored yet again (a reload swapped the webhooks).

        A batch in flight is waited for (the write timeout bounds it): it holds its events outside the buffer, and
        a failed one puts them back as planned before, so they would be stored for the old webhooks after the
        reload (and sent to nobody). Once it ends, every event not stored is in the buffer.
        """
        async with self._write_lock:
            self._alerts = [plan(entry.event) for entry in self._alerts]

    @property
    def failing(self) -> bool:
        """The last batch failed and its rows wait for a retry."""
        return self._failures_in_a_row > 0

    def oldest_pending_at(self) -> datetime | None:
        """The earliest probe start among rows not yet committed (None when all are written)."""
        waiting = [*self._in_flight, *self._buffer]
        return min((result.started_at for result in waiting), default=None)

    def enqueue(self, result: Observation) -> None:
        """Buffer one probe result or canary sample for the next batch. Non-blocking; never raises."""
        if self._closed:
            self._drop(1, reason="closed")
            return
        buffer = self._buffer
        buffer.append(result)
        waiting = len(buffer)
        if waiting + len(self._in_flight) > self._buffer_limit:
            buffer.popleft()
            # One line when dropping starts, not one per row: write_failed lines carry the running total.
            self._drop(1, reason="buffer_full", log=not self._dropping)
            self._dropping = True
        if waiting >= self._batch_size:
            self._batch_ready.set()

    def enqueue_alerts(self, entries: Iterable[OutboxEntry], states: Iterable[AlertState] = ()) -> None:
        """Buffer alert events and states for the next batch, which is due at once. Non-blocking; never raises.

        Called right after the probe results behind them were enqueued, so they commit with those rows or
        earlier, never later.
        """
        entries, states = list(entries), list(states)
        if self._closed:
            self.alerts_lost_total += len(entries)
            self._log.error("alert.lost", events=len(entries), reason="closed")
            return
        self._alerts += entries
        for state in states:
            self._alert_states[state.provider] = state
        if entries or states:
            self._batch_ready.set()

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="monitord.store.writer")

    async def close(self) -> None:
        """Stop the writer task, then try once more to write what is left; report what could not be."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._batch_ready.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        await self._held.release()
        if self.pending:
            lost = self.pending
            self._buffer.clear()
            self._drop(lost, reason="closed_with_database_unreachable")
        if self._alerts:
            self.alerts_lost_total += len(self._alerts)
            self._log.error("alert.lost", events=len(self._alerts), reason="closed_with_database_unreachable")
            self._alerts.clear()

    async def flush(self) -> bool:
        """Write what is buffered now. Returns False (rows kept) if a batch failed; never raises.

        Rows enqueued while it runs may wait for the next flush, so a busy producer cannot keep it going. A batch the
        writer task has in flight is waited for, so rows enqueued before the call are committed when it returns.
        """
        if self._in_flight:
            async with self._write_lock:
                pass
        batches = max(-(-len(self._buffer) // self._batch_size), 1 if self.alerts_pending else 0)
        held = self._held
        if held.conn is not None and time.monotonic() - self._held_used > HOLD_IDLE_S:
            await held.release()
        for _ in range(batches):
            if not await self._write_one_batch(held):
                return False
        return True

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await wait_event(self._batch_ready, self._flush_interval_s)
            self._batch_ready.clear()
            if await self.flush():
                continue
            # Back off without listening to "batch ready": a full buffer must not hammer a dead database.
            backoff_s = min(MAX_BACKOFF_S, self._flush_interval_s * 2 ** min(self._failures_in_a_row, 16))
            await wait_event(self._stopping, backoff_s)

    async def _write_one_batch(self, held: _Held | None = None) -> bool:
        async with self._write_lock:
            if not self._buffer and not self.alerts_pending:
                return True
            count = min(self._batch_size, len(self._buffer))
            self._in_flight = [self._buffer.popleft() for _ in range(count)]
            batch = self._in_flight
            # Probe results are nearly every row: one pass sorts out the rest, the common case pays one type check.
            samples = [row for row in batch if type(row) is GenerationSample]
            results = [row for row in batch if type(row) is ProbeResult] if samples else cast(list[ProbeResult], batch)
            model_rows = self._changed_models(results)
            alerts, self._alerts = self._alerts, []
            states, self._alert_states = self._alert_states, {}
            try:
                await self._commit_once(results, model_rows, samples, alerts, list(states.values()), held)
            except _POISON_ERRORS as exc:
                self._in_flight = []
                if batch:  # the probe rows are the poison (or may be): alerts get a batch of their own next
                    self._log.error("store.batch_rejected", rows=len(batch), error=describe_error(exc))
                    self._drop(len(batch), reason="rejected")
                    self._requeue_alerts(alerts, states)
                else:
                    self.alerts_lost_total += len(alerts)
                    self._log.error("alert.rejected", events=len(alerts), error=describe_error(exc))
                return True
            except Exception as exc:  # the database is away: keep the rows, retry later
                self._requeue(batch)
                self._requeue_alerts(alerts, states)
                self.health.failed(describe_error(exc))
                self._failures_in_a_row += 1
                self._log.warning(
                    "store.write_failed",
                    error=describe_error(exc),
                    failures_in_a_row=self._failures_in_a_row,
                    pending=self.pending,
                    dropped_total=self.dropped_total,
                )
                return False
            except BaseException:  # cancelled mid-write: the transaction rolled back, so the rows go back
                self._requeue(batch)
                self._requeue_alerts(alerts, states)
                raise
            self._in_flight = []
            self._remember_models(model_rows)
            self._dropping = False
            self.health.ok()
            self.written_total += len(batch)
            if self._failures_in_a_row:
                self._log.info("store.write_recovered", failures_in_a_row=self._failures_in_a_row)
                self._failures_in_a_row = 0
            if alerts and self.on_alerts_written is not None:
                self.on_alerts_written()
            return True

    async def _commit_once(self, batch: list[ProbeResult], model_rows: list[dict[str, Any]],
                           samples: list[GenerationSample], alerts: list[OutboxEntry], states: list[AlertState],
                           held: _Held | None) -> None:
        """_commit, again on a fresh connection if a kept one turned out dead (what a pool pre-ping would have
        found), and again skipping rows already stored if a key was taken (a batch retried after a commit whose
        answer was lost, or the commit of the dead connection's try went through)."""
        dedupe = stale_retried = False
        while True:
            try:
                await self._commit(batch, model_rows, samples, alerts, states, held, dedupe=dedupe)
                return
            except _StaleConnection as stale:
                if stale_retried:
                    raise stale.__cause__ or stale from None
                stale_retried = True
            except IntegrityError:
                if dedupe:
                    raise
                dedupe = True  # COPY cannot skip a taken key: insert with ON CONFLICT DO NOTHING instead

    async def _commit(self, batch: list[ProbeResult], model_rows: list[dict[str, Any]],
                      samples: list[GenerationSample], alerts: list[OutboxEntry], states: list[AlertState],
                      held: _Held | None = None, dedupe: bool = False) -> None:
        """One transaction, bounded by the write timeout whatever the database or the network does.

        A silent peer (half-open TCP) never answers, not even a rollback or a goodbye: when the time is up the
        connection is cut from outside (dialects.abort_connection), so every await on it fails at once and the
        pool forgets it; the batch is then retried on a new connection. The outer timeout covers a checkout that
        hangs before there is a connection to cut.

        Batches share a connection (`held`) while they keep coming (less than HOLD_IDLE_S apart): checked out of
        the pool, and pinged, once, not per batch (a pre-ping is three round trips on PostgreSQL). A batch that
        fails in any way closes it, so the next one checks out a fresh one; a kept connection found dead raises
        _StaleConnection, and the batch is written again at once on a fresh one (_commit_once).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_timeout_s
        aborted = False

        def abort(driver_connection: Any) -> None:
            nonlocal aborted
            aborted = True
            dialects.abort_connection(driver_connection)

        conn = held.take() if held is not None else None
        reused = conn is not None
        try:
            async with asyncio.timeout_at(deadline + ABORT_GRACE_S):
                if conn is None:
                    conn = await self._engine.connect().start()
                raw = await conn.get_raw_connection()
                watchdog = loop.call_at(deadline, abort, raw.driver_connection)
                try:
                    async with conn.begin():
                        learnt = await self._write(conn, batch, model_rows, samples, dedupe)
                        forgotten = await self._bound_models(conn, model_rows, batch)
                        if alerts or states:
                            await write_entries(conn, alerts, states, datetime.now(UTC))
                finally:
                    watchdog.cancel()
                if held is not None:
                    held.conn, conn = conn, None  # for the next batch
                    self._held_used = time.monotonic()
                else:
                    done, conn = conn, None
                    await done.close()
            for key in forgotten:
                self._models_written.pop(key, None)
            learnt.keep(self)
        except Exception as exc:
            if aborted or isinstance(exc, TimeoutError):
                raise WriteTimedOut(f"no answer within {self._write_timeout_s:g}s; connection discarded") from exc
            if reused and dialects.is_disconnect(exc):
                raise _StaleConnection("the kept connection was closed") from exc
            raise
        finally:
            if conn is not None:  # the batch failed or was cancelled: this connection is not used again
                await _close(conn)

    async def _write(self, conn: AsyncConnection, batch: list[ProbeResult], model_rows: list[dict[str, Any]],
                     samples: list[GenerationSample], dedupe: bool) -> Learnt:
        """The rows of one batch, compact (store.rows): names and error texts first, so the rows can cite them."""
        learnt = Learnt()
        provider_ids, model_ids = self._provider_ids, self._model_ids
        missing = {result.provider for result in batch if result.provider not in provider_ids}
        missing.update(sample.provider for sample in samples if sample.provider not in provider_ids)
        if missing:
            learnt.providers = await _name_ids(conn, NAME_PROVIDER, missing)
            provider_ids = {**provider_ids, **learnt.providers}
        missing = {sample.model for sample in samples if sample.model not in model_ids}
        if missing:
            learnt.models = await _name_ids(conn, NAME_MODEL, missing)
            model_ids = {**model_ids, **learnt.models}
        errors = _Errors(self._error_ids, self._errors_used)
        records = probe_records(batch, provider_ids, errors)
        sample_records = []
        seen_samples: set[tuple[int, int, int]] = set()
        for sample in samples:
            provider_id, model_id = provider_ids[sample.provider], model_ids[sample.model]
            ts = epoch_us(sample.started_at)
            while (provider_id, model_id, ts) in seen_samples:
                ts += 1
            seen_samples.add((provider_id, model_id, ts))
            error = sample.error
            sample_records.append(sample_record(sample, provider_id, model_id, ts,
                                                None if error is None else errors.cite(error, ts)))
        if errors.refresh:
            await conn.execute(_error_upsert(conn.dialect.name), list(errors.refresh.values()))
            learnt.errors = {row["id"]: row["last_used_s"] for row in errors.refresh.values()}
        await dialects.insert_records(conn, probes, rows.PROBE_COLUMNS, records, dedupe=dedupe)
        await dialects.insert_records(conn, generation_samples, rows.SAMPLE_COLUMNS, sample_records, dedupe=dedupe)
        if model_rows:
            await conn.execute(_model_upsert(conn.dialect.name), model_rows)
        written = self._versions_written
        versions = {name: version for name, version in rows.server_versions(batch).items()
                    if written.get(name) != version}
        learnt.versions = versions
        if versions:
            await conn.execute(_versions_update(), [{"b_name": name, "b_version": v} for name, v in versions.items()])
        return learnt

    async def _bound_models(self, conn: AsyncConnection, model_rows: list[dict[str, Any]],
                            batch: list[ProbeResult]) -> list[tuple[str, str]]:
        """Keep provider_models bounded where it grows: a provider with new ids in this batch keeps its
        max_models_per_provider most recently seen, and (every MODEL_PRUNE_EVERY_S) models not listed for
        forget_models_after_s before the batch's newest probe go. Returns the (provider, model id) rows deleted."""
        table = provider_models
        forgotten: list[tuple[str, str]] = []
        grown = sorted({row["provider"] for row in model_rows
                        if (row["provider"], row["model_id"]) not in self._models_written})
        for provider in grown:
            keep = (select(table.c.model_id).where(table.c.provider == provider)
                    .order_by(table.c.last_seen.desc(), table.c.model_id).limit(self._max_models))
            trim = (delete(table).where(table.c.provider == provider, table.c.model_id.not_in(keep))
                    .returning(table.c.model_id))
            forgotten += [(provider, model_id) for model_id in (await conn.execute(trim)).scalars()]
        if batch and time.monotonic() >= self._next_model_prune:
            self._next_model_prune = time.monotonic() + MODEL_PRUNE_EVERY_S
            # the probes' own clock, not this process's: rows are compared with what the probes stamped
            newest = max(result.started_at for result in batch)
            before = newest - timedelta(seconds=self._forget_models_after_s)
            old = delete(table).where(table.c.last_seen < before).returning(table.c.provider, table.c.model_id)
            forgotten += [(row[0], row[1]) for row in await conn.execute(old)]
        if forgotten:
            self._log.info("store.models_forgotten", rows=len(forgotten), providers=len({p for p, _ in forgotten}))
        return forgotten

    def forget_versions(self) -> None:
        """Write every provider's server version again with the next batch (providers rows were (re)written)."""
        self._versions_written.clear()

    def _requeue_alerts(self, alerts: list[OutboxEntry], states: dict[str, AlertState]) -> None:
        self._alerts[:0] = alerts
        self._alert_states = {**states, **self._alert_states}  # a state set meanwhile is newer

    def _changed_models(self, batch: list[ProbeResult]) -> list[dict[str, Any]]:
        """The model rows worth an upsert: new, changed details, an earlier first sighting, or a last sighting
        MODEL_REFRESH_S past the one stored (so provider_models.last_seen is exact to within that)."""
        changed = []
        for row in rows.model_rows(batch):
            written = self._models_written.get((row["provider"], row["model_id"]))
            if (written is None or written[0] != row["details"] or row["first_seen"] < written[1]
                    or (row["last_seen"] - written[2]).total_seconds() >= MODEL_REFRESH_S):
                changed.append(row)
        return changed

    def _remember_models(self, model_rows: list[dict[str, Any]]) -> None:
        if len(self._models_written) > MODELS_REMEMBERED:
            self._models_written.clear()  # a provider that churns model ids: start over rather than grow
        for row in model_rows:
            key = (row["provider"], row["model_id"])
            written = self._models_written.get(key)
            first_seen = min(row["first_seen"], written[1]) if written else row["first_seen"]
            self._models_written[key] = (row["details"], first_seen, row["last_seen"])

    def _requeue(self, batch: list[Observation]) -> None:
        """Put a failed batch back in front: it is older than anything enqueued meanwhile."""
        self._in_flight = []
        self._buffer.extendleft(reversed(batch))

    def _drop(self, count: int, *, reason: str, log: bool = True) -> None:
        self.dropped_total += count
        if log:
            self._log.warning(
                "store.rows_dropped", rows=count, reason=reason, dropped_total=self.dropped_total
            )


def _versions_update() -> Any:
    return (update(providers).where(providers.c.name == bindparam("b_name"))
            .values(server_version=bindparam("b_version")))


def _model_upsert(dialect_name: str) -> Any:
    table = provider_models

    def on_conflict(excluded: Any) -> dict[str, Any]:
        # Batches can land out of order after an outage: keep the earliest first and latest last sighting.
        newer = excluded.last_seen >= table.c.last_seen
        return {
            "details": case((newer, excluded.details), else_=table.c.details),
            "last_seen": case((newer, excluded.last_seen), else_=table.c.last_seen),
            "first_seen": case(
                (excluded.first_seen < table.c.first_seen, excluded.first_seen), else_=table.c.first_seen
            ),
        }

    return dialects.upsert(dialect_name, table, ("provider", "model_id"), on_conflict)


def describe_error(exc: BaseException) -> str:
    """Class and first line of an error: enough to act on, short enough for a log line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _Held:
    """The connection consecutive batches share (see Writer._commit)."""

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None

    def take(self) -> AsyncConnection | None:
        conn, self.conn = self.conn, None
        return conn

    async def release(self) -> None:
        conn = self.take()
        if conn is not None:
            await _close(conn)


async def _close(conn: AsyncConnection) -> None:
    """Give a connection back (or, broken, to the pool to discard), within ABORT_GRACE_S whatever the peer does."""
    try:
        async with asyncio.timeout(ABORT_GRACE_S):
            await conn.close()
    except Exception:  # a dead or silent peer: the pool forgets the connection
        with contextlib.suppress(Exception):
            await conn.invalidate()


@dataclass(slots=True)
class Learnt:
    """Ids a batch's transaction wrote or read; kept by the writer only once that transaction committed."""

    providers: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)  # error id -> last_used_s written
    versions: dict[str, str] = field(default_factory=dict)  # provider -> server version written

    def keep(self, writer: Writer) -> None:
        writer._provider_ids.update(self.providers)
        writer._model_ids.update(self.models)
        if len(writer._errors_used) > ERRORS_REMEMBERED:
            writer._errors_used.clear()  # errors that churn (an id in every message): start over rather than grow
        writer._errors_used.update(self.errors)
        writer._versions_written.update(self.versions)


class _Errors:
    """The error ids of one batch's rows, and the error_texts rows it must (re)write."""

    def __init__(self, ids: dict[str, int], used: dict[int, int]) -> None:
        if len(ids) > ERRORS_REMEMBERED:
            ids.clear()
        self._ids = ids
        self._used = used
        self.refresh: dict[int, dict[str, Any]] = {}

    def cite(self, error: str, ts_us: int) -> int:
        error_id = self._ids.get(error)
        if error_id is None:
            error_id = self._ids[error] = rows.error_id(rows.short(error) or "")
        used_s = ts_us // 1_000_000
        if used_s - self._used.get(error_id, -ERROR_REFRESH_S - 1) > ERROR_REFRESH_S:
            row = self.refresh.get(error_id)
            if row is None:
                self.refresh[error_id] = {"id": error_id, "text": rows.short(error), "last_used_s": used_s}
            elif used_s > row["last_used_s"]:
                row["last_used_s"] = used_s
        return error_id


def probe_records(batch: list[ProbeResult], provider_ids: dict[str, int], errors: _Errors) -> list[tuple[Any, ...]]:
    """The probe_rows rows of a batch (the per-row hot path, kept flat). A provider's rows come mostly in time
    order: only a row not later than the provider's last one in the batch is checked for a taken microsecond."""
    records: list[tuple[Any, ...]] = []
    newest: dict[int, int] = {}  # provider id -> its latest ts in this batch (rows come mostly in time order)
    for result in batch:
        provider_id = provider_ids[result.provider]
        try:
            ts = (result.started_at - EPOCH) // ONE_US
        except TypeError:
            ts = epoch_us(result.started_at)
        latest = newest.get(provider_id)
        if latest is not None and ts <= latest:
            ts = _free_ts(records, provider_id, ts)  # maybe the same microsecond as another: 1 µs on
            newest[provider_id] = max(latest, ts)
        else:
            newest[provider_id] = ts
        error = result.error
        records.append(probe_record(result, provider_id, ts, None if error is None else errors.cite(error, ts)))
    return records


def _free_ts(records: list[tuple[Any, ...]], provider_id: int, ts: int) -> int:
    """`ts`, or the first microsecond after it no row of `records` holds for `provider_id` (the slow path: a
    provider's rows out of order in one batch)."""
    taken = {record[1] for record in records if record[0] == provider_id}
    while ts in taken:
        ts += 1
    return ts


async def _name_ids(conn: AsyncConnection, kind: int, wanted: set[str]) -> dict[str, int]:
    """names.id of each name in `wanted`, inserting those not there yet (another instance may race: both end with
    the one row)."""
    by_digest = {rows.digest(kind, name): name for name in wanted}
    await conn.execute(dialects.insert_ignore(conn.dialect.name, names),
                       [{"kind": kind, "digest": key, "name": name} for key, name in by_digest.items()])
    found = await conn.execute(select(names.c.id, names.c.digest).where(names.c.digest.in_(sorted(by_digest))))
    return {by_digest[row.digest]: row.id for row in found}


def _error_upsert(dialect_name: str) -> Any:
    table = error_texts
    return dialects.upsert(dialect_name, table, ("id",), lambda excluded: {
        "last_used_s": case((excluded.last_used_s > table.c.last_used_s, excluded.last_used_s),
                            else_=table.c.last_used_s)})
