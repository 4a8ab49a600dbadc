"""llama.cpp `llama-server` double: 503 `Loading model` on every route while loading, public health and model list.

Order of checks as in `server-http.cpp`: loading state first, then the api key (Bearer, bare Authorization or
X-Api-Key) except on the public routes, then routing; unknown paths get the JSON 404. Every answer carries
`Server: llama.cpp`. Options (`control.options`):
  router        list several models with `status.value` (router mode, started without `-m`)
  multimodal    the model has an mmproj: `capabilities` gains `multimodal`, input modalities gain `image`
  metrics       serve `/metrics` (otherwise 501, as without `--metrics`)
  models_public False: the model list needs the key too (seen on the xllamacpp build of the server)
  slots_busy    every slot is processing (`/slots`); generation requests wait in the queue meanwhile
  reference_stream  stream the reference `chat-stream.sse` verbatim instead of a paced reply
  slots, busy, queue, tokens  the load `/slots`, `/props` and `/metrics` report (tests/doubles/base.py)
  no_slots      `/slots` answers 501 as with `--no-slots` (`/props` says `endpoint_slots: false`)
Generation (streams, stalls, hangs) follows tests/doubles/generation.py.
Scenarios: LOADING 503 everywhere (router mode: the listing says `loading`); EMPTY router mode with every model
unloaded (the only "no model" state llama.cpp has); ERROR 500 `server_error` on every route.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Scenario,
    control_of,
    fixture,
    fixture_bytes,
    load_option,
    new_app,
    prometheus_response,
    prometheus_text,
    scenario_of,
)
from tests.doubles.generation import hang_unanswered, openai_frames, send_generation

SERVER = "llamacpp"
PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models", "/"})
_MODEL_PATHS = frozenset({"/models", "/v1/models"})
_HEADERS = {"Server": "llama.cpp"}


def llamacpp_app(control: DoubleControl) -> web.Application:
    app = new_app(control)  # llama-server listens before the model is loaded
    app.middlewares.append(_state_then_key)
    for path in ("/health", "/v1/health"):
        app.router.add_get(path, _health)
    for path in _MODEL_PATHS:
        app.router.add_get(path, _models)
    app.router.add_get("/props", _props)
    app.router.add_get("/slots", _slots)
    app.router.add_get("/metrics", _metrics)
    for path in ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/completion"):
        app.router.add_post(path, _generate)
    return app


def llama_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        charset="utf-8", headers=_HEADERS)


def llama_error(status: int, message: str, error_type: str) -> web.Response:
    return llama_json({"error": {"code": status, "message": message, "type": error_type}}, status)


def key_matches(request: web.Request, key: str | None) -> bool:
    """`Authorization` (with or without `Bearer `) or, when that is absent, `X-Api-Key`."""
    if key is None:
        return True
    given = request.headers.get("Authorization") or request.headers.get("X-Api-Key") or ""
    return given.removeprefix("Bearer ") == key


@web.middleware
async def _state_then_key(request: web.Request, handler: Any) -> web.StreamResponse:
    control = control_of(request)
    scenario = scenario_of(request)
    router = bool(control.options.get("router"))
    if scenario is Scenario.LOADING and not router:
        return llama_error(503, "Loading model", "unavailable_error")
    public = PUBLIC_PATHS if control.options.get("models_public", True) else PUBLIC_PATHS - _MODEL_PATHS
    if request.path not in public and not key_matches(request, control.expected_key):
        return llama_json({"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}},
                          401)
    if scenario is Scenario.ERROR:
        return llama_error(500, "llama_decode failed", "server_error")
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):  # httplib: no route for this method and path
        return llama_json({"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}, 404)


async def _health(request: web.Request) -> web.StreamResponse:
    return llama_json({"status": "ok"})


async def _models(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    scenario = scenario_of(request)
    if control.options.get("router") or scenario is Scenario.EMPTY:
        return llama_json(_router_listing(control, scenario))
    body = fixture(SERVER, "models-multimodal.json" if control.options.get("multimodal") else "models.json")
    if control.models is not None:
        data, listed = body["data"][0], body["models"][0]
        body["data"] = [{**copy.deepcopy(data), "id": m, "aliases": [m]} for m in control.models]
        body["models"] = [{**copy.deepcopy(listed), "name": m, "model": m} for m in control.models]
    return llama_json(body)


def _router_listing(control: DoubleControl, scenario: Scenario) -> dict[str, Any]:
    body = fixture(SERVER, "router-models.json")
    cards = body["data"]
    if control.models is not None:
        cards = [{**copy.deepcopy(cards[0]), "id": m} for m in control.models]
    for index, card in enumerate(cards):
        if scenario is Scenario.EMPTY:
            card["status"]["value"] = "unloaded"
        elif scenario is Scenario.LOADING:
            card["status"]["value"] = "loading" if index == 0 else "unloaded"
        else:
            card["status"]["value"] = "loaded" if index == 0 else "unloaded"
    body["data"] = cards
    return body


async def _props(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    body = fixture(SERVER, "props.json")
    if control.options.get("multimodal"):
        body["modalities"]["vision"] = True
    body["endpoint_metrics"] = bool(control.options.get("metrics"))
    body["endpoint_slots"] = not control.options.get("no_slots")
    body["total_slots"] = len(slot_states(control))
    return llama_json(body)


def slot_states(control: DoubleControl) -> list[dict[str, Any]]:
    """The fixture's slot shape, `slots` of them (default: as many as the fixture), the first `busy` processing."""
    template = fixture(SERVER, "slots.json")
    count = int(load_option(control, "slots", len(template)))
    # `slots_busy` (the canary's knob) takes every slot; `busy` the first n
    busy = count if control.options.get("slots_busy") else int(load_option(control, "busy"))
    slots = []
    for index in range(count):
        slot = {k: v for k, v in template[min(index, len(template) - 1)].items() if k != "id_task"}
        slot.update(id=index, is_processing=index < busy)
        if index < busy:
            slot["id_task"] = 1000 + index
        slots.append(slot)
    return slots


