"""The daemon against doubles, probing on its own schedule: a provider that dies leaves the top of /v1/ranking at
its first failed probe (suspect), is down after the failure threshold and comes back after recovery; /v1/select
honours capability criteria."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitord.config import parse_config
from monitord.daemon import Daemon
from tests.tools.polling import eventually

pytestmark = pytest.mark.e2e

INTERVAL_S = 0.3


@pytest.fixture
async def fleet(tmp_path: Path, provider_double: Any) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession, Any]]:
    fast = await provider_double("llamacpp")
    slow = await provider_double("llamacpp", "slow", delay_s=0.08)
    eyes = await provider_double("llamacpp", multimodal=True)
    params = f"{{timeout: 1s, max_retries: 0, probe_interval: {INTERVAL_S}}}"
    text = f"""
providers:
  fast: {{type: llamacpp, endpoint: "{fast.url}", parameters: {{timeout: 1s, max_retries: 0,
         probe_interval: {INTERVAL_S}, weight: 2.0}}}}
  slow: {{type: llamacpp, endpoint: "{slow.url}", parameters: {params}}}
  eyes: {{type: llamacpp, endpoint: "{eyes.url}", parameters: {params}, capabilities: [tools]}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path / 'r.db'}", flush_interval: 100ms}}
api: {{listen: "127.0.0.1:0"}}
alerts: {{failure_threshold: 3, success_threshold: 2}}
"""
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.api_port}") as client:
        try:
            yield daemon, client, fast
        finally:
            await daemon.stop()


async def top(client: aiohttp.ClientSession) -> str | None:
    body = await (await client.get("/v1/ranking")).json()
    return body["ranking"][0]["provider"] if body["ranking"] else None


async def wait_for_top(client: aiohttp.ClientSession, predicate: Any, what: str, timeout_s: float = 10.0) -> float:
    async def holds() -> bool:
        return bool(predicate(await top(client)))

    return await eventually(holds, timeout_s, what)


async def json_of(client: aiohttp.ClientSession, path: str) -> Any:
    async with client.get(path) as reply:
        return await reply.json()


async def answers(client: aiohttp.ClientSession, path: str, status: int) -> bool:
    async with client.get(path) as reply:
        return reply.status == status


async def test_dead_provider_leaves_the_top_and_comes_back(fleet: Any) -> None:
    _, client, fast = fleet
    # ready once every provider has been probed (first probes are spread over the interval)
    await eventually(lambda: answers(client, "/readyz", 200), 5.0, "/readyz answering 200")
    await wait_for_top(client, lambda name: name == "fast", "fast on top")

    await fast.set("down")
    left_after_s = await wait_for_top(client, lambda name: name != "fast", "fast leaving the top")
    # Routing reacts to the first failed probe (suspect ranks below every healthy provider) ...
    assert left_after_s < INTERVAL_S * 2 + 2.0, left_after_s
    state = (await (await client.get("/v1/providers/fast")).json())
    assert state["suspect"] and state["failures_in_a_row"] >= 1
    # ... while the status, and so the alerts, wait for three failed probes in a row.
    async def down() -> bool:
        return bool((await json_of(client, "/v1/providers/fast"))["status"] == "down")

    await eventually(down, 10.0, "fast down")
    state = await json_of(client, "/v1/providers/fast")
    assert state["status"] == "down" and state["failures_in_a_row"] >= 3
    ranking = await (await client.get("/v1/ranking")).json()
    assert "fast" in ranking["excluded"] and all(e["provider"] != "fast" for e in ranking["ranking"])

    await fast.set("up")
    # Back in the ranking after success_threshold probes, but marked as just recovered ...
    entries: dict[str, Any] = {}

    async def ranked_again() -> bool:
        entries.update({e["provider"]: e for e in (await json_of(client, "/v1/ranking"))["ranking"]})
        return "fast" in entries

    await eventually(ranked_again, 10.0, "fast ranked again")
    assert entries["fast"]["status"] == "up" and entries["fast"]["components"]["recency"] < 0.1
    # ... and on top again, where its configured weight (2.0) outweighs the recency penalty.
    await wait_for_top(client, lambda name: name == "fast", "fast on top again")


async def test_select_with_vision_and_tools_picks_only_matching(fleet: Any) -> None:
    _, client, _ = fleet
    # every provider probed at least once: /readyz answers 200 from then on
    await eventually(lambda: answers(client, "/readyz", 200), 5.0, "/readyz answering 200")
    resp = await client.post("/v1/select", json={"required_capabilities": ["vision", "tools"]})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["provider"]["provider"] == "eyes" and body["fallbacks"] == []
    resp = await client.post("/v1/select", json={"required_capabilities": ["vision"], "task_type": "embedding"})
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "no_provider"
    assert set(body["error"]["details"]["excluded"]) == {"fast", "slow", "eyes"}
    plain = await (await client.post("/v1/select", json={"task_type": "chat"})).json()
    assert {plain["provider"]["provider"], *(f["provider"] for f in plain["fallbacks"])} == {"fast", "slow", "eyes"}
