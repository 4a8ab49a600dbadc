"""The daemon with canaries on: an engine that stops generating while its API answers is stalled and never
selected, within two canary intervals; it is selected again once a canary succeeds. Polls with deadlines only."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import ErrorClass, SampleKind, Status
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.tools.polling import eventually

pytestmark = pytest.mark.slow

CANARY_INTERVAL_S = 4.0  # the target: stalled within two canary intervals (whatever the interval)
DEADLINE_S = 2.0


def config_text(providers: dict[str, tuple[str, str, float]], db_url: str, canary: str, webhook: str) -> str:
    """`providers`: name -> (type, endpoint, weight)."""
    lines = ["providers:"]
    for name, (provider_type, url, weight) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  f"    parameters: {{timeout: 1s, max_retries: 0, probe_interval: 1s, weight: {weight:g}, "
                  f"canary: {canary}}}"]
    lines += ["storage:", f"  url: {db_url}", "  flush_interval: 50ms", "api:", "  listen: 127.0.0.1:0",
              "alerts:", "  webhooks:", f"    - url: {webhook}", "      events: [provider.stalled, provider.up]"]
    return "\n".join(lines) + "\n"


async def selected(client: aiohttp.ClientSession, daemon: Daemon) -> str | None:
    async with client.post(f"http://127.0.0.1:{daemon.api_port}/v1/select", json={}) as resp:
        body = await resp.json()
        return body["provider"]["provider"] if resp.status == 200 else None


async def test_an_engine_that_stops_generating_is_stalled_and_never_selected(sqlite_url: str,
                                                                            provider_double: Any) -> None:
    gpu = await provider_double("vllm")
    spare = await provider_double("vllm")
    receiver = await WebhookReceiver().start()
    canary = f"{{interval: {CANARY_INTERVAL_S:g}s, deadline: {DEADLINE_S:g}s, timeout: 5s}}"
    daemon = Daemon(parse_config(config_text({"gpu": ("vllm", gpu.url, 1.0), "spare": ("vllm", spare.url, 0.3)},
                                             sqlite_url, canary, receiver.url)), install_signal_handlers=False)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as client:
            def status(name: str) -> Status | None:
                state = daemon.live.get(name)
                return state.status if state is not None else None

            await eventually(lambda: status("gpu") is Status.UP and status("spare") is Status.UP, 10, "both up")
            # gpu's weight keeps it first whatever the canaries time on a loaded machine (a priority edge is
            # a tenth of the score, less than a just-recovered provider's recency and speed can move)
            assert await selected(client, daemon) == "gpu"

            await gpu.set("up", generation="hang")  # /health and /v1/models keep answering in milliseconds
            took_s = await eventually(lambda: status("gpu") is Status.STALLED, 2 * CANARY_INTERVAL_S + 15,
                                      "gpu stalled")
            # the loose bound of the target: two intervals, the deadline, a loaded machine's slack
            assert took_s <= 2 * CANARY_INTERVAL_S + DEADLINE_S + 5, took_s

            assert await selected(client, daemon) == "spare"  # at that moment, not a ranking refresh later
            state = daemon.live.get("gpu")
            assert state is not None and state.last_error_class is ErrorClass.GENERATION_TIMEOUT
            base = f"http://127.0.0.1:{daemon.api_port}"
            async with client.get(f"{base}/v1/providers/gpu") as resp:
                assert (await resp.json())["status"] == "stalled"
            async with client.get(f"{base}/v1/ranking") as resp:
                excluded = (await resp.json())["excluded"]["gpu"]
                assert excluded[0].startswith("status stalled since") and "generation_timeout" in excluded[0]
            async with client.get(f"{base}/metrics") as resp:
                assert 'monitord_provider_status{provider="gpu",status="stalled",type="vllm"} 1.0' in \
                    await resp.text()
            await gpu.set("up", generation="normal")
            await eventually(lambda: status("gpu") is Status.UP, CANARY_INTERVAL_S + 10, "gpu well again")
            assert await selected(client, daemon) == "gpu"
        await daemon.store.flush()
        stored = await daemon.store.generation_history("gpu")
        outcomes = {(s.ok, s.error_class) for s in stored}
        assert {(True, None), (False, ErrorClass.GENERATION_TIMEOUT)} <= outcomes, outcomes
        alerts = [orjson.loads(r.body) for r in await receiver.wait_for(2, timeout_s=10)]
        assert [(a["type"], a["provider"]["name"]) for a in alerts] == [("provider.stalled", "gpu"),
                                                                        ("provider.up", "gpu")]
        assert alerts[0]["error_class"] == "generation_timeout" and alerts[1]["previous_status"] == "stalled"
    finally:
        await daemon.stop()
        await receiver.stop()


async def test_requests_running_without_token_progress_is_stalled_without_a_canary(sqlite_url: str,
                                                                                   provider_double: Any) -> None:
    """vLLM's own counters: requests running, vllm:generation_tokens_total standing still for stall_window."""
    gpu = await provider_double("vllm", busy=3, tokens=91522)
    text = (f"providers:\n  gpu:\n    type: vllm\n    endpoint: {gpu.url}\n"
            "    parameters: {timeout: 1s, max_retries: 0, probe_interval: 250ms}\n"
            f"monitor:\n  stall_window: 1s\nstorage:\n  url: {sqlite_url}\n  flush_interval: 50ms\n"
            "api:\n  listen: 127.0.0.1:0\n")
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    try:
        def status() -> Status | None:
            state = daemon.live.get("gpu")
            return state.status if state is not None else None

        await eventually(lambda: status() is Status.STALLED, 15, "stalled from the counters")
        state = daemon.live.get("gpu")
        assert state is not None and state.last_error is not None and "(server metrics)" in state.last_error
        assert not [r.path for r in gpu.requests if r.method == "POST"]  # without spending a token

        await gpu.set("up", busy=3, tokens=95000)  # tokens flow again
        await eventually(lambda: status() is Status.UP, 15, "up once tokens flow")
    finally:
        await daemon.stop()


