"""Doubles of the plain OpenAI-compatible servers: vLLM, FastChat, Jan, GPT4All, mistral.rs, mlx-lm, generic.

Bodies come from tests/fixtures/<server>/; status codes, content types and auth rules follow the provider reference.
Also the chat-completion helpers the other OpenAI-family doubles share. Every double here honours
`DoubleControl.models` (served ids) except where noted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import (
    DoubleControl,
    Handler,
    Scenario,
    bearer_matches,
    bearer_token,
    cards_with_ids,
    control_of,
    empty_response,
    exact_authorization,
    fixture,
    json_response,
    load_option,
    new_app,
    prometheus_response,
    prometheus_text,
    scenario_of,
    text_response,
)
from tests.doubles.generation import (
    Generation,
    generation_of,
    hang_unanswered,
    openai_completion,
    openai_frames,
    send_generation,
)

FASTAPI_NOT_FOUND = {"detail": "Not Found"}


async def embeddings(request: web.Request) -> web.StreamResponse:
    """POST /v1/embeddings: a small vector and the usage, as vLLM / LocalAI / llama.cpp answer it."""
    payload = await read_json(request) or {}
    if await hang_unanswered(request):
        return empty_response(503)
    vector = [0.0125, -0.5, 0.25, 0.0625]
    return json_response({"object": "list", "model": payload.get("model"),
                          "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                          "usage": {"prompt_tokens": 7, "total_tokens": 7}})


# -- shared pieces ----------------------------------------------------------------------------------------------


def openai_error(message: str, error_type: str, code: Any = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def model_list(cards: list[dict[str, Any]], control: DoubleControl, *, empty: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": [] if empty else cards_with_ids(cards, control.models)}


def served_ids(cards: list[dict[str, Any]], control: DoubleControl) -> list[str]:
    return list(control.models) if control.models is not None else [card["id"] for card in cards]


def completion_body(model: str, text: str = "Hello there") -> dict[str, Any]:
    return {
        "id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def stream_chunks(model: str, *, separator: bytes = b"\n\n") -> bytes:
    """A short chat stream in the OpenAI chunk shape, ending `data: [DONE]`."""
    chunks = [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " there"}]
    lines = []
    for index, delta in enumerate(chunks):
        finish = "stop" if index == len(chunks) - 1 else None
        chunk = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        lines.append(b"data: " + orjson.dumps(chunk) + separator)
    return b"".join(lines) + b"data: [DONE]" + separator


async def send_stream(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


async def read_json(request: web.Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def chat_handler(ids: Callable[[DoubleControl], Iterable[str]], *,
                 unknown_model: Callable[[str, list[str]], web.StreamResponse] | None = None,
                 failure: Callable[[], web.StreamResponse] | None = None,
                 stream: Callable[[str], bytes] = stream_chunks) -> Handler:
    """POST /v1/chat/completions answering like the server: its own error for an unknown model or a failure."""

    async def chat(request: web.Request) -> web.StreamResponse:
        control = control_of(request)
        if scenario_of(request) is Scenario.ERROR and failure is not None:
            return failure()
        payload = await read_json(request)
        if payload is None:
            return json_response(openai_error("Invalid JSON body", "invalid_request_error"), status=400)
        served = list(ids(control))
        model = str(payload.get("model") or (served[0] if served else ""))
        if model not in served and unknown_model is not None:
            return unknown_model(model, served)
        if control.options.get("embedding_only"):
            return json_response(openai_error("The model does not support Chat Completions API",
                                              "BadRequestError", 400), status=400)
        if await hang_unanswered(request):
            return empty_response(503)
        if payload.get("stream"):
            if stream is not stream_chunks:
                return await send_stream(request, stream(model))
            return await send_generation(request, openai_frames(model, control, payload))
        if generation_of(control) is not Generation.NORMAL:
            return json_response(openai_completion(model, control, payload))
        return json_response(completion_body(model))

    return chat


def guard_prefixes(prefixes: tuple[str, ...], reject: Callable[[web.Request], web.StreamResponse | None]) -> Any:
    """Middleware applying `reject` (None = allowed) to paths under `prefixes`; OPTIONS is never checked."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" and request.path.startswith(prefixes):
            refused = reject(request)
            if refused is not None:
                return refused
        return await handler(request)

    return guard


def fastapi_404() -> Any:
    """Unknown routes as FastAPI/Starlette answer them."""

    @web.middleware
    async def not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return json_response(FASTAPI_NOT_FOUND, status=404)
        except web.HTTPMethodNotAllowed:
            return json_response({"detail": "Method Not Allowed"}, status=405)

    return not_found


