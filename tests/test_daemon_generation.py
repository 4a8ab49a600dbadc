"""Canary samples through the real daemon's result path (ResultPipeline.record): the live statistics in the API,
the SSE stream, /metrics and the ranking; the store keeps them and a restart rebuilds them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp

from monitord.client import MonitordClient
from monitord.daemon import Daemon
from monitord.model import ErrorClass, GenerationSample, Status
from tests.test_daemon import config_text, daemon_for
from tests.tools.polling import eventually


def sample(daemon: Daemon, provider: str, model: str, seconds_ago: float, *, ok: bool = True,
           **fields: Any) -> GenerationSample:
    if ok and not fields.get("skipped"):
        fields = {"ttft_ms": 100.0, "tokens_per_s": 40.0, "total_ms": 300.0, "prompt_tokens": 12,
                  "completion_tokens": 8, "finish_reason": "length", "streamed": True, "stream_complete": True,
                  **fields}
    return GenerationSample(provider=provider, provider_type="ollama", model=model,
                            started_at=daemon.clock() - timedelta(seconds=seconds_ago), ok=ok, **fields)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_samples_reach_state_api_events_metrics_ranking_and_survive_a_restart(
        db_url: str, provider_double: Any) -> None:
    fast_server, slow_server = await provider_double("ollama"), await provider_double("ollama")
    text = config_text({"fast": ("ollama", fast_server.url), "slow": ("ollama", slow_server.url)}, db_url)
    daemon = daemon_for(text)
    await daemon.start()
    try:
        results = await daemon.run_once()
        assert {r.status for r in results} == {Status.UP}
        model = results[0].model_ids[0]
        for i in range(5):
            daemon.pipeline.record(sample(daemon, "fast", model, 60 - i, ttft_ms=80.0 + i, tokens_per_s=60.0))
            daemon.pipeline.record(sample(daemon, "slow", model, 60 - i, ttft_ms=900.0 + i, tokens_per_s=10.0))
        daemon.pipeline.record(sample(daemon, "fast", model, 30, ok=False, skipped=True,
                                      error_class=ErrorClass.BUSY, error="no idle slot"))
        daemon.pipeline.record(sample(daemon, "slow", model, 20, ok=False, error_class=ErrorClass.EMPTY_GENERATION,
                                      error="the reply held no token", prompt_tokens=12, completion_tokens=0))
        base = f"http://127.0.0.1:{daemon.api_port}"
        async with aiohttp.ClientSession() as http:
            fast = (await get_json(http, f"{base}/v1/providers/fast"))["generation"][model]
            assert (fast["samples"], fast["samples_ok"], fast["skipped"]) == (5, 5, 1)
            assert fast["ttft_p50_ms"] == 82.0 and fast["tokens_per_s_p50"] == 60.0
            assert fast["last_error_class"] is None and fast["last_skip_class"] == "busy"  # a skip is no failure
            assert fast["tokens_spent"] == 5 * 20
            slow = (await get_json(http, f"{base}/v1/providers/slow"))["generation"][model]
            assert slow["last_error_class"] == "empty_generation" and slow["samples"] == 6
            listed = await get_json(http, f"{base}/v1/providers")
            assert {p["name"]: sorted(p["generation"]) for p in listed["providers"]} == {"fast": [model],
                                                                                         "slow": [model]}
            served = {s["provider"]: s["generation"] for m in (await get_json(http, f"{base}/v1/models"))["models"]
                      if m["id"] == model for s in m["providers"]}
            assert served["fast"]["ttft_p50_ms"] == 82.0 and served["slow"]["ttft_p50_ms"] == 902.0

            ranking = await get_json(http, f"{base}/v1/ranking?quality=fast&model={model}")
            entries = {e["provider"]: e for e in ranking["ranking"]}
            assert [e["provider"] for e in ranking["ranking"]] == ["fast", "slow"]
            assert entries["fast"]["components"]["speed"] == 1.0 > entries["slow"]["components"]["speed"]
            assert entries["fast"]["evidence"]["speed"]["source"] == "canary"
            assert entries["fast"]["evidence"]["speed"]["samples"] == 5

            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
            labels = f'model="{model}",provider="fast",type="ollama"'
            assert f"monitord_generation_ttft_seconds_count{{{labels}}} 5.0" in metrics
            assert f"monitord_generation_tokens_per_second_count{{{labels}}} 5.0" in metrics
            assert f"monitord_canary_tokens_total{{{labels}}} 100.0" in metrics
            skipped = f'error_class="busy",model="{model}",outcome="skipped",provider="fast",type="ollama"'
            assert f"monitord_canary_samples_total{{{skipped}}} 1.0" in metrics

        events = []
        async with MonitordClient(base, timeout_s=5.0) as client:  # replayed from the stream's recent buffer
            async for event in client.events(("fast",), last_event_id=0, idle_timeout_s=2.0):
                if event.kind == "generation.updated":
                    events.append(event.data)
                if len(events) == 6:
                    break
        assert [e["provider"] for e in events] == ["fast"] * 6
        assert events[-1]["last_skip_class"] == "busy" and events[4]["samples_ok"] == 5

        await daemon.store.flush()
        stored = await daemon.store.generation_history("slow")
        assert len(stored) == 6 and stored[0].error_class is ErrorClass.EMPTY_GENERATION
        before = dict(daemon.rankings.generation.all())
    finally:
        await daemon.stop()

    restarted = daemon_for(text)
    await restarted.start()
    try:
        assert dict(restarted.rankings.generation.all()) == before
    finally:
        await restarted.stop()


async def test_a_removed_provider_forgets_its_statistics(tmp_path: Any, sqlite_url: str,
                                                         provider_double: Any) -> None:
    server = await provider_double("ollama")
    path = tmp_path / "monitord.yaml"
    path.write_text(config_text({"a": ("ollama", server.url), "b": ("ollama", server.url)}, sqlite_url))
    daemon = daemon_for(path.read_text(), path)
    await daemon.start()
    try:
        for name in ("a", "b"):
            daemon.pipeline.record(sample(daemon, name, "m", 1))
        assert set(daemon.rankings.generation.all()) == {"a", "b"}
        path.write_text(config_text({"a": ("ollama", server.url)}, sqlite_url))
        assert await daemon.reload()
        assert set(daemon.rankings.generation.all()) == {"a"}
        daemon.pipeline.record(sample(daemon, "b", "m", 0))  # a canary that was in flight during the reload
        assert set(daemon.rankings.generation.all()) == {"a"}
    finally:
        await daemon.stop()


async def test_the_daemons_own_canaries_measure_and_rank_by_speed(sqlite_url: str, provider_double: Any) -> None:
    """End to end: canary jobs against two streaming vLLM doubles, one pacing its tokens 100x slower; what users of
    the API see is real TTFT and tokens/s per model, and `quality: fast` picks the fast one even at a lower
    priority."""
    quick, sluggish = await provider_double("vllm"), await provider_double("vllm")
    await quick.set("up", token_interval_s=0.002, reply_tokens=6)
    await sluggish.set("up", token_interval_s=0.2, reply_tokens=6)
    lines = ["providers:"]
    for name, url, priority in (("quick", quick.url, 0), ("sluggish", sluggish.url, 5)):
        lines += [f"  {name}:", "    type: vllm", f"    endpoint: {url}",
                  f"    parameters: {{timeout: 2s, max_retries: 0, probe_interval: 1s, priority: {priority}, "
                  "canary: {interval: 1s, deadline: 3s, timeout: 10s}}"]
    lines += ["storage:", f"  url: {sqlite_url}", "  flush_interval: 50ms", "api:", "  listen: 127.0.0.1:0"]
    daemon = daemon_for("\n".join(lines) + "\n")
    await daemon.start()
    try:
        base = f"http://127.0.0.1:{daemon.api_port}"

        def measured(name: str) -> int:
            return sum(stats.samples_ok for stats in daemon.rankings.generation.for_provider(name).values())

        await eventually(lambda: measured("quick") >= 3 and measured("sluggish") >= 3, 30, "three canaries each")
        async with aiohttp.ClientSession() as http:
            stats = {name: next(iter((await get_json(http, f"{base}/v1/providers/{name}"))["generation"].values()))
                     for name in ("quick", "sluggish")}
            assert stats["quick"]["ttft_p50_ms"] < stats["sluggish"]["ttft_p50_ms"]
            assert stats["sluggish"]["ttft_p50_ms"] >= 150  # the first token waits one 200 ms pause
            assert stats["quick"]["tokens_per_s_p50"] > stats["sluggish"]["tokens_per_s_p50"] > 0
            assert stats["quick"]["last_error_class"] is None and stats["quick"]["tokens_spent"] > 0
            ranking = await get_json(http, f"{base}/v1/ranking?quality=fast")
            assert [e["provider"] for e in ranking["ranking"]] == ["quick", "sluggish"]
            assert {e["evidence"]["speed"]["source"] for e in ranking["ranking"]} == {"canary"}
            await daemon.store.flush()
            history = await get_json(http, f"{base}/v1/providers/quick/generation")
            assert history["samples"] and all(s["ok"] and s["stream_complete"] for s in history["samples"])
    finally:
        await daemon.stop()
