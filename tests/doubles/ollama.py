"""Ollama double: native `/api/*` (gin JSON, `{"error": "..."}`), the OpenAI view, no api key, the Host check.

Like `allowedHostsMiddleware` of a server bound to loopback, a request whose Host is neither a loopback, private
or unspecified address, nor `localhost`, this machine's name or a `.localhost/.local/.internal` name gets 403 with
no body. Keys are ignored everywhere (Ollama has none), so UNAUTHORIZED behaves as UP.
Scenarios: LOADING models on disk, none in memory yet (Ollama loads on first use and keeps answering);
EMPTY nothing pulled (`/api/tags` `[]`, `/v1/models` `data: null`); ERROR 500 `{"error": ...}` from the
model routes while `/` and `/api/version` still answer (they never touch a model).
Options: `resident=False` nothing in memory (`/api/ps` empty: a request would load the model); `embedding_only`
the model embeds (`/api/embed`) and refuses chat. Generation (streams, stalls) follows tests/doubles/generation.py.
"""

from __future__ import annotations

import copy
import ipaddress
import socket
from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import DoubleControl, Scenario, control_of, fixture, fixture_bytes, new_app, scenario_of
from tests.doubles.generation import hang_unanswered, ollama_frames, send_generation

SERVER = "ollama"
_TRUSTED_SUFFIXES = (".localhost", ".local", ".internal")


def ollama_app(control: DoubleControl) -> web.Application:
    app = new_app(control)
    app.middlewares.append(_allowed_hosts)
    app.router.add_get("/", _root)  # aiohttp answers HEAD on GET routes, as gin does here
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/tags", _tags)
    app.router.add_get("/api/ps", _ps)
    app.router.add_post("/api/show", _show)
    app.router.add_post("/api/chat", _chat)
    app.router.add_post("/api/embed", _embed)
    app.router.add_get("/v1/models", _openai_models)
    return app


def gin_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", charset="utf-8")


def host_allowed(host_header: str) -> bool:
    """Ollama's rule for a loopback-bound server (`server/routes.go`: allowedHost, allowedHostsMiddleware)."""
    host = host_header.lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in ("", "localhost", socket.gethostname().lower()) or host.endswith(_TRUSTED_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_unspecified


@web.middleware
async def _allowed_hosts(request: web.Request, handler: Any) -> web.StreamResponse:
    if not host_allowed(request.headers.get("Host", "")):
        return web.Response(status=403)
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return web.Response(status=404, text="404 page not found", content_type="text/plain")


async def _root(request: web.Request) -> web.StreamResponse:
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def _version(request: web.Request) -> web.StreamResponse:
    return gin_json(fixture(SERVER, "api-version.json"))


def _on_disk(control: DoubleControl, scenario: Scenario) -> list[dict[str, Any]]:
    if scenario is Scenario.EMPTY:
        return []
    models: list[dict[str, Any]] = fixture(SERVER, "api-tags.json")["models"]
    if control.models is not None:
        models = [{**copy.deepcopy(models[0]), "name": m, "model": m} for m in control.models]
    return models


async def _tags(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return gin_json({"error": "open /root/.ollama/models/manifests: permission denied"}, 500)
    return gin_json({"models": _on_disk(control_of(request), scenario)})


async def _ps(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return gin_json({"error": "llama runner process has terminated: exit status 2"}, 500)
    if scenario in (Scenario.EMPTY, Scenario.LOADING) or control_of(request).options.get("resident") is False:
        return gin_json({"models": []})
    template = fixture(SERVER, "api-ps.json")["models"][0]
    on_disk = _on_disk(control_of(request), scenario)
    # option `resident`: the names in memory (default: the first model on disk), as keep_alive leaves them
    names = control_of(request).options.get("resident", [on_disk[0]["name"]])
    return gin_json({"models": [{**template, "name": name, "model": name} for name in names]})


async def _show(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError:
        return gin_json({"error": "invalid character 'x' looking for beginning of value"}, 400)
    name = payload.get("model") or payload.get("name") if isinstance(payload, dict) else None
    if not name:
        return gin_json({"error": "model is required"}, 400)
    if name not in {m["name"] for m in _on_disk(control_of(request), scenario_of(request))}:
        return gin_json({"error": f"model '{name}' not found"}, 404)
    return gin_json(fixture(SERVER, "api-show.json"))


async def _chat(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError:
        return gin_json({"error": "invalid character 'x' looking for beginning of value"}, 400)
    name = payload.get("model") if isinstance(payload, dict) else None
    if not name:
        return gin_json({"error": "model is required"}, 400)
    if name not in {m["name"] for m in _on_disk(control_of(request), scenario_of(request))}:
        return gin_json({"error": f"model '{name}' not found"}, 404)
    control = control_of(request)
    if control.options.get("embedding_only"):
        return gin_json({"error": f'"{name}" does not support chat'}, 400)
    if await hang_unanswered(request):
        return gin_json({"error": "context canceled"}, 500)
    if payload.get("stream") is False:
        lines = fixture_bytes(SERVER, "api-chat-stream.ndjson").replace(b"llama3.2:3b", name.encode())
        return gin_json(orjson.loads(lines.splitlines()[-1]))
    return await send_generation(request, ollama_frames(name, control, payload))


async def _embed(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError:
        return gin_json({"error": "invalid character 'x' looking for beginning of value"}, 400)
    name = payload.get("model") if isinstance(payload, dict) else None
    if name not in {m["name"] for m in _on_disk(control_of(request), scenario_of(request))}:
        return gin_json({"error": f"model '{name}' not found"}, 404)
    return gin_json({"model": name, "embeddings": [[0.010071029, -0.0017594862, 0.05007221, 0.04692972]],
                     "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8})


async def _openai_models(request: web.Request) -> web.StreamResponse:
    scenario = scenario_of(request)
    if scenario is Scenario.ERROR:
        return gin_json({"error": {"message": "open /root/.ollama/models/manifests: permission denied",
                                   "type": "api_error", "param": None, "code": None}}, 500)
    on_disk = _on_disk(control_of(request), scenario)
    # an empty Go slice marshals as null here, unlike /api/tags (middleware/openai_test.go pins it)
    data = [{"id": m["name"], "object": "model", "created": 1763629443,
             "owned_by": m["name"].split("/")[-2] if "/" in m["name"] else "library"} for m in on_disk] or None
    return gin_json({"object": "list", "data": data})
