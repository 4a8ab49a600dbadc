"""LocalAI double: `/readyz` gate, capability listing, keys in Bearer / x-api-key / xi-api-key, open health routes.

LOADING: `/readyz` 503 `starting` (start-up preload) while the rest answers. EMPTY: nothing installed.
ERROR: 500 LocalAI error on the model routes. Options: `capabilities_route=False` (builds before
`/v1/models/capabilities`: 404), `readyz=False` (builds before the gate: 404). Honours `models`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    any_key_header,
    cards_with_ids,
    control_of,
    empty_response,
    fixture,
    json_response,
    new_app,
    scenario_of,
)
from tests.doubles.openai import chat_handler, openai_error, served_ids, static_json

PUBLIC_PATHS = ("/healthz", "/readyz")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = control_of(request).expected_key
    if request.path in PUBLIC_PATHS or any_key_header(request, key, ("x-api-key", "xi-api-key")):
        return await handler(request)
    return json_response(fixture("localai", "error-401.json"), status=401, headers={"WWW-Authenticate": "Bearer"})


def _listing(request: web.Request, name: str) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        body: dict[str, Any] = {"error": {"code": 500, "message": "failed to list models: permission denied",
                                          "type": ""}}
        return json_response(body, status=500)
    cards = fixture("localai", name)["data"]
    data = [] if scenario is Scenario.EMPTY else cards_with_ids(cards, control_of(request).models)
    return json_response({"object": "list", "data": data})


async def _models(request: web.Request) -> web.StreamResponse:
    return _listing(request, "models.json")


async def _capabilities(request: web.Request) -> web.StreamResponse:
    if control_of(request).options.get("capabilities_route") is False:
        return json_response(openai_error("Not Found", "not_found_error", 404), status=404)
    return _listing(request, "models-capabilities.json")


async def _readyz(request: web.Request) -> web.StreamResponse:
    if control_of(request).options.get("readyz") is False:
        return json_response(openai_error("Not Found", "not_found_error", 404), status=404)
    if scenario_of(request) is Scenario.LOADING:
        return json_response(fixture("localai", "readyz-starting.json"), status=503)
    return empty_response(200)


async def _healthz(_request: web.Request) -> web.StreamResponse:
    return empty_response(200)


def localai_app(control: DoubleControl) -> web.Application:
    app = new_app(control)
    app.middlewares.append(_auth)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/models", _models)
    app.router.add_get("/v1/models/capabilities", _capabilities)
    app.router.add_get("/models/capabilities", _capabilities)
    app.router.add_get("/version", static_json("localai", "version.json"))
    app.router.add_get("/system", static_json("localai", "system.json"))
    cards = fixture("localai", "models.json")["data"]
    app.router.add_post("/v1/chat/completions", chat_handler(lambda ctl: served_ids(cards, ctl)))
    return app
