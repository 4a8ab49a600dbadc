"""The alert outbox on SQLite and PostgreSQL, and its dispatcher against a real receiver on 127.0.0.1.

Every test here runs once per database (the `db_url` / `store` fixtures). Waits are short polls, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from structlog.testing import capture_logs

from monitord.alerts.delivery import RetryPolicy
from monitord.alerts.outbox import Dispatcher, Outbox, wants
from monitord.alerts.rules import make_test_event
from monitord.config import WebhookConfig
from monitord.model import AlertEvent, AlertProvider, AlertType, DeliveryState, ErrorClass, Status
from monitord.store import Store, dialects, migrate
from tests.doubles.webhook_receiver import Reply, WebhookReceiver
from tests.e2e.test_run import sync_engine

SECRET = "whsec-outbox-0123456789"
TOKEN = "token-outbox-abcdef"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
FAST = RetryPolicy(base_delay_s=0.02, max_delay_s=0.1)
GPU = AlertProvider("gpu-box", "vllm", "http://10.0.0.5:8000")


def event(kind: AlertType = AlertType.PROVIDER_DOWN, *, n: int = 0, provider: AlertProvider | None = GPU,
          silenced_by: str | None = None, at: datetime = T0) -> AlertEvent:
    return AlertEvent(id=f"00000000-0000-4000-8000-{n:012d}", type=kind, at=at, provider=provider,
                      previous_status=Status.UP, status=Status.DOWN, since=at, failures_in_a_row=3,
                      error_class=ErrorClass.REFUSED, error="connection refused", silenced_by=silenced_by)


def webhook(name: str, url: str = "http://127.0.0.1:9/hook", **fields: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"name": name, "url": url, "timeout": 1.0, **fields})


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as started:
        yield started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
async def dispatchers(store: Store, session: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Dispatcher]]:
    """Factory of dispatchers on the test's store; every one is stopped at teardown."""
    made: list[Dispatcher] = []

    def make(*hooks: WebhookConfig, on: Store | None = None, **options: Any) -> Dispatcher:
        options.setdefault("retry", FAST)
        options.setdefault("poll_interval_s", 0.05)
        made.append(Dispatcher(on or store, session, hooks, **options))
        return made[-1]

    yield make
    for dispatcher in made:
        await dispatcher.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def states(outbox: Outbox, event_id: str) -> dict[str, DeliveryState]:
    return {row.webhook: row.state for row in await outbox.deliveries(event_id)}


# -- migration -----------------------------------------------------------------------------------------------


async def test_alert_tables_come_and_go_with_their_revision(db_url: str) -> None:
    def tables(conn: Connection) -> tuple[set[str], str | None]:
        return set(inspect(conn).get_table_names()), MigrationContext.configure(conn).get_current_revision()

    async def look() -> tuple[set[str], str | None]:
        engine = dialects.create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(tables)
        finally:
            await engine.dispose()

    await migrate.upgrade(db_url, "0002")
    names, revision = await look()
    assert {"alert_events", "alert_deliveries", "probes"} <= names and revision == "0002"
    await migrate.downgrade(db_url, "0001")
    names, revision = await look()
    assert "alert_events" not in names and "alert_deliveries" not in names and "probes" in names
    assert revision == "0001"
    await migrate.upgrade(db_url, "0002")
    assert (await look())[1] == "0002"


# -- routing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters, kind, provider, expected", [
    ({}, AlertType.PROVIDER_DOWN, GPU, True),
    ({"events": ["provider.down"]}, AlertType.PROVIDER_DOWN, GPU, True),
    ({"events": ["provider.down"]}, AlertType.PROVIDER_UP, GPU, False),
    ({"events": ["provider"]}, AlertType.PROVIDER_FLAPPING, GPU, True),  # a family
    ({"events": ["model"]}, AlertType.PROVIDER_DOWN, GPU, False),
    ({"events": ["model"]}, AlertType.TEST, None, True),  # a test goes everywhere
    ({"providers": ["gpu-*"]}, AlertType.PROVIDER_DOWN, GPU, True),
    ({"providers": ["cpu-box"]}, AlertType.PROVIDER_DOWN, GPU, False),
    ({"providers": ["cpu-box"]}, AlertType.RANKING_BEST_CHANGED, None, True),
    ({"events": ["provider.up"], "providers": ["gpu-box"]}, AlertType.PROVIDER_UP, GPU, True),
])
def test_wants(filters: dict[str, Any], kind: AlertType, provider: AlertProvider | None, expected: bool) -> None:
    assert wants(webhook("w", **filters), event(kind, provider=provider)) is expected


