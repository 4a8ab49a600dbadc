"""OpenAI-compatible family: the model list at `data[].id`, optionally a health route first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitord.model import ModelInfo, ProviderSpec
from monitord.providers.base import HttpResponse, Observation, ProbeHttp, TypeDefaults, expect_ok, openai_model_cards


def read_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Model cards of an OpenAI-style list; context length where the server adds one."""
    cards = openai_model_cards(response.json(), response.path)
    return tuple(_card_to_model(card) for card in cards)


def _card_to_model(card: Any) -> ModelInfo:
    context = card.get("max_model_len")
    return ModelInfo(
        id=card["id"],
        context_length=context if isinstance(context, int) else None,
        owned_by=card.get("owned_by") if isinstance(card.get("owned_by"), str) else None,
    )


@dataclass(frozen=True, slots=True)
class OpenAICompatible:
    """Generic OpenAI-compatible server: optional health route, then the model list."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health_path = spec.health_endpoint or self.defaults.health_path
        if health_path:
            expect_ok(await http.get(health_path))
        models = read_models(expect_ok(await http.get(spec.model_endpoint or self.defaults.models_path)))
        return Observation(models=models)
