"""What a generation canary sends to each API family, how to read the reply, and what to ask first.

Per family: the request (OpenAI chat on `chat_endpoint`, Ollama `/api/chat`, KoboldCpp's generate routes, TGI
`/generate_stream`, embeddings for embedding models), the stream reader, the reader of a non-streamed reply, and a
preflight that asks the server whether the canary may run now (an idle slot, the model resident). Pure readers and
request builders; `preflight` uses the ProbeHttp that canary.py hands in. `DIALECTS` maps every provider type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitord.model import CanarySpec, ModelKind, ProviderSpec, SampleKind
from monitord.providers import lmstudio, ollama
from monitord.providers.base import HttpResponse, ProbeHttp
from monitord.providers.streams import (
    NdjsonReader,
    SseReader,
    StreamEvent,
    StreamFormatError,
    StreamReader,
    kobold_event,
    ollama_line,
    ollama_object,
    openai_chunk,
    tgi_event,
)

ReadReply = Callable[[Any], StreamEvent]  # a whole (non-streamed) reply as one event, done=True


@dataclass(frozen=True, slots=True)
class CanaryRequest:
    """One canary request: where, what, and how to read what comes back."""

    path: str
    payload: Mapping[str, Any]
    kind: SampleKind
    stream: bool
    read_reply: ReadReply  # the non-streamed body (also used for embeddings)
    new_reader: Callable[[], StreamReader] | None = None  # set when stream is True
    terminal: str = "[DONE]"  # what the end of a complete stream is called, for messages


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the server says before a canary. None: it does not say."""

    busy: bool | None = None  # no idle slot / requests queued
    resident: bool | None = None  # the model is held in memory
    detail: str | None = None  # for the skip message ("2 of 2 slots busy")


@dataclass(frozen=True, slots=True)
class Skip:
    """A model the family has no cheap probe for."""

    reason: str


