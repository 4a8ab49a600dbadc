"""The generation canary in the API: GET /v1/providers/{name}/generation over the real store (samples and
per-model aggregates), its errors in the one shape, and the live statistics in provider and model views."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from monitord.model import ErrorClass, GenerationSample
from tests.plugins.api import NOW, ApiFactory, World, assert_error
from tests.test_api import get_json

Client = TestClient[Any, Any]


def canary(world: World, provider: str, model: str, minutes_ago: float, *, ok: bool = True,
           **fields: Any) -> GenerationSample:
    if ok and not fields.get("skipped"):
        fields = {"ttft_ms": 100.0, "tokens_per_s": 40.0, "total_ms": 300.0, "prompt_tokens": 10,
                  "completion_tokens": 8, "finish_reason": "length", "streamed": True, "stream_complete": True,
                  **fields}
    return GenerationSample(provider=provider, provider_type=world.specs[provider].type, model=model,
                            started_at=NOW - timedelta(minutes=minutes_ago), ok=ok, **fields)


async def fed(api_factory: ApiFactory) -> tuple[Client, World]:
    client, world = await api_factory()
    for i in range(30):
        world.feed_sample(canary(world, "alpha", "qwen2.5:7b", 90 - 3 * i, ttft_ms=100.0 + 10 * i))
        if i % 5 == 0:
            world.feed_sample(canary(world, "alpha", "llava:13b", 90 - 3 * i, ttft_ms=800.0, tokens_per_s=9.0))
    world.feed_sample(canary(world, "alpha", "qwen2.5:7b", 1, ok=False, error_class=ErrorClass.STREAM_STALLED,
                             error="no chunk for 10s"))
    world.feed_sample(canary(world, "alpha", "llava:13b", 0.5, ok=False, skipped=True, error_class=ErrorClass.BUSY))
    await world.store.flush()
    return client, world


async def test_samples_newest_first_and_per_model(api_factory: ApiFactory) -> None:
    client, _ = await fed(api_factory)
    body = await get_json(client, "/v1/providers/alpha/generation")
    assert body["provider"] == "alpha" and body["model"] is None and len(body["samples"]) == 38
    newest = body["samples"][0]
    assert (newest["model"], newest["skipped"], newest["error_class"]) == ("llava:13b", True, "busy")
    assert body["samples"][1]["error_class"] == "stream_stalled" and body["samples"][1]["ok"] is False
    only = await get_json(client, "/v1/providers/alpha/generation?model=llava:13b&limit=3")
    assert [s["model"] for s in only["samples"]] == ["llava:13b"] * 3
    since = (NOW - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    recent = await get_json(client, f"/v1/providers/alpha/generation?since={since}")
    assert [s["ts"] for s in recent["samples"]] == sorted((s["ts"] for s in recent["samples"]), reverse=True)
    assert len(recent["samples"]) == 5


async def test_aggregates_by_step_and_model(api_factory: ApiFactory) -> None:
    client, _ = await fed(api_factory)
    body = await get_json(client, "/v1/providers/alpha/generation?step=1h")
    assert body["step_s"] == 3600 and [m["model"] for m in body["models"]] == ["llava:13b", "qwen2.5:7b"]
    qwen = body["models"][1]["buckets"]
    assert [b["start"] for b in qwen] == sorted((b["start"] for b in qwen), reverse=True)
    assert sum(b["count"] for b in qwen) == 31 and sum(b["failed_count"] for b in qwen) == 1
    assert sum(b["tokens_spent"] for b in qwen) == 30 * 18
    llava = body["models"][0]["buckets"]
    assert sum(b["skipped_count"] for b in llava) == 1
    assert {b["ttft_p50_ms"] for b in llava if b["ok_count"]} == {800.0}
    assert {b["tokens_per_s_p50"] for b in llava if b["ok_count"]} == {9.0}
    one = await get_json(client, "/v1/providers/alpha/generation?step=5m&model=qwen2.5:7b&limit=2")
    assert [m["model"] for m in one["models"]] == ["qwen2.5:7b"] and len(one["models"][0]["buckets"]) == 2
    empty = await get_json(client, "/v1/providers/beta/generation?step=1d")
    assert empty["models"] == []


async def test_bad_requests_have_the_one_error_shape(api_factory: ApiFactory) -> None:
    client, _ = await api_factory()
    for query in ("?step=2m", "?limit=0", "?since=yesterday", "?model=", "?x=1", "?model=a&model=b",
                  "?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z"):
        await assert_error(await client.get(f"/v1/providers/alpha/generation{query}"), 400, "invalid_parameter")
    await assert_error(await client.get("/v1/providers/omega/generation"), 404, "provider_not_found")
