"""LM Studio: the native model listings say what is loaded, which `/v1/models` cannot (JIT lists every download).

Newest listing first (`/api/v1/models`, 0.4+), then `/api/v0/models` (0.3.6+), then `/v1/models`. LM Studio
answers unknown routes with 200 `{"error": "Unexpected endpoint or method. ..."}`, so that body means "missing".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capability, Capacity, ErrorClass, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    openai_model_cards,
)
from monitord.providers.capacity import resident_from_models
from monitord.providers.openai import (
    as_mapping,
    capabilities,
    custom_path,
    int_or_none,
    model_from_card,
    read_models,
    str_or_none,
)

V1_MODELS_PATH = "/api/v1/models"
V0_MODELS_PATH = "/api/v0/models"
_V0_KINDS: Mapping[str, ModelKind] = {"llm": ModelKind.LLM, "vlm": ModelKind.VISION,
                                      "embeddings": ModelKind.EMBEDDING}


def is_unknown_route(response: HttpResponse) -> bool:
    """404, or LM Studio's 200 `{"error": "Unexpected endpoint or method. (GET /x)"}` for a route it lacks."""
    if response.status == 404:
        return True
    if response.status != 200 or b"Unexpected endpoint" not in response.body[:200]:
        return False
    try:
        body = response.json()
    except ProbeError:
        return False
    return isinstance(body, dict) and str(body.get("error", "")).startswith("Unexpected endpoint")


def read_v1_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """`/api/v1/models`: every downloaded model, `loaded_instances` for the ones in memory."""
    body = expect_ok(response).json()
    entries = body.get("models") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("key"), str)
                                                for e in entries):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected 'models' with keys")
    return tuple(_v1_model(entry) for entry in entries)


def _v1_model(entry: Mapping[str, Any]) -> ModelInfo:
    instances = [i for i in entry.get("loaded_instances") or () if isinstance(i, dict)]
    allocated = int_or_none(as_mapping(instances[0].get("config")).get("context_length")) if instances else None
    flags = as_mapping(entry.get("capabilities"))
    embedding = entry.get("type") == "embedding"
    kind = ModelKind.EMBEDDING if embedding else ModelKind.VISION if flags.get("vision") else ModelKind.LLM
    caps = capabilities(
        Capability.VISION if flags.get("vision") else None,
        Capability.TOOLS if flags.get("trained_for_tool_use") else None,
        Capability.REASONING if flags.get("reasoning") else None,
        Capability.EMBEDDINGS if embedding else None,
        kind=kind,
    )
    return ModelInfo(
        id=entry["key"],
        kind=kind,
        context_length=allocated or int_or_none(entry.get("max_context_length")),
        loaded=bool(instances),
        size_bytes=int_or_none(entry.get("size_bytes")),
        family=str_or_none(entry.get("architecture")),
        parameter_size=str_or_none(entry.get("params_string")),
        quantization=str_or_none(as_mapping(entry.get("quantization")).get("name")),
        capabilities=caps,
        owned_by=str_or_none(entry.get("publisher")),
    )


def read_v0_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """`/api/v0/models`: `state` loaded / not-loaded, `type` llm / vlm / embeddings, allocated context."""
    return tuple(_v0_model(card) for card in openai_model_cards(expect_ok(response).json(), response.path))


def _v0_model(card: Mapping[str, Any]) -> ModelInfo:
    kind = _V0_KINDS.get(str(card.get("type")))
    caps = capabilities(Capability.VISION if kind is ModelKind.VISION else None,
                        Capability.EMBEDDINGS if kind is ModelKind.EMBEDDING else None, kind=kind)
    state = card.get("state")
    return model_from_card(
        card,
        kind=kind,
        context_length=int_or_none(card.get("loaded_context_length")) or int_or_none(card.get("max_context_length")),
        loaded=state == "loaded" if isinstance(state, str) else None,
        family=str_or_none(card.get("arch")),
        quantization=str_or_none(card.get("quantization")),
        capabilities=caps,
        owned_by=str_or_none(card.get("publisher")),
    )


def judge_jit(models: tuple[ModelInfo, ...], openai_list: tuple[ModelInfo, ...] | None) -> Observation:
    """Nothing loaded is fine while JIT loading is on (`/v1/models` still lists downloads); with JIT off an
    empty `/v1/models` means no model can be served."""
    if openai_list is not None and not openai_list and models:
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS, models=models,
                           message="no model loaded and JIT loading is off")
    return Observation(models=models)


@dataclass(frozen=True, slots=True)
class LMStudio:
    """1 request on LM Studio 0.4+ with a model loaded; 2 when nothing is loaded (JIT check) or on 0.3.x."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        custom = custom_path(spec.model_endpoint, self.defaults.models_path)
        if custom is not None:
            return Observation(models=read_models(expect_ok(await http.get(custom))))
        response = await http.get(V1_MODELS_PATH)
        reader = read_v1_models
        if is_unknown_route(response):
            response, reader = await http.get(V0_MODELS_PATH), read_v0_models
        if is_unknown_route(response):  # before 0.3.6: only the OpenAI list, which cannot tell loaded models
            return Observation(models=read_models(expect_ok(await http.get(self.defaults.models_path))))
        models = reader(response)
        # the native listings say which models are in memory: one not among them loads on first use (JIT)
        load = Capacity(resident_models=resident_from_models(models))
        if any(m.loaded for m in models):
            return Observation(models=models, capacity=load)
        openai_list = read_models(expect_ok(await http.get(self.defaults.models_path)))
        return replace(judge_jit(models, openai_list), capacity=load)
