"""LM Studio double: three listings, JIT loading, 200 for unknown routes, optional API tokens (0.4+).

Options: `api` = "v1" (0.4+: /api/v1, /api/v0, /v1; default), "v0" (0.3.6+: /api/v0, /v1), "openai" (older:
/v1 only); `jit` (default True: /v1/models lists every download; False: loaded models only).
UP: the fixture state (one model loaded). LOADING: JIT on and nothing loaded yet (the first request will load).
EMPTY: nothing loaded and JIT off. ERROR: 500 OpenAI-style. Does not honour `models` (the fixtures differ per API).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    bearer_matches,
    control_of,
    fixture,
    json_response,
    new_app,
    scenario_of,
)
from tests.doubles.generation import openai_frames, send_generation
from tests.doubles.openai import completion_body, read_json

_API_LEVELS = {"v1": 3, "v0": 2, "openai": 1}
_TOKEN_REQUIRED = (
    "An LM Studio API token is required to make requests to this server, but none was provided using the "
    "Authorization header using the 'Bearer' scheme (i.e., 'Authorization: Bearer $LM_API_TOKEN')."
)


def _unexpected(request: web.Request) -> web.StreamResponse:
    return json_response({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = control_of(request)
    if not bearer_matches(request, ctl.expected_key):
        body = {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": _TOKEN_REQUIRED}}
        return json_response(body, status=401)
    level = _API_LEVELS[str(ctl.options.get("api", "v1"))]
    needed = 3 if request.path.startswith("/api/v1/") else 2 if request.path.startswith("/api/v0/") else 1
    if needed > level:
        return _unexpected(request)
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return _unexpected(request)  # LM Studio answers 200 for routes it does not have


def _nothing_loaded(scenario: Scenario) -> bool:
    return scenario in (Scenario.LOADING, Scenario.EMPTY)


def _jit(ctl: DoubleControl, scenario: Scenario) -> bool:
    return scenario is not Scenario.EMPTY and ctl.options.get("jit", True) is not False


def _failure() -> web.StreamResponse:
    body = {"error": {"message": "Failed to list models", "type": "server_error", "param": None, "code": None}}
    return json_response(body, status=500)


def _v0_cards(ctl: DoubleControl, scenario: Scenario) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = fixture("lmstudio", "api-v0-models.json")["data"]
    if _nothing_loaded(scenario):
        cards = [{k: v for k, v in {**c, "state": "not-loaded"}.items() if k != "loaded_context_length"}
                 for c in cards]
    if not _jit(ctl, scenario):
        cards = [c for c in cards if c["state"] == "loaded"]
    return cards


async def _api_v1_models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    models: list[dict[str, Any]] = fixture("lmstudio", "api-v1-models.json")["models"]
    if _nothing_loaded(scenario):
        models = [{**m, "loaded_instances": []} for m in models]
    return json_response({"models": models})


async def _api_v0_models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    return json_response({"data": _v0_cards(control_of(request), scenario), "object": "list"})


async def _v1_models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    ctl = control_of(request)
    cards: list[dict[str, Any]] = fixture("lmstudio", "models.json")["data"]
    if not _jit(ctl, scenario):
        loaded = {c["id"] for c in _v0_cards(ctl, scenario)}
        cards = [c for c in cards if c["id"] in loaded]
    return json_response({"data": cards, "object": "list"})


async def _chat(request: web.Request) -> web.StreamResponse:
    ctl, scenario = control_of(request), scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    if not _jit(ctl, scenario) and not [c for c in _v0_cards(ctl, scenario) if c["state"] == "loaded"]:
        return json_response(fixture("lmstudio", "error-no-models-loaded.json"), status=404)
    payload = await read_json(request) or {}
    model = str(payload.get("model", ""))
    if payload.get("stream"):
        return await send_generation(request, openai_frames(model, ctl, payload))
    return json_response(completion_body(model))


def lmstudio_app(control: DoubleControl) -> web.Application:
    app = new_app(control)
    app.middlewares.append(_gate)
    app.router.add_get("/api/v1/models", _api_v1_models)
    app.router.add_get("/api/v0/models", _api_v0_models)
    app.router.add_get("/v1/models", _v1_models)
    app.router.add_post("/v1/chat/completions", _chat)
    return app
