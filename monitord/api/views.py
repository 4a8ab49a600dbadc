"""Routes, and the views of process health, provider status, models, metrics, the document and events.

Ranking and selection live in `selection.py`, history in `history.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from monitord import __version__
from monitord.api.alerts import add_alert_routes
from monitord.api.context import CONTEXT, ApiContext
from monitord.api.errors import ApiError
from monitord.api.generation import provider_generation
from monitord.api.history import provider_history
from monitord.api.metrics import CONTENT_TYPE
from monitord.api.openapi import build_document
from monitord.api.replies import bytes_reply, cached_reply, check_params, json_reply
from monitord.api.reports import report
from monitord.api.selection import PARSED, ParsedRequests, ranking, select
from monitord.generation import GenerationState
from monitord.model import GenerationStats, ModelServer, ProviderSpec, ProviderState, Status

READY_TIMEOUT_S = 2.0  # a store that does not answer a ping by then counts as unreachable
OPENAPI = web.AppKey("monitord.api.openapi", bytes)


def add_routes(app: web.Application) -> None:
    app[OPENAPI] = orjson.dumps(build_document(__version__))
    app[PARSED] = ParsedRequests()
    app.router.add_routes([
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/v1/providers", providers),
        web.get("/v1/providers/{name}", provider),
        web.get("/v1/providers/{name}/history", provider_history),
        web.get("/v1/providers/{name}/generation", provider_generation),
        web.get("/v1/ranking", ranking),
        web.post("/v1/select", select),
        web.post("/v1/report", report),
        web.get("/v1/models", models),
        web.get("/v1/events", events),
        web.get("/metrics", metrics),
        web.get("/openapi.json", openapi),
    ])
    add_alert_routes(app)


async def healthz(request: web.Request) -> web.Response:
    return json_reply({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    first_round = ctx.ready()
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            store = await ctx.store.ping()
    except TimeoutError:
        store = False
    stale = list(ctx.stale_probes())
    checks = {"first_round": first_round, "store": store, "probes_fresh": not stale}
    if not all(checks.values()):
        waiting = [name for name, ok in checks.items() if not ok]
        details: dict[str, Any] = {"checks": checks}
        if stale:  # scheduling stalled (a blocked loop, a saturated concurrency cap): live state is going stale
            details["stale_providers"] = stale[:100]
            waiting[waiting.index("probes_fresh")] = f"probes stale for {len(stale)} provider(s)"
        if not store:  # degraded, not down: probing and the API go on from memory, rows wait in the buffer
            health = ctx.store.health()
            details["store"] = {"state": "degraded", "since": health.since.isoformat() if health.since else None,
                                "error": health.error, "pending_rows": health.pending,
                                "dropped_rows": health.dropped_total}
            waiting[waiting.index("store")] = "store degraded (database unreachable; serving from memory)"
        raise ApiError(503, "not_ready", f"not ready: {', '.join(waiting)}", details=details)
    return json_reply({"status": "ready", "checks": checks})


def provider_dict(spec: ProviderSpec, state: ProviderState | None, generation: Mapping[str, GenerationStats],
                  now: datetime) -> dict[str, Any]:
    """Live state plus the configuration a caller may see: the endpoint without userinfo, never keys or headers;
    `generation` is the canary's statistics per model (ages at `now`)."""
    state = state or ProviderState(name=spec.name, type=spec.type)
    shown = state.to_dict()
    if not spec.enabled:
        shown["status"] = Status.DISABLED.value
    return {
        **shown,
        "endpoint": spec.redacted_endpoint,
        "enabled": spec.enabled,
        "capabilities": sorted(spec.capabilities),
        "configured_models": list(spec.models),
        "priority": spec.priority,
        "weight": spec.weight,
        "probe_interval_s": spec.probe_interval_s,
        "generation": {model: stats.to_dict(now) for model, stats in generation.items()},
    }


def configured(ctx: ApiContext, name: str) -> ProviderSpec:
    """The spec of provider `name`, or a 404 in the API's shape."""
    spec = ctx.specs().get(name)
    if spec is None:
        raise ApiError(404, "provider_not_found", f"no provider is named {name!r}")
    return spec


async def providers(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())

    def render() -> bytes:
        specs, states, generation, now = ctx.specs(), ctx.live.all(), ctx.generation_stats, ctx.clock()
        return orjson.dumps({
            "generated_at": now.isoformat(),
            "providers": [provider_dict(specs[name], states.get(name), generation.for_provider(name), now)
                          for name in sorted(specs)],
        })

    return cached_reply(request, ctx.ranking, ("providers",), render)


async def provider(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())
    spec = configured(ctx, request.match_info["name"])
    return json_reply(provider_dict(spec, ctx.live.get(spec.name), ctx.generation_stats.for_provider(spec.name),
                                    ctx.clock()))


async def models(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())

    def render() -> bytes:
        now = ctx.clock()
        return orjson.dumps({"generated_at": now.isoformat(),
                             "models": _models(ctx.live.models_view(), ctx.generation_stats, now)})

    return cached_reply(request, ctx.ranking, ("models",), render)


def _models(view: Mapping[str, Sequence[ModelServer]], generation: GenerationState,
            now: datetime) -> list[dict[str, Any]]:
    def served(server: ModelServer) -> dict[str, Any]:
        stats = generation.get(server.provider, server.info.id)
        return {**server.to_dict(), "generation": stats.to_dict(now) if stats is not None else None}

    return [
        {
            "id": model_id,
            "up": sum(server.status is Status.UP for server in servers),
            "providers": [served(server) for server in servers],
        }
        for model_id, servers in view.items()
    ]


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return bytes_reply(request.app[OPENAPI])


async def events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    query = request.query
    check_params(query, ("provider", "last_event_id"))
    names = [part for value in query.getall("provider", []) for part in value.split(",") if part]
    for name in names:
        configured(ctx, name)
    wanted = frozenset(names) if names else None
    last_id_text = request.headers.get("Last-Event-ID") or query.get("last_event_id")
    last_event_id = None
    if last_id_text:
        try:
            last_event_id = int(last_id_text)
        except ValueError:
            raise ApiError(400, "invalid_parameter", f"Last-Event-ID: expected an event id, got {last_id_text!r}") \
                from None
    return await ctx.events.stream(request, wanted, last_event_id)
