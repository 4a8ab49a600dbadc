"""Server-Sent Events for GET /v1/events: status changes, best-provider changes and generation canary statistics,
pushed as they happen.

Publishing never blocks the daemon: each subscriber has a bounded queue, and one that falls behind is
disconnected (it may reconnect with Last-Event-ID and get what it missed from the recent-events buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from monitord.api.errors import ApiError
from monitord.model import GenerationStats, RankedProvider, StatusChange

STATUS_CHANGED = "provider.status_changed"
BEST_CHANGED = "ranking.best_changed"
GENERATION_UPDATED = "generation.updated"
RETRY_MS = 2000  # how long an EventSource waits before reconnecting


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    provider: str | None  # the provider a status change is about; None for ranking events
    data: bytes  # JSON

    def encode(self) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.kind.encode(), self.data)


_CLOSED = object()  # queued to every subscriber when the hub closes
_LAGGED = object()  # queued when a subscriber's queue overflowed


class Subscription:
    def __init__(self, providers: frozenset[str] | None, queue_size: int) -> None:
        self.providers = providers
        self.queue: asyncio.Queue[Event | object] = asyncio.Queue(queue_size + 1)  # +1: room for a marker
        self.room = queue_size
        self.lagged = False

    def wants(self, event: Event) -> bool:
        return self.providers is None or event.provider is None or event.provider in self.providers

    def offer(self, event: Event) -> None:
        if self.lagged:
            return
        if self.queue.qsize() >= self.room:
            self.lagged = True
            self.queue.put_nowait(_LAGGED)
            return
        self.queue.put_nowait(event)


class EventHub:
    """Fan-out of events to SSE subscribers, with a short replay buffer for reconnecting clients."""

    def __init__(self, *, queue_size: int = 256, replay_size: int = 256, max_subscribers: int = 100,
                 heartbeat_s: float = 15.0) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.heartbeat_s = heartbeat_s
        self.closed = False
        self._next_id = 1
        self._recent: deque[Event] = deque(maxlen=replay_size)
        self._subscribers: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, data: Mapping[str, Any], *, provider: str | None = None) -> Event:
        """Queue an event for every interested subscriber. Never blocks, never raises for a slow client."""
        event = Event(self._next_id, kind, provider, orjson.dumps(data))
        self._next_id += 1
        self._recent.append(event)
        for subscription in self._subscribers:
            if subscription.wants(event):
                subscription.offer(event)
        return event

    def status_changed(self, change: StatusChange) -> Event:
        return self.publish(STATUS_CHANGED, change.to_dict(), provider=change.provider)

    def generation_updated(self, stats: GenerationStats, now: datetime) -> Event:
        """A canary sample changed a model's live statistics (one event per sample)."""
        return self.publish(GENERATION_UPDATED, {"provider": stats.provider, **stats.to_dict(now)},
                            provider=stats.provider)

    def best_changed(self, previous: RankedProvider | None, current: RankedProvider | None, at: datetime,
                     fallbacks: tuple[str, ...] = ()) -> Event:
        return self.publish(BEST_CHANGED, {
            "at": at.isoformat(),
            "previous": previous.provider if previous else None,
            "current": current.provider if current else None,
            "entry": current.to_dict() if current else None,
            "fallbacks": list(fallbacks),
        })

    def close(self) -> None:
        """End every stream cleanly (on shutdown); later subscriptions are refused."""
        self.closed = True
        for subscription in self._subscribers:
            subscription.queue.put_nowait(_CLOSED)

    @contextlib.contextmanager
    def _subscribe(self, providers: frozenset[str] | None, last_event_id: int | None) -> Any:
        if self.closed:
            raise ApiError(503, "shutting_down", "monitord is shutting down")
        if len(self._subscribers) >= self.max_subscribers:
            raise ApiError(503, "too_many_subscribers",
                           f"already {self.max_subscribers} event streams open; try again later")
        subscription = Subscription(providers, self.queue_size)
        if last_event_id is not None:
            for event in self._recent:
                if event.id > last_event_id and subscription.wants(event):
                    subscription.offer(event)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    async def stream(self, request: web.Request, providers: frozenset[str] | None,
                     last_event_id: int | None) -> web.StreamResponse:
        """Serve one SSE connection until the client leaves, falls behind, or the hub closes."""
        with self._subscribe(providers, last_event_id) as subscription:
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # let a proxy in front (nginx) pass events at once
            })
            await response.prepare(request)
            try:
                await response.write(b"retry: %d\n: connected\n\n" % RETRY_MS)
                async for chunk in _frames(subscription, self.heartbeat_s):
                    await response.write(chunk)
            except ConnectionResetError:  # the client went away: nothing left to tell it
                pass
            return response


async def _frames(subscription: Subscription, heartbeat_s: float) -> AsyncIterator[bytes]:
    queue = subscription.queue
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), heartbeat_s)
        except TimeoutError:
            yield b": keep-alive\n\n"
            continue
        if item is _CLOSED:
            yield b"event: shutdown\ndata: {}\n\n"
            return
        if item is _LAGGED:
            yield b'event: lagged\ndata: {"reconnect": true}\n\n'
            return
        assert isinstance(item, Event)
        yield item.encode()