# -- vLLM -------------------------------------------------------------------------------------------------------


def vllm_app(control: DoubleControl) -> web.Application:
    """vLLM 0.33: does not listen while loading; ERROR = engine dead (`/health` 503, generation 500).

    EMPTY is not a vLLM state (one model per server): it answers like UP. Option `lora=True` adds a LoRA card.
    `/metrics` (always open) follows the load options `busy`, `queue`, `kv_cache`, `tokens` (tests/doubles/base.py).
    """
    app = new_app(control, refuses_while_loading=True)

    def reject(request: web.Request) -> web.StreamResponse | None:
        key = control_of(request).expected_key
        return None if bearer_matches(request, key) else json_response(fixture("vllm", "error-401.json"), status=401)

    app.middlewares.extend([fastapi_404(), guard_prefixes(("/v1", "/v2", "/inference", "/cohere"), reject)])

    def cards(ctl: DoubleControl) -> list[dict[str, Any]]:
        name = "models-with-lora.json" if ctl.options.get("lora") else "models.json"
        listed: list[dict[str, Any]] = fixture("vllm", name)["data"]
        return listed

    async def health(request: web.Request) -> web.StreamResponse:
        return empty_response(503 if scenario_of(request) is Scenario.ERROR else 200)

    async def models(request: web.Request) -> web.StreamResponse:
        return json_response(model_list(cards(control_of(request)), control_of(request)))

    def unknown(model: str, served: list[str]) -> web.StreamResponse:
        body = openai_error(f"The model `{model}` does not exist. Valid aliases: {', '.join(served)}.",
                            "NotFoundError", 404, "model")
        return json_response(body, status=404)

    app.router.add_get("/health", health)
    app.router.add_route("*", "/ping", health)
    app.router.add_get("/version", static_json("vllm", "version.json"))
    app.router.add_get("/load", static_json("vllm", "load.json"))
    app.router.add_get("/metrics", vllm_metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_handler(
        lambda ctl: served_ids(cards(ctl), ctl), unknown_model=unknown,
        failure=lambda: json_response(fixture("vllm", "error-500-engine.json"), status=500)))
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def vllm_metrics(request: web.Request) -> web.StreamResponse:
    control = control_of(request)
    return prometheus_response(prometheus_text("vllm", "metrics.txt", {
        "vllm:num_requests_running": load_option(control, "busy"),
        "vllm:num_requests_waiting": load_option(control, "queue"),
        "vllm:kv_cache_usage_perc": load_option(control, "kv_cache"),
        "vllm:generation_tokens_total": load_option(control, "tokens", 91522),
    }))


def static_json(server: str, name: str, status: int = 200) -> Handler:
    """A handler answering one fixture body whatever the scenario."""

    async def handler(_request: web.Request) -> web.StreamResponse:
        return json_response(fixture(server, name), status=status)

    return handler


# -- FastChat ---------------------------------------------------------------------------------------------------


def fastchat_app(control: DoubleControl) -> web.Application:
    """FastChat openai_api_server: no health route; LOADING and EMPTY = no worker registered yet (`data: []`);
    ERROR = controller unreachable (500 text/plain from Starlette)."""
    app = new_app(control)

    def reject(request: web.Request) -> web.StreamResponse | None:
        key = control_of(request).expected_key
        ok = bearer_matches(request, key)
        return None if ok else json_response(fixture("fastchat", "error-401.json"), status=401)

    app.middlewares.extend([fastapi_404(), guard_prefixes(("/v1",), reject)])
    cards = fixture("fastchat", "models.json")["data"]

    async def models(request: web.Request) -> web.StreamResponse:
        scenario = scenario_of(request)
        if scenario is Scenario.ERROR:
            return text_response("Internal Server Error", status=500)
        empty = scenario in (Scenario.EMPTY, Scenario.LOADING)
        return json_response(model_list(cards, control_of(request), empty=empty))

    def unknown(model: str, served: list[str]) -> web.StreamResponse:
        body = {"object": "error", "message": f"Only {'&&'.join(served)} allowed now, your model {model}",
                "code": 40301}
        return json_response(body, status=400)

    def ids(ctl: DoubleControl) -> list[str]:
        return [] if ctl.scenario in (Scenario.EMPTY, Scenario.LOADING) else served_ids(cards, ctl)

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_handler(ids, unknown_model=unknown))
    return app


# -- Jan --------------------------------------------------------------------------------------------------------

JAN_TRUSTED_HOSTS = ("127.0.0.1", "localhost")