async def test_one_job_per_model_each_asked_the_way_its_kind_needs(sqlite_url: str, provider_double: Any) -> None:
    """Ollama lists a chat model in memory, a vision model on disk only and an embedding model: the chat model is
    generated from, the others are not loaded to be tested; with `load: true` the embedding model is embedded."""
    ollama = await provider_double("ollama")
    models = "[llama3.2:3b, gemma3:4b, nomic-embed-text:latest]"

    async def samples_with(load: str) -> dict[str, Any]:
        text = (f"providers:\n  box:\n    type: ollama\n    endpoint: {ollama.url}\n"
                "    parameters: {timeout: 1s, max_retries: 0, probe_interval: 250ms, "
                f"canary: {{interval: 1s, models: {models}, load: {load}}}}}\n"
                f"storage:\n  url: {sqlite_url}\n  flush_interval: 50ms\napi:\n  listen: 127.0.0.1:0\n")
        daemon = Daemon(parse_config(text), install_signal_handlers=False)
        since = daemon.clock()
        await daemon.start()
        latest: dict[str, Any] = {}
        try:
            async def all_three() -> bool:
                await daemon.store.flush()
                for sample in reversed(await daemon.store.generation_history("box", since=since)):
                    latest[sample.model] = sample
                return len(latest) == 3

            await eventually(all_three, 15, "a sample of every model")
        finally:
            await daemon.stop()
        return latest

    first = await samples_with("false")
    assert (first["llama3.2:3b"].ok, first["llama3.2:3b"].kind) == (True, SampleKind.GENERATION)
    for model in ("gemma3:4b", "nomic-embed-text:latest"):
        assert (first[model].skipped, first[model].error_class) == (True, ErrorClass.NOT_LOADED), model

    # a second daemon on the same database: its status restored from the stored probes lists no model, so the
    # canary waits for this run's first probe instead of asking an embedding model to chat
    loaded = await samples_with("true")
    embed = loaded["nomic-embed-text:latest"]
    assert (embed.ok, embed.kind, embed.completion_tokens) == (True, SampleKind.EMBEDDING, None)
    assert "/api/embed" in [r.path for r in ollama.requests if r.method == "POST"]