# -- the store side ------------------------------------------------------------------------------------------


async def test_put_writes_one_delivery_per_wanting_webhook_and_is_idempotent(store: Store) -> None:
    outbox = Outbox(store, [webhook("all"), webhook("ups", events=["provider.up"]), webhook("gpus", providers="gpu-*")])
    assert await outbox.put(event(), T0) is True
    assert await outbox.put(event(), T0 + timedelta(seconds=1)) is False  # same id: stored once
    assert await states(outbox, event().id) == {"all": DeliveryState.PENDING, "gpus": DeliveryState.PENDING}
    [record] = await outbox.recent()
    assert record.event == event() and record.created_at == T0
    assert record.to_dict()["deliveries"]["all"] == {
        "state": "pending", "attempts": 0, "last_status": None, "last_error": None,
        "next_attempt_at": T0.isoformat(), "delivered_at": None}


async def test_silenced_events_are_recorded_not_sent(store: Store) -> None:
    outbox = Outbox(store, [webhook("a")])
    await outbox.put(event(silenced_by="maintenance-1"), T0)
    assert await states(outbox, event().id) == {"a": DeliveryState.SILENCED}
    assert await store.outbox.claim("me", T0 + timedelta(hours=1), lease_s=10, limit=10, webhooks=["a"]) == []
    [record] = await outbox.recent()
    assert record.event.silenced_by == "maintenance-1"


async def test_an_event_no_webhook_wants_is_still_recorded(store: Store) -> None:
    outbox = Outbox(store, [webhook("models", events=["model"])])
    await outbox.put(event(), T0)
    [record] = await outbox.recent()
    assert record.deliveries == ()


async def test_claims_are_exclusive_until_the_lease_ends(store: Store) -> None:
    outbox = Outbox(store, [webhook("a"), webhook("b")])
    await outbox.put(event(), T0)
    claim = store.outbox.claim
    first = await claim("one", T0, lease_s=30, limit=10, webhooks=["a", "b"])
    assert sorted(c.webhook for c in first) == ["a", "b"]
    assert first[0].payload == event().to_dict() and first[0].attempts == 0
    assert await claim("two", T0 + timedelta(seconds=29), lease_s=30, limit=10, webhooks=["a", "b"]) == []
    again = await claim("two", T0 + timedelta(seconds=31), lease_s=30, limit=10, webhooks=["a", "b"])
    assert len(again) == 2  # the first claimer died: its lease ran out


async def test_a_webhook_gets_its_events_in_order(store: Store) -> None:
    outbox = Outbox(store, [webhook("a")])
    for n in range(3):
        await outbox.put(event(n=n), T0 + timedelta(seconds=n))
    now = T0 + timedelta(minutes=1)
    [head] = await store.outbox.claim("me", now, lease_s=30, limit=10, webhooks=["a"])
    assert head.event_id == event(n=0).id
    await store.outbox.retry(head.event_id, "a", "me", now + timedelta(seconds=5), 503, "HTTP 503")
    assert await store.outbox.claim("me", now, lease_s=30, limit=10, webhooks=["a"]) == []  # the head waits
    [head] = await store.outbox.claim("me", now + timedelta(seconds=5), lease_s=30, limit=10, webhooks=["a"])
    assert head.event_id == event(n=0).id and head.attempts == 1
    assert await store.outbox.delivered(head.event_id, "a", now, 200)
    [second] = await store.outbox.claim("me", now, lease_s=30, limit=10, webhooks=["a"])
    assert second.event_id == event(n=1).id


