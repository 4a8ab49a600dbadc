"""Simulated LLM servers for `monitord demo`: small aiohttp apps that answer the routes monitord reads the way the
real servers do (llama.cpp, Ollama, vLLM, KoboldCpp), streaming included, and that a story can put into a phase.

Phases: LOADING (llama.cpp's 503 "Loading model"), READY, SLOW (every answer waits `slow_s`), STALLED (health and
model routes answer, generation never sends a token), SATURATED (every slot busy, generation queues), DEAD (the
port refuses connections; `set(READY)` listens on the same port again). Not a test double: no fault injection
beyond these phases, and nothing here is imported by the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

REPLY = "The quick brown fox jumps over the lazy dog, and the demo server counts every word it streams back."


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    SLOW = "slow"
    STALLED = "stalled"
    SATURATED = "saturated"
    DEAD = "dead"


@dataclass
class Behaviour:
    """What a simulated server does now; the story changes it, the handlers read it."""

    phase: Phase = Phase.READY
    slow_s: float = 0.6  # SLOW: added before every answer (a probe makes two or three requests)
    tokens_per_s: float = 40.0  # streaming pace when READY
    ttft_s: float = 0.08  # time to the first token when READY
    slots: int = 4
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # wakes stalled handlers on a phase change


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    family: str
    parameter_size: str
    n_params: int
    quantization: str
    size_bytes: int
    context_length: int


class SimServer:
    """One simulated server on 127.0.0.1; `url` once started."""

    def __init__(self, name: str, kind: str, model: ModelCard, behaviour: Behaviour | None = None) -> None:
        if kind not in APPS:
            raise ValueError(f"no simulated server of kind {kind!r}; known: {', '.join(APPS)}")
        self.name = name
        self.kind = kind
        self.model = model
        self.behaviour = behaviour or Behaviour()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.busy = 0  # generations in progress

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = APPS[self.kind](self)
        app.middlewares.append(_client_gone)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    async def set(self, phase: Phase) -> None:
        """Enter `phase`; entering DEAD closes the port and every open connection (as a killed process does),
        leaving it listens on the same port again."""
        old = self.behaviour.phase
        self.behaviour.phase = phase
        self.behaviour.changed.set()
        self.behaviour.changed = asyncio.Event()
        if phase is Phase.DEAD and old is not Phase.DEAD:
            await self.stop()
        elif old is Phase.DEAD and phase is not Phase.DEAD and self._runner is None:
            await self.start(self.port)

    async def stop(self) -> None:
        self.behaviour.changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- shared behaviour ----------------------------------------------------------------------------------------

    async def pace(self) -> None:
        """SLOW: every answer waits."""
        if self.behaviour.phase is Phase.SLOW:
            await asyncio.sleep(self.behaviour.slow_s)

    async def first_token_wait(self) -> None:
        """Before the first token: STALLED waits until the phase changes; SATURATED queues behind the slots."""
        b = self.behaviour
        if b.phase is Phase.STALLED:
            changed = b.changed
            await changed.wait()
        elif b.phase is Phase.SATURATED:
            await asyncio.sleep(b.ttft_s + 2.5)  # waits for a slot
        elif b.phase is Phase.SLOW:
            await asyncio.sleep(b.ttft_s * 8)
        else:
            await asyncio.sleep(b.ttft_s)

    def token_gap_s(self) -> float:
        rate = self.behaviour.tokens_per_s
        if self.behaviour.phase in (Phase.SLOW, Phase.SATURATED):
            rate /= 4
        return 1.0 / rate

    def slots_busy(self) -> int:
        if self.behaviour.phase is Phase.SATURATED:
            return self.behaviour.slots
        return min(self.busy, self.behaviour.slots)

    async def tokens(self, limit: int) -> AsyncIterator[str]:
        """The reply word by word, at the phase's pace, after the first-token wait."""
        self.busy += 1
        try:
            await self.first_token_wait()
            for index, word in enumerate(REPLY.split(" ")[:max(1, limit)]):
                if index:
                    await asyncio.sleep(self.token_gap_s())
                yield word if index == 0 else f" {word}"
        finally:
            self.busy -= 1


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, object]:
    try:
        raw = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return {}
    return raw if isinstance(raw, dict) else {}


