"""text-generation-webui double (`--api`): exact `Bearer <key>` on every route, Host must be localhost/127.0.0.1.

LOADING and EMPTY: nothing loaded (`model_name: "None"`, `data: []`); the server has no loading state of its own,
a model being loaded shows as none until it is done. ERROR: 500 OpenAI-style `server_error`.
Options: `listen=True` (no Host check), `admin_key`. Honours `models` (the first id is the loaded model).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    control_of,
    exact_authorization,
    fixture,
    json_response,
    new_app,
    scenario_of,
)
from tests.doubles.openai import chat_handler, fastapi_404, openai_error

ALLOWED_HOSTS = ("localhost", "127.0.0.1")
ADMIN_PATHS = ("/v1/internal/model/list", "/v1/internal/model/load", "/v1/internal/model/unload")


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = control_of(request)
    host = request.headers.get("Host", "").split(":", 1)[0]
    if not ctl.options.get("listen") and host not in ALLOWED_HOSTS:
        return json_response(fixture("textgen", "error-invalid-host.json"), status=400)
    key = ctl.options.get("admin_key", ctl.expected_key) if request.path in ADMIN_PATHS else ctl.expected_key
    if not exact_authorization(request, key):
        return json_response(fixture("textgen", "error-401.json"), status=401)
    return await handler(request)


def _loaded(ctl: DoubleControl, scenario: Scenario) -> str | None:
    if scenario in (Scenario.EMPTY, Scenario.LOADING):
        return None
    if ctl.models is not None:
        return ctl.models[0] if ctl.models else None
    return str(fixture("textgen", "internal-model-info.json")["model_name"])


def _failure() -> web.StreamResponse:
    return json_response(openai_error("Internal error while reading the model", "server_error"), status=500)


async def _model_info(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    name = _loaded(control_of(request), scenario)
    if name is None:
        return json_response(fixture("textgen", "internal-model-info-none.json"))
    return json_response({**fixture("textgen", "internal-model-info.json"), "model_name": name})


async def _models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return _failure()
    name = _loaded(control_of(request), scenario)
    card: dict[str, Any] = fixture("textgen", "models.json")["data"][0]
    return json_response({"object": "list", "data": [] if name is None else [{**card, "id": name}]})


async def _any_model(request: web.Request) -> web.StreamResponse:
    # The real server makes up a card for any name without checking it.
    return json_response({"id": request.match_info["name"], "object": "model", "created": 0, "owned_by": "user"})


async def _health(_request: web.Request) -> web.StreamResponse:
    return json_response(fixture("textgen", "internal-health.json"))


def textgen_app(control: DoubleControl) -> web.Application:
    app = new_app(control)
    app.middlewares.extend([fastapi_404(), _gate])
    app.router.add_get("/v1/internal/health", _health)
    app.router.add_get("/v1/internal/model/info", _model_info)
    app.router.add_get("/v1/internal/model/list", _static_list)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{name}", _any_model)

    def served(ctl: DoubleControl) -> list[str]:
        name = _loaded(ctl, ctl.scenario)
        return [] if name is None else [name]

    app.router.add_post("/v1/chat/completions", chat_handler(served, failure=_failure))
    return app


async def _static_list(_request: web.Request) -> web.StreamResponse:
    return json_response(fixture("textgen", "internal-model-list.json"))