async def test_a_failing_provider_holds_back_only_its_own_events(store: Store) -> None:
    other = AlertProvider("cpu-box", "ollama", "http://10.0.0.6:11434")
    outbox = Outbox(store, [webhook("a")])
    await outbox.put(event(n=0), T0)
    await outbox.put(event(n=1), T0 + timedelta(seconds=1))
    await outbox.put(event(n=2, provider=other), T0 + timedelta(seconds=2))
    now = T0 + timedelta(minutes=1)
    claimed = await store.outbox.claim("me", now, lease_s=30, limit=10, webhooks=["a"])
    assert [c.event_id for c in claimed] == [event(n=0).id, event(n=2).id]  # each provider's oldest
    await store.outbox.retry(event(n=0).id, "a", "me", now + timedelta(hours=1), 503, "HTTP 503")
    await store.outbox.delivered(event(n=2).id, "a", now, 200)
    assert await store.outbox.claim("me", now, lease_s=30, limit=10, webhooks=["a"]) == []  # n=1 waits for n=0


async def test_a_grouping_webhook_claims_every_new_event_once_one_is_due(store: Store) -> None:
    other = AlertProvider("cpu-box", "ollama", "http://10.0.0.6:11434")
    outbox = Outbox(store, [webhook("chat", format="slack")], group_wait_s=10.0)
    await outbox.put(event(n=0), T0)
    await outbox.put(event(n=1), T0 + timedelta(seconds=3))  # the same provider: goes in the same message, after
    await outbox.put(event(n=2, provider=other), T0 + timedelta(seconds=8))
    claim = store.outbox.claim
    assert await claim("me", T0 + timedelta(seconds=9), lease_s=30, limit=100, webhooks=["chat"], group=True) == []
    group = await claim("me", T0 + timedelta(seconds=10), lease_s=30, limit=100, webhooks=["chat"], group=True)
    assert [c.event_id for c in group] == [event(n=0).id, event(n=1).id, event(n=2).id]
    await outbox.put(event(n=3), T0 + timedelta(seconds=11))  # n=0 is in flight: n=3 must wait for it
    later = T0 + timedelta(seconds=30)
    assert await claim("me", later, lease_s=30, limit=100, webhooks=["chat"], group=True) == []
    await store.outbox.delivered([c.event_id for c in group], "chat", later, 200)
    [last] = await claim("me", later, lease_s=30, limit=100, webhooks=["chat"], group=True)
    assert last.event_id == event(n=3).id


async def test_a_lost_claim_cannot_reschedule_but_a_2xx_always_counts(store: Store) -> None:
    outbox = Outbox(store, [webhook("a")])
    await outbox.put(event(), T0)
    await store.outbox.claim("old", T0, lease_s=1, limit=1, webhooks=["a"])
    await store.outbox.claim("new", T0 + timedelta(seconds=2), lease_s=30, limit=1, webhooks=["a"])
    assert not await store.outbox.retry(event().id, "a", "old", T0, 500, "late")
    assert await store.outbox.delivered(event().id, "a", T0 + timedelta(seconds=3), 204)
    assert not await store.outbox.failed(event().id, "a", 400, "too late: already delivered")
    [row] = await outbox.deliveries(event().id)
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 1, 204)


async def test_concurrent_claimers_never_share_a_delivery(store_factory: Any) -> None:
    first, second = await store_factory(), await store_factory()  # two engines: two instances
    hooks = [webhook(f"w{i}") for i in range(12)]
    outbox = Outbox(first, hooks)
    for n in range(5):
        await outbox.put(event(n=n), T0 + timedelta(seconds=n))
    names = [hook.name for hook in hooks]
    now = T0 + timedelta(minutes=1)
    claimed = await asyncio.gather(*(
        store.outbox.claim(f"c{i}", now, lease_s=30, limit=3, webhooks=names)
        for i, store in enumerate([first, second] * 4)))
    keys = [(c.event_id, c.webhook) for batch in claimed for c in batch]
    assert len(keys) == len(set(keys)) == 12  # one head per webhook, each claimed exactly once


