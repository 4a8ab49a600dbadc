"""The OpenAPI document matches the implementation: same routes and methods, and real responses validate."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator, FormatChecker

from monitord.api.openapi import build_document
from monitord.model import ErrorClass, GenerationSample, Status
from monitord.store import Store
from tests.plugins.api import NOW, ApiFactory, World, probe

Client = TestClient[Any, Any]

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _aware_time(value: object) -> bool:
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


async def document(client: Client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # the whole components section rides along so "#/components/schemas/..." resolves
    return Draft202012Validator({**schema, "components": doc["components"]}, format_checker=FORMATS)


def response_schema(doc: dict[str, Any], method: str, template: str, status: int) -> tuple[str, dict[str, Any]]:
    operation = doc["paths"][template][method.lower()]
    documented = operation["responses"]
    assert str(status) in documented, f"{method} {template}: status {status} is not documented"
    (content_type, media), = documented[str(status)]["content"].items()
    return content_type, media["schema"]


async def check(client: Client, doc: dict[str, Any], method: str, template: str, url: str, status: int,
                **options: Any) -> Any:
    resp = await client.request(method, url, **options)
    text = await resp.text()
    assert resp.status == status, f"{method} {url}: {resp.status} {text}"
    content_type, schema = response_schema(doc, method, template, status)
    assert resp.content_type == content_type
    if content_type != "application/json":
        return text
    body = orjson.loads(text)
    errors = sorted(validator(doc, schema).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method} {url}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    return body


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method, resource.canonical))
    return found


async def test_document_names_exactly_the_routes_of_the_router(api: tuple[Client, World]) -> None:
    client, _ = api
    doc = await document(client)
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == router_operations(client.app)
    assert doc["openapi"] == "3.1.0"
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_every_schema_is_a_valid_json_schema_and_the_checks_bite() -> None:
    doc = build_document("test")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    health = validator(doc, {"$ref": "#/components/schemas/Health"})
    assert health.is_valid({"status": "ok", "version": "1"})
    assert not health.is_valid({"status": "ok", "version": "1", "extra": True})
    event = validator(doc, {"$ref": "#/components/schemas/BestChangedEvent"})
    payload = {"at": "2025-01-01T00:00:00+00:00", "previous": None, "current": None, "entry": None, "fallbacks": []}
    assert event.is_valid(payload)
    assert not event.is_valid({**payload, "at": "2025-01-01T00:00:00"})  # no offset: not a date-time here


async def test_real_success_responses_validate(api_factory: ApiFactory, sqlite_store: Store) -> None:
    client, world = await api_factory()
    await sqlite_store.flush()
    doc = await document(client)
    await check(client, doc, "GET", "/healthz", "/healthz", 200)
    await check(client, doc, "GET", "/readyz", "/readyz", 200)
    await check(client, doc, "GET", "/v1/providers", "/v1/providers", 200)
    for name in world.specs:
        await check(client, doc, "GET", "/v1/providers/{name}", f"/v1/providers/{name}", 200)
    history = "/v1/providers/{name}/history"
    body = await check(client, doc, "GET", history, "/v1/providers/gamma/history", 200)
    assert body["samples"]
    body = await check(client, doc, "GET", history, "/v1/providers/alpha/history?step=1m", 200)
    assert body["buckets"]
    await check(client, doc, "GET", history, "/v1/providers/beta/history?step=1h&since=2025-01-01T00:00:00Z", 200)
    generation = "/v1/providers/{name}/generation"
    for minutes in range(3):
        world.feed_sample(GenerationSample(provider="alpha", provider_type="ollama", model="qwen2.5:7b",
                                           started_at=world.now - timedelta(minutes=minutes), ok=minutes > 0,
                                           error_class=None if minutes else ErrorClass.GENERATION_TIMEOUT,
                                           ttft_ms=90.0 if minutes else None, tokens_per_s=30.0 if minutes else None,
                                           prompt_tokens=9, completion_tokens=8 if minutes else None))
    await world.store.flush()
    body = await check(client, doc, "GET", generation, "/v1/providers/alpha/generation", 200)
    assert len(body["samples"]) == 3
    body = await check(client, doc, "GET", generation, "/v1/providers/alpha/generation?step=1m&model=qwen2.5:7b", 200)
    assert body["models"][0]["buckets"]
    for query in ("", "?capability=vision", "?task_type=code_generation&quality=quality&max_tokens=8000",
                  "?provider=gamma", "?model=*llama*&limit=1"):
        await check(client, doc, "GET", "/v1/ranking", f"/v1/ranking{query}", 200)
    for criteria in ({}, {"task_type": "embedding"}, {"required_capabilities": "vision,tools", "fallbacks": 0},
                     {"quality_preference": "fast", "providers": ["beta", "delta"], "model": "*"}):
        errors = list(validator(doc, doc["components"]["schemas"]["SelectRequest"]).iter_errors(criteria))
        assert not errors, errors
        await check(client, doc, "POST", "/v1/select", "/v1/select", 200, json=criteria)
    await check(client, doc, "GET", "/v1/models", "/v1/models", 200)
    text = await check(client, doc, "GET", "/metrics", "/metrics", 200)
    assert "monitord_provider_up" in text
    await check(client, doc, "GET", "/openapi.json", "/openapi.json", 200)


async def test_real_error_responses_validate(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(ready=False)
    doc = await document(client)
    await check(client, doc, "GET", "/readyz", "/readyz", 503)
    await check(client, doc, "GET", "/v1/providers", "/v1/providers?x=1", 400)
    await check(client, doc, "GET", "/v1/providers/{name}", "/v1/providers/omega", 404)
    await check(client, doc, "GET", "/v1/providers/{name}/history", "/v1/providers/alpha/history?limit=0", 400)
    await check(client, doc, "GET", "/v1/providers/{name}/history", "/v1/providers/omega/history", 404)
    await check(client, doc, "GET", "/v1/providers/{name}/generation", "/v1/providers/alpha/generation?step=9m",
                400)
    await check(client, doc, "GET", "/v1/providers/{name}/generation", "/v1/providers/omega/generation", 404)
    await check(client, doc, "GET", "/v1/ranking", "/v1/ranking?task_type=x", 400)
    await check(client, doc, "POST", "/v1/select", "/v1/select", 400, data=b"[")
    await check(client, doc, "POST", "/v1/select", "/v1/select", 413, data=b"x" * 70_000)
    await check(client, doc, "POST", "/v1/select", "/v1/select", 503, json={"model": "none-such"})
    await check(client, doc, "GET", "/v1/models", "/v1/models?limit=1", 400)
    await check(client, doc, "GET", "/v1/events", "/v1/events?provider=omega", 404)
    await check(client, doc, "GET", "/v1/events", "/v1/events?x=1", 400)


async def test_unauthorized_responses_validate(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(token="t0ken")
    doc = await document_with_token(client)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            url = path.replace("{name}", "alpha")
            if operation.get("security") == []:  # documented as open: /healthz and the status page's shell
                await check(client, doc, method.upper(), path, url, 200)
                continue
            await check(client, doc, method.upper(), path, url, 401)


async def document_with_token(client: Client) -> dict[str, Any]:
    resp = await client.get("/openapi.json", headers={"Authorization": "Bearer t0ken"})
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_event_payloads_validate(api_factory: ApiFactory) -> None:
    client, world = await api_factory()
    doc = await document(client)
    resp = await client.get("/v1/events")
    content_type, _ = response_schema(doc, "GET", "/v1/events", 200)
    assert resp.content_type == content_type
    alpha = world.specs["alpha"]
    for step in range(1, 4):
        world.feed(probe(alpha, Status.DOWN, at=NOW + timedelta(seconds=step)))
    schemas = {"provider.status_changed": "StatusChangedEvent", "ranking.best_changed": "BestChangedEvent"}
    seen = set()
    kind = ""
    while seen != set(schemas):
        line = (await resp.content.readline()).decode().strip()
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            payload = orjson.loads(line[6:])
            schema = doc["components"]["schemas"][schemas[kind]]
            errors = list(validator(doc, schema).iter_errors(payload))
            assert not errors, (kind, errors)
            seen.add(kind)
    resp.close()


@pytest.mark.parametrize("status", [Status.UP, Status.LOADING, Status.DEGRADED, Status.DOWN])
async def test_provider_in_every_status_validates(api_factory: ApiFactory, status: Status) -> None:
    client, world = await api_factory(feed=False)
    doc = await document(client)
    world.feed(probe(world.specs["beta"], status, total_ms=40.0))
    await check(client, doc, "GET", "/v1/providers/{name}", "/v1/providers/beta", 200)
