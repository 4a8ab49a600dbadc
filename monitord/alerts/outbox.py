"""The durable alert outbox and its dispatcher: nothing is sent before it is stored, nothing leaves before a 2xx.

Outbox decides which webhooks get an event (their `events` and `providers` filters, silences); Dispatcher claims
due deliveries, sends each through delivery.deliver, and records the answer: delivered, retry at a backed-off
time, or failed. Pending deliveries survive a restart and are sent by the next run, with the same delivery id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Protocol

import aiohttp
import structlog

from monitord.alerts.delivery import DeliveryResult, Outcome, RetryPolicy, WebhookTarget, deliver
from monitord.alerts.formats import FormatOptions
from monitord.model import AlertEvent, AlertType, DeliveryState
from monitord.store import ClaimedDelivery, DeliveryRow, Store

log = structlog.get_logger("monitord.alerts")

LEASE_MARGIN_S = 15.0  # a claim outlives the webhook's timeout by this much before another dispatcher may take it


class Webhook(WebhookTarget, Protocol):
    """A configured webhook with its filters; config.WebhookConfig fits."""

    @property
    def events(self) -> tuple[str, ...]: ...
    @property
    def providers(self) -> tuple[str, ...]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def wants(webhook: Webhook, event: AlertEvent) -> bool:
    """Whether `event` goes to `webhook`.

    `events` entries are event types (`provider.down`) or families (`provider`, `model`); `providers` entries are
    names or globs. Empty filters take everything. A `test` event goes everywhere; an event about no provider passes
    the providers filter.
    """
    if event.type is AlertType.TEST:
        return True
    kind = event.type.value
    if webhook.events and not any(entry in (kind, kind.split(".", 1)[0]) for entry in webhook.events):
        return False
    if webhook.providers and event.provider is not None:
        return any(fnmatchcase(event.provider.name, pattern) for pattern in webhook.providers)
    return True


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A stored event and where it stands with each webhook (GET /v1/alerts)."""

    event: AlertEvent
    created_at: datetime
    deliveries: tuple[DeliveryRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.to_dict(),
            "created_at": self.created_at.isoformat(),
            "deliveries": {
                row.webhook: {
                    "state": row.state.value,
                    "attempts": row.attempts,
                    "last_status": row.last_status,
                    "last_error": row.last_error,
                    "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
                    "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
                }
                for row in self.deliveries
            },
        }


class Outbox:
    """Stores events with one delivery row per webhook that wants them, and reads them back."""

    def __init__(self, store: Store, webhooks: Sequence[Webhook]) -> None:
        self._store = store
        self.webhooks: Mapping[str, Webhook] = {hook.name: hook for hook in webhooks}

    async def put(self, event: AlertEvent, now: datetime, *, only: str | None = None) -> bool:
        """Store `event` and its deliveries (silenced events: recorded, never sent). False if already stored.

        `only` restricts the deliveries to one webhook (`monitord alert test --sink NAME`).
        """
        if only is not None and only not in self.webhooks:
            raise KeyError(f"no webhook is named {only!r}")
        state = DeliveryState.SILENCED if event.silenced_by else DeliveryState.PENDING
        deliveries = [(name, state) for name, hook in self.webhooks.items()
                      if (only is None or name == only) and wants(hook, event)]
        row = {"id": event.id, "type": event.type.value, "provider": event.provider.name if event.provider else None,
               "at": event.at, "silenced": event.silenced_by is not None, "payload": event.to_dict()}
        return await self._store.outbox.put(row, deliveries, now)

    async def recent(self, *, limit: int = 100, since: datetime | None = None, provider: str | None = None,
                     event_type: str | None = None) -> list[AlertRecord]:
        """Events newest first with their delivery state per webhook."""
        rows = await self._store.outbox.recent(limit=limit, since=since, provider=provider, event_type=event_type)
        return [AlertRecord(AlertEvent.from_dict(row.payload), row.created_at, row.deliveries) for row in rows]

    async def deliveries(self, event_id: str) -> tuple[DeliveryRow, ...]:
        for record in await self._store.outbox.recent(limit=1, event_id=event_id):
            return record.deliveries
        return ()


