"""TabbyAPI double: `/health` (open, sticky once unhealthy), `/v1/model` (loaded model), keys in x-api-key,
x-admin-key or Bearer. A real TabbyAPI generates keys by default; here auth is off unless a key is configured.

LOADING: no listener during the start-up load (default); with `loading_refuses=False` a later load, where
`/v1/model` stays 503 until done. EMPTY: no model loaded. ERROR: an issue was recorded, so `/health` is 503
`unhealthy` for good while the model still answers. Options: `admin_key` (lists every model folder).
Honours `models` (the first id is the loaded model).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    bearer_token,
    control_of,
    fixture,
    json_response,
    new_app,
    scenario_of,
)
from tests.doubles.openai import chat_handler, completion_body, fastapi_404

PUBLIC_PATHS = ("/health", "/.well-known/serviceinfo")


def _presented_key(request: web.Request) -> str | None:
    return request.headers.get("x-api-key") or request.headers.get("x-admin-key") or bearer_token(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = control_of(request)
    key = ctl.expected_key
    if key is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    presented = _presented_key(request)
    if presented is None:
        return json_response(fixture("tabbyapi", "error-401.json"), status=401)
    if presented not in (key, ctl.options.get("admin_key")):
        return json_response({"detail": "Invalid API key"}, status=401)
    return await handler(request)


def _is_admin(request: web.Request) -> bool:
    ctl = control_of(request)
    admin = ctl.options.get("admin_key")
    return ctl.expected_key is None or (admin is not None and _presented_key(request) == admin)


def _loaded_card(ctl: DoubleControl, scenario: Scenario) -> dict[str, Any] | None:
    if scenario in (Scenario.EMPTY, Scenario.LOADING):
        return None
    card: dict[str, Any] = fixture("tabbyapi", "model.json")
    if ctl.models is not None:
        return {**card, "id": ctl.models[0]} if ctl.models else None
    return card


def _no_model() -> web.StreamResponse:
    return json_response(fixture("tabbyapi", "error-no-model-503.json"), status=503)


async def _health(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) is Scenario.ERROR:
        return json_response(fixture("tabbyapi", "health-unhealthy.json"), status=503)
    return json_response(fixture("tabbyapi", "health.json"))


async def _model(request: web.Request) -> web.StreamResponse:
    card = _loaded_card(control_of(request), scenario_of(request))
    return _no_model() if card is None else json_response(card)


async def _models(request: web.Request) -> web.StreamResponse:
    ctl = control_of(request)
    if _is_admin(request):
        cards: list[dict[str, Any]] = fixture("tabbyapi", "models.json")["data"]
        if ctl.models is not None:
            cards = [{**cards[0], "id": model_id} for model_id in ctl.models]
        return json_response({"object": "list", "data": cards})
    loaded = _loaded_card(ctl, scenario_of(request))
    data = [] if loaded is None else [{**loaded, "parameters": None}]
    return json_response({"object": "list", "data": data})


async def _props(request: web.Request) -> web.StreamResponse:
    if _loaded_card(control_of(request), scenario_of(request)) is None:
        return _no_model()
    return json_response(fixture("tabbyapi", "props.json"))


async def _serviceinfo(_request: web.Request) -> web.StreamResponse:
    return json_response({"version": 0.1, "software": {"name": "TabbyAPI", "version": "0.0.1",
                                                       "repository": "https://github.com/theroyallab/tabbyAPI"}})


def tabby_app(control: DoubleControl) -> web.Application:
    app = new_app(control, refuses_while_loading=True)
    app.middlewares.extend([fastapi_404(), _auth])
    app.router.add_get("/health", _health)
    app.router.add_get("/.well-known/serviceinfo", _serviceinfo)
    app.router.add_get("/v1/model", _model)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/model/list", _models)
    app.router.add_get("/props", _props)

    def served(ctl: DoubleControl) -> list[str]:
        card = _loaded_card(ctl, ctl.scenario)
        return [] if card is None else [card["id"]]

    def other_model(model: str, loaded: list[str]) -> web.StreamResponse:
        # Without inline model loading the request's model name is ignored: the loaded model answers.
        return json_response(completion_body(model)) if loaded else _no_model()

    app.router.add_post("/v1/chat/completions", chat_handler(served, unknown_model=other_model))
    return app
