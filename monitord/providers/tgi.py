"""Hugging Face text-generation-inference: `/health` and `/info`, both open even when an api key is set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from monitord.model import Capability, ErrorClass, ModelInfo, ModelKind, ProviderSpec
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_or_unknown,
    optional_get,
)
from monitord.providers.capacity import TGI_METRICS, read_metrics
from monitord.providers.openai import capabilities, custom_path, int_or_none, read_models, str_or_none

INFO_PATH = "/info"
_PIPELINE_KINDS: Mapping[str, ModelKind] = {
    "text-generation": ModelKind.LLM,
    "text2text-generation": ModelKind.LLM,
    "image-text-to-text": ModelKind.VISION,
    "feature-extraction": ModelKind.EMBEDDING,
    "sentence-similarity": ModelKind.EMBEDDING,
}


def read_health(response: HttpResponse) -> None:
    """200 empty when healthy; 503 `{"error": "unhealthy", "error_type": "healthcheck"}` when a shard failed."""
    if response.status == 503:
        raise ProbeError(ErrorClass.HTTP_5XX, f"{response.path}: HTTP 503 unhealthy (model health check failed)",
                         503)
    expect_ok(response)


def read_info(response: HttpResponse) -> tuple[ModelInfo, str | None]:
    """`/info`: the one model (`model_id`), its context (`max_total_tokens`), its pipeline and the version."""
    body = expect_ok(response).json()
    if not isinstance(body, dict) or not isinstance(body.get("model_id"), str):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected an object with 'model_id'")
    kind = _PIPELINE_KINDS.get(str(body.get("model_pipeline_tag")))
    model = ModelInfo(
        id=body["model_id"],
        kind=kind,
        context_length=int_or_none(body.get("max_total_tokens")),
        loaded=True,
        capabilities=capabilities(Capability.VISION if kind is ModelKind.VISION else None,
                                  Capability.EMBEDDINGS if kind is ModelKind.EMBEDDING else None, kind=kind),
    )
    return model, str_or_none(body.get("version"))


@dataclass(frozen=True, slots=True)
class TGI:
    """Three open requests (`/health`, `/info`, `/metrics`). TGI does not listen until its shards are loaded and
    warmed up."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health = await http.get(spec.health_endpoint or self.defaults.health_path or "/health", authenticated=False)
        read_health(health)
        custom = custom_path(spec.model_endpoint, self.defaults.models_path)
        try:
            if custom is not None:
                observation = Observation(models=read_models(expect_ok(await http.get(custom))))
            else:
                model, version = read_info(await http.get(INFO_PATH, authenticated=False))
                observation = Observation(models=(model,), server_version=version)
        except ProbeError as exc:  # /health passed: an unreadable /info leaves the model unknown
            observation = models_or_unknown(exc, health)
        load = read_metrics(await optional_get(http, "/metrics", spec, authenticated=False), TGI_METRICS)
        return replace(observation, capacity=load)
