"""Server-Sent Events for GET /v1/events: status changes, best-provider changes and generation canary statistics,
pushed as they happen.

Publishing never blocks the daemon: each subscriber has a bounded queue, and one that falls behind is
disconnected (it may reconnect with Last-Event-ID and get what it missed from the recent-events buffer). A client
that does not read at all is evicted: a write it does not take within write_timeout_s ends its stream, so idle
sockets cannot hold every stream slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from monitord.aio import get_within
from monitord.api.errors import ApiError
from monitord.model import GenerationStats, RankedProvider, StatusChange

log = structlog.get_logger("monitord.api")

STATUS_CHANGED = "provider.status_changed"
BEST_CHANGED = "ranking.best_changed"
GENERATION_UPDATED = "generation.updated"
RETRY_MS = 2000  # how long an EventSource waits before reconnecting
STREAM_SEND_BUFFER_BYTES = 32 * 1024
WRITE_TIMEOUT_S = 10.0  # a stream write the client's socket does not take by then: the client is not reading


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
                 heartbeat_s: float = 15.0, write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self.queue_size = queue_size
        self.write_timeout_s = write_timeout_s
        self.evicted_total = 0
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
            _small_send_buffer(request)
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await response.write(b"retry: %d\n: connected\n\n" % RETRY_MS)
                async for chunk in _frames(subscription, self.heartbeat_s):
                    async with asyncio.timeout(self.write_timeout_s):
                        await response.write(chunk)
            except ConnectionResetError:  # the client went away: nothing left to tell it
                pass
            except TimeoutError:  # the client stopped reading: its socket is full; free the slot
                self.evicted_total += 1
                log.info("api.events_client_evicted", reason="not reading", timeout_s=self.write_timeout_s,
                         evicted_total=self.evicted_total)
                if request.transport is not None:
                    request.transport.abort()
            return response


def _small_send_buffer(request: web.Request) -> None:
    """Events are small and few: a fixed, small kernel send buffer (no autotuning to megabytes) means a client that
    stops reading stalls a write after a few seconds of events, not after hours."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER_BYTES)


async def _frames(subscription: Subscription, heartbeat_s: float) -> AsyncIterator[bytes]:
    queue = subscription.queue
    while True:
        try:
            item = await get_within(queue, heartbeat_s)
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