def _max_tokens(body: dict[str, object]) -> int:
    for key in ("max_tokens", "max_completion_tokens", "max_length", "num_predict"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    options = body.get("options")
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int):
        return int(options["num_predict"])
    return 16


async def _openai_chat(server: SimServer, request: web.Request, owner: str) -> web.StreamResponse:
    """POST /v1/chat/completions: an SSE stream of chat.completion.chunk objects, or one JSON completion."""
    body = await _body(request)
    limit = _max_tokens(body)
    created = int(time.time())
    base = {"id": f"chatcmpl-{owner}-{created}", "object": "chat.completion.chunk", "created": created,
            "model": server.model.id, "system_fingerprint": f"{owner}-demo"}
    started = time.monotonic()
    if not body.get("stream"):
        text = "".join([piece async for piece in server.tokens(limit)])
        count = len(text.split(" "))
        return _json({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": count, "total_tokens": 12 + count}})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    count = 0
    with contextlib.suppress(ConnectionResetError):  # a client that gave up (a canary past its deadline) has left
        await response.write(_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None},
                                                         "finish_reason": None}]}))
        async for piece in server.tokens(limit):
            count += 1
            await response.write(_sse({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                             "finish_reason": None}]}))
        elapsed = max(time.monotonic() - started, 1e-6)
        final: dict[str, object] = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                                    "usage": {"prompt_tokens": 12, "completion_tokens": count,
                                              "total_tokens": 12 + count}}
        if owner == "llamacpp":  # llama.cpp adds its own timings to the last chunk
            final["timings"] = {"prompt_n": 12, "predicted_n": count, "predicted_ms": elapsed * 1000,
                                "predicted_per_second": count / elapsed}
        await response.write(_sse(final))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


# -- llama.cpp (llama-server) -----------------------------------------------------------------------------------

_LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def llamacpp_app(server: SimServer) -> web.Application:
    model = server.model

    def loading() -> web.Response | None:
        return _json(_LOADING_BODY, 503) if server.behaviour.phase is Phase.LOADING else None

    async def health(request: web.Request) -> web.Response:
        await server.pace()
        return loading() or _json({"status": "ok"})

    async def models(request: web.Request) -> web.Response:
        await server.pace()
        return loading() or _json({
            "models": [{"name": model.id, "model": model.id, "type": "model", "capabilities": ["completion"]}],
            "object": "list",
            "data": [{"id": model.id, "object": "model", "created": 1764950400, "owned_by": "llamacpp",
                      "meta": {"vocab_type": 2, "n_vocab": 151936, "n_ctx_train": model.context_length,
                               "n_embd": 3584, "n_params": model.n_params, "size": model.size_bytes,
                               "n_ctx": model.context_length, "ftype": model.quantization}}],
        })

    async def props(request: web.Request) -> web.Response:
        await server.pace()
        return loading() or _json({
            "default_generation_settings": {"n_ctx": model.context_length, "params": {"n_predict": -1}},
            "total_slots": server.behaviour.slots, "model_path": f"/models/{model.id}",
            "chat_template": "{{ messages }}", "build_info": "b7120-4a5b6c7d",
        })

    async def slots(request: web.Request) -> web.Response:
        await server.pace()
        busy = server.slots_busy()
        return loading() or _json([{"id": i, "id_task": 100 + i if i < busy else -1, "n_ctx": model.context_length,
                                    "speculative": False, "is_processing": i < busy}
                                   for i in range(server.behaviour.slots)])

    async def metrics(request: web.Request) -> web.Response:
        busy = server.slots_busy()
        deferred = 3 if server.behaviour.phase is Phase.SATURATED else 0
        text = ("# HELP llamacpp:requests_processing Number of requests processing.\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                f"llamacpp:requests_processing {busy}\n"
                "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
                "# TYPE llamacpp:requests_deferred gauge\n"
                f"llamacpp:requests_deferred {deferred}\n")
        return loading() or web.Response(text=text, content_type="text/plain")

    async def chat(request: web.Request) -> web.StreamResponse:
        await server.pace()
        return loading() or await _openai_chat(server, request, "llamacpp")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/props", props)
    app.router.add_get("/slots", slots)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat)
    return app


