"""OpenAI-compatible family: servers whose model list is `data[].id`, each with its own health rules and quirks.

Holds the generic adapter, the readers every OpenAI-shaped server shares, and the servers that need only small
refinements (vLLM, FastChat, Jan, GPT4All, mistral.rs, mlx-lm). Servers with richer APIs have their own modules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capability, ErrorClass, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    check_health,
    expect_ok,
    models_or_unknown,
    models_path,
    openai_model_cards,
    optional_get,
    server_message,
)
from monitord.providers.capacity import VLLM_METRICS, read_metrics

# GGUF quantization tags (Q4_K_M, IQ3_XXS, Q8_0, F16), exllama bits per weight (4.0bpw), MLX bits (4bit).
_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|\d+(?:\.\d+)?bpw|\d+-?bit)(?![A-Za-z0-9])", re.IGNORECASE)


# -- pure helpers shared by the family -------------------------------------------------------------------------


def int_or_none(value: Any) -> int | None:
    """An int field that servers sometimes send as null or omit (bool is not an int here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def as_mapping(value: Any) -> Mapping[str, Any]:
    """A JSON object field, or an empty mapping when the server sent null or something else."""
    return value if isinstance(value, Mapping) else {}


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@functools.lru_cache(maxsize=4096)  # names repeat on every probe of every server listing them
def quantization_from_name(name: str) -> str | None:
    """The quantization a model file or folder name carries (`...-Q4_K_M.gguf`, `...-exl3-4.0bpw`), if any."""
    matches = _QUANT_IN_NAME.findall(name.rsplit("/", 1)[-1])
    if not matches:
        return None
    tag: str = matches[-1]
    return tag.lower() if tag.lower().endswith(("bpw", "bit")) else tag.upper()


def model_from_card(card: Mapping[str, Any], **fields: Any) -> ModelInfo:
    """A ModelInfo from an OpenAI card: id, owner, and the context length under any name servers use for it."""
    meta = card.get("meta")
    context = (int_or_none(card.get("max_model_len")) or int_or_none(card.get("context_length"))
               or (int_or_none(meta.get("n_ctx")) if isinstance(meta, Mapping) else None))
    values: dict[str, Any] = {
        "context_length": context,
        "owned_by": str_or_none(card.get("owned_by")),
        "quantization": quantization_from_name(card["id"]),
    }
    values.update(fields)
    return ModelInfo(id=card["id"], **values)


def read_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Model cards of an OpenAI-style list (generic servers): id, owner, context length when one is given."""
    return tuple(model_from_card(card) for card in openai_model_cards(response.json(), response.path))


def read_version(response: HttpResponse) -> str | None:
    """`{"version": "..."}` (vLLM, LocalAI); None when the route is missing or says something else."""
    if not 200 <= response.status < 300:
        return None
    try:
        body = response.json()
    except ProbeError:
        return None
    return str_or_none(body.get("version")) if isinstance(body, dict) else None


def custom_path(configured: str | None, default: str | None) -> str | None:
    """A path the config sets to something other than the type's own default (a user override), else None."""
    return configured if configured and configured != default else None


def empty_body_auth_error(response: HttpResponse, hint: str) -> ProbeError | None:
    """401/403 with nothing to read: say what the server means by it instead of a bare status."""
    if response.status in (401, 403) and not response.body.strip():
        return ProbeError(ErrorClass.AUTH, f"{response.path}: HTTP {response.status} {hint}", response.status)
    return None


def capabilities(*names: str | None, kind: ModelKind | None = None) -> frozenset[str]:
    """The named capabilities; a model the server calls generative (LLM, vision LLM) also chats and completes."""
    generative = (Capability.CHAT, Capability.COMPLETION) if kind in (ModelKind.LLM, ModelKind.VISION) else ()
    return frozenset(name for name in (*names, *generative) if name)


def kind_for(capability_names: Iterable[str]) -> ModelKind | None:
    """The model kind its capabilities imply; None when nothing says."""
    names = set(capability_names)
    if Capability.VISION in names:
        return ModelKind.VISION
    if names & {Capability.CHAT, Capability.COMPLETION}:
        return ModelKind.LLM
    if Capability.EMBEDDINGS in names:
        return ModelKind.EMBEDDING
    if Capability.RERANK in names:
        return ModelKind.RERANK
    return ModelKind.OTHER if names else None


# -- generic ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAICompatible:
    """Any other OpenAI-compatible server: the configured health route if any, then the model list."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health_path = spec.health_endpoint or self.defaults.health_path
        if health_path:
            expect_ok(check_loading(await http.get(health_path)))
        response = check_loading(await http.get(models_path(spec, self.defaults)))
        return Observation(models=read_models(expect_ok(response)))


def check_loading(response: HttpResponse) -> HttpResponse:
    """503 whose message says "loading": the llama.cpp convention many OpenAI-compatible servers share."""
    if response.status == 503 and "loading" in server_message(response).lower():
        raise ProbeError(ErrorClass.LOADING, f"{response.path}: HTTP 503 {server_message(response)}", 503)
    return response


# -- vLLM -------------------------------------------------------------------------------------------------------


def read_vllm_health(response: HttpResponse) -> None:
    """`/health`: 200 empty when the engine lives; 503 empty when it died (EngineDeadError): generation fails."""
    if response.status == 503:
        raise ProbeError(ErrorClass.HTTP_5XX, f"{response.path}: HTTP 503: the vLLM engine is dead", 503)
    expect_ok(response)


def read_served_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """vLLM and SGLang: everything listed is served from memory; LoRA cards (with `parent`) share their base
    model's context."""
    cards = openai_model_cards(response.json(), response.path)
    base_context = {card["id"]: int_or_none(card.get("max_model_len")) for card in cards}
    models = []
    for card in cards:
        parent = str_or_none(card.get("parent"))
        context = int_or_none(card.get("max_model_len")) or (base_context.get(parent) if parent else None)
        models.append(model_from_card(card, context_length=context, loaded=True))
    return tuple(models)


@dataclass(frozen=True, slots=True)
class VLLM:
    """vLLM: `/health` (open), `/v1/models` (Bearer when --api-key), `/version` (open). Refuses while loading."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health = await http.get(spec.health_endpoint or self.defaults.health_path or "/health", authenticated=False)
        read_vllm_health(health)
        try:
            observation = Observation(
                models=read_served_models(expect_ok(await http.get(models_path(spec, self.defaults)))))
        except ProbeError as exc:  # /health said the engine lives: an unreadable list leaves models unknown
            observation = models_or_unknown(exc, health)
        version = read_version(await http.get("/version", authenticated=False))
        load = read_metrics(await optional_get(http, "/metrics", spec, authenticated=False), VLLM_METRICS)
        return replace(observation, server_version=version, capacity=load)


# -- FastChat, Jan, GPT4All: a model list and their own ways of saying "nothing" or "no" ----------------------


def read_fastchat_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Models of live workers (dead ones are dropped on every list): all loaded. No worker: `data: []`."""
    return tuple(model_from_card(card, loaded=True) for card in openai_model_cards(response.json(), response.path))


@dataclass(frozen=True, slots=True)
class FastChat:
    """FastChat openai_api_server: no health route (404), so the model list is the probe."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        await check_health(http, spec, self.defaults)
        response = await http.get(models_path(spec, self.defaults))
        return Observation(models=read_fastchat_models(expect_ok(response)))


JAN_NO_MODELS = "No models are available"


def read_jan_models(response: HttpResponse) -> Observation:
    """Running sessions only. Jan answers errors in plain text; 503 `No models are available` means empty."""
    if response.status == 503 and JAN_NO_MODELS in response.text():
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS,
                           message=f"{response.path}: {JAN_NO_MODELS} (no model session running)")
    if response.status in (400, 403) and "host header" in response.text().lower():
        raise ProbeError(ErrorClass.HTTP_4XX, f"{response.path}: HTTP {response.status} {server_message(response)}"
                         " (Jan accepts only trusted Host headers)", response.status)
    cards = openai_model_cards(expect_ok(response).json(), response.path)
    return Observation(models=tuple(model_from_card(card, loaded=True) for card in cards))


@dataclass(frozen=True, slots=True)
class Jan:
    """Jan (>= 0.6) local API server: `/v1/models` lists running sessions; errors are plain text."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        await check_health(http, spec, self.defaults)
        return read_jan_models(await http.get(models_path(spec, self.defaults)))


GPT4ALL_API_OFF = "with an empty body: GPT4All's 'Enable Local API Server' setting is off"


def read_gpt4all_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Installed models (loaded on first use). GPT4All has no keys: an empty 401 means its API setting is off."""
    refused = empty_body_auth_error(response, GPT4ALL_API_OFF)
    if refused is not None:
        raise refused
    return read_models(expect_ok(response))


@dataclass(frozen=True, slots=True)
class GPT4All:
    """GPT4All desktop API server (127.0.0.1 only, no health route, no streaming)."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        await check_health(http, spec, self.defaults)
        response = await http.get(models_path(spec, self.defaults))
        return Observation(models=read_gpt4all_models(response))


# -- mistral.rs -------------------------------------------------------------------------------------------------

MISTRALRS_SYNTHETIC_ID = "default"


def read_mistralrs_models(response: HttpResponse) -> Observation:
    """Drop the synthetic `default` card; per-model `status` says loaded / unloaded / reloading."""
    cards = openai_model_cards(expect_ok(response).json(), response.path)
    models: list[ModelInfo] = []
    states: list[str | None] = []
    for card in cards:
        if card["id"] == MISTRALRS_SYNTHETIC_ID and card.get("root") == MISTRALRS_SYNTHETIC_ID:
            continue
        state = str_or_none(card.get("status"))
        states.append(state)
        tools = Capability.TOOLS if card.get("tools_available") else None
        models.append(model_from_card(card, loaded=None if state is None else state == "loaded",
                                      capabilities=capabilities(tools)))
    if models and "loaded" not in states and None not in states:
        if "reloading" in states:
            return Observation(status=Status.LOADING, error_class=ErrorClass.LOADING, models=tuple(models),
                               message=f"{response.path}: model(s) reloading")
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS, models=tuple(models),
                           message=f"{response.path}: every model is unloaded")
    return Observation(models=tuple(models))


@dataclass(frozen=True, slots=True)
class MistralRs:
    """`mistralrs serve`: `/health` is an unconditional `OK`, so the model list (with states) is the probe."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        await check_health(http, spec, self.defaults, authenticated=False)
        return read_mistralrs_models(await http.get(models_path(spec, self.defaults)))


# -- mlx-lm -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MLX:
    """mlx_lm.server: `/health` is 200 even before the model loads, and the list is a Hugging Face cache scan
    that can miss the served model, so the list is shown but never judged (models_authoritative=False)."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        await check_health(http, spec, self.defaults, authenticated=False)
        response = await http.get(models_path(spec, self.defaults))
        return Observation(models=read_models(expect_ok(response)), models_authoritative=False)