async def test_counts_prune_and_abandon(store: Store) -> None:
    outbox = Outbox(store, [webhook("a"), webhook("gone")])
    await outbox.put(event(n=1), T0)
    await outbox.put(event(n=2, silenced_by="s"), T0)
    assert await store.outbox.abandon(["a"], "webhook no longer configured") == 1
    assert await store.outbox.counts() == {"pending": 1, "delivered": 0, "failed": 1, "silenced": 2}
    assert await store.outbox.prune(T0 + timedelta(days=1)) == 1  # n=1 is still pending for "a": kept
    assert [r.event.id for r in await outbox.recent()] == [event(n=1).id]


# -- the dispatcher against a real receiver ------------------------------------------------------------------


async def test_an_event_is_delivered_once_signed(receiver: WebhookReceiver,
                                                 dispatchers: Callable[..., Dispatcher]) -> None:
    dispatcher = dispatchers(webhook("ops", receiver.url, secret=SECRET, headers={"X-Token": TOKEN}))
    await dispatcher.start()
    started = time.monotonic()
    dispatcher.emit([event()])
    [got] = await receiver.wait_for(1)
    latency_ms = (got.received_at - started) * 1000
    assert got.header("X-Monitord-Delivery") == event().id and got.signature_valid(SECRET, now_s=time.time())
    await eventually(lambda: _state_is(dispatcher, event().id, "ops", DeliveryState.DELIVERED))
    assert latency_ms < 1000, f"put to receipt took {latency_ms:.1f} ms"
    assert len(receiver.requests) == 1 and dispatcher.delivered_total == 1


async def test_server_errors_are_retried_until_delivered(receiver: WebhookReceiver,
                                                         dispatchers: Callable[..., Dispatcher]) -> None:
    receiver.fail(500, times=3)
    dispatcher = dispatchers(webhook("ops", receiver.url, secret=SECRET))
    await dispatcher.start()
    dispatcher.emit([event()])
    await receiver.wait_for(4)
    await eventually(lambda: _state_is(dispatcher, event().id, "ops", DeliveryState.DELIVERED))
    assert [r.reply_status for r in receiver.requests] == [500, 500, 500, 200]
    assert {r.header("X-Monitord-Delivery") for r in receiver.requests} == {event().id}
    assert all(r.signature_valid(SECRET) for r in receiver.requests)
    [row] = await dispatcher.outbox.deliveries(event().id)
    assert (row.attempts, row.last_status, row.last_error) == (4, 200, None)
    assert len(receiver.delivered()) == 1


async def test_a_bad_request_is_not_retried(receiver: WebhookReceiver,
                                            dispatchers: Callable[..., Dispatcher]) -> None:
    receiver.reject(400, b"invalid_payload")
    dispatcher = dispatchers(webhook("slack", receiver.url, format="slack"))
    await dispatcher.start()
    dispatcher.emit([event()])
    await eventually(lambda: _state_is(dispatcher, event().id, "slack", DeliveryState.FAILED))
    await asyncio.sleep(0.2)  # several backoff steps of FAST: a retry would have happened by now
    assert len(receiver.requests) == 1
    [row] = await dispatcher.outbox.deliveries(event().id)
    assert (row.attempts, row.last_status, row.last_error) == (1, 400, "HTTP 400: invalid_payload")


async def test_retry_after_is_honoured(receiver: WebhookReceiver, dispatchers: Callable[..., Dispatcher]) -> None:
    receiver.rate_limit("0.4")
    dispatcher = dispatchers(webhook("discord", receiver.url, format="discord"))
    await dispatcher.start()
    dispatcher.emit([event()])
    first, second = await receiver.wait_for(2)
    assert second.received_at - first.received_at >= 0.38
    assert second.delivered


async def test_a_silenced_event_reaches_no_receiver(receiver: WebhookReceiver,
                                                    dispatchers: Callable[..., Dispatcher]) -> None:
    dispatcher = dispatchers(webhook("ops", receiver.url))
    await dispatcher.start()
    dispatcher.emit([event(n=1, silenced_by="maintenance"), event(n=2)])
    [got] = await receiver.wait_for(1)
    assert got.header("X-Monitord-Delivery") == event(n=2).id
    assert await states(dispatcher.outbox, event(n=1).id) == {"ops": DeliveryState.SILENCED}
    assert len(receiver.requests) == 1


