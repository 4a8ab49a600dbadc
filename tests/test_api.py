"""The query API on a real TestServer over a LiveState fed with real ProbeResults and a real store.

Shapes, filters, caching across probe results, auth, metrics, event streams, and history on both databases.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from monitord.api import ApiServer, make_app
from monitord.api.events import Event, EventHub, Subscription
from monitord.model import Criteria, ProviderSpec, Status
from monitord.store import Store
from tests.plugins.api import (
    CHAT,
    EMBED,
    LLAMA,
    LLAVA,
    NOW,
    SECRETS,
    TOKEN,
    ApiFactory,
    World,
    assert_error,
    probe,
)
from tests.tools.polling import eventually

Client = TestClient[Any, Any]


async def get_json(client: Client, path: str, **kwargs: Any) -> Any:
    resp = await client.get(path, **kwargs)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def ranked(client: Client, query: str = "") -> list[str]:
    body = await get_json(client, f"/v1/ranking{query}")
    return [entry["provider"] for entry in body["ranking"]]


# --- health and readiness ---


async def test_healthz_says_alive(api: tuple[Client, World]) -> None:
    client, _ = api
    assert (await get_json(client, "/healthz"))["status"] == "ok"


async def test_readyz_waits_for_the_first_round(api_factory: ApiFactory) -> None:
    client, world = await api_factory(ready=False)
    error = await assert_error(await client.get("/readyz"), 503, "not_ready")
    assert error["details"]["checks"] == {"first_round": False, "store": True, "probes_fresh": True}
    world.ready = True
    assert await get_json(client, "/readyz") == {"status": "ready", "checks": {"first_round": True, "store": True,
                                                                               "probes_fresh": True}}


async def test_readyz_and_history_report_an_unreachable_store(api_factory: ApiFactory) -> None:
    away = await Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    try:
        client, _ = await api_factory(store=away, feed=False)
        error = await assert_error(await client.get("/readyz"), 503, "not_ready")
        assert error["details"]["checks"] == {"first_round": True, "store": False, "probes_fresh": True}
        await assert_error(await client.get("/v1/providers/alpha/history"), 503, "store_unavailable")
        await assert_error(await client.get("/v1/providers/alpha/history?step=1h"), 503, "store_unavailable")
    finally:
        await away.close()


# --- providers and models ---


async def test_providers_lists_every_configured_provider_by_name(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await get_json(client, "/v1/providers")
    assert [p["name"] for p in body["providers"]] == ["alpha", "beta", "delta", "gamma"]
    by_name = {p["name"]: p for p in body["providers"]}
    alpha, gamma = by_name["alpha"], by_name["gamma"]
    assert alpha["status"] == "up" and alpha["availability"] == 1.0 and alpha["samples"] == 5
    assert alpha["latency_p50_ms"] == 15.0
    assert [m["id"] for m in alpha["models"]] == ["llava:13b", "qwen2.5:7b"]
    assert alpha["configured_models"] == ["llava:13b"]
    assert alpha["capabilities"] == ["chat", "completion", "streaming", "tools", "vision"]
    assert gamma["status"] == "down" and gamma["failures_in_a_row"] == 5
    assert gamma["last_error_class"] == "refused"
    assert gamma["endpoint"] == "http://***@127.0.0.1:8080"
    assert not {"api_key", "headers", "base_url"} & set(alpha)


async def test_a_provider_never_probed_is_unknown(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(feed=False)
    body = await get_json(client, "/v1/providers/beta")
    assert body["status"] == "unknown" and body["samples"] == 0 and body["availability"] is None


async def test_provider_detail_and_unknown_names(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await get_json(client, "/v1/providers/beta")
    assert body["name"] == "beta" and body["type"] == "vllm" and body["endpoint"] == "http://127.0.0.1:8000"
    await assert_error(await client.get("/v1/providers/omega"), 404, "provider_not_found")
    await assert_error(await client.get("/v1/providers/al%20pha"), 404, "provider_not_found")


async def test_models_lists_who_serves_what(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await get_json(client, "/v1/models")
    models = {m["id"]: m for m in body["models"]}
    assert list(models) == sorted(models)
    assert set(models) == {"llava:13b", "qwen2.5:7b", "meta-llama/Llama-3.1-8B-Instruct", "nomic-embed-text"}
    llava = models["llava:13b"]
    assert llava["up"] == 1
    assert [(p["provider"], p["status"]) for p in llava["providers"]] == [("alpha", "up")]
    assert llava["providers"][0]["model"]["capabilities"] == ["completion", "vision"]


async def test_secrets_never_leave_the_api(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    paths = ["/healthz", "/readyz", "/v1/providers", "/v1/providers/alpha", "/v1/providers/beta",
             "/v1/providers/gamma", "/v1/providers/alpha/history", "/v1/ranking", "/v1/ranking?provider=gamma",
             "/v1/models", "/metrics", "/openapi.json", "/v1/nothing"]
    for path in paths:
        for auth in (headers, {}, {"Authorization": "Bearer wrong"}):
            text = await (await client.get(path, headers=auth)).text()
            leaked = [secret for secret in SECRETS if secret in text]
            assert not leaked, (path, leaked)
    text = await (await client.post("/v1/select", json={"model": "x"}, headers=headers)).text()
    assert not [secret for secret in SECRETS if secret in text]


# --- ranking and selection ---


async def test_default_ranking_explains_every_entry_and_exclusion(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await get_json(client, "/v1/ranking")
    assert set(body) == {"generated_at", "criteria", "ranking", "excluded"}
    assert body["generated_at"] == NOW.isoformat()
    assert [e["provider"] for e in body["ranking"]] == ["alpha", "delta", "beta"]
    top = body["ranking"][0]
    assert set(top) == {"provider", "type", "score", "status", "components", "models", "endpoint", "api_base",
                        "chat_url", "model", "evidence", "suspect", "saturated"}
    assert set(top["evidence"]) == set(top["components"])
    assert {"availability", "latency", "recency", "priority", "quality", "task_fit"} <= set(top["components"])
    assert top["score"] >= body["ranking"][1]["score"]
    assert body["excluded"]["gamma"][0].startswith("status down")


async def test_every_answer_says_where_to_send_the_request(api: tuple[Client, World]) -> None:
    client, world = api
    for _ in range(2):  # gamma (userinfo in its URL) answers again
        world.feed(probe(world.specs["gamma"], at=NOW, models=(LLAMA,)))
    entries = {e["provider"]: e for e in (await get_json(client, "/v1/ranking"))["ranking"]}
    alpha, beta, gamma = entries["alpha"], entries["beta"], entries["gamma"]
    assert (alpha["endpoint"], alpha["api_base"], alpha["chat_url"]) == (
        "http://127.0.0.1:11434", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1/chat/completions")
    assert beta["api_base"] == "http://127.0.0.1:8000/v1" and beta["model"] == LLAMA.id
    assert (gamma["endpoint"], gamma["api_base"]) == ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1")
    # the model that best fits: the one asked for, else one that suits the task, else the most capable
    assert alpha["model"] == "qwen2.5:7b"  # 7.6B with a 32k context beats 13B with 4k on the quality guess
    assert (await ranked_entry(client, "?model=LLAVA:13B"))["model"] == "llava:13b"
    assert (await ranked_entry(client, "?capability=vision"))["model"] == "llava:13b"
    selected = await client.post("/v1/select", json={"task_type": "chat", "fallbacks": 3})
    body = await selected.json()
    for entry in (body["provider"], *body["fallbacks"]):
        assert entry["chat_url"] == entry["api_base"] + "/chat/completions" and entry["model"]
    text = await (await client.get("/v1/ranking")).text()
    assert not [secret for secret in SECRETS if secret in text] and "admin" not in text


async def ranked_entry(client: Client, query: str) -> Any:
    return (await get_json(client, f"/v1/ranking{query}"))["ranking"][0]


@pytest.mark.parametrize(("query", "expected"), [
    ("?capability=vision&capability=tools", ["alpha"]),
    ("?capability=vision,tools", ["alpha"]),
    ("?required_capabilities=tools", ["alpha"]),
    ("?task_type=embedding", ["delta"]),
    ("?task_type=chat&provider=beta", ["beta"]),
    ("?providers=beta,delta", ["delta", "beta"]),
    ("?model=meta-llama/*", ["beta"]),
    ("?model=LLAVA:13B", ["alpha"]),
    ("?max_tokens=16000&task_type=chat", ["alpha"]),
    ("?quality=fast", ["alpha", "delta", "beta"]),
    ("?limit=1", ["alpha"]),
    ("?capability=rerank", []),
])
async def test_ranking_filters(api: tuple[Client, World], query: str, expected: list[str]) -> None:
    client, _ = api
    assert await ranked(client, query) == expected


async def test_ranking_echoes_the_parsed_criteria(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await get_json(client, "/v1/ranking?task_type=code_generation&capability=function_calling"
                                  "&quality=quality&max_tokens=4096&provider=alpha&max_queue=0")
    assert body["criteria"] == {"task_type": "code_generation", "required_capabilities": ["tools"],
                                "max_tokens": 4096, "quality_preference": "quality", "model": None,
                                "providers": ["alpha"], "max_queue": 0}
    assert body["excluded"] == {}


@pytest.mark.parametrize(("query", "code"), [
    ("?capabilities=vision", "invalid_parameter"),
    ("?task_type=chat&task_type=embedding", "invalid_parameter"),
    ("?quality=fast&quality_preference=quality", "invalid_parameter"),
    ("?limit=0", "invalid_parameter"),
    ("?limit=many", "invalid_parameter"),
    ("?task_type=dancing", "invalid_criteria"),
    ("?max_tokens=-5", "invalid_criteria"),
    ("?quality=best", "invalid_criteria"),
    ("?capability=", "invalid_criteria"),
    ("?capability=a%20b", "invalid_criteria"),
])
async def test_ranking_rejects_bad_parameters(api: tuple[Client, World], query: str, code: str) -> None:
    client, _ = api
    await assert_error(await client.get(f"/v1/ranking{query}"), 400, code)


async def test_ranking_follows_each_probe_result(api: tuple[Client, World]) -> None:
    """Served from memory between results, but never stale across one: alpha drops at once (a fresh failure
    weighs on recency), leaves after the failure threshold and is back after recovery."""
    client, world = api
    alpha = world.specs["alpha"]
    assert (await ranked(client))[0] == "alpha"
    for step in range(1, 4):
        world.now = NOW + timedelta(seconds=step)
        world.feed(probe(alpha, Status.DOWN, at=world.now))
        order = await ranked(client)
        assert order[0] != "alpha" and ("alpha" in order) is (step < 3), (step, order)
    for step in range(4, 6):
        world.now = NOW + timedelta(seconds=step)
        world.feed(probe(alpha, at=world.now, total_ms=15.0, models=(LLAVA,)))
        assert ("alpha" in await ranked(client)) is (step == 5)
    world.now = NOW + timedelta(hours=1)  # long after the failure, with a window of fresh successes
    for step in range(5):
        world.feed(probe(alpha, at=world.now - timedelta(seconds=10 * step), total_ms=15.0, models=(LLAVA,)))
    assert (await ranked(client))[0] == "alpha"


async def test_status_changes_show_at_once_and_other_results_within_refresh_s(api: tuple[Client, World]) -> None:
    client, world = api
    beta, delta = world.specs["beta"], world.specs["delta"]
    before = await get_json(client, "/v1/ranking")
    world.feed(probe(delta, at=NOW, total_ms=400.0, models=(EMBED,)))  # slower, same status and models
    assert await get_json(client, "/v1/ranking") == before  # the same generation
    world.now = NOW + timedelta(seconds=world.ctx.ranking.refresh_s)
    assert (await get_json(client, "/v1/ranking"))["ranking"] != before["ranking"]
    world.feed(probe(beta, Status.LOADING, at=world.now))  # a status change: shown without waiting
    assert "beta" not in [e["provider"] for e in (await get_json(client, "/v1/ranking"))["ranking"][:2]]
    world.feed(probe(delta, at=world.now, total_ms=30.0))  # its model list went away
    assert (await get_json(client, "/v1/providers/delta"))["models"] == []
    assert "delta" in (await get_json(client, "/v1/ranking?model=nomic-embed-text"))["excluded"]


async def test_large_answers_are_gzipped_once_for_clients_that_accept_it(api_factory: ApiFactory) -> None:
    specs = {f"p{i:03d}": ProviderSpec(f"p{i:03d}", "vllm", f"http://127.0.0.1:{9000 + i}", capabilities=CHAT)
             for i in range(100)}
    client, world = await api_factory(specs=specs, feed=False)
    for spec in specs.values():
        world.feed(probe(spec, total_ms=10.0 + int(spec.name[1:])))
    plain = await client.get("/v1/ranking", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    body = await plain.read()
    assert len(body) > 8192
    packed = await client.get("/v1/ranking", headers={"Accept-Encoding": "br;q=1.0, gzip;q=0.8"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert await packed.read() == body  # the test client inflates it
    cache = world.ctx.ranking
    spliced, tag = cache.default_body()
    assert spliced == body
    packed_once, packed_tag = await cache.default_gzip(spliced, tag, 6)
    assert packed_tag == tag and gzip.decompress(packed_once) == spliced
    assert (await cache.default_gzip(spliced, tag, 6))[0] is packed_once  # compressed once per body
    tag = plain.headers["ETag"]
    unchanged = await client.get("/v1/ranking", headers={"If-None-Match": tag, "Accept-Encoding": "gzip"})
    assert unchanged.status == 304 and unchanged.headers["ETag"] == tag and await unchanged.read() == b""
    world.feed(probe(specs["p000"], Status.DOWN, at=NOW))  # a status change: a new body, a new tag
    changed = await client.get("/v1/ranking", headers={"If-None-Match": tag, "Accept-Encoding": "identity"})
    assert changed.status == 200 and changed.headers["ETag"] != tag
    # gzip clients get the new ranking once it is compressed (in a worker thread), the one before meanwhile
    new_tag = changed.headers["ETag"]

    async def packed_is_new() -> bool:
        answer = await client.get("/v1/ranking", headers={"Accept-Encoding": "gzip"})
        return answer.headers["ETag"] == new_tag and answer.headers["Content-Encoding"] == "gzip"

    await eventually(packed_is_new, 10.0, "the new ranking gzipped")
    refused = await client.get("/v1/ranking", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    small = await client.get("/v1/providers/p001", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers


async def test_ranking_follows_a_reload(api: tuple[Client, World]) -> None:
    client, world = api
    specs = dict(world.specs)
    specs["alpha"] = ProviderSpec("alpha", "ollama", "http://127.0.0.1:11434", capabilities=CHAT, enabled=False)
    world.reconfigure(specs)
    body = await get_json(client, "/v1/ranking")
    assert "alpha" not in [e["provider"] for e in body["ranking"]]
    assert body["excluded"]["alpha"] == ["disabled in config"]


async def test_select_picks_only_providers_that_match_vision_and_tools(api: tuple[Client, World]) -> None:
    client, _ = api
    resp = await client.post("/v1/select", json={"task_type": "chat", "required_capabilities": ["vision", "tools"]})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"generated_at", "provider", "fallbacks", "criteria", "strategy"}
    assert body["provider"]["provider"] == "alpha"
    assert body["provider"]["models"] == ["llava:13b", "qwen2.5:7b"]
    assert body["fallbacks"] == []
    assert body["criteria"]["required_capabilities"] == ["tools", "vision"]


async def test_select_gives_fallbacks_best_first(api: tuple[Client, World]) -> None:
    client, _ = api
    body = await (await client.post("/v1/select", json={"task_type": "chat"})).json()
    assert body["provider"]["provider"] == "alpha"
    assert [f["provider"] for f in body["fallbacks"]] == ["beta"]
    body = await (await client.post("/v1/select", data=b"")).json()  # no body: the default criteria
    assert [body["provider"]["provider"], *(f["provider"] for f in body["fallbacks"])] == ["alpha", "delta", "beta"]
    body = await (await client.post("/v1/select", json={"fallbacks": 1})).json()
    assert len(body["fallbacks"]) == 1
    # curl -d sends a form content type; the body is still read as JSON
    resp = await client.post("/v1/select", data=b'{"task_type": "embedding"}',
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (await resp.json())["provider"]["provider"] == "delta"


async def test_select_bytes_are_the_whole_answer_as_orjson_renders_it(api: tuple[Client, World]) -> None:
    """The select body is spliced from per-entry JSON kept per generation; it must be byte for byte what
    orjson.dumps of the whole answer gives, whichever max_tokens shares the ranking."""
    client, world = api
    compared = 0
    for max_tokens in (1, 1000, 5000, 100_000):
        criteria = {"task_type": "chat", "max_tokens": max_tokens}
        body = await (await client.post("/v1/select", json={**criteria, "fallbacks": 2})).read()
        result = world.ctx.ranking.ranking(Criteria.from_mapping(criteria), limit=3)
        if not result.entries:
            continue
        expected = orjson.dumps({"generated_at": result.generated_at.isoformat(),
                                 "provider": result.entries[0].to_dict(),
                                 "fallbacks": [e.to_dict() for e in result.entries[1:3]],
                                 "criteria": result.criteria.to_dict(), "strategy": "best"})
        assert body == expected
        assert orjson.loads(body)["criteria"]["max_tokens"] == max_tokens
        compared += 1
    assert compared >= 2


async def test_select_without_a_match_says_why_for_each_candidate(api: tuple[Client, World]) -> None:
    client, _ = api
    resp = await client.post("/v1/select", json={"required_capabilities": ["vision"], "max_tokens": 100_000})
    error = await assert_error(resp, 503, "no_provider")
    excluded = error["details"]["excluded"]
    assert set(excluded) == {"alpha", "beta", "gamma", "delta"}
    assert excluded["alpha"] == ["context too small for max_tokens: largest known is 32768"]
    assert excluded["beta"] == ["missing capabilities: vision"]
    assert excluded["gamma"][0].startswith("status down")
    assert error["details"]["criteria"]["max_tokens"] == 100_000


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'"chat"', "invalid_json"),
    (b'{"task": "chat"}', "invalid_criteria"),
    (b'{"task_type": 7}', "invalid_criteria"),
    (b'{"required_capabilities": []}', "invalid_criteria"),
    (b'{"max_tokens": true}', "invalid_criteria"),
    (b'{"fallbacks": -1}', "invalid_criteria"),
    (b'{"fallbacks": "2"}', "invalid_criteria"),
])
async def test_select_rejects_bad_bodies(api: tuple[Client, World], body: bytes, code: str) -> None:
    client, _ = api
    await assert_error(await client.post("/v1/select", data=body), 400, code)


async def test_repeated_requests_are_parsed_once_and_bad_ones_fail_every_time(api: tuple[Client, World]) -> None:
    client, _ = api
    for _ in range(2):
        await assert_error(await client.post("/v1/select", data=b'{"task_type": "x"}'), 400, "invalid_criteria")
        await assert_error(await client.get("/v1/ranking?limit=0"), 400, "invalid_parameter")
        body = await (await client.post("/v1/select", data=b'{"fallbacks": 1}')).json()
        assert len(body["fallbacks"]) == 1
        assert await ranked(client, "?task_type=embedding") == ["delta"]
    padded = b'{"task_type": "chat"' + b" " * 2000 + b"}"  # too long to remember, still answered
    assert (await (await client.post("/v1/select", data=padded)).json())["provider"]["provider"] == "alpha"


async def test_select_rejects_oversized_bodies(api: tuple[Client, World]) -> None:
    client, _ = api
    body = b'{"model": "' + b"x" * 70_000 + b'"}'
    await assert_error(await client.post("/v1/select", data=body), 413, "body_too_large")


# --- auth ---


async def test_token_guards_every_route_but_healthz(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(token=TOKEN)
    assert (await client.get("/healthz")).status == 200
    for path in ("/readyz", "/v1/providers", "/v1/providers/alpha", "/v1/ranking", "/v1/models", "/metrics",
                 "/openapi.json", "/v1/events", "/v1/providers/alpha/history", "/no/such/route"):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            resp = await client.get(path, headers=headers)
            await assert_error(resp, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await assert_error(await client.post("/v1/select", json={}), 401, "unauthorized")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/v1/ranking", headers=good)).status == 200
    assert (await client.post("/v1/select", json={}, headers=good)).status == 200
    assert (await client.get("/metrics", headers=good)).status == 200


async def test_without_a_token_nothing_is_asked(api: tuple[Client, World]) -> None:
    client, _ = api
    assert (await client.get("/v1/ranking", headers={"Authorization": "Bearer anything"})).status == 200


# --- metrics ---


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_metrics_expose_state_probes_ranking_store_and_process(api: tuple[Client, World]) -> None:
    client, _ = api
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    found = samples(await resp.text())
    assert value(found, "monitord_provider_up", provider="alpha", type="ollama") == 1.0
    assert value(found, "monitord_provider_up", provider="gamma", type="llamacpp") == 0.0
    assert value(found, "monitord_provider_status", provider="gamma", type="llamacpp", status="down") == 1.0
    assert value(found, "monitord_provider_status", provider="gamma", type="llamacpp", status="up") == 0.0
    assert value(found, "monitord_provider_models", provider="alpha", type="ollama") == 2.0
    assert value(found, "monitord_provider_latency_seconds", provider="alpha", type="ollama", stat="p50") == 0.015
    assert value(found, "monitord_provider_rank", provider="alpha", type="ollama") == 1.0
    assert value(found, "monitord_provider_rank", provider="gamma", type="llamacpp") is None
    assert 0 < (value(found, "monitord_provider_score", provider="alpha", type="ollama") or 0) <= 1
    assert value(found, "monitord_probe_duration_seconds_count", provider="alpha", type="ollama") == 5.0
    assert value(found, "monitord_probe_duration_seconds_bucket", provider="alpha", type="ollama", le="0.025") == 5
    assert value(found, "monitord_probes_total", provider="gamma", type="llamacpp", status="down",
                 error_class="refused") == 5.0
    assert value(found, "monitord_probes_total", provider="alpha", type="ollama", status="up",
                 error_class="none") == 5.0
    assert value(found, "monitord_ready") == 1.0
    assert value(found, "monitord_models_served") == 4.0
    assert value(found, "monitord_store_dropped_total") == 0.0
    assert value(found, "monitord_store_pending_rows") is not None
    assert value(found, "monitord_store_written_total") is not None
    assert value(found, "monitord_event_subscribers") == 0.0
    assert value(found, "process_cpu_seconds_total") is not None
    assert any(name == "python_info" for name, _ in found)


async def test_metrics_forget_removed_providers_and_stay_per_app(api: tuple[Client, World],
                                                                 api_factory: ApiFactory) -> None:
    client, world = api
    world.reconfigure({name: spec for name, spec in world.specs.items() if name != "beta"})
    text = await (await client.get("/metrics")).text()
    assert 'provider="beta"' not in text
    assert 'provider="alpha"' in text
    other, _ = await api_factory(feed=False)  # a second app in the same process: a registry of its own
    text = await (await other.get("/metrics")).text()
    assert value(samples(text), "monitord_probe_duration_seconds_count", provider="alpha", type="ollama") is None


# --- events ---


async def next_event(resp: aiohttp.ClientResponse, timeout_s: float = 2.0) -> tuple[str, str]:
    """The next (event, data) frame, or ("comment", text) for a keep-alive."""
    kind, data = "message", ""
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                if line != ": connected":
                    return "comment", line
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                return kind, data


async def test_events_push_status_and_best_provider_changes(api_factory: ApiFactory) -> None:
    client, world = await api_factory()
    resp = await client.get("/v1/events")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    alpha = world.specs["alpha"]
    for step in range(1, 4):
        world.now = NOW + timedelta(seconds=step)
        world.feed(probe(alpha, Status.DOWN, at=world.now))
    kind, data = await next_event(resp)
    assert kind == "provider.status_changed"
    change = orjson.loads(data)
    assert (change["provider"], change["previous"], change["current"]) == ("alpha", "up", "down")
    assert change["error_class"] == "refused"
    kind, data = await next_event(resp)
    assert kind == "ranking.best_changed"
    best = orjson.loads(data)
    assert (best["previous"], best["current"]) == ("alpha", "delta")
    assert best["entry"]["provider"] == "delta" and best["fallbacks"] == ["beta"]
    resp.close()


async def test_events_filter_by_provider_and_replay_after_reconnect(api_factory: ApiFactory) -> None:
    client, world = await api_factory()
    gamma, beta = world.specs["gamma"], world.specs["beta"]
    world.feed(probe(beta, Status.LOADING, at=NOW + timedelta(seconds=1)))  # beta: up -> loading (event 1)
    world.feed(probe(gamma, at=NOW + timedelta(seconds=2)))
    world.feed(probe(gamma, at=NOW + timedelta(seconds=3)))  # gamma: down -> up (event 2)
    resp = await client.get("/v1/events?provider=gamma", headers={"Last-Event-ID": "0"})
    kind, data = await next_event(resp)
    assert kind == "provider.status_changed" and '"provider":"gamma"' in data
    resp.close()
    await assert_error(await client.get("/v1/events?provider=omega"), 404, "provider_not_found")
    await assert_error(await client.get("/v1/events", headers={"Last-Event-ID": "x"}), 400, "invalid_parameter")
    await assert_error(await client.get("/v1/events?since=1"), 400, "invalid_parameter")


async def test_events_send_keep_alives(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(heartbeat_s=0.05)
    resp = await client.get("/v1/events")
    assert await next_event(resp) == ("comment", ": keep-alive")
    resp.close()


async def test_events_end_cleanly_on_shutdown(api_factory: ApiFactory) -> None:
    client, world = await api_factory()
    resp = await client.get("/v1/events")
    await asyncio.sleep(0.05)
    assert world.ctx.events.subscribers == 1
    started = time.monotonic()
    world.ctx.events.close()
    assert await next_event(resp) == ("shutdown", "{}")
    assert await resp.content.read() == b""
    assert time.monotonic() - started < 1.0
    await assert_error(await client.get("/v1/events"), 503, "shutting_down")


async def test_server_close_with_open_streams_is_prompt(sqlite_store: Store) -> None:
    world = World(store=sqlite_store)
    server = await ApiServer.start(world.ctx, "127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"http://127.0.0.1:{server.port}/v1/events")
        assert resp.status == 200
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 2.0
        assert b"event: shutdown" in await resp.content.read()
        resp.close()


def test_a_subscriber_that_falls_behind_is_cut_off_not_waited_for() -> None:
    hub = EventHub(queue_size=2)
    subscription = Subscription(None, hub.queue_size)
    for index in range(5):
        subscription.offer(Event(index, "provider.status_changed", "a", b"{}"))
    assert subscription.lagged and subscription.queue.qsize() == 3  # two events, then the lagged marker


def test_too_many_subscribers_are_refused() -> None:
    hub = EventHub(max_subscribers=1)
    with hub._subscribe(None, None), pytest.raises(Exception, match="event streams open"), \
            hub._subscribe(None, None):
        pass


# --- history, on SQLite and PostgreSQL ---


async def test_history_samples_newest_first_and_bounded(api_factory: ApiFactory, store: Store) -> None:
    client, _ = await api_factory(store=store)
    await store.flush()
    body = await get_json(client, "/v1/providers/gamma/history")
    assert body["provider"] == "gamma" and body["limit"] == 500
    stamps = [s["ts"] for s in body["samples"]]
    assert len(stamps) == 5 and stamps == sorted(stamps, reverse=True)
    first = body["samples"][0]
    assert first["status"] == "down" and first["error_class"] == "refused" and first["total_ms"] == 3.0
    body = await get_json(client, "/v1/providers/gamma/history?limit=2")
    assert [s["ts"] for s in body["samples"]] == stamps[:2]
    since, until = (NOW - timedelta(seconds=40)).isoformat(), (NOW - timedelta(seconds=20)).isoformat()
    body = await get_json(client, "/v1/providers/gamma/history", params={"since": since, "until": until})
    assert [s["ts"] for s in body["samples"]] == stamps[2:4]
    # an unencoded "+00:00" arrives as " 00:00"; a time without an offset is UTC
    body = await get_json(client, f"/v1/providers/gamma/history?since={since}&until=2025-01-01T11:59:40")
    assert [s["ts"] for s in body["samples"]] == stamps[2:4]


async def test_history_aggregates_per_step(api_factory: ApiFactory, store: Store) -> None:
    client, _ = await api_factory(store=store)
    await store.flush()
    body = await get_json(client, "/v1/providers/alpha/history?step=1m")
    assert body["step"] == "1m" and body["step_s"] == 60 and body["until"] == NOW.isoformat()
    assert body["buckets"] == [{"start": "2025-01-01T11:59:00+00:00", "count": 5, "ok_count": 5,
                                "availability": 1.0, "latency_avg_ms": 15.0, "latency_p95_ms": 15.0}]
    body = await get_json(client, "/v1/providers/gamma/history?step=1h")
    assert [(b["count"], b["availability"], b["latency_avg_ms"]) for b in body["buckets"]] == [(5, 0.0, None)]
    body = await get_json(client, "/v1/providers/gamma/history?step=1m&limit=1&since=2020-01-01T00:00:00Z")
    assert body["since"] == (NOW - timedelta(minutes=1)).isoformat()  # at most `limit` buckets are scanned


@pytest.mark.parametrize(("query", "status", "code"), [
    ("?since=yesterday", 400, "invalid_parameter"),
    ("?until=2025-13-01", 400, "invalid_parameter"),
    ("?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", 400, "invalid_parameter"),
    ("?limit=10001", 400, "invalid_parameter"),
    ("?limit=0", 400, "invalid_parameter"),
    ("?step=2m", 400, "invalid_parameter"),
    ("?step=1m&step=1h", 400, "invalid_parameter"),
    ("?from=2025-01-01", 400, "invalid_parameter"),
])
async def test_history_rejects_bad_parameters(api: tuple[Client, World], query: str, status: int,
                                              code: str) -> None:
    client, _ = api
    await assert_error(await client.get(f"/v1/providers/alpha/history{query}"), status, code)
    await assert_error(await client.get("/v1/providers/omega/history"), 404, "provider_not_found")


async def test_make_app_serves_on_a_plain_test_server(sqlite_store: Store) -> None:
    world = World(store=sqlite_store)
    world.feed_standard()
    async with TestClient(TestServer(make_app(world.ctx))) as client:
        assert (await client.get("/v1/ranking")).status == 200
