"""Webhook faults end to end: the real daemon raises provider.down for a vLLM double that dies, and delivers it to a
receiver that is down, slow, failing with 5xx, or rate limiting; then provider.up once the double is back.

Every case checks that probing and the API go on meanwhile, that /v1/alerts reports the attempts and why they
failed, and that in the end every stored event reached the receiver exactly once with a 2xx under its own
X-Monitord-Delivery id (retries repeat the id; nothing is lost, nothing is answered twice). The sender itself, one
POST at a time, is covered by tests/test_alert_delivery.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml

from monitord.alerts.outbox import Outbox
from monitord.daemon import Daemon
from monitord.model import DeliveryState
from monitord.store import DeliveryRow
from tests.doubles.base import ProviderDouble
from tests.doubles.webhook_receiver import ReceivedRequest, Reply, WebhookReceiver
from tests.faults.conftest import state_of
from tests.test_outage import eventually, running

SECRET = "whsec-faults-3b1e"
WEBHOOK = "ops"
QUIET_S = 1.3  # longer than the dispatcher's 1 s poll: a late duplicate would show up within it


def alert_config(db_url: str, endpoints: dict[str, str], receiver: WebhookReceiver, *,
                 webhook_timeout: str = "2s") -> str:
    """Thresholds of 1: one failed probe is provider.down, one good one provider.up."""
    doc = {
        "providers": {name: {"type": "vllm", "endpoint": url,
                             "parameters": {"timeout": "500ms", "max_retries": 0}}
                      for name, url in endpoints.items()},
        "monitor": {"interval": "100ms", "jitter": "0s"},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0"},
        "alerts": {"failure_threshold": 1, "success_threshold": 1,
                   "webhooks": [{"name": WEBHOOK, "url": receiver.url, "secret": SECRET,
                                 "timeout": webhook_timeout}]},
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class Rig:
    """A running daemon probing `flaky` (the double the test kills) and `steady`, alerting to `receiver`."""

    daemon: Daemon
    http: aiohttp.ClientSession
    api: str
    receiver: WebhookReceiver
    flaky: ProviderDouble
    too_late: int = 0  # the first this many requests were answered after the webhook timeout (the sender gave up)

    async def event_id(self, event_type: str, provider: str = "flaky") -> str:
        """The id of the stored event, once it is stored."""
        found: list[str] = []

        async def stored() -> bool:
            found[:] = [record.event.id for record in await self.outbox().recent(limit=100)
                        if record.event.type.value == event_type and record.event.provider is not None
                        and record.event.provider.name == provider]
            return bool(found)

        await eventually(stored, timeout_s=10.0, what=f"{event_type} of {provider} stored")
        assert len(found) == 1, found
        return found[0]

    def outbox(self) -> Outbox:
        assert self.daemon.dispatcher is not None
        return self.daemon.dispatcher.outbox

    async def delivery(self, event_id: str) -> DeliveryRow:
        (row,) = await self.outbox().deliveries(event_id)
        assert row.webhook == WEBHOOK
        return row

    async def wait_attempts(self, event_id: str, attempts: int) -> DeliveryRow:
        await eventually(lambda: self._attempts_at_least(event_id, attempts), timeout_s=15.0,
                         what=f"{attempts} delivery attempts")
        return await self.delivery(event_id)

    async def _attempts_at_least(self, event_id: str, attempts: int) -> bool:
        return (await self.delivery(event_id)).attempts >= attempts

    async def wait_delivered(self, event_id: str, timeout_s: float = 15.0) -> DeliveryRow:
        await eventually(lambda: self._delivered(event_id), timeout_s=timeout_s, what="delivered")
        return await self.delivery(event_id)

    async def _delivered(self, event_id: str) -> bool:
        return (await self.delivery(event_id)).state is DeliveryState.DELIVERED

    def requests_for(self, event_id: str) -> list[ReceivedRequest]:
        return [r for r in self.receiver.requests if r.header("X-Monitord-Delivery") == event_id]

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.api + path) as reply:
            return reply.status, await reply.json()


@asynccontextmanager
async def rig(sqlite_url: str, provider_double: Any, *, webhook_timeout: str = "2s") -> AsyncIterator[Rig]:
    flaky = await provider_double("vllm")
    steady = await provider_double("vllm")
    async with WebhookReceiver() as receiver:
        text = alert_config(sqlite_url, {"flaky": flaky.url, "steady": steady.url}, receiver,
                            webhook_timeout=webhook_timeout)
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.first_round_done, what="first probe round")
            started = Rig(daemon, http, api, receiver, flaky)
            yield started
            await settle(started)
            await assert_each_event_delivered_once(started)


async def kill_flaky(rig: Rig) -> str:
    await rig.flaky.set("down")
    return await rig.event_id("provider.down")


async def revive_flaky(rig: Rig) -> str:
    """The double comes back; provider.up must reach the (now healthy) receiver at once."""
    await rig.flaky.set("up")
    up_id = await rig.event_id("provider.up")
    row = await rig.wait_delivered(up_id)
    assert row.attempts == 1 and len(rig.requests_for(up_id)) == 1
    return up_id


async def assert_serving(rig: Rig, *, flaky: str) -> None:
    """During the fault: probing goes on and the API answers from live state."""
    samples = state_of(rig.daemon, "steady").samples
    status, body = await rig.get("/v1/providers")
    assert status == 200
    assert {p["name"]: p["status"] for p in body["providers"]} == {"flaky": flaky, "steady": "up"}
    status, body = await rig.get("/readyz")
    assert status == 200, body
    await eventually(lambda: state_of(rig.daemon, "steady").samples > samples, what="probing going on")


async def alert_state(rig: Rig, event_id: str) -> dict[str, Any]:
    """What GET /v1/alerts says of the event's delivery to the webhook."""
    status, body = await rig.get("/v1/alerts?type=provider.down&provider=flaky")
    assert status == 200
    (record,) = [a for a in body["alerts"] if a["event"]["id"] == event_id]
    delivery: dict[str, Any] = record["deliveries"][WEBHOOK]
    return delivery