async def test_pending_deliveries_survive_a_restart_with_the_same_id(
        receiver: WebhookReceiver, store_factory: Any, dispatchers: Callable[..., Dispatcher]) -> None:
    hook = webhook("ops", receiver.url, secret=SECRET)
    await receiver.down()
    before = dispatchers(hook, on=await store_factory())
    await before.start()
    before.emit([event()])
    await eventually(lambda: _attempted(before, event().id))
    await before.stop()  # SIGTERM: the delivery stays pending in the database

    await receiver.up()
    after = dispatchers(hook, on=await store_factory())  # a new process: new engine, new claimer id
    await after.start()
    [got] = await receiver.wait_for(1)
    assert got.header("X-Monitord-Delivery") == event().id and got.signature_valid(SECRET)
    await eventually(lambda: _state_is(after, event().id, "ops", DeliveryState.DELIVERED))


async def test_a_dead_webhook_gets_its_backlog_in_order_when_it_returns(
        receiver: WebhookReceiver, dispatchers: Callable[..., Dispatcher]) -> None:
    await receiver.down()
    dispatcher = dispatchers(webhook("ops", receiver.url))
    await dispatcher.start()
    dispatcher.emit([event(n=n, at=T0 + timedelta(seconds=n)) for n in range(4)])
    await eventually(lambda: _attempted(dispatcher, event(n=0).id))
    await receiver.up()
    got = await receiver.wait_for(4)
    assert [r.header("X-Monitord-Delivery") for r in got] == [event(n=n).id for n in range(4)]


async def test_retrying_gives_up_after_the_configured_age(receiver: WebhookReceiver,
                                                          dispatchers: Callable[..., Dispatcher]) -> None:
    receiver.reject(503, b"down for maintenance")
    policy = RetryPolicy(base_delay_s=0.02, max_delay_s=0.05, give_up_after_s=0.3)
    dispatcher = dispatchers(webhook("ops", receiver.url), retry=policy)
    await dispatcher.start()
    dispatcher.emit([event()])
    await eventually(lambda: _state_is(dispatcher, event().id, "ops", DeliveryState.FAILED))
    [row] = await dispatcher.outbox.deliveries(event().id)
    assert row.last_error is not None and row.last_error.startswith(f"gave up after {row.attempts} attempts")
    assert row.attempts >= 2


async def test_test_event_to_one_webhook_through_the_real_path(receiver: WebhookReceiver,
                                                               dispatchers: Callable[..., Dispatcher]) -> None:
    dispatcher = dispatchers(webhook("ops", receiver.url, format="slack"), webhook("other"))
    test = make_test_event(datetime.now(UTC))
    assert await dispatcher.put(test, only="ops")
    [row] = await dispatcher.drain(test.id, timeout_s=5.0)  # one-shot, without start(): `monitord alert test`
    assert (row.webhook, row.state) == ("ops", DeliveryState.DELIVERED)
    assert receiver.requests[0].header("X-Monitord-Event") == "test"
    with pytest.raises(KeyError):
        await dispatcher.put(test, only="nope")


async def test_logs_name_the_webhook_never_its_url_or_secrets(receiver: WebhookReceiver,
                                                              dispatchers: Callable[..., Dispatcher]) -> None:
    receiver.fail(500, body=f"echo {TOKEN} {SECRET}".encode())
    receiver.plan(Reply(400, f"echo {TOKEN} {SECRET} {receiver.url}".encode()))
    dispatcher = dispatchers(webhook("ops", receiver.url, secret=SECRET, headers={"Authorization": f"Bearer {TOKEN}"}))
    with capture_logs() as logs:
        await dispatcher.start()
        dispatcher.emit([event()])
        await eventually(lambda: _state_is(dispatcher, event().id, "ops", DeliveryState.FAILED))
    text = repr(logs)
    assert SECRET not in text and TOKEN not in text and receiver.url not in text
    events = [entry["event"] for entry in logs if entry["event"].startswith("alert.")]
    assert events == ["alert.delivery_retry", "alert.delivery_failed"]
    assert all(entry.get("webhook") == "ops" for entry in logs if entry["event"].startswith("alert.delivery"))


