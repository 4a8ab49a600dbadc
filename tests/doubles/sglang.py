"""SGLang double: `/health*`, `/ready*`, `/metrics*` always open, everything else behind `--api-key` (Bearer).

UP: `/health` answers 200 only after `health_delay_s` (option, default 1.0: the one-token generation it runs).
LOADING: warm-up not finished: `/health` and `/ready` 503 at once while the OpenAI routes answer; with
`loading_refuses=True` the earlier phase (model loading, no listener). ERROR: `/health` 503, flat 500 errors
on the OpenAI routes. EMPTY is not an SGLang state: it answers like UP. Honours `models` (served names).
Option `metrics=True` (`--enable-metrics`): `/metrics` follows the load options `busy`, `queue`, `kv_cache`,
`tokens` (tests/doubles/base.py); without it `/metrics` is 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    bearer_matches,
    cards_with_ids,
    control_of,
    empty_response,
    fixture,
    json_response,
    load_option,
    new_app,
    prometheus_response,
    prometheus_text,
    scenario_of,
)
from tests.doubles.openai import chat_handler

OPEN_PREFIXES = ("/health", "/ready", "/metrics")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS" or request.path.startswith(OPEN_PREFIXES):
        return await handler(request)
    if not bearer_matches(request, control_of(request).expected_key):
        return json_response(fixture("sglang", "error-401.json"), status=401)
    return await handler(request)


def _flat_error(message: str, status: int, error_type: str) -> web.StreamResponse:
    body = {"object": "error", "message": message, "type": error_type, "param": None, "code": status}
    return json_response(body, status=status)


def _cards(ctl: DoubleControl) -> list[dict[str, Any]]:
    return cards_with_ids(fixture("sglang", "models.json")["data"], ctl.models)


async def _health(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) in (Scenario.LOADING, Scenario.ERROR):
        return empty_response(503)
    await asyncio.sleep(float(control_of(request).options.get("health_delay_s", 1.0)))
    return empty_response(200)


async def _ready(request: web.Request) -> web.StreamResponse:
    return empty_response(503 if scenario_of(request) in (Scenario.LOADING, Scenario.ERROR) else 200)


async def _models(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) is Scenario.ERROR:
        return _flat_error("Internal server error: tokenizer manager is not running", 500, "InternalServerError")
    return json_response({"object": "list", "data": _cards(control_of(request))})


async def _one_model(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    cards = [c for c in _cards(control_of(request)) if c["id"] == name]
    if cards:
        return json_response(cards[0])
    body: dict[str, Any] = fixture("sglang", "error-404-model.json")
    body["error"]["message"] = f"The model '{name}' does not exist"
    return json_response(body, status=404)


async def _model_info(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) is Scenario.ERROR:
        return _flat_error("Internal server error", 500, "InternalServerError")
    info: dict[str, Any] = fixture("sglang", "model-info.json")
    ctl = control_of(request)
    if ctl.models:
        info["served_model_name"] = ctl.models[0]
    info.update({k: v for k, v in ctl.options.items() if k in info})  # e.g. has_image_understanding=True
    return json_response(info)


async def _root(_request: web.Request) -> web.StreamResponse:
    return json_response(fixture("sglang", "root.json"))


async def _api_tags(_request: web.Request) -> web.StreamResponse:
    return json_response(fixture("sglang", "api-tags.json"))


async def _metrics(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    if not control.options.get("metrics"):  # served only with --enable-metrics
        return json_response({"detail": "Not Found"}, status=404)
    return prometheus_response(prometheus_text("sglang", "metrics.txt", {
        "sglang:num_running_reqs": load_option(control, "busy"),
        "sglang:num_queue_reqs": load_option(control, "queue"),
        "sglang:token_usage": load_option(control, "kv_cache"),
        "sglang:generation_tokens_total": load_option(control, "tokens", 7557572),
    }))


def sglang_app(control: DoubleControl) -> web.Application:
    app = new_app(control)
    app.middlewares.append(_auth)
    app.router.add_get("/health", _health)
    app.router.add_get("/health_generate", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _root)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{name:.+}", _one_model)
    app.router.add_get("/model_info", _model_info)
    app.router.add_get("/get_model_info", _model_info)
    app.router.add_get("/api/tags", _api_tags)

    def unknown(model: str, _served: list[str]) -> web.StreamResponse:
        return _flat_error(f"The model '{model}' does not exist", 404, "NotFoundError")

    app.router.add_post("/v1/chat/completions", chat_handler(
        lambda ctl: [c["id"] for c in _cards(ctl)], unknown_model=unknown,
        failure=lambda: _flat_error("Internal server error", 500, "InternalServerError")))
    return app
