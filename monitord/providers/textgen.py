"""text-generation-webui (oobabooga) API: the loaded model from `/v1/internal/model/info`, where "None" means none."""

from __future__ import annotations

from dataclasses import dataclass

from monitord.model import ErrorClass, ModelInfo, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    openai_model_cards,
    server_message,
)
from monitord.providers.openai import custom_path, model_from_card, quantization_from_name, str_or_none

MODEL_INFO_PATH = "/v1/internal/model/info"
NO_MODEL = "None"  # the server writes the string "None", not null, when nothing is loaded


def check_host(response: HttpResponse) -> None:
    """The server rejects any Host that is not localhost/127.0.0.1 unless started with --listen/--public-api."""
    if response.status == 400 and "host header" in server_message(response).lower():
        raise ProbeError(ErrorClass.HTTP_4XX, f"{response.path}: HTTP 400 Invalid host header (text-generation-webui "
                         "accepts only localhost/127.0.0.1 without --listen)", 400)


def read_model_info(response: HttpResponse) -> Observation:
    """`{"model_name", "lora_names", "loader"}`; the model is loaded when the name is not "None"."""
    check_host(response)
    body = expect_ok(response).json()
    if not isinstance(body, dict) or "model_name" not in body:
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected an object with 'model_name'")
    name = str_or_none(body.get("model_name"))
    if name is None or name == NO_MODEL:
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS,
                           message=f"{response.path}: no model loaded (model_name {NO_MODEL!r})")
    model = ModelInfo(id=name, loaded=True, quantization=quantization_from_name(name))
    return Observation(models=(model,))


def read_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """`/v1/models` lists only the loaded model (or nothing)."""
    check_host(response)
    cards = openai_model_cards(expect_ok(response).json(), response.path)
    return tuple(model_from_card(card, loaded=True) for card in cards)


@dataclass(frozen=True, slots=True)
class TextGen:
    """One request: the model info route (needs the API key when one is set); `/v1/models` on builds without it.

    `/v1/internal/health` is not used: it says `ok` whatever the model does.
    """

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health_path = spec.health_endpoint or self.defaults.health_path
        if health_path:
            check_host(response := await http.get(health_path))
            expect_ok(response)
        custom = custom_path(spec.model_endpoint, self.defaults.models_path)
        if custom is None:
            response = await http.get(MODEL_INFO_PATH)
            if response.status != 404:
                return read_model_info(response)
        return Observation(models=read_models(await http.get(custom or self.defaults.models_path)))
