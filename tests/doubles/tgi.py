"""text-generation-inference double: `/health`, `/info`, `/v1/models` stay open; `--api-key` guards generation only,
and its 401 has an empty body. Does not listen until shards are loaded (LOADING = refused).

ERROR: `/health` 503 `unhealthy` (a shard failed) and generation 500. EMPTY is not a TGI state (one model per
server): it answers like UP. Honours `models` (the first id is the model). `/metrics` follows the load options
`busy`, `queue`, `tokens` (tests/doubles/base.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
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
from tests.doubles.generation import hang_unanswered, reply_texts, send_generation, tgi_frames
from tests.doubles.openai import chat_handler

GENERATION_PATHS = ("/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/vertex",
                    "/invocations", "/tokenize")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = control_of(request).expected_key
    guarded = request.path in GENERATION_PATHS or (request.path == "/" and request.method == "POST")
    # TGI compares the whole header with `Bearer <key>`, ignoring case.
    if guarded and key is not None and request.headers.get("Authorization", "").lower() != f"bearer {key}".lower():
        return empty_response(401)
    return await handler(request)


def _model_id(ctl: DoubleControl) -> str:
    if ctl.models:
        return ctl.models[0]
    return str(fixture("tgi", "info.json")["model_id"])


async def _health(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) is Scenario.ERROR:
        return json_response(fixture("tgi", "health-503.json"), status=503)
    return empty_response(200)


async def _info(request: web.Request) -> web.StreamResponse:
    info: dict[str, Any] = fixture("tgi", "info.json")
    return json_response({**info, "model_id": _model_id(control_of(request))})


async def _models(request: web.Request) -> web.StreamResponse:
    model_id = _model_id(control_of(request))
    return json_response({"object": "list", "data": [
        {"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]})


async def _metrics(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    return prometheus_response(prometheus_text("tgi", "metrics.txt", {
        "tgi_queue_size": load_option(control, "queue"),
        "tgi_batch_current_size": load_option(control, "busy"),
        "tgi_request_generated_tokens_sum": load_option(control, "tokens", 7040),
    }))


def _failure() -> web.StreamResponse:
    return json_response({"error": "Request failed during generation: Server error: CUDA error",
                          "error_type": "generation"}, status=500)


async def _generate(request: web.Request) -> web.StreamResponse:
    """`/generate_stream` (SSE, the last event carries `generated_text`) and `/generate` (one JSON object)."""
    control = control_of(request)
    if scenario_of(request) is Scenario.ERROR:
        return _failure()
    if control.options.get("overloaded"):
        return json_response(fixture("tgi", "error-overloaded-429.json"), status=429)
    payload = orjson.loads(await request.read() or b"{}")
    if await hang_unanswered(request):
        return empty_response(503)
    frames = tgi_frames(control, payload if isinstance(payload, dict) else {})
    if request.path == "/generate_stream":
        return await send_generation(request, frames)
    parameters = payload.get("parameters") if isinstance(payload, dict) else None
    texts = reply_texts(control, parameters.get("max_new_tokens") if isinstance(parameters, dict) else None)
    return json_response({"generated_text": "".join(texts),
                          "details": {"finish_reason": "length", "generated_tokens": len(texts), "seed": None}})


def tgi_app(control: DoubleControl) -> web.Application:
    app = new_app(control, refuses_while_loading=True)
    app.middlewares.append(_auth)
    app.router.add_get("/health", _health)
    app.router.add_get("/ping", _health)
    app.router.add_get("/", _health)
    app.router.add_get("/info", _info)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/generate_stream", _generate)
    app.router.add_post("/generate", _generate)
    # TGI serves its one model whatever the request names.
    app.router.add_post("/v1/chat/completions", chat_handler(lambda ctl: [_model_id(ctl)], failure=_failure,
                                                             unknown_model=None))
    return app
