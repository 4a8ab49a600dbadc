"""Capacity and identity through the whole daemon: doubles whose load changes, the API, /metrics and history.

Probes are driven with run_once (probe_interval 1h keeps the scheduler out of the way), so every step is one
round of probes and nothing waits on a timer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import Status
from tests.doubles import ProviderDouble


def config_text(providers: dict[str, tuple[str, str]], db_url: str) -> str:
    lines = ["providers:"]
    for name, (provider_type, url) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  "    parameters: {timeout: 2s, max_retries: 0, probe_interval: 1h}"]
    lines += ["storage:", f"  url: {db_url}", "  flush_interval: 50ms", "api:", "  listen: 127.0.0.1:0"]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def running(sqlite_url: str, provider_double: Any) -> AsyncIterator[tuple[Daemon, dict[str, ProviderDouble]]]:
    doubles = {
        "left": await provider_double("llamacpp", slots=1),
        "right": await provider_double("llamacpp", slots=1),
        "ollama": await provider_double("ollama"),
    }
    providers = {"left": ("llamacpp", doubles["left"].url), "right": ("llamacpp", doubles["right"].url),
                 "local": ("ollama", doubles["ollama"].url),
                 "wrong": ("vllm", doubles["ollama"].url)}  # Ollama's port, configured as vLLM
    daemon = Daemon(parse_config(config_text(providers, sqlite_url)), install_signal_handlers=False)
    await daemon.start()
    try:
        yield daemon, doubles
    finally:
        await daemon.stop()


async def get(daemon: Daemon, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{daemon.api_port}{path}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else await resp.text()


async def select(daemon: Daemon, **criteria: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{daemon.api_port}/v1/select", json=criteria) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def gauge(text: str, name: str, provider: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'provider="{provider}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_saturated_server_is_shown_exported_and_selected_last(
        running: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, doubles = running
    await daemon.run_once()
    providers = {p["name"]: p for p in (await get(daemon, "/v1/providers"))["providers"]}
    assert providers["left"]["capacity"]["slots_total"] == 1 and providers["left"]["saturated"] is False
    assert providers["local"]["capacity"]["resident_models"][0]["expires_at"].startswith("2025-11-25T01:05:00")
    first = (await select(daemon, providers=["left", "right"]))["provider"]["provider"]
    other = "right" if first == "left" else "left"

    await doubles[first].set("up", slots=1, busy=1)  # a long generation holds its only slot
    await daemon.run_once()
    providers = {p["name"]: p for p in (await get(daemon, "/v1/providers"))["providers"]}
    assert (providers[first]["status"], providers[first]["saturated"]) == ("up", True)
    assert (await select(daemon, providers=["left", "right"]))["provider"]["provider"] == other
    ranking = await get(daemon, "/v1/ranking?provider=left,right")
    assert [e["provider"] for e in ranking["ranking"]] == [other, first]
    assert ranking["ranking"][1]["components"]["headroom"] == 0.0
    metrics = await get(daemon, "/metrics")
    assert gauge(metrics, "monitord_provider_saturated", first) == 1.0
    assert gauge(metrics, "monitord_provider_slots_busy", first) == 1.0
    assert gauge(metrics, "monitord_provider_saturated", other) == 0.0
    assert gauge(metrics, "monitord_provider_resident_models", "local") == 1.0

    await doubles[first].set("up", slots=1, busy=0)  # the generation ended
    await daemon.run_once()
    providers = {p["name"]: p for p in (await get(daemon, "/v1/providers"))["providers"]}
    assert providers[first]["saturated"] is False
    await daemon.store.flush()
    history = await get(daemon, f"/v1/providers/{first}/history?limit=3")
    saturation = [s["capacity"]["saturated"] for s in history["samples"]]
    assert saturation == [False, True, False]


async def test_max_queue_excludes_a_server_with_a_published_queue(
        running: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, doubles = running
    await doubles["left"].set("up", slots=1, busy=1, queue=3, metrics=True)
    await daemon.run_once()
    answer = await get(daemon, "/v1/ranking?provider=left,right&max_queue=1")
    assert [e["provider"] for e in answer["ranking"]] == ["right"]
    assert answer["excluded"] == {"left": ["queue of 3 waiting request(s) is over max_queue 1"]}


async def test_the_wrong_server_on_a_port_is_misconfigured_not_up(
        running: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, _ = running
    await daemon.run_once()
    state = daemon.live.get("wrong")
    assert state is not None and state.status is Status.MISCONFIGURED
    wrong = await get(daemon, "/v1/providers/wrong")
    assert wrong["status"] == "misconfigured" and wrong["identity"]["looks_like"] == "ollama"
    assert "use `type: ollama`" in wrong["last_error"] and wrong["last_error_class"] == "wrong_server"
    ranking = await get(daemon, "/v1/ranking")
    assert "wrong" in ranking["excluded"] and "local" in [e["provider"] for e in ranking["ranking"]]


def test_the_cli_shows_saturated_beside_the_status() -> None:
    from monitord.cli import status_load_cell

    assert status_load_cell("up", True).plain == "up saturated"
    assert status_load_cell("up", False).plain == "up" and status_load_cell("down", None).plain == "down"
