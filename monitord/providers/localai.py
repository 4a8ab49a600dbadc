"""LocalAI: the readiness gate, then the capability listing (the plain list on builds that lack it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capability, ErrorClass, ModelInfo, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_or_unknown,
    openai_model_cards,
)
from monitord.providers.openai import custom_path, kind_for, model_from_card, read_version, str_or_none

# LocalAI's capability strings that mean one of ours; the others (edit, tts, image, video, ...) are kept as is.
_CAPABILITY_NAMES: Mapping[str, str] = {
    "thinking": Capability.REASONING,
    "transcript": Capability.AUDIO,
}
_MODALITY_CAPABILITIES: Mapping[str, str] = {"image": Capability.VISION, "audio": Capability.AUDIO}


def read_readiness(response: HttpResponse) -> Observation | None:
    """`/readyz`: None when ready (200, or 404 on builds without the gate); LOADING during the start-up preload."""
    if response.status == 404 or 200 <= response.status < 300:
        return None
    if response.status == 503:
        try:
            body: Any = response.json() if response.body else None
        except ProbeError:  # a non-JSON 503 is an ordinary 5xx below
            body = None
        if isinstance(body, dict) and body.get("status") == "starting":
            reason = str_or_none(body.get("reason")) or "starting"
            return Observation(status=Status.LOADING, error_class=ErrorClass.LOADING,
                               message=f"{response.path}: {reason}")
    expect_ok(response)
    return None


def read_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """`/v1/models/capabilities` (or `/v1/models`): installed models, loaded or not (backends start lazily)."""
    return tuple(_card_to_model(card) for card in openai_model_cards(response.json(), response.path))


def _card_to_model(card: Mapping[str, Any]) -> ModelInfo:
    raw = card.get("capabilities")
    if not isinstance(raw, list):  # plain list, or a loose model file without a config: nothing is known
        return model_from_card(card)
    names = {_CAPABILITY_NAMES.get(str(name), str(name)) for name in raw}
    for modality in card.get("input_modalities") or ():
        if modality in _MODALITY_CAPABILITIES:
            names.add(_MODALITY_CAPABILITIES[modality])
    return model_from_card(card, kind=kind_for(names), capabilities=frozenset(names))


@dataclass(frozen=True, slots=True)
class LocalAI:
    """`/readyz` (open), `/v1/models/capabilities` (key), `/version` (key when auth is on)."""

    defaults: TypeDefaults
    capabilities_path: str = "/v1/models/capabilities"

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        ready = await http.get(spec.health_endpoint or self.defaults.health_path or "/readyz", authenticated=False)
        not_ready = read_readiness(ready)
        if not_ready is not None:
            return not_ready
        models_path = custom_path(spec.model_endpoint, self.defaults.models_path) or self.capabilities_path
        response = await http.get(models_path)
        if response.status in (404, 405) and models_path == self.capabilities_path:
            response = await http.get(self.defaults.models_path)  # builds before the capability listing
        try:
            observation = Observation(models=read_models(expect_ok(response)))
        except ProbeError as exc:  # /readyz said ready: an unreadable list leaves the models unknown
            observation = models_or_unknown(exc, ready)
        return replace(observation, server_version=read_version(await http.get("/version")))
