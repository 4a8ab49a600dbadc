"""SGLang: the model list plus `/model_info` flags. `/health` is not probed unless configured: by default it
pushes a one-token generation through the scheduler and polls in 1 s steps, so it measures nothing useful."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capability, ErrorClass, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_path,
    optional_get,
)
from monitord.providers.capacity import SGLANG_METRICS, read_metrics
from monitord.providers.openai import capabilities, read_served_models

MODEL_INFO_PATHS = ("/model_info", "/get_model_info")  # the second is the deprecated alias older builds have


def read_health(response: HttpResponse) -> Observation | None:
    """An opted-in `/health`: 503 while warming up (also when shutting down or the scheduler is stuck)."""
    if response.status == 503:
        return Observation(status=Status.LOADING, error_class=ErrorClass.LOADING,
                           message=f"{response.path}: HTTP 503 (warming up, shutting down or stuck)")
    expect_ok(response)
    return None


def read_model_info(response: HttpResponse) -> dict[str, Any] | None:
    """`/model_info` as a dict, or None when the route is missing or does not answer JSON (it only enriches)."""
    if not 200 <= response.status < 300:
        return None
    try:
        body = response.json()
    except ProbeError:
        return None
    return body if isinstance(body, dict) else None


def apply_model_info(models: tuple[ModelInfo, ...], info: dict[str, Any] | None) -> tuple[ModelInfo, ...]:
    """One engine serves every card (base and LoRA), so its flags apply to all: vision = image understanding,
    embeddings = not a generation model, tools = a tool-call parser is configured."""
    if info is None:
        return models
    generation = info.get("is_generation") is not False
    vision = bool(info.get("has_image_understanding"))
    kind = ModelKind.EMBEDDING if not generation else ModelKind.VISION if vision else ModelKind.LLM
    caps = capabilities(
        Capability.VISION if vision else None,
        Capability.AUDIO if info.get("has_audio_understanding") else None,
        Capability.TOOLS if info.get("tool_call_parser") else None,
        Capability.REASONING if info.get("reasoning_parser") else None,
        None if generation else Capability.EMBEDDINGS,
        kind=kind,
    )
    architectures = info.get("architectures")
    family = info.get("model_type") if isinstance(info.get("model_type"), str) else None
    if family is None and isinstance(architectures, list) and architectures:
        family = str(architectures[0])
    return tuple(replace(m, kind=kind, capabilities=m.capabilities | caps, family=m.family or family)
                 for m in models)


@dataclass(frozen=True, slots=True)
class SGLang:
    """`/v1/models` then `/model_info` (both need the key when --api-key is set); `/health` only if configured."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health_path = spec.health_endpoint or self.defaults.health_path
        if health_path:
            not_ready = read_health(await http.get(health_path, authenticated=False))
            if not_ready is not None:
                return not_ready
        models = read_served_models(expect_ok(await http.get(models_path(spec, self.defaults))))
        info = None
        for path in MODEL_INFO_PATHS:
            info = read_model_info(response := await http.get(path))
            if info is not None or response.status != 404:
                break
        # /metrics is always open but answers only with --enable-metrics (else 404: capacity unknown)
        load = read_metrics(await optional_get(http, "/metrics", spec, authenticated=False), SGLANG_METRICS)
        return Observation(models=apply_model_info(models, info), capacity=load)