def jan_app(control: DoubleControl) -> web.Application:
    """Jan >= 0.6 proxy: plain-text errors, exact `Bearer <key>`, trusted-Host check (option `trusted_hosts`).

    LOADING and EMPTY: no llama.cpp session running (`data: []`; chat 503 `No models are available`).
    ERROR: 500 plain text on the list, 502 on chat (the session died).
    """
    app = new_app(control)
    app.middlewares.append(_jan_gate)
    app.router.add_get("/", _jan_swagger)
    app.router.add_get("/v1/models", _jan_models)
    app.router.add_post("/v1/chat/completions", _jan_chat)
    return app


def _jan_refusal(request: web.Request) -> web.StreamResponse | None:
    ctl = control_of(request)
    host = request.headers.get("Host")
    if host is None:
        return text_response("Missing host header", status=400)
    if host.rsplit(":", 1)[0] not in tuple(ctl.options.get("trusted_hosts", JAN_TRUSTED_HOSTS)):
        return text_response("Invalid host header", status=403)
    key = ctl.expected_key
    if key is None or exact_authorization(request, key):
        return None
    if "Authorization" not in request.headers:
        return text_response("Missing authorization header", status=401)
    return text_response("Invalid or missing authorization token", status=401)


@web.middleware
async def _jan_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in ("/", "/openapi.json", "/favicon.ico"):
        return await handler(request)  # Swagger assets: no host or key check
    return _jan_refusal(request) or await handler(request)


def _jan_running(ctl: DoubleControl) -> list[str]:
    no_session = ctl.scenario in (Scenario.EMPTY, Scenario.LOADING)
    return [] if no_session else served_ids(fixture("jan", "models.json")["data"], ctl)


async def _jan_models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return text_response("Internal Server Error", status=500)
    empty = scenario in (Scenario.EMPTY, Scenario.LOADING)
    return json_response(model_list(fixture("jan", "models.json")["data"], control_of(request), empty=empty))


async def _jan_chat(request: web.Request) -> web.StreamResponse:
    if scenario_of(request) is Scenario.ERROR:
        return text_response("Proxy request to model failed: connection refused", status=502)
    payload = await read_json(request)
    if payload is None:
        return text_response("Invalid JSON body", status=400)
    if "model" not in payload:
        return text_response("Request body must contain a 'model' field", status=400)
    sessions = _jan_running(control_of(request))
    if not sessions:
        return text_response("No models are available", status=503)
    model = str(payload["model"])
    if model not in sessions:
        return text_response(f"No running session found for model '{model}'", status=404)
    if payload.get("stream"):
        return await send_stream(request, stream_chunks(model))
    return json_response(completion_body(model))


async def _jan_swagger(_request: web.Request) -> web.StreamResponse:
    return text_response("<!DOCTYPE html><html><head><title>Jan API</title></head><body>"
                         "<div id=\"swagger-ui\"></div></body></html>", content_type="text/html")


# -- GPT4All ----------------------------------------------------------------------------------------------------