class Dispatcher:
    """Sends the outbox. The daemon calls start() and stop(); rules' events go in through emit().

    One dispatcher per process; several processes may share a PostgreSQL database (claims never overlap).
    Only the oldest pending delivery of each webhook is sent at a time, so a webhook receives its events in order
    and a dead one gets one request per backoff step, not one per queued event.
    """

    def __init__(self, store: Store, session: aiohttp.ClientSession, webhooks: Sequence[Webhook], *,
                 options: FormatOptions | None = None, retry: RetryPolicy | None = None,
                 clock: Callable[[], datetime] = utcnow, poll_interval_s: float = 1.0, batch_size: int = 16,
                 max_unsaved: int = 10_000, rand: Callable[[], float] = random.random) -> None:
        self.outbox = Outbox(store, webhooks)
        self._store = store
        self._session = session
        self._options = options or FormatOptions()
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._rand = rand
        self.claimer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        timeouts = [hook.timeout_s for hook in webhooks] or [0.0]
        self._lease_s = max(timeouts) + LEASE_MARGIN_S
        self._unsaved: deque[AlertEvent] = deque()
        self._max_unsaved = max_unsaved
        self._wake = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._store_down = False
        self.delivered_total = 0
        self.retried_total = 0
        self.failed_total = 0
        self.dropped_total = 0  # events lost because the database stayed away and the buffer filled

    # -- the daemon's side ---------------------------------------------------------------------------------------

    def emit(self, events: Iterable[AlertEvent]) -> None:
        """Queue events for storing; never blocks or raises. Stored by the dispatcher before any send."""
        for event in events:
            if len(self._unsaved) >= self._max_unsaved:
                self._unsaved.popleft()
                self.dropped_total += 1
                log.error("alert.dropped", reason="outbox unavailable and buffer full", limit=self._max_unsaved)
            self._unsaved.append(event)
        self._wake.set()

    @property
    def unsaved(self) -> int:
        """Events emitted and not stored yet (the database is away, or the loop has not run)."""
        return len(self._unsaved)

    def take_unsaved(self) -> list[AlertEvent]:
        """Hand over the events emitted but not stored yet (after stop(), when webhooks are swapped)."""
        taken = list(self._unsaved)
        self._unsaved.clear()
        return taken

    async def put(self, event: AlertEvent, *, only: str | None = None) -> bool:
        """Store one event now (raises if the database is away) and send it soon. For `alert test`."""
        stored = await self.outbox.put(event, self._clock(), only=only)
        self._wake.set()
        return stored

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        try:
            abandoned = await self._store.outbox.abandon(list(self.outbox.webhooks), "webhook no longer configured")
        except Exception as exc:  # the loop reports the outage and retries; starting must not fail on it
            log.error("alert.outbox_unavailable", phase="start", error=type(exc).__name__)
            abandoned = 0
        if abandoned:
            log.warning("alert.deliveries_abandoned", count=abandoned)
        self._task = asyncio.create_task(self._run(), name="monitord.alerts.dispatcher")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Store what was emitted, let sends in flight finish for up to `grace_s`, give back the claims."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._save_emitted()
            released = await self._store.outbox.release(self.claimer)
        except Exception as exc:  # the database being away at stop is reported, not raised
            log.error("alert.outbox_unavailable", phase="stop", error=type(exc).__name__, unsaved=len(self._unsaved))
            return
        if released:
            log.info("alert.claims_released", count=released)

    async def run_once(self) -> int:
        """Store emitted events, then claim due deliveries and send them. Returns how many were attempted."""
        await self._save_emitted()
        now = self._clock()
        claimed = await self._store.outbox.claim(self.claimer, now, lease_s=self._lease_s, limit=self._batch_size,
                                                 webhooks=list(self.outbox.webhooks))
        if claimed:
            await asyncio.gather(*(self._send(delivery) for delivery in claimed))
        return len(claimed)

    async def drain(self, event_id: str, timeout_s: float) -> tuple[DeliveryRow, ...]:
        """Send until no delivery of `event_id` is due any more or `timeout_s` passes; the deliveries as they end.

        For one-shot use without start() (`monitord alert test`): a retry scheduled later ends the wait.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            attempted = await self.run_once()
            rows = await self.outbox.deliveries(event_id)
            pending = [row for row in rows if row.state is DeliveryState.PENDING]
            due = [row for row in pending if row.next_attempt_at and row.next_attempt_at <= self._clock()]
            if not due or time.monotonic() >= deadline:
                return rows
            if not attempted:
                await asyncio.sleep(0.05)  # another holder's lease, or a due time a moment away

    # -- the loop ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()  # before the work: an emit() during it wakes the next wait
            try:
                attempted = await self.run_once()
                wait_s = 0.0 if attempted else await self._idle_s()
                if self._store_down:
                    self._store_down = False
                    log.info("alert.outbox_available")
                failures = 0
            except Exception as exc:  # a database outage must not end the loop
                failures += 1
                wait_s = min(self._poll_interval_s * 2 ** min(failures, 5), 30.0)
                if not self._store_down:
                    self._store_down = True
                    log.error("alert.outbox_unavailable", error=type(exc).__name__, retry_in_s=wait_s,
                              unsaved=len(self._unsaved))
            if wait_s > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _idle_s(self) -> float:
        """How long to sleep: until the next due delivery, at most poll_interval_s (others may add work)."""
        if self._unsaved:
            return 0.0
        next_due = await self._store.outbox.next_due(list(self.outbox.webhooks))
        if next_due is None:
            return self._poll_interval_s
        return min(self._poll_interval_s, max((next_due - self._clock()).total_seconds(), 0.01))

    async def _save_emitted(self) -> None:
        # One saver at a time: the loop, stop() and run_once() may overlap, and popping after another saver
        # already popped would drop an event that was never stored.
        async with self._save_lock:
            while self._unsaved:
                await self.outbox.put(self._unsaved[0], self._clock())
                self._unsaved.popleft()  # only once stored: an outage keeps it queued

    async def _send(self, claimed: ClaimedDelivery) -> None:
        webhook = self.outbox.webhooks[claimed.webhook]
        event = AlertEvent.from_dict(claimed.payload)
        result = await deliver(self._session, webhook, event, now=self._clock(), options=self._options)
        now = self._clock()
        attempts = claimed.attempts + 1
        bound = log.bind(webhook=webhook.name, event_id=event.id, event_type=event.type.value,
                         provider=event.provider.name if event.provider else None, attempts=attempts,
                         http_status=result.http_status)
        outbox = self._store.outbox
        if result.outcome is Outcome.DELIVERED:
            await outbox.delivered(event.id, webhook.name, now, result.http_status or 0)
            self.delivered_total += 1
            bound.info("alert.delivered", after_s=round((now - claimed.created_at).total_seconds(), 3),
                       elapsed_ms=round(result.elapsed_ms, 1))
            return
        age_s = (now - claimed.created_at).total_seconds()
        if result.outcome is Outcome.RETRY and age_s < self._retry.give_up_after_s:
            delay_s = self._retry.delay_s(attempts, result.retry_after_s, rand=self._rand)
            await outbox.retry(event.id, webhook.name, self.claimer, now + timedelta(seconds=delay_s),
                               result.http_status, result.error)
            self.retried_total += 1
            bound.warning("alert.delivery_retry", error=result.error, retry_in_s=round(delay_s, 3))
            return
        error = _final_error(result, attempts)
        await outbox.failed(event.id, webhook.name, result.http_status, error)
        self.failed_total += 1
        bound.error("alert.delivery_failed", error=error)


def _final_error(result: DeliveryResult, attempts: int) -> str:
    if result.outcome is Outcome.RETRY:
        return f"gave up after {attempts} attempts; last: {result.error}"
    return result.error or "failed"
