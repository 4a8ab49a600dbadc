"""/v1/alerts and /v1/silences on the real daemon: events with their delivery state, silences made through the API
keep a provider's events from its webhooks (recorded, not sent), and every answer matches the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitord.config import parse_config
from monitord.daemon import Daemon
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.plugins.api import assert_error
from tests.test_openapi import check


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as started:
        yield started


@pytest.fixture
async def running(tmp_path: Path, provider_double: Any, receiver: WebhookReceiver) -> AsyncIterator[Any]:
    """A started daemon (API on a free port, one webhook, thresholds 1/1) and a client on its API."""
    gpu = await provider_double("llamacpp")
    cpu = await provider_double("ollama")
    text = f"""
providers:
  gpu1: {{type: llamacpp, endpoint: "{gpu.url}", parameters: {{timeout: 500ms, max_retries: 0, probe_interval: 1h}}}}
  cpu1: {{type: ollama, endpoint: "{cpu.url}", parameters: {{timeout: 500ms, max_retries: 0, probe_interval: 1h}}}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path / 'a.db'}", flush_interval: 50ms}}
api: {{listen: "127.0.0.1:0"}}
alerts:
  failure_threshold: 1
  success_threshold: 1
  webhooks: [{{name: ops, url: "{receiver.url}"}}]
  silences: [{{provider: "cpu*", end: "2099-01-01T00:00:00Z", reason: "from the config"}}]
"""
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.api_port}") as client:
        try:
            yield daemon, client, gpu
        finally:
            await daemon.stop()


async def test_silence_crud_and_validation(running: Any) -> None:
    _, client, _ = running
    doc = await (await client.get("/openapi.json")).json()
    listed = await check(client, doc, "GET", "/v1/silences", "/v1/silences", 200)
    (config_silence,) = listed["silences"]
    assert config_silence["created_by"] == "config" and config_silence["active"] is True

    made = await check(client, doc, "POST", "/v1/silences", "/v1/silences", 201,
                       json={"provider": "gpu*", "duration_s": 600, "reason": "driver update"})
    assert made["created_by"] == "api" and made["active"] and made["provider"] == "gpu*"
    listed = await check(client, doc, "GET", "/v1/silences", "/v1/silences", 200)
    assert {s["id"] for s in listed["silences"]} == {config_silence["id"], made["id"]}

    await assert_error(await client.delete(f"/v1/silences/{config_silence['id']}"), 409, "silence_in_config")
    await assert_error(await client.delete("/v1/silences/api-nope"), 404, "silence_not_found")
    resp = await client.delete(f"/v1/silences/{made['id']}")
    assert resp.status == 204
    assert len((await (await client.get("/v1/silences")).json())["silences"]) == 1

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for body in ({}, {"provider": "x"}, {"provider": "x", "end": future, "duration_s": 5},
                 {"provider": "x", "duration_s": -1}, {"provider": "x", "end": "2000-01-01T00:00:00Z"},
                 {"provider": "x", "end": "tomorrow"}, {"provider": "x", "end": "2099-01-01T00:00:00"},
                 {"provider": "x", "duration_s": 60, "colour": "red"}, {"provider": "x", "duration_s": 1e9}):
        await check(client, doc, "POST", "/v1/silences", "/v1/silences", 400, json=body)
    await assert_error(await client.post("/v1/silences", data=b"{nope"), 400, "invalid_json")


async def test_silenced_provider_is_recorded_not_delivered(running: Any, receiver: WebhookReceiver) -> None:
    daemon, client, gpu = running
    doc = await (await client.get("/openapi.json")).json()
    await daemon.run_once()
    made = await (await client.post("/v1/silences", json={"provider": "gpu1", "duration_s": 60})).json()
    await gpu.set("down")
    await daemon.run_once()
    alerts = await check(client, doc, "GET", "/v1/alerts", "/v1/alerts?provider=gpu1", 200)
    for _ in range(50):
        if alerts["alerts"]:
            break
        await daemon.dispatcher.run_once()  # type: ignore[union-attr]
        alerts = await check(client, doc, "GET", "/v1/alerts", "/v1/alerts?provider=gpu1", 200)
    (record,) = [a for a in alerts["alerts"] if a["event"]["type"] == "provider.down"]
    assert record["event"]["silenced_by"] == made["id"]
    assert record["deliveries"]["ops"]["state"] == "silenced"
    assert receiver.requests == []

    # Unsilenced, the recovery goes out as usual.
    await client.delete(f"/v1/silences/{made['id']}")
    await gpu.set("up")
    await daemon.run_once()
    got = await receiver.wait_for(1, timeout_s=10)
    assert got[0].header("X-Monitord-Event") == "provider.up"
    alerts = await check(client, doc, "GET", "/v1/alerts", "/v1/alerts?type=provider.up", 200)
    assert alerts["alerts"][0]["deliveries"]["ops"]["state"] in ("pending", "delivered")
    await assert_error(await client.get("/v1/alerts?type=nope"), 400, "invalid_parameter")


async def test_api_silences_survive_a_restart(tmp_path: Path, provider_double: Any) -> None:
    gpu = await provider_double("llamacpp")
    text = f"""
providers:
  gpu1: {{type: llamacpp, endpoint: "{gpu.url}", parameters: {{probe_interval: 1h}}}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path / 's.db'}"}}
api: {{listen: "127.0.0.1:0"}}
"""
    first = Daemon(parse_config(text), install_signal_handlers=False)
    await first.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{first.api_port}") as client:
        kept = await (await client.post("/v1/silences", json={"provider": "gpu*", "duration_s": 600})).json()
        ended = await (await client.post("/v1/silences", json={"provider": "x", "duration_s": 600})).json()
        assert (await client.delete(f"/v1/silences/{ended['id']}")).status == 204
    await first.stop()

    second = Daemon(parse_config(text), install_signal_handlers=False)
    await second.start()
    try:
        assert second.alerts is not None
        assert [s.id for s in second.alerts.silences()] == [kept["id"]]
    finally:
        await second.stop()