def gpt4all_app(control: DoubleControl) -> web.Application:
    """GPT4All desktop: no api keys. UNAUTHORIZED (or option `api_enabled=False`) = the app's API setting is
    off: 401 with an empty body on every route, key or not. LOADING answers like UP (models load on first
    use); EMPTY: no model installed; ERROR: 500 OpenAI-style. Streaming is refused with 400."""
    app = new_app(control)

    @web.middleware
    async def api_setting(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctl = control_of(request)
        if ctl.scenario is Scenario.UNAUTHORIZED or ctl.options.get("api_enabled") is False:
            return empty_response(401)
        return await handler(request)

    app.middlewares.append(api_setting)
    cards = fixture("gpt4all", "models.json")["data"]

    async def models(request: web.Request) -> web.StreamResponse:
        scenario = scenario_of(request)
        if scenario is Scenario.ERROR:
            return json_response(openai_error("Internal server error", "server_error"), status=500)
        return json_response(model_list(cards, control_of(request), empty=scenario is Scenario.EMPTY))

    async def one_model(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        known = [c for c in cards_with_ids(cards, control_of(request).models) if c["id"] == name]
        return json_response(known[0] if known else {})  # unknown: 200 with an empty object

    async def chat(request: web.Request) -> web.StreamResponse:
        payload = await read_json(request) or {}
        if payload.get("stream") or "stream_options" in payload:
            return json_response(fixture("gpt4all", "error-stream.json"), status=400)
        model = str(payload.get("model", ""))
        return json_response(completion_body(model))

    async def wrong_method(_request: web.Request) -> web.StreamResponse:
        return json_response(openai_error("Method not allowed", "invalid_request_error"), status=405)

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/models", wrong_method)
    app.router.add_get("/v1/models/{name}", one_model)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/chat/completions", wrong_method)
    return app


# -- mistral.rs -------------------------------------------------------------------------------------------------


def mistralrs_app(control: DoubleControl) -> web.Application:
    """`mistralrs serve`: no auth at all (UNAUTHORIZED answers like UP); `/health` text `OK` always.
    LOADING: every model `reloading`; EMPTY: every model `unloaded`; ERROR: 500 `{"message": ...}`.
    `models` replaces the real cards (the synthetic `default` card always comes first)."""
    app = new_app(control)
    synthetic, *real = fixture("mistralrs", "models.json")["data"]

    def cards(ctl: DoubleControl, scenario: Scenario) -> list[dict[str, Any]]:
        listed = cards_with_ids(real, ctl.models)
        state = {Scenario.LOADING: "reloading", Scenario.EMPTY: "unloaded"}.get(scenario)
        if state is not None:
            listed = [{**card, "status": state} for card in listed]
        return [synthetic, *listed]

    async def health(_request: web.Request) -> web.StreamResponse:
        return text_response("OK", content_type="text/plain")

    async def models(request: web.Request) -> web.StreamResponse:
        scenario = scenario_of(request)
        if scenario is Scenario.ERROR:
            return json_response({"message": "Internal error: model worker panicked"}, status=500)
        return json_response({"object": "list", "data": cards(control_of(request), scenario)})

    def unknown(model: str, _served: list[str]) -> web.StreamResponse:
        return json_response({"message": f"Model `{model}` not found"}, status=500)

    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_handler(
        lambda ctl: ["default", *served_ids(real, ctl)], unknown_model=unknown,
        failure=lambda: json_response({"message": "Model error", "partial_response": None}, status=500)))
    return app


# -- mlx-lm -----------------------------------------------------------------------------------------------------


def mlx_app(control: DoubleControl) -> web.Application:
    """mlx_lm.server (Python http.server, HTTP/1.0: one request per connection). No auth. `/health` is always
    ok. LOADING: still ok everywhere, chat waits `delay_s` (the model loads behind the scenes).
    EMPTY: the cache scan found nothing (`data: []`) while the server works. ERROR: the handler raised, so
    http.server drops the connection without an answer. Unknown paths: 404 `Not Found` labelled JSON."""
    app = new_app(control)

    @web.middleware
    async def http10(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = web.Response(status=404, text="Not Found", content_type="application/json")
        response.force_close()
        return response

    app.middlewares.append(http10)
    cards = fixture("mlx", "models.json")["data"]

    async def health(_request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def models(request: web.Request) -> web.StreamResponse:
        scenario = scenario_of(request)
        if scenario is Scenario.ERROR:
            if request.transport is not None:
                request.transport.close()
            return empty_response(500)  # never reaches the client: the connection is gone
        return json_response(model_list(cards, control_of(request), empty=scenario is Scenario.EMPTY))

    chat = chat_handler(lambda ctl: served_ids(cards, ctl))

    async def chat_after_load(request: web.Request) -> web.StreamResponse:
        if scenario_of(request) is Scenario.LOADING:
            await asyncio.sleep(control_of(request).delay_s)
        return await chat(request)

    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_after_load)
    return app


# -- generic OpenAI-compatible ----------------------------------------------------------------------------------

GENERIC_CARDS = [{"id": "generic-model", "object": "model", "created": 1764028800, "owned_by": "system"}]


def openai_app(control: DoubleControl) -> web.Application:
    """A generic OpenAI-compatible server (llama-cpp-python, proxies): Bearer on `/v1`, OpenAI error bodies.
    LOADING: 503 `Loading model` (the llama.cpp convention most of them share); EMPTY: `data: []`."""
    app = new_app(control)

    def reject(request: web.Request) -> web.StreamResponse | None:
        key = control_of(request).expected_key
        if key is None or bearer_token(request) == key:
            return None
        body = openai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        return json_response(body, status=401)

    app.middlewares.append(guard_prefixes(("/v1",), reject))

    async def models(request: web.Request) -> web.StreamResponse:
        scenario = scenario_of(request)
        if scenario is Scenario.LOADING:
            return json_response(openai_error("Loading model", "unavailable_error", 503), status=503)
        if scenario is Scenario.ERROR:
            return json_response(openai_error("Internal server error", "server_error", 500), status=500)
        return json_response(model_list(GENERIC_CARDS, control_of(request), empty=scenario is Scenario.EMPTY))

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_handler(lambda ctl: served_ids(GENERIC_CARDS, ctl)))
    return app