async def _slots(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    if control.options.get("no_slots"):
        return llama_error(501, "This server does not support slots endpoint. Start it with `--slots`",
                           "not_supported_error")
    slots = slot_states(control)
    if request.query.get("fail_on_no_slot") == "1" and all(s["is_processing"] for s in slots):
        return llama_json(fixture(SERVER, "error-503-no-slot.json"), 503)
    return llama_json(slots)


async def _metrics(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    if not control.options.get("metrics"):
        return llama_json(fixture(SERVER, "error-501-metrics-disabled.json"), 501)
    values = {"llamacpp:requests_processing": load_option(control, "busy"),
              "llamacpp:requests_deferred": load_option(control, "queue"),
              "llamacpp:tokens_predicted_total": load_option(control, "tokens", 3469)}
    return prometheus_response(prometheus_text(SERVER, "metrics.txt", values), _HEADERS)


async def _generate(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError:
        return llama_error(400, "Failed to parse the request body as JSON", "invalid_request_error")
    if not isinstance(payload, dict):
        return llama_error(400, "Failed to parse the request body as JSON", "invalid_request_error")
    control = control_of(request)
    while control.options.get("slots_busy"):  # every slot is taken: the request waits in the queue
        if request.transport is None or request.transport.is_closing():
            return llama_error(503, "no slot available", "unavailable_error")
        await asyncio.sleep(0.05)
    if await hang_unanswered(request):
        return llama_error(503, "no slot available", "unavailable_error")
    if payload.get("stream") and control.options.get("reference_stream"):
        response = web.StreamResponse(headers={**_HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(fixture_bytes(SERVER, "chat-stream.sse"))
        await response.write_eof()
        return response
    model = fixture(SERVER, "models.json")["data"][0]["id"]
    if payload.get("stream"):
        return await send_generation(request, openai_frames(model, control, payload, timings=True), _HEADERS)
    return llama_json({
        "choices": [{"finish_reason": "length", "index": 0,
                     "message": {"role": "assistant", "content": "Hello"}}],
        "created": 1764028800, "model": model, "system_fingerprint": "b7120-4a5b6c7d",
        "object": "chat.completion", "id": "chatcmpl-double",
        "usage": {"completion_tokens": 1, "prompt_tokens": 5, "total_tokens": 6},
    })
