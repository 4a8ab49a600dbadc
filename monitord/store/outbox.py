"""The alert outbox's tables: write an event with its deliveries, claim due ones, record each attempt, read back.

Rows in, frozen values out; which webhooks get an event and when to retry are decided in monitord.alerts.outbox.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from monitord.model import AlertState, DeliveryState, OutboxEntry, Status
from monitord.store import dialects
from monitord.store.schema import alert_deliveries, alert_events, alert_state

PENDING = DeliveryState.PENDING.value
DELIVERED = DeliveryState.DELIVERED.value
FAILED = DeliveryState.FAILED.value


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """Where one event stands with one webhook."""

    event_id: str
    webhook: str
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event (payload: AlertEvent.to_dict()) with its deliveries, by webhook name."""

    id: str
    type: str
    provider: str | None
    at: datetime
    created_at: datetime
    silenced: bool
    payload: Mapping[str, Any]
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A due delivery this claimer now holds until its lease ends."""

    event_id: str
    webhook: str
    attempts: int  # made before this one
    created_at: datetime
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PendingFigures:
    """One webhook's deliveries by state, and when the oldest pending one was stored (None: none pending)."""

    webhook: str
    counts: Mapping[str, int]
    oldest_pending: datetime | None


_DELIVERY_COLUMNS = (
    alert_deliveries.c.event_id,
    alert_deliveries.c.webhook,
    alert_deliveries.c.state,
    alert_deliveries.c.attempts,
    alert_deliveries.c.created_at,
    alert_deliveries.c.next_attempt_at,
    alert_deliveries.c.last_status,
    alert_deliveries.c.last_error,
    alert_deliveries.c.delivered_at,
)