# -- Ollama -----------------------------------------------------------------------------------------------------

def ollama_app(server: SimServer) -> web.Application:
    model = server.model
    details = {"parent_model": "", "format": "gguf", "family": model.family, "families": [model.family],
               "parameter_size": model.parameter_size, "quantization_level": model.quantization}
    digest = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"

    async def version(request: web.Request) -> web.Response:
        await server.pace()
        return _json({"version": "0.12.3"})

    async def tags(request: web.Request) -> web.Response:
        await server.pace()
        return _json({"models": [{"name": model.id, "model": model.id, "modified_at": "2026-11-30T09:12:44Z",
                                  "size": model.size_bytes, "digest": digest, "details": details}]})

    async def ps(request: web.Request) -> web.Response:
        await server.pace()
        loaded = server.behaviour.phase is not Phase.LOADING
        return _json({"models": [{"name": model.id, "model": model.id, "size": model.size_bytes, "digest": digest,
                                  "details": details, "expires_at": "2099-01-01T00:00:00Z",
                                  "size_vram": model.size_bytes, "context_length": model.context_length}]
                      if loaded else []})

    async def chat(request: web.Request) -> web.StreamResponse:
        await server.pace()
        body = await _body(request)
        limit = _max_tokens(body)
        started = time.monotonic()
        if body.get("stream") is False:
            text = "".join([piece async for piece in server.tokens(limit)])
            return _json({"model": model.id, "created_at": _now(), "message": {"role": "assistant", "content": text},
                          "done": True, "done_reason": "length", **_ollama_counts(len(text.split()), started)})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        count = 0
        with contextlib.suppress(ConnectionResetError):  # the client gave up
            async for piece in server.tokens(limit):
                count += 1
                await response.write(orjson.dumps({"model": model.id, "created_at": _now(),
                                                   "message": {"role": "assistant", "content": piece},
                                                   "done": False}) + b"\n")
            await response.write(orjson.dumps({"model": model.id, "created_at": _now(),
                                               "message": {"role": "assistant", "content": ""}, "done": True,
                                               "done_reason": "length", **_ollama_counts(count, started)}) + b"\n")
            await response.write_eof()
        return response

    async def openai_chat(request: web.Request) -> web.StreamResponse:
        await server.pace()
        return await _openai_chat(server, request, "ollama")

    app = web.Application()
    app.router.add_get("/", running_text)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/v1/chat/completions", openai_chat)
    return app