class Dialect(Protocol):
    def request(self, spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip: ...

    @property
    def asks_first(self) -> bool:
        """Whether `preflight` asks the server anything (when not, a canary does not call it)."""
        ...

    async def preflight(self, http: ProbeHttp, spec: ProviderSpec, model: str) -> Preflight: ...


def _messages(canary: CanarySpec) -> list[dict[str, str]]:
    return [{"role": "user", "content": canary.prompt}]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _shape(ok: bool, what: str) -> None:
    if not ok:
        raise StreamFormatError(f"the reply is not {what}")


# -- readers of whole replies ---------------------------------------------------------------------------------


def openai_reply(body: Any) -> StreamEvent:
    """`chat.completion` (or a legacy `text_completion`): message content, reasoning, usage, llama.cpp timings."""
    _shape(isinstance(body, dict) and isinstance(body.get("choices"), list), "a chat completion with choices")
    choices = body["choices"]
    choice = _dict(choices[0]) if choices else {}
    message = _dict(choice.get("message"))
    content = _text(message.get("content")) if message else _text(choice.get("text"))
    reasoning = _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
    usage, timings = _dict(body.get("usage")), _dict(body.get("timings"))
    rate = timings.get("predicted_per_second")
    finish = choice.get("finish_reason")
    return StreamEvent(content=content, reasoning=reasoning, done=True,
                       finish_reason=finish if isinstance(finish, str) else None,
                       prompt_tokens=_int(usage.get("prompt_tokens")),
                       completion_tokens=_int(usage.get("completion_tokens")),
                       server_tokens_per_s=float(rate) if isinstance(rate, int | float) and rate > 0 else None)


def openai_embedding(body: Any) -> StreamEvent:
    """`/v1/embeddings`: a vector in `data[0].embedding`; `tokens` is its length (0: no vector)."""
    _shape(isinstance(body, dict) and isinstance(body.get("data"), list), "an embedding list with data")
    first = _dict(body["data"][0]) if body["data"] else {}
    vector = first.get("embedding")
    dims = len(vector) if isinstance(vector, list | str) else 0  # base64 encoding is a string
    return StreamEvent(tokens=dims, done=True, prompt_tokens=_int(_dict(body.get("usage")).get("prompt_tokens")))


def ollama_reply(body: Any) -> StreamEvent:
    _shape(isinstance(body, dict), "a JSON object")
    return ollama_object(body)


def ollama_embedding(body: Any) -> StreamEvent:
    """`/api/embed`: `embeddings: [[...]]` and `prompt_eval_count`."""
    _shape(isinstance(body, dict) and isinstance(body.get("embeddings"), list), "an embed reply with embeddings")
    first = body["embeddings"][0] if body["embeddings"] else []
    return StreamEvent(tokens=len(first) if isinstance(first, list) else 0, done=True,
                       prompt_tokens=_int(body.get("prompt_eval_count")))


def kobold_reply(body: Any) -> StreamEvent:
    """`/api/v1/generate`: `results[0].text`; newer builds add finish_reason and token counts."""
    _shape(isinstance(body, dict) and isinstance(body.get("results"), list) and bool(body["results"]),
           "a KoboldAI generate reply with results")
    result = _dict(body["results"][0])
    finish = result.get("finish_reason")
    return StreamEvent(content=_text(result.get("text")), done=True,
                       finish_reason=finish if isinstance(finish, str) else None,
                       prompt_tokens=_int(result.get("prompt_tokens")),
                       completion_tokens=_int(result.get("completion_tokens")))


def tgi_reply(body: Any) -> StreamEvent:
    """TGI `/generate`: `generated_text` and `details` (finish_reason, generated_tokens)."""
    if isinstance(body, list) and body:
        body = body[0]
    _shape(isinstance(body, dict) and "generated_text" in body, "a TGI generate reply")
    details = _dict(body.get("details"))
    finish = details.get("finish_reason")
    return StreamEvent(content=_text(body.get("generated_text")), done=True,
                       finish_reason=finish if isinstance(finish, str) else None,
                       completion_tokens=_int(details.get("generated_tokens")),
                       prompt_tokens=_int(details.get("prompt_tokens")))


# -- preflight readers ----------------------------------------------------------------------------------------


def read_slots(response: HttpResponse) -> Preflight:
    """llama.cpp `/slots`: busy when every slot is processing. 501 (`--no-slots`) says nothing."""
    if response.status != 200:
        return Preflight()
    slots = response.json()
    if not isinstance(slots, list) or not slots:
        return Preflight()
    busy = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
    return Preflight(busy=busy >= len(slots), detail=f"{busy} of {len(slots)} slots busy")


def read_kobold_perf(response: HttpResponse) -> Preflight:
    """KoboldCpp `/api/extra/perf`: `idle` 0 means a generation holds the one lock; `queue` counts waiters."""
    if response.status != 200:
        return Preflight()
    perf = _dict(response.json())
    idle, queue = perf.get("idle"), _int(perf.get("queue")) or 0
    if idle is None:
        return Preflight()
    busy = idle in (0, False) or queue > 0
    return Preflight(busy=busy, detail=f"generating, {queue} queued" if busy else None)


def resident_in(model: str, resident: set[str]) -> bool:
    """Ollama names `llama3` and `llama3:latest` the same model."""
    if model in resident:
        return True
    return ":" not in model and f"{model}:latest" in resident


# -- families -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIChat:
    """OpenAI-compatible servers: chat completions on `chat_endpoint`, embeddings on /v1/embeddings."""

    chat_path: str = "/v1/chat/completions"
    embeddings_path: str | None = "/v1/embeddings"
    skip_thinking: bool = False  # send chat_template_kwargs.enable_thinking=false (vLLM, SGLang, llama.cpp)
    usage_in_stream: bool = True  # stream_options.include_usage (GPT4All rejects it, but never streams anyway)
    slots_path: str | None = None  # llama.cpp `/slots`
    residency: Callable[[ProbeHttp], Awaitable[set[str] | None]] | None = None  # ids in memory; None: unknown
    extra: Mapping[str, Any] = field(default_factory=dict)

    def request(self, spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip:
        canary = spec.canary
        if kind is ModelKind.EMBEDDING:
            if self.embeddings_path is None:
                return Skip("embedding model on a server without an embeddings route")
            return CanaryRequest(self.embeddings_path, {"model": model, "input": canary.prompt},
                                 SampleKind.EMBEDDING, False, openai_embedding)
        payload: dict[str, Any] = {"model": model, "messages": _messages(canary), "max_tokens": canary.max_tokens,
                                   "temperature": 0, "stream": canary.stream, **self.extra}
        if self.skip_thinking:
            payload["chat_template_kwargs"] = {"enable_thinking": False}
        if canary.stream and self.usage_in_stream:
            payload["stream_options"] = {"include_usage": True}
        return CanaryRequest(spec.chat_endpoint or self.chat_path, payload, SampleKind.GENERATION, canary.stream,
                             openai_reply, (lambda: SseReader(openai_chunk)) if canary.stream else None)

    @property
    def asks_first(self) -> bool:
        return self.slots_path is not None or self.residency is not None

    async def preflight(self, http: ProbeHttp, spec: ProviderSpec, model: str) -> Preflight:
        if self.slots_path is not None:
            return read_slots(await http.get(self.slots_path))
        if self.residency is not None:
            resident = await self.residency(http)
            if resident is not None:
                return Preflight(resident=model in resident)
        return Preflight()


async def _lmstudio_loaded(http: ProbeHttp) -> set[str] | None:
    """Models LM Studio holds in memory, from the listing its adapter reads (0.4+, else 0.3.6+); None before."""
    response = await http.get(lmstudio.V1_MODELS_PATH)
    reader = lmstudio.read_v1_models
    if lmstudio.is_unknown_route(response):
        response, reader = await http.get(lmstudio.V0_MODELS_PATH), lmstudio.read_v0_models
    if lmstudio.is_unknown_route(response) or response.status != 200:
        return None
    return {m.id for m in reader(response) if m.loaded}


@dataclass(frozen=True, slots=True)
class OllamaChat:
    """Ollama's native `/api/chat` (NDJSON, `think: false`) and `/api/embed`; `/api/ps` says what is resident."""

    def request(self, spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip:
        canary = spec.canary
        if kind is ModelKind.EMBEDDING:
            return CanaryRequest("/api/embed", {"model": model, "input": canary.prompt}, SampleKind.EMBEDDING,
                                 False, ollama_embedding)
        payload = {"model": model, "messages": _messages(canary), "stream": canary.stream, "think": False,
                   "options": {"num_predict": canary.max_tokens, "temperature": 0}}
        return CanaryRequest(spec.chat_endpoint or "/api/chat", payload, SampleKind.GENERATION, canary.stream,
                             ollama_reply, (lambda: NdjsonReader(ollama_line)) if canary.stream else None,
                             terminal='"done": true')

    @property
    def asks_first(self) -> bool:
        return True

    async def preflight(self, http: ProbeHttp, spec: ProviderSpec, model: str) -> Preflight:
        response = await http.get("/api/ps")
        if response.status != 200:
            return Preflight()
        resident = {m.id for m in ollama.read_ps(response)}
        return Preflight(resident=resident_in(model, resident))


@dataclass(frozen=True, slots=True)
class KoboldGenerate:
    """KoboldCpp `/api/extra/generate/stream` (SSE, no [DONE]) or `/api/v1/generate`; `/api/extra/perf` for load.

    The KoboldAI Client has no stream route and no perf route: it is asked with `/api/v1/generate` only.
    """

    streams: bool = True

    def request(self, spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip:
        if kind is ModelKind.EMBEDDING:
            return Skip("embedding model: KoboldCpp's canary generates text")
        canary = spec.canary
        payload = {"prompt": canary.prompt, "max_length": canary.max_tokens, "temperature": 0.01, "top_k": 1}
        if canary.stream and self.streams:
            return CanaryRequest("/api/extra/generate/stream", payload, SampleKind.GENERATION, True, kobold_reply,
                                 lambda: SseReader(kobold_event), terminal="a finish_reason")
        return CanaryRequest("/api/v1/generate", payload, SampleKind.GENERATION, False, kobold_reply)

    @property
    def asks_first(self) -> bool:
        return self.streams

    async def preflight(self, http: ProbeHttp, spec: ProviderSpec, model: str) -> Preflight:
        if not self.streams:
            return Preflight()
        return read_kobold_perf(await http.get("/api/extra/perf"))


@dataclass(frozen=True, slots=True)
class TGIGenerate:
    """TGI's own `/generate_stream` (its last event carries `generated_text`) or `/generate`."""

    def request(self, spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip:
        if kind is ModelKind.EMBEDDING:
            return Skip("embedding model: TGI serves generation models")
        canary = spec.canary
        payload = {"inputs": canary.prompt, "parameters": {"max_new_tokens": canary.max_tokens, "details": True}}
        if canary.stream:
            return CanaryRequest("/generate_stream", payload, SampleKind.GENERATION, True, tgi_reply,
                                 lambda: SseReader(tgi_event), terminal="generated_text")
        return CanaryRequest("/generate", payload, SampleKind.GENERATION, False, tgi_reply)

    @property
    def asks_first(self) -> bool:
        return False

    async def preflight(self, http: ProbeHttp, spec: ProviderSpec, model: str) -> Preflight:
        return Preflight()  # /metrics queue size arrives with the health probe's Capacity


_OPENAI = OpenAIChat()
_THINKING_OFF = OpenAIChat(skip_thinking=True)

DIALECTS: Mapping[str, Dialect] = {
    "vllm": _THINKING_OFF,
    "sglang": _THINKING_OFF,
    "llamacpp": OpenAIChat(skip_thinking=True, slots_path="/slots"),
    "localai": _OPENAI,
    "fastchat": _OPENAI,
    "textgen": OpenAIChat(embeddings_path=None),
    "lmstudio": OpenAIChat(residency=_lmstudio_loaded),
    "jan": _OPENAI,
    "tabbyapi": _OPENAI,
    "mlx": OpenAIChat(embeddings_path=None),
    "mistralrs": _OPENAI,
    "gpt4all": OpenAIChat(embeddings_path=None, usage_in_stream=False),
    "koboldcpp": KoboldGenerate(),
    "koboldai": KoboldGenerate(streams=False),
    "ollama": OllamaChat(),
    "tgi": TGIGenerate(),
    "openai": _OPENAI,
    "auto": _OPENAI,  # whatever `type: auto` finds, its canary speaks the OpenAI API most servers share
}


def plan(spec: ProviderSpec, model: str, kind: ModelKind | None) -> CanaryRequest | Skip:
    """The canary request for `model` on `spec`'s server, or why there is none."""
    if kind is ModelKind.RERANK:
        return Skip("rerank model: no cheap probe")
    return DIALECTS[spec.type].request(spec, model, kind)


__all__ = ["DIALECTS", "CanaryRequest", "Dialect", "Preflight", "Skip", "plan"]
