"""TabbyAPI: `/health` (open) plus the loaded model with its parameters from `/v1/model` (key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitord.model import Capability, ErrorClass, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_or_unknown,
    server_message,
)
from monitord.providers.openai import (
    as_mapping,
    capabilities,
    custom_path,
    int_or_none,
    model_from_card,
    read_models,
)

LOADED_MODEL_PATH = "/v1/model"


def read_health(response: HttpResponse) -> str | None:
    """None when healthy; else what `/health` complains about. TabbyAPI never clears a recorded issue, so a
    503 here can outlive the problem: it degrades the provider, it does not take it down."""
    if response.status != 503:
        expect_ok(response)
        return None
    try:
        body: Any = response.json()
    except ProbeError:
        body = None
    issues = body.get("issues") if isinstance(body, dict) else None
    if not isinstance(issues, list) or not issues:
        return f"{response.path}: HTTP 503 unhealthy"
    last = issues[-1].get("description") if isinstance(issues[-1], dict) else None
    return f"{response.path}: HTTP 503 unhealthy, {len(issues)} issue(s) recorded, last: {last}"


def read_loaded_model(response: HttpResponse) -> Observation:
    """`/v1/model`: the loaded model with `parameters` (context, vision); 503 when none is loaded."""
    if response.status == 503:
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS,
                           message=f"{response.path}: {server_message(response) or 'no model loaded'}")
    card = expect_ok(response).json()
    if not isinstance(card, dict) or not isinstance(card.get("id"), str):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected a model card with an id")
    parameters = as_mapping(card.get("parameters"))
    vision = bool(parameters.get("use_vision"))
    kind = ModelKind.VISION if vision else ModelKind.LLM
    model = model_from_card(
        card,
        kind=kind,
        context_length=int_or_none(parameters.get("max_seq_len")),
        loaded=True,
        capabilities=capabilities(Capability.VISION if vision else None, kind=kind),
    )
    return Observation(models=(model,))


def combine(health_problem: str | None, loaded: Observation) -> Observation:
    """A sticky unhealthy `/health` degrades an otherwise good answer; an empty one stays EMPTY_MODELS."""
    if health_problem is None:
        return loaded
    if loaded.status is Status.UP:
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.HTTP_5XX, models=loaded.models,
                           message=health_problem)
    return Observation(status=loaded.status, error_class=loaded.error_class, models=loaded.models,
                       message=f"{loaded.message}; {health_problem}")


@dataclass(frozen=True, slots=True)
class TabbyAPI:
    """Two requests. Refuses connections while the start-up model loads; later loads keep `/v1/model` at 503."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        answer = await http.get(spec.health_endpoint or self.defaults.health_path or "/health", authenticated=False)
        health = read_health(answer)
        custom = custom_path(spec.model_endpoint, self.defaults.models_path)
        response = await http.get(custom or LOADED_MODEL_PATH)
        try:
            if custom is None and response.status != 404:
                loaded = read_loaded_model(response)
            else:  # a listing path set by the user, or a build without /v1/model
                if custom is None:
                    response = await http.get(self.defaults.models_path)
                loaded = Observation(models=read_models(expect_ok(response)))
        except ProbeError as exc:  # /health answered: a model route that misbehaves leaves the model unknown
            if health is not None:
                raise
            loaded = models_or_unknown(exc, answer)
        return combine(health, loaded)