async def running_text(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _ollama_counts(count: int, started: float) -> dict[str, int]:
    total_ns = int((time.monotonic() - started) * 1e9)
    return {"total_duration": total_ns, "load_duration": 1_000_000, "prompt_eval_count": 12,
            "prompt_eval_duration": 20_000_000, "eval_count": count, "eval_duration": max(total_ns - 21_000_000, 1)}


# -- vLLM (OpenAI-compatible) -----------------------------------------------------------------------------------

def vllm_app(server: SimServer) -> web.Application:
    model = server.model

    async def health(request: web.Request) -> web.Response:
        await server.pace()
        return web.Response(status=200)

    async def models(request: web.Request) -> web.Response:
        await server.pace()
        return _json({"object": "list", "data": [{
            "id": model.id, "object": "model", "created": 1764950400, "owned_by": "vllm", "root": model.id,
            "parent": None, "max_model_len": model.context_length,
            "permission": [{"id": "modelperm-demo", "object": "model_permission", "created": 1764950400,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}]})

    async def version(request: web.Request) -> web.Response:
        return _json({"version": "0.11.0"})

    async def metrics(request: web.Request) -> web.Response:
        running = server.slots_busy()
        waiting = 5 if server.behaviour.phase is Phase.SATURATED else 0
        label = f'{{model_name="{model.id}"}}'
        text = (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{label} {running}\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{label} {waiting}\n"
                f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{label} "
                f"{0.97 if waiting else 0.12 * running}\n")
        return web.Response(text=text, content_type="text/plain")

    async def chat(request: web.Request) -> web.StreamResponse:
        await server.pace()
        return await _openai_chat(server, request, "vllm")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat)
    return app


# -- KoboldCpp --------------------------------------------------------------------------------------------------

def kobold_app(server: SimServer) -> web.Application:
    model = server.model
    generations = {"count": 0}

    async def version(request: web.Request) -> web.Response:
        await server.pace()
        return _json({"result": "KoboldCpp", "version": "1.98.1", "protected": False, "txt2img": False,
                      "vision": False, "transcribe": False, "multiplayer": False, "websearch": False, "tts": False,
                      "embeddings": False})

    async def current_model(request: web.Request) -> web.Response:
        await server.pace()
        return _json({"result": f"koboldcpp/{model.id}"})

    async def context(request: web.Request) -> web.Response:
        return _json({"value": model.context_length})

    async def perf(request: web.Request) -> web.Response:
        busy = server.slots_busy()
        return _json({"last_process": 0.05, "last_eval": 0.9, "last_token_count": 16, "last_seed": 42,
                      "total_gens": generations["count"], "stop_reason": 1, "total_img_gens": 0,
                      "queue": 3 if server.behaviour.phase is Phase.SATURATED else 0, "idle": 0 if busy else 1,
                      "hordeexitcounter": 0, "uptime": 1234.5, "idletime": 0.0, "quiet": True})

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        await server.pace()
        limit = _max_tokens(await _body(request))
        generations["count"] += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client gave up
            async for piece in server.tokens(limit):
                await response.write(_sse({"token": piece, "finish_reason": None}, "message"))
            await response.write(_sse({"token": "", "finish_reason": "length"}, "message"))
            await response.write_eof()
        return response

    async def generate(request: web.Request) -> web.Response:
        await server.pace()
        limit = _max_tokens(await _body(request))
        generations["count"] += 1
        text = "".join([piece async for piece in server.tokens(limit)])
        return _json({"results": [{"text": text, "finish_reason": "length"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await server.pace()
        generations["count"] += 1
        return await _openai_chat(server, request, "koboldcpp")

    app = web.Application()
    app.router.add_get("/api/extra/version", version)
    app.router.add_get("/api/v1/model", current_model)
    app.router.add_get("/api/extra/true_max_context_length", context)
    app.router.add_get("/api/extra/perf", perf)
    app.router.add_post("/api/extra/generate/stream", generate_stream)
    app.router.add_post("/api/v1/generate", generate)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@web.middleware
async def _client_gone(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """A client that hangs up mid-stream (a canary giving up on a stalled reply) ends the reply quietly."""
    try:
        return await handler(request)
    except ConnectionResetError:
        return web.Response(status=499)


APPS: dict[str, Callable[[SimServer], web.Application]] = {
    "llamacpp": llamacpp_app,
    "ollama": ollama_app,
    "vllm": vllm_app,
    "koboldcpp": kobold_app,
}


@contextlib.asynccontextmanager
async def running(servers: list[SimServer]) -> AsyncIterator[list[SimServer]]:
    """Start every server; stop them all however the block ends."""
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()