async def settle(rig: Rig) -> None:
    """Nothing pending; then a quiet spell in which nothing more may arrive."""

    async def nothing_pending() -> bool:
        return (await rig.daemon.store.outbox.counts())[DeliveryState.PENDING.value] == 0

    await eventually(nothing_pending, what="no delivery pending")
    seen = len(rig.receiver.requests)
    await asyncio.sleep(QUIET_S)
    assert len(rig.receiver.requests) == seen, [r.header("X-Monitord-Event") for r in rig.receiver.requests[seen:]]


async def assert_each_event_delivered_once(rig: Rig) -> None:
    """Every stored event is delivered; the receiver got each id with a 2xx exactly once, and no unknown id."""
    records = await rig.outbox().recent(limit=1000)
    stored = {record.event.id for record in records}
    for record in records:
        (delivery,) = record.deliveries
        assert delivery.state is DeliveryState.DELIVERED, (record.event.type, delivery)
    answered = Counter(r.header("X-Monitord-Delivery") for r in rig.receiver.requests[rig.too_late:] if r.delivered)
    assert set(answered) == stored
    assert set(answered.values()) == {1}, answered
    assert {r.header("X-Monitord-Delivery") for r in rig.receiver.requests} <= stored
    for request in rig.receiver.requests:
        assert request.signature_valid(SECRET)
        assert request.json()["id"] == request.header("X-Monitord-Delivery")


async def test_receiver_down_then_up_gets_the_event_once(sqlite_url: str, provider_double: Any) -> None:
    async with rig(sqlite_url, provider_double) as r:
        await r.receiver.down()
        down_id = await kill_flaky(r)
        row = await r.wait_attempts(down_id, 2)
        assert row.state is DeliveryState.PENDING and row.last_error == "cannot connect: connection refused"
        await assert_serving(r, flaky="down")
        reported = await alert_state(r, down_id)
        assert reported["state"] == "pending" and reported["attempts"] >= 2
        assert reported["last_error"] == "cannot connect: connection refused"

        await r.receiver.up()
        row = await r.wait_delivered(down_id)
        assert row.attempts >= 3 and row.last_status == 200
        (request,) = r.requests_for(down_id)  # refused attempts never arrived
        assert request.header("X-Monitord-Event") == "provider.down"
        await revive_flaky(r)
        assert (await alert_state(r, down_id))["state"] == "delivered"


@pytest.mark.slow  # the dispatcher's backoff (0.5-1 s, then 1-2 s) or the Retry-After
async def test_slow_receiver_is_retried_and_not_duplicated(sqlite_url: str, provider_double: Any) -> None:
    """Slower than the webhook timeout: each attempt arrives (same delivery id) but counts as failed; once the
    receiver answers in time, the delivery is done and never sent again."""
    async with rig(sqlite_url, provider_double, webhook_timeout="300ms") as r:
        r.receiver.slow(1.0)
        down_id = await kill_flaky(r)
        row = await r.wait_attempts(down_id, 2)
        assert row.last_error == "timed out after 0.3s"
        await assert_serving(r, flaky="down")

        r.receiver.answer(Reply())
        r.too_late = len(r.receiver.requests)  # each got its answer after 1 s (the reply is chosen on arrival)
        row = await r.wait_delivered(down_id)
        await revive_flaky(r)
    requests = r.requests_for(down_id)
    in_time = [q for q in requests if r.receiver.requests.index(q) >= r.too_late]
    assert len(in_time) == 1 and requests[-1] is in_time[0]
    assert len(requests) == row.attempts >= 3


@pytest.mark.slow  # the dispatcher's backoff (0.5-1 s, then 1-2 s) or the Retry-After
async def test_5xx_answers_are_retried_until_a_2xx(sqlite_url: str, provider_double: Any) -> None:
    async with rig(sqlite_url, provider_double) as r:
        r.receiver.fail(500, times=1)
        r.receiver.plan(Reply(503, b"upstream busy"))
        down_id = await kill_flaky(r)
        await assert_serving(r, flaky="down")
        row = await r.wait_delivered(down_id)
        assert (row.attempts, row.last_status) == (3, 200)
        await revive_flaky(r)
    assert [q.reply_status for q in r.requests_for(down_id)] == [500, 503, 200]


@pytest.mark.slow  # the dispatcher's backoff (0.5-1 s, then 1-2 s) or the Retry-After
async def test_429_retry_after_is_waited_for(sqlite_url: str, provider_double: Any) -> None:
    retry_after_s = 2
    async with rig(sqlite_url, provider_double) as r:
        r.receiver.rate_limit(str(retry_after_s), times=1)
        down_id = await kill_flaky(r)
        row = await r.wait_attempts(down_id, 1)
        assert row.last_status == 429 and row.last_error is not None and row.last_error.startswith("HTTP 429")
        assert row.next_attempt_at is not None
        await assert_serving(r, flaky="down")
        row = await r.wait_delivered(down_id)
        assert row.attempts == 2
        await revive_flaky(r)
    limited, delivered = r.requests_for(down_id)
    assert (limited.reply_status, delivered.reply_status) == (429, 200)
    waited_s = delivered.received_at - limited.received_at
    # at least what the receiver asked for; at most that plus one dispatcher poll and a loaded machine's slack
    assert retry_after_s <= waited_s < retry_after_s + 2.5, waited_s

