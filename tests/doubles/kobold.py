"""KoboldCpp and KoboldAI Client doubles: KoboldAI `{"result": ...}` answers, each server's own quirks.

KoboldCpp (`koboldcpp.py` `do_GET`/`do_POST`): routes match by path *suffix*; unknown ones get 404 text/html;
with a password (`control.expected_key`) generation needs the Bearer and `/api/v1/model` answers 200
`koboldcpp/protected-model` to anyone without it. Options: `router` (admin/router mode: LOADING is a 502 HTML
page from the proxy instead of a closed port), `busy` (generation answers the 503 busy body and
`/api/extra/perf` says `idle: 0`), `queue` (`/api/extra/perf` queue).
Scenarios: LOADING closed port (the model loads before the HTTP server starts); EMPTY `inactive` (no text
model); ERROR http.server's 500 HTML error page.

KoboldAI Client (`aiserver.py`, Flask): `/api/v1/model` and `/api/v1/info/version` only, no `/api/extra/*`
(Flask's HTML 404), no password. EMPTY `ReadOnly`; LOADING closed port; ERROR Flask's 500 page.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Scenario,
    bearer_matches,
    control_of,
    fixture,
    fixture_bytes,
    load_option,
    new_app,
    scenario_of,
)
from tests.doubles.generation import hang_unanswered, kobold_frames, send_generation

KOBOLDCPP, KOBOLDAI = "koboldcpp", "koboldai"
NOT_FOUND = "Error: HTTP Server is running, but this endpoint does not exist. Please check the URL."
_HTTP_SERVER_500 = (
    '<!DOCTYPE HTML>\n<html lang="en">\n    <head>\n        <meta charset="utf-8">\n'
    "        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n"
    "        <p>Error code: 500</p>\n        <p>Message: Internal Server Error.</p>\n    </body>\n</html>\n"
)
_ROUTER_502 = "<html><head><title>502</title></head><body><h1>KoboldCpp is not available</h1></body></html>"
_FLASK_404 = (
    '<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n'
    "<p>The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again.</p>\n"
)
_FLASK_500 = (
    '<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n'
    "<p>The server encountered an internal error and was unable to complete your request. Either the server is "
    "overloaded or there is an error in the application.</p>\n"
)


def koboldcpp_app(control: DoubleControl) -> web.Application:
    app = new_app(control, refuses_while_loading=not control.options.get("router"))
    app.router.add_route("*", "/{tail:.*}", _koboldcpp)
    return app


def koboldai_client_app(control: DoubleControl) -> web.Application:
    app = new_app(control, refuses_while_loading=True)
    app.router.add_route("*", "/{tail:.*}", _koboldai_client)
    return app


def kobold_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def html(text: str, status: int) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


# -- KoboldCpp ---------------------------------------------------------------------------------------------------


def model_name(control: DoubleControl, scenario: Scenario) -> str:
    if scenario is Scenario.EMPTY:
        return "inactive"
    if control.models:
        return control.models[0]
    return str(fixture(KOBOLDCPP, "api-v1-model.json")["result"])


async def _koboldcpp(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    scenario = scenario_of(request)
    if scenario is Scenario.LOADING:  # reached only in router mode: the proxy answers for the backend
        return html(_ROUTER_502, 502)
    if scenario is Scenario.ERROR:
        return html(_HTTP_SERVER_500, 500)
    if request.method == "POST":
        return await _koboldcpp_post(request, control, scenario)
    if request.method != "GET":
        return html(NOT_FOUND, 404)
    body = _koboldcpp_get(request.path, control, scenario, bearer_matches(request, control.expected_key))
    return kobold_json(body) if body is not None else html(NOT_FOUND, 404)


def _koboldcpp_get(path: str, control: DoubleControl, scenario: Scenario, authorized: bool) -> Any:
    name = model_name(control, scenario)
    if path.endswith(("/api/v1/model", "/api/latest/model")):
        return {"result": name if authorized else "koboldcpp/protected-model"}
    if path.endswith(("/api/v1/info/version", "/api/latest/info/version")):
        return fixture(KOBOLDCPP, "api-v1-info-version.json")
    if path.endswith("/api/extra/version"):
        version = fixture(KOBOLDCPP, "api-extra-version.json")
        version.update(protected=control.expected_key is not None, llm=scenario is not Scenario.EMPTY,
                       router=bool(control.options.get("router")))
        return version
    if path.endswith("/api/extra/true_max_context_length"):
        return fixture(KOBOLDCPP, "api-extra-true-max-context-length.json")
    if path.endswith(("/api/v1/config/max_context_length", "/api/latest/config/max_context_length")):
        return fixture(KOBOLDCPP, "api-v1-config-max-context-length.json")
    if path.endswith("/api/extra/perf"):
        perf = fixture(KOBOLDCPP, "api-extra-perf.json")
        busy = bool(load_option(control, "busy"))
        # busy: a generation holds the lock and (unless `queue` says otherwise) one more waits
        perf.update(idle=0 if busy else 1, queue=int(load_option(control, "queue", 1 if busy else 0)))
        return perf
    if path.endswith("/v1/models"):
        listing = fixture(KOBOLDCPP, "v1-models.json")
        listing["data"][0]["id"] = name  # v1.76 lists whatever the name is, "inactive" included
        return listing
    if path.endswith("/api/tags"):
        return fixture(KOBOLDCPP, "api-tags.json")
    return None


async def _koboldcpp_post(request: web.Request, control: DoubleControl, scenario: Scenario) -> web.StreamResponse:
    path = request.path
    generation = ("/api/v1/generate", "/api/latest/generate", "/api/extra/generate/stream",
                  "/v1/completions", "/v1/chat/completions")
    if not path.endswith(generation):
        return html(NOT_FOUND, 404)
    if not bearer_matches(request, control.expected_key):
        return kobold_json(fixture(KOBOLDCPP, "error-401.json"), 401)
    if control.options.get("busy"):
        return kobold_json(fixture(KOBOLDCPP, "error-busy-503.json"), 503)
    payload = await request.json(loads=orjson.loads)
    if path.endswith("/api/extra/generate/stream"):
        if control.options.get("reference_stream"):
            return await _sse(request, fixture_bytes(KOBOLDCPP, "api-extra-generate-stream.sse"))
        if await hang_unanswered(request):
            return kobold_json(fixture(KOBOLDCPP, "error-busy-503.json"), 503)
        return await send_generation(request, kobold_frames(control, payload if isinstance(payload, dict) else {}))
    if path.endswith("/v1/chat/completions") and isinstance(payload, dict) and payload.get("stream"):
        return await _sse(request, fixture_bytes(KOBOLDCPP, "chat-stream-old.sse"))
    if path.endswith("/v1/chat/completions"):
        return kobold_json({"id": "koboldcpp", "object": "chat.completion", "created": 1764028800,
                            "model": model_name(control, scenario),
                            "choices": [{"index": 0, "finish_reason": "length",
                                         "message": {"role": "assistant", "content": " Hello there!"}}]})
    return kobold_json(fixture(KOBOLDCPP, "api-v1-generate.json"))


async def _sse(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


# -- KoboldAI Client ---------------------------------------------------------------------------------------------


async def _koboldai_client(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return html(_FLASK_500, 500)
    if request.method == "GET" and request.path == "/api/v1/model":
        if scenario is Scenario.EMPTY:
            return kobold_json(fixture(KOBOLDAI, "api-v1-model-readonly.json"))
        name = control.models[0] if control.models else fixture(KOBOLDAI, "api-v1-model.json")["result"]
        return kobold_json({"result": name})
    if request.method == "GET" and request.path == "/api/v1/info/version":
        return kobold_json(fixture(KOBOLDAI, "api-v1-info-version.json"))
    if request.method == "POST" and request.path == "/api/v1/generate":
        return kobold_json({"results": [{"text": " Hello there!"}]})
    return html(_FLASK_404, 404)
