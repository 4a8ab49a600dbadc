"""POST /v1/report on a real server: outcomes of real requests reach the ranking at once, apart from probes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from monitord.model import Status
from tests.plugins.api import TOKEN, ApiFactory, World, assert_error, probe
from tests.test_spread import equal_world, select

Client = TestClient[Any, Any]


async def send(client: Client, status: int = 202, **body: Any) -> Any:
    resp = await client.post("/v1/report", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_a_failed_request_demotes_its_provider_before_the_next_probe(api_factory: ApiFactory) -> None:
    client, _ = await equal_world(api_factory)
    best = (await select(client))["provider"]["provider"]
    answer = await send(client, provider=best, model="m", outcome="timeout", duration_ms=30_000)
    assert answer == {"provider": best, "counted": True, "suspect": True}
    body = await select(client, fallbacks=2)
    assert body["provider"]["provider"] != best  # the very next select, no probe in between
    assert [f["provider"] for f in body["fallbacks"]][-1] == best and body["fallbacks"][-1]["suspect"]
    state = await (await client.get(f"/v1/providers/{best}")).json()
    assert state["status"] == "up" and state["suspect"] and state["last_report_error_class"] == "timeout"
    assert state["reports"] == 1 and state["reports_ok"] == 0 and state["failures_in_a_row"] == 0
    # one good request puts it back among its peers
    assert (await send(client, provider=best, outcome="ok", ttft_ms=120.0, completion_tokens=40,
                       duration_ms=900.0))["suspect"] is False
    ranking = {e["provider"]: e for e in (await (await client.get("/v1/ranking")).json())["ranking"]}
    assert not ranking[best]["suspect"]
    assert ranking[best]["components"]["reported_availability"] < ranking[best]["components"]["availability"]


async def test_reports_show_apart_from_probes_in_components_and_metrics(api_factory: ApiFactory) -> None:
    client, world = await equal_world(api_factory)
    for _ in range(10):
        await send(client, provider="one", outcome="ok", ttft_ms=900.0)
        await send(client, provider="two", outcome="ok", ttft_ms=150.0)
    world.now += timedelta(seconds=1.5)  # reports (no status change) reach the default ranking within refresh_s
    entries = {e["provider"]: e for e in (await (await client.get("/v1/ranking")).json())["ranking"]}
    assert entries["two"]["components"]["reported_speed"] == 1.0
    assert entries["one"]["components"]["reported_speed"] < 0.25
    assert entries["three"]["components"]["reported_speed"] == entries["three"]["components"]["latency"]
    assert entries["one"]["components"]["latency"] == entries["two"]["components"]["latency"]
    assert entries["two"]["evidence"]["reported_speed"]["source"] == "reports"
    assert entries["two"]["evidence"]["reported_speed"]["samples"] == 10
    assert entries["three"]["evidence"]["reported_availability"]["source"] == "probes"  # nothing reported
    world.now += timedelta(seconds=1.5)  # good news reaches cached selections within the cache's refresh_s
    assert (await select(client))["provider"]["provider"] == "two"  # (cached since the GET above)
    text = await (await client.get("/metrics")).text()
    assert 'monitord_reports_total{outcome="ok",provider="two"} 10.0' in text


async def test_reports_over_the_rate_budget_do_not_count(api_factory: ApiFactory) -> None:
    client, _ = await equal_world(api_factory)  # the world's clock stands still: every report in one second
    answers = [await send(client, provider="one", outcome="ok", ttft_ms=100.0) for _ in range(25)]
    assert [a["counted"] for a in answers] == [True] * 20 + [False] * 5
    assert (await send(client, provider="one", outcome="http_5xx"))["suspect"] is True  # failures still tell
    state = await (await client.get("/v1/providers/one")).json()
    assert state["reports"] == 20 and state["reports_dropped"] == 6


@pytest.mark.parametrize(("body", "field"), [
    ({"outcome": "ok"}, "provider"),
    ({"provider": "one"}, "outcome"),
    ({"provider": "one", "outcome": "fine"}, "outcome"),
    ({"provider": "one", "outcome": "ok", "ttft_ms": -1}, "ttft_ms"),
    ({"provider": "one", "outcome": "ok", "duration_ms": "slow"}, "duration_ms"),
    ({"provider": "one", "outcome": "ok", "completion_tokens": 1.5}, "completion_tokens"),
    ({"provider": "one", "outcome": "ok", "model": ""}, "model"),
    ({"provider": "one", "outcome": "ok", "api_key": "sk-x"}, "unknown field"),
    ([], "expected a JSON object"),
])
async def test_bad_reports_are_400s_naming_the_field(api_factory: ApiFactory, body: Any, field: str) -> None:
    client, _ = await equal_world(api_factory)
    error = await assert_error(await client.post("/v1/report", json=body), 400, "invalid_report")
    assert error["message"].startswith(field)


async def test_unknown_provider_bad_json_and_auth(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await assert_error(await client.post("/v1/report", json={"provider": "alpha", "outcome": "ok"}), 401,
                       "unauthorized")
    await assert_error(await client.post("/v1/report", json={"provider": "omega", "outcome": "ok"}, headers=auth),
                       404, "provider_not_found")
    await assert_error(await client.post("/v1/report", data=b"{", headers=auth), 400, "invalid_json")
    resp = await client.post("/v1/report", json={"provider": "alpha", "outcome": "refused"}, headers=auth)
    assert resp.status == 202


async def test_a_probe_that_answers_after_a_failed_report_clears_suspect(api: tuple[Client, World]) -> None:
    client, world = api
    await send(client, provider="alpha", outcome="connection")
    assert (await select(client))["provider"]["provider"] != "alpha"
    world.feed(probe(world.specs["alpha"], Status.UP))
    assert (await select(client))["provider"]["provider"] == "alpha"