class OutboxStore:
    """The outbox tables on one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, entries: Sequence[OutboxEntry], created_at: datetime) -> int:
        """Store events and their deliveries in one transaction; returns how many events were new.

        An event whose id is already stored is left as it is, deliveries included: putting the same event twice,
        or two cluster instances raising the same incident, stores it once.
        """
        async with self._engine.begin() as conn:
            return await write_entries(conn, entries, (), created_at)

    async def claim(self, claimer: str, now: datetime, *, lease_s: float, limit: int,
                    webhooks: Collection[str], group: bool = False) -> list[ClaimedDelivery]:
        """Take up to `limit` due deliveries of `webhooks` for `lease_s` seconds, oldest first.

        A delivery is due when pending, its next attempt has come and nobody holds a live lease on it; and only the
        oldest pending delivery of each (webhook, provider) is ever due, so a webhook gets each provider's events
        in order while a failing one waits for its retry without holding back other providers.
        `group` (a webhook that sends several events per message): once one delivery is due, every pending one
        not tried yet comes along, and an earlier delivery of the same provider only holds a later one back while
        it is in flight or waiting for a retry (otherwise both go in this message, in order).
        """
        if not webhooks or limit <= 0:
            return []
        d = alert_deliveries
        older = alert_deliveries.alias("older")
        before = or_(older.c.created_at < d.c.created_at,
                     and_(older.c.created_at == d.c.created_at, older.c.event_id < d.c.event_id))
        held_back = exists().where(older.c.webhook == d.c.webhook, older.c.provider == d.c.provider,
                                   older.c.state == PENDING, before)
        unclaimed = or_(d.c.claimed_until.is_(None), d.c.claimed_until < now)
        due = d.c.next_attempt_at <= now
        if group:
            held_back = held_back.where(or_(older.c.claimed_until >= now,
                                            and_(older.c.attempts > 0, older.c.next_attempt_at > now)))
            due = or_(due, d.c.attempts == 0)
        wanted = (
            select(d.c.event_id, d.c.webhook)
            .where(d.c.state == PENDING, due, d.c.webhook.in_(list(webhooks)), unclaimed, ~held_back)
            .order_by(d.c.created_at, d.c.event_id)
            .limit(limit)
        )
        claim = (
            update(d)
            .where(tuple_(d.c.event_id, d.c.webhook).in_(dialects.skip_locked(self._engine.dialect.name, wanted)))
            .values(claimed_by=claimer, claimed_until=now + timedelta(seconds=lease_s))
            .returning(d.c.event_id, d.c.webhook, d.c.attempts, d.c.created_at)
        )
        async with self._engine.begin() as conn:
            if group and not (await conn.execute(
                    select(d.c.event_id).where(d.c.state == PENDING, d.c.next_attempt_at <= now,
                                               d.c.webhook.in_(list(webhooks)), unclaimed).limit(1))).first():
                return []  # nothing due yet: the group is still gathering (alerts.group_wait)
            claimed = list((await conn.execute(claim)).all())
            if not claimed:
                return []
            ids = {row.event_id for row in claimed}
            payloads = dict((await conn.execute(
                select(alert_events.c.id, alert_events.c.payload).where(alert_events.c.id.in_(ids)))).all())
        claimed.sort(key=lambda row: (row.created_at, row.event_id))
        return [ClaimedDelivery(row.event_id, row.webhook, row.attempts, row.created_at, payloads[row.event_id])
                for row in claimed]

    async def delivered(self, event_id: str | Sequence[str], webhook: str, now: datetime, status: int) -> bool:
        """Record a 2xx. True when the delivery was still pending."""
        return await self._finish(event_id, webhook, None, state=DELIVERED, delivered_at=now, last_status=status,
                                  last_error=None, next_attempt_at=None)

    async def retry(self, event_id: str | Sequence[str], webhook: str, claimer: str, next_attempt_at: datetime,
                    status: int | None, error: str | None) -> bool:
        """Record a failed attempt and when to try again. False when the claim was lost meanwhile."""
        return await self._finish(event_id, webhook, claimer, state=PENDING, next_attempt_at=next_attempt_at,
                                  last_status=status, last_error=error)

    async def failed(self, event_id: str | Sequence[str], webhook: str, status: int | None, error: str | None) -> bool:
        """Record a final failure (a permanent answer, or retrying gave up). True when it was still pending."""
        return await self._finish(event_id, webhook, None, state=FAILED, next_attempt_at=None, last_status=status,
                                  last_error=error)

    async def _finish(self, event_id: str | Sequence[str], webhook: str, claimer: str | None, **values: Any) -> bool:
        """Record an attempt of one delivery, or of every delivery of a grouped message (`event_id` a list)."""
        ids = [event_id] if isinstance(event_id, str) else list(event_id)
        d = alert_deliveries
        stmt = (
            update(d)
            .where(d.c.event_id.in_(ids), d.c.webhook == webhook, d.c.state == PENDING)
            .values(attempts=d.c.attempts + 1, claimed_by=None, claimed_until=None, **values)
        )
        if claimer is not None:
            stmt = stmt.where(d.c.claimed_by == claimer)
        async with self._engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def release(self, claimer: str) -> int:
        """Give back every lease `claimer` holds (a clean stop), so the next run need not wait for them to end."""
        d = alert_deliveries
        stmt = (update(d).where(d.c.claimed_by == claimer, d.c.state == PENDING)
                .values(claimed_by=None, claimed_until=None))
        async with self._engine.begin() as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def abandon(self, keep_webhooks: Collection[str], error: str) -> int:
        """Fail the pending deliveries of webhooks that are no longer configured."""
        d = alert_deliveries
        stmt = (update(d).where(d.c.state == PENDING, d.c.webhook.not_in(list(keep_webhooks)))
                .values(state=FAILED, last_error=error, next_attempt_at=None, claimed_by=None, claimed_until=None))
        async with self._engine.begin() as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def next_due(self, webhooks: Collection[str]) -> datetime | None:
        """The earliest next attempt of a pending delivery of `webhooks` (claimed ones included)."""
        if not webhooks:
            return None
        d = alert_deliveries
        stmt = (select(d.c.next_attempt_at).where(d.c.state == PENDING, d.c.webhook.in_(list(webhooks)))
                .order_by(d.c.next_attempt_at).limit(1))
        async with self._engine.connect() as conn:
            value: datetime | None = (await conn.execute(stmt)).scalar_one_or_none()
        return value

    async def states(self, providers: Collection[str] | None = None) -> list[AlertState]:
        """Stored alert states (of `providers`, or all)."""
        stmt = select(alert_state)
        if providers is not None:
            stmt = stmt.where(alert_state.c.provider.in_(list(providers)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [AlertState(row.provider, Status(row.told) if row.told else None, row.incident_start, row.reminders)
                for row in rows]

    async def pending_figures(self) -> list[PendingFigures]:
        """Per webhook: deliveries by state, and the creation time of the oldest pending one."""
        d = alert_deliveries
        stmt = select(d.c.webhook, d.c.state, func.count(), func.min(d.c.created_at)).group_by(d.c.webhook, d.c.state)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        figures: dict[str, dict[str, Any]] = {}
        for webhook, state, count, oldest in rows:
            entry = figures.setdefault(webhook, {"counts": {}, "oldest": None})
            entry["counts"][state] = int(count)
            if state == PENDING:
                entry["oldest"] = oldest
        return [PendingFigures(name, value["counts"], value["oldest"]) for name, value in sorted(figures.items())]

    async def counts(self) -> dict[str, int]:
        """Deliveries per state (every state present, zero when none)."""
        d = alert_deliveries
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(d.c.state, func.count()).group_by(d.c.state))).all()
        return {state.value: 0 for state in DeliveryState} | {state: int(count) for state, count in rows}

    async def recent(self, *, limit: int = 100, since: datetime | None = None, provider: str | None = None,
                     event_type: str | None = None, event_id: str | None = None) -> list[EventRow]:
        """Events newest first, each with its deliveries (by webhook name)."""
        e = alert_events
        stmt = select(e).order_by(e.c.created_at.desc(), e.c.id.desc()).limit(limit)
        if event_id is not None:
            stmt = stmt.where(e.c.id == event_id)
        if since is not None:
            stmt = stmt.where(e.c.created_at >= since)
        if provider is not None:
            stmt = stmt.where(e.c.provider == provider)
        if event_type is not None:
            stmt = stmt.where(e.c.type == event_type)
        async with self._engine.connect() as conn:
            events = (await conn.execute(stmt)).all()
            ids = [row.id for row in events]
            deliveries = (await conn.execute(
                select(*_DELIVERY_COLUMNS).where(alert_deliveries.c.event_id.in_(ids))
                .order_by(alert_deliveries.c.webhook))).all() if ids else []
        by_event: dict[str, list[DeliveryRow]] = {}
        for row in deliveries:
            by_event.setdefault(row.event_id, []).append(_delivery(row))
        return [EventRow(row.id, row.type, row.provider, row.at, row.created_at, row.silenced, row.payload,
                         tuple(by_event.get(row.id, ()))) for row in events]

    async def prune(self, before: datetime) -> int:
        """Delete events created before `before`, with their deliveries, unless one is still pending."""
        e, d = alert_events, alert_deliveries
        still_pending = exists().where(d.c.event_id == e.c.id, d.c.state == PENDING)
        async with self._engine.begin() as conn:
            old = (await conn.execute(select(e.c.id).where(e.c.created_at < before, ~still_pending))).scalars().all()
            if not old:
                return 0
            # Deliveries first: SQLite enforces the cascade only where foreign keys are switched on.
            await conn.execute(delete(d).where(d.c.event_id.in_(old)))
            await conn.execute(delete(e).where(e.c.id.in_(old)))
        return len(old)


def _delivery(row: Any) -> DeliveryRow:
    return DeliveryRow(row.event_id, row.webhook, DeliveryState(row.state), row.attempts, row.created_at,
                       row.next_attempt_at, row.last_status, row.last_error, row.delivered_at)


async def write_entries(conn: AsyncConnection, entries: Sequence[OutboxEntry], states: Sequence[AlertState],
                        created_at: datetime) -> int:
    """Events (ids already stored are skipped, deliveries included) and alert states, in the caller's transaction.

    Returns how many events were new. The writer calls this inside the probe batch's transaction.
    """
    dialect = conn.dialect.name
    new = 0
    if entries:
        event_rows = [{"id": e.event.id, "type": e.event.type.value,
                       "provider": e.event.provider.name if e.event.provider else None, "at": e.event.at,
                       "created_at": created_at, "silenced": e.event.silenced_by is not None,
                       "payload": e.event.to_dict()} for e in entries]
        inserted: set[str] = set()
        for row in event_rows:  # one by one: RETURNING tells which were new on both databases
            result = await conn.execute(dialects.insert_ignore(dialect, alert_events).returning(alert_events.c.id),
                                        row)
            inserted.update(result.scalars().all())
        new = len(inserted)
        delivery_rows = [
            {"event_id": e.event.id, "webhook": planned.webhook, "state": planned.state.value, "attempts": 0,
             "created_at": created_at, "provider": e.event.provider.name if e.event.provider else "",
             "next_attempt_at": created_at + timedelta(seconds=planned.wait_s)
             if planned.state is DeliveryState.PENDING else None}
            for e in entries if e.event.id in inserted for planned in e.deliveries
        ]
        if delivery_rows:
            await conn.execute(alert_deliveries.insert(), delivery_rows)
    if states:
        stmt = dialects.upsert(dialect, alert_state, ("provider",), lambda excluded: {
            "told": excluded.told, "incident_start": excluded.incident_start, "reminders": excluded.reminders,
            "updated_at": excluded.updated_at})
        await conn.execute(stmt, [{"provider": st.provider, "told": st.told.value if st.told else None,
                                   "incident_start": st.incident_start, "reminders": st.reminders,
                                   "updated_at": created_at} for st in states])
    return new
