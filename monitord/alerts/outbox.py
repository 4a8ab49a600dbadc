"""The durable alert outbox and its dispatcher: nothing is sent before it is stored, nothing leaves before a 2xx.

Outbox decides which webhooks get an event (their `events` and `providers` filters, silences, grouping); events
reach the database through the store's writer, in the transaction of the probe rows behind them. Dispatcher claims
due deliveries, sends them through alerts.delivery (several at a time per webhook, grouped for chat formats), and
records the answer: delivered, retry at a backed-off time, or failed. Pending deliveries survive a restart and are
sent by the next run, with the same delivery id.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Protocol

import aiohttp
import structlog

from monitord.aio import wait_event
from monitord.alerts.delivery import DeliveryResult, Outcome, RetryPolicy, WebhookTarget, deliver, deliver_group
from monitord.alerts.formats import FormatOptions, group_id
from monitord.model import AlertEvent, AlertState, AlertType, DeliveryState, OutboxEntry, PlannedDelivery
from monitord.store import ClaimedDelivery, DeliveryRow, PendingFigures, Store

log = structlog.get_logger("monitord.alerts")

LEASE_MARGIN_S = 15.0  # a claim outlives the webhook's timeout by this much before another dispatcher may take it


class Webhook(WebhookTarget, Protocol):
    """A configured webhook with its filters; config.WebhookConfig fits."""

    @property
    def events(self) -> tuple[str, ...]: ...
    @property
    def providers(self) -> tuple[str, ...]: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def groups(self) -> bool: ...


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
    """Decides which webhooks get an event (filters, silences, grouping), stores it, and reads events back."""

    def __init__(self, store: Store, webhooks: Sequence[Webhook], *, group_wait_s: float = 0.0) -> None:
        self._store = store
        self.webhooks: Mapping[str, Webhook] = {hook.name: hook for hook in webhooks}
        self.group_wait_s = group_wait_s

    def entry(self, event: AlertEvent, *, only: str | None = None) -> OutboxEntry:
        """The event with one planned delivery per webhook that wants it (silenced: recorded, never sent).

        A webhook that groups waits group_wait_s before the first attempt, so events raised meanwhile join it.
        `only` restricts the deliveries to one webhook (`monitord alert test --sink NAME`).
        """
        if only is not None and only not in self.webhooks:
            raise KeyError(f"no webhook is named {only!r}")
        state = DeliveryState.SILENCED if event.silenced_by else DeliveryState.PENDING
        return OutboxEntry(event, tuple(
            PlannedDelivery(name, state, self.group_wait_s if hook.groups and event.type is not AlertType.TEST
                            else 0.0)
            for name, hook in self.webhooks.items() if (only is None or name == only) and wants(hook, event)))

    async def put(self, event: AlertEvent, now: datetime, *, only: str | None = None) -> bool:
        """Store `event` and its deliveries now. False if an event with that id is already stored."""
        return await self._store.outbox.put([self.entry(event, only=only)], now) == 1

    async def recent(self, *, limit: int = 100, since: datetime | None = None, provider: str | None = None,
                     event_type: str | None = None) -> list[AlertRecord]:
        """Events newest first with their delivery state per webhook."""
        rows = await self._store.outbox.recent(limit=limit, since=since, provider=provider, event_type=event_type)
        return [AlertRecord(AlertEvent.from_dict(row.payload), row.created_at, row.deliveries) for row in rows]

    async def deliveries(self, event_id: str) -> tuple[DeliveryRow, ...]:
        for record in await self._store.outbox.recent(limit=1, event_id=event_id):
            return record.deliveries
        return ()


GROUP_LIMIT = 500  # events in one grouped message at most (a chat message lists 25 and counts the rest)
FIGURES_EVERY_S = 5.0  # how often the loop refreshes the outbox figures /metrics shows


class Dispatcher:
    """Sends the outbox. The daemon calls start() and stop(); rules' events go in through emit().

    One dispatcher per process; several processes may share a PostgreSQL database (claims never overlap).
    Each webhook has up to `concurrency` requests in flight; a provider's events go in order (the next waits for
    the one before to end), so a failing event holds back its own provider only, never the whole webhook.
    Webhooks that group (Slack, Discord, json with `batch`) send every pending event in one message.
    """

    def __init__(self, store: Store, session: aiohttp.ClientSession, webhooks: Sequence[Webhook], *,
                 options: FormatOptions | None = None, retry: RetryPolicy | None = None,
                 clock: Callable[[], datetime] = utcnow, poll_interval_s: float = 1.0, group_wait_s: float = 0.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.outbox = Outbox(store, webhooks, group_wait_s=group_wait_s)
        self._store = store
        self._session = session
        self._options = options or FormatOptions()
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._rand = rand
        self.claimer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        timeouts = [hook.timeout_s for hook in webhooks] or [0.0]
        self._lease_s = max(timeouts) + LEASE_MARGIN_S
        self._in_flight: dict[str, int] = dict.fromkeys(self.outbox.webhooks, 0)
        self._sends: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._store_down = False
        self._figures_at = 0.0
        self.figures: list[PendingFigures] = []  # refreshed by the loop every FIGURES_EVERY_S (for /metrics)
        self.results: Counter[tuple[str, str]] = Counter()  # (webhook, delivered|retry|failed) -> deliveries

    @property
    def delivered_total(self) -> int:
        return sum(n for (_, result), n in self.results.items() if result == Outcome.DELIVERED.value)

    # -- the daemon's side ---------------------------------------------------------------------------------------

    def emit(self, events: Iterable[AlertEvent], states: Iterable[AlertState] = ()) -> None:
        """Hand events (and the alert states behind them) to the store's writer; never blocks or raises.

        They commit with the next batch, which carries the probe rows enqueued before them, and the dispatcher
        wakes once they are stored: nothing is sent before it is stored, and nothing waits here for a send.
        """
        self._store.enqueue_alerts([self.outbox.entry(event) for event in events], states)

    def wake(self) -> None:
        self._wake.set()

    @property
    def unsaved(self) -> int:
        """Events emitted and not stored yet: they wait in the store's writer (the database is away, or the next
        batch has not run)."""
        return self._store.alerts_unsaved

    async def replan(self) -> None:
        """Events still waiting in the writer, a batch in flight's included, go to this dispatcher's webhooks (a
        reload swapped them)."""
        await self._store.replan_alerts(self.outbox.entry)

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
        self._store.on_alerts_written(self.wake)
        self._task = asyncio.create_task(self._run(), name="monitord.alerts.dispatcher")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Let sends in flight finish for up to `grace_s`, then give back the claims (retried by the next run)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self._sends:
            _, late = await asyncio.wait(set(self._sends), timeout=grace_s)
            for send in late:
                send.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            released = await self._store.outbox.release(self.claimer)
        except Exception as exc:  # the database being away at stop is reported, not raised
            log.error("alert.outbox_unavailable", phase="stop", error=type(exc).__name__)
            return
        if released:
            log.info("alert.claims_released", count=released)

    async def run_once(self) -> int:
        """Claim due deliveries and send them, waiting for the sends. Returns how many deliveries were attempted."""
        sends, claimed = await self._fill()
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)
        return claimed

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
            self._wake.clear()  # before the work: a commit or a finished send during it wakes the next wait
            try:
                _, claimed = await self._fill()
                await self._refresh_figures()
                wait_s = 0.0 if claimed else await self._idle_s()
                if self._store_down:
                    self._store_down = False
                    log.info("alert.outbox_available")
                failures = 0
            except Exception as exc:  # a database outage must not end the loop
                failures += 1
                wait_s = min(self._poll_interval_s * 2 ** min(failures, 5), 30.0)
                if not self._store_down:
                    self._store_down = True
                    log.error("alert.outbox_unavailable", error=type(exc).__name__, retry_in_s=wait_s)
            if wait_s > 0 and not self._stopping:
                await wait_event(self._wake, wait_s)

    async def _fill(self) -> tuple[list[asyncio.Task[None]], int]:
        """Claim what each webhook has room for and start sending it; the sends started and deliveries claimed."""
        sends: list[asyncio.Task[None]] = []
        claimed_total = 0
        for name, hook in self.outbox.webhooks.items():
            room = hook.concurrency - self._in_flight[name]
            if room <= 0 or self._stopping:
                continue
            claimed = await self._store.outbox.claim(
                self.claimer, self._clock(), lease_s=self._lease_s, webhooks=[name],
                limit=GROUP_LIMIT if hook.groups else room, group=hook.groups)
            if not claimed:
                continue
            claimed_total += len(claimed)
            batches = [claimed] if hook.groups else [[one] for one in claimed]
            for batch in batches:
                sends.append(self._spawn(hook, batch))
        return sends, claimed_total

    def _spawn(self, hook: Webhook, batch: list[ClaimedDelivery]) -> asyncio.Task[None]:
        self._in_flight[hook.name] += 1
        task = asyncio.create_task(self._send(hook, batch), name=f"monitord.alerts.send.{hook.name}")
        self._sends.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._sends.discard(finished)
            self._in_flight[hook.name] -= 1
            self._wake.set()

        task.add_done_callback(done)
        return task

    async def _idle_s(self) -> float:
        """How long to sleep: until the next due delivery, at most poll_interval_s (others may add work)."""
        next_due = await self._store.outbox.next_due(list(self.outbox.webhooks))
        if next_due is None:
            return self._poll_interval_s
        return min(self._poll_interval_s, max((next_due - self._clock()).total_seconds(), 0.01))

    async def _refresh_figures(self) -> None:
        if time.monotonic() - self._figures_at >= FIGURES_EVERY_S:
            self._figures_at = time.monotonic()
            self.figures = await self._store.outbox.pending_figures()

    async def _send(self, webhook: Webhook, claimed: list[ClaimedDelivery]) -> None:
        try:
            await self._attempt(webhook, claimed)
        except Exception as exc:  # the database went away while recording: the lease ends, the next run retries
            log.error("alert.outbox_unavailable", phase="record", webhook=webhook.name, error=type(exc).__name__)

    async def _attempt(self, webhook: Webhook, claimed: list[ClaimedDelivery]) -> None:
        events = [AlertEvent.from_dict(one.payload) for one in claimed]
        if len(events) == 1:
            result = await deliver(self._session, webhook, events[0], now=self._clock(), options=self._options)
        else:
            result = await deliver_group(self._session, webhook, events, now=self._clock(), options=self._options)
        now = self._clock()
        ids = [event.id for event in events]
        attempts = max(one.attempts for one in claimed) + 1
        first = events[0]
        bound = log.bind(webhook=webhook.name, event_id=first.id if len(events) == 1 else group_id(events),
                         event_type=first.type.value if len(events) == 1 else "batch", events=len(events),
                         provider=first.provider.name if first.provider and len(events) == 1 else None,
                         attempts=attempts, http_status=result.http_status)
        outbox = self._store.outbox
        created_at = min(one.created_at for one in claimed)
        if result.outcome is Outcome.DELIVERED:
            await outbox.delivered(ids, webhook.name, now, result.http_status or 0)
            self.results[(webhook.name, Outcome.DELIVERED.value)] += len(ids)
            bound.info("alert.delivered", after_s=round((now - created_at).total_seconds(), 3),
                       elapsed_ms=round(result.elapsed_ms, 1))
            return
        age_s = (now - created_at).total_seconds()
        if result.outcome is Outcome.RETRY and age_s < self._retry.give_up_after_s:
            delay_s = self._retry.delay_s(attempts, result.retry_after_s, rand=self._rand)
            await outbox.retry(ids, webhook.name, self.claimer, now + timedelta(seconds=delay_s),
                               result.http_status, result.error)
            self.results[(webhook.name, Outcome.RETRY.value)] += len(ids)
            bound.warning("alert.delivery_retry", error=result.error, retry_in_s=round(delay_s, 3))
            return
        error = _final_error(result, attempts)
        await outbox.failed(ids, webhook.name, result.http_status, error)
        self.results[(webhook.name, Outcome.FAILED.value)] += len(ids)
        bound.error("alert.delivery_failed", error=error)


def _final_error(result: DeliveryResult, attempts: int) -> str:
    if result.outcome is Outcome.RETRY:
        return f"gave up after {attempts} attempts; last: {result.error}"
    return result.error or "failed"
