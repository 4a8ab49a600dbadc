"""Alert delivery throughput: 200 events to a receiver that takes 1 s per request (json, one request per event).

The real dispatcher and store (SQLite file): the events go through the store's writer into the outbox, the
dispatcher sends them with the webhook's bounded concurrency, and the receiver (tests/doubles/webhook_receiver.py on
loopback) answers each after 1 s. Target: all 200 in under 30 s, none lost, none doubled.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import Table, Target, busy_note
from monitord import logs
from monitord.alerts.outbox import Dispatcher
from monitord.config import WebhookConfig
from monitord.model import AlertEvent, AlertProvider, AlertType, Status
from monitord.store import Store, migrate
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.test_outage import eventually

ORDER = 45
TITLE = "alert delivery: 200 events to a receiver taking 1 s each (json, default concurrency)"

TARGET_S = 30.0


async def run(quick: bool) -> list[Table]:
    if not quick:  # a full run prints only its table; quick runs inside pytest must leave logging alone
        logs.configure("warning", "console")
    events_n, delay_s = (20, 0.2) if quick else (200, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await migrate.upgrade(url)
        store = await Store.open(url, flush_interval_s=0.05)
        await store.start()
        async with WebhookReceiver() as receiver, aiohttp.ClientSession() as session:
            receiver.slow(delay_s)
            webhook = WebhookConfig.model_validate({"name": "bench", "url": receiver.url, "timeout": "5s"})
            dispatcher = Dispatcher(store, session, [webhook])
            await dispatcher.start()
            now = datetime.now(UTC)
            events = [AlertEvent(id=f"00000000-0000-4000-8000-{n:012d}", type=AlertType.PROVIDER_DOWN, at=now,
                                 provider=AlertProvider(f"gpu{n:03d}", "vllm", "http://10.0.0.5:8000"),
                                 status=Status.DOWN) for n in range(events_n)]
            started = time.monotonic()
            try:
                dispatcher.emit(events)
                await eventually(lambda: len(receiver.delivered()) >= events_n, timeout_s=600.0,
                                 what="every event delivered")
                elapsed_s = time.monotonic() - started
            finally:
                await dispatcher.stop()
                await store.close()
    ids = Counter(r.header("X-Monitord-Delivery") for r in receiver.requests)
    lost = len({e.id for e in events} - set(ids))
    doubled = sum(n - 1 for n in ids.values())
    table = Table(f"Alert delivery ({events_n} events, receiver {delay_s:g} s each)",
                  ("events", "seconds", "in flight (max)", "lost", "doubled", "target", "result"))
    met = elapsed_s < TARGET_S and lost == 0 and doubled == 0
    table.add(events_n, elapsed_s, receiver.max_in_flight, lost, doubled, f"< {TARGET_S:.0f} s, 0 lost, 0 doubled",
              "met" if met else "NOT met")
    table.notes.append(f"webhook concurrency {webhook.concurrency} (the default); from emit() to the last request "
                       "arriving; serial delivery took 206 s for the same load (issue 14).")
    table.figures = {"elapsed_s": [elapsed_s]}
    table.targets.append(Target(f"alert delivery: {events_n} events to a receiver taking {delay_s:g} s each",
                                f"< {TARGET_S:.0f} s, 0 lost, 0 doubled",
                                f"{elapsed_s:.1f} s, {lost} lost, {doubled} doubled", met, busy_note()))
    return [table]