async def test_events_wait_in_the_writer_while_the_outbox_is_unavailable(
        sqlite_url: str, receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    """Emitted events go through the store's writer: buffered (with the probe rows) while the database fails."""
    store = await Store.open(sqlite_url, flush_interval_s=0.02)  # not migrated yet: every query fails, as in an outage
    await store.start()
    dispatcher = Dispatcher(store, session, [webhook("ops", receiver.url)], retry=FAST, poll_interval_s=0.02)
    try:
        with capture_logs() as logs:
            await dispatcher.start()
            dispatcher.emit([event()])
            await eventually(lambda: _logged(logs, "store.write_failed"))
            await eventually(lambda: _logged(logs, "alert.outbox_unavailable"))
            assert receiver.requests == []  # nothing is sent before it is stored
            assert store.alerts_pending == 1
            await migrate.upgrade(sqlite_url)
            await receiver.wait_for(1, timeout_s=40.0)  # the writer's backoff
            await eventually(lambda: _logged(logs, "alert.outbox_available"))
            await eventually(lambda: _state_is(dispatcher, event().id, "ops", DeliveryState.DELIVERED))
        assert not _logged_now(logs, "alert.lost")
    finally:
        await dispatcher.stop()
        await store.close()


async def _logged(logs: list[dict[str, Any]], name: str) -> bool:
    return _logged_now(logs, name)


def _logged_now(logs: list[dict[str, Any]], name: str) -> bool:
    return any(entry["event"] == name for entry in logs)


async def _state_is(dispatcher: Dispatcher, event_id: str, hook: str, state: DeliveryState) -> bool:
    return (await states(dispatcher.outbox, event_id)).get(hook) is state


async def _attempted(dispatcher: Dispatcher, event_id: str) -> bool:
    return any(row.attempts > 0 for row in await dispatcher.outbox.deliveries(event_id))


async def test_events_of_a_batch_in_flight_during_a_webhook_swap_go_to_the_new_webhooks(
        postgres_url: str, session: aiohttp.ClientSession) -> None:
    """A reload's replan waits for the batch the writer has in flight: a batch that fails puts its events back
    planned for the old webhooks, and they were then stored for webhooks no dispatcher sends to (seen as a flaky
    tests/test_reload.py). The batch is held on a table lock, then fails on the renamed table."""
    await migrate.upgrade(postgres_url)
    store = await Store.open(postgres_url, flush_interval_s=0.02)
    await store.start()
    old = Dispatcher(store, session, [webhook("old")])
    new = Dispatcher(store, session, [webhook("new")])
    engine = sync_engine(postgres_url)
    try:
        with engine.connect() as locker, engine.connect() as watcher:
            locker.execute(text("LOCK TABLE alert_events IN ACCESS EXCLUSIVE MODE"))
            old.emit([event()])

            async def batch_waits() -> bool:
                waiting = watcher.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'alert_events'::regclass"))
                watcher.rollback()
                return bool(waiting.scalar_one()) and store.alerts_unsaved == 0

            await eventually(batch_waits)  # the event is in the batch in flight, not in the buffer
            replan = asyncio.ensure_future(new.replan())
            await asyncio.sleep(0)  # a turn of the loop: the replan starts while the batch is still in flight
            locker.execute(text("ALTER TABLE alert_events RENAME TO alert_events_away"))
            locker.commit()  # the batch fails, its event goes back to the buffer
            await replan
            locker.execute(text("ALTER TABLE alert_events_away RENAME TO alert_events"))
            locker.commit()
        await eventually(lambda: _stored(new, event().id))
        assert await states(new.outbox, event().id) == {"new": DeliveryState.PENDING}
    finally:
        engine.dispose()
        await store.close()


async def _stored(dispatcher: Dispatcher, event_id: str) -> bool:
    return bool(await dispatcher.outbox.deliveries(event_id))
