"""llama.cpp `llama-server`: `/health` (503 on every route while loading), the rich `/v1/models`, `/props`.

Pure readers first, then `LlamaCpp.observe`, which only puts them in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capacity, ErrorClass, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers import capacity
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    error_for_status,
    expect_ok,
    models_or_unknown,
    models_path,
    openai_model_cards,
    optional_get,
    server_message,
)

_TEXT_CAPABILITIES = frozenset({"chat", "completion", "streaming"})
_ROUTER_LOADED, _ROUTER_LOADING = "loaded", "loading"


def is_loading(response: HttpResponse) -> bool:
    """The server's "model not ready yet" answer, which it gives on every route (health, models, props).

    Current builds: 503 `{"error": {"message": "Loading model", "type": "unavailable_error"}}`;
    2024 builds: 503 `{"status": "loading model"}`.
    """
    if response.status != 503:
        return False
    return "loading model" in server_message(response).lower() or b'"loading model"' in response.body.lower()


def read_health(response: HttpResponse) -> Observation | None:
    """None when `/health` says ready; a LOADING observation while the model loads; else the HTTP error."""
    if is_loading(response):
        return _loading("model is loading (HTTP 503 Loading model)")
    expect_ok(response)
    return None


def read_models(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """`data[]` cards (meta: n_ctx, size, n_params, ftype; router status) joined with `models[]` capabilities."""
    body = response.json()
    cards = openai_model_cards(body, response.path)
    ollama_style = _capabilities_by_name(body.get("models"))
    return tuple(_card_to_model(card, ollama_style) for card in cards)


def read_version(response: HttpResponse) -> str | None:
    """`build_info` of `/props` (e.g. `b7120-4a5b6c7d`), None when absent or unknown."""
    body = response.json()
    if not isinstance(body, dict):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected a JSON object")
    build = body.get("build_info")
    return build if isinstance(build, str) and build and build != "b0-unknown" else None


@dataclass(frozen=True, slots=True)
class Props:
    """What `/props` says that the probe uses: the build, the slot count, and which optional routes are on."""

    version: str | None = None
    total_slots: int | None = None
    slots_route: bool = True  # `endpoint_slots` (absent before the flag existed: try the route)
    metrics_route: bool = False  # `endpoint_metrics`: /metrics answers only with --metrics


def read_props(response: HttpResponse) -> Props:
    """`/props` of a ready server (the version as read_version reads it)."""
    body = response.json()
    if not isinstance(body, dict):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected a JSON object")
    return Props(version=read_version(response), total_slots=capacity.llamacpp_total_slots(body),
                 slots_route=body.get("endpoint_slots") is not False,
                 metrics_route=body.get("endpoint_metrics") is True)


def judge_models(models: tuple[ModelInfo, ...], router_states: Mapping[str, str]) -> Observation:
    """Status from the model list. Router mode (cards carry a status) is UP only when a model is loaded."""
    if not models:
        return Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS,
                           message="the server lists no model")
    if not router_states or _ROUTER_LOADED in router_states.values():
        return Observation(models=models)
    if _ROUTER_LOADING in router_states.values():
        return Observation(status=Status.LOADING, models=models, error_class=ErrorClass.LOADING,
                           message="router mode: a model is loading, none loaded yet")
    return Observation(status=Status.DEGRADED, models=models, error_class=ErrorClass.EMPTY_MODELS,
                       message=f"router mode: none of {len(models)} known models is loaded")


def router_states(response: HttpResponse) -> dict[str, str]:
    """Model id → `status.value` for router-mode listings; empty for a single-model server."""
    states: dict[str, str] = {}
    for card in openai_model_cards(response.json(), response.path):
        status = card.get("status")
        if isinstance(status, dict) and isinstance(status.get("value"), str):
            states[card["id"]] = status["value"]
    return states


def human_count(count: int) -> str:
    """Parameter count the way Ollama and model cards write it: 7615616512 → `7.6B`, 137000000 → `137M`."""
    for scale, suffix in ((1_000_000_000_000, "T"), (1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if count >= scale:
            value = count / scale
            text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(count)


def _loading(message: str) -> Observation:
    return Observation(status=Status.LOADING, error_class=ErrorClass.LOADING, message=message)


def _capabilities_by_name(entries: Any) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    if not isinstance(entries, list):
        return found
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("capabilities"), list):
            continue
        capabilities = frozenset(c for c in entry["capabilities"] if isinstance(c, str))
        for key in ("name", "model"):
            if isinstance(entry.get(key), str):
                found[entry[key]] = capabilities
    return found


def _card_to_model(card: Mapping[str, Any], ollama_style: Mapping[str, frozenset[str]]) -> ModelInfo:
    meta = _object(card.get("meta"))
    inputs = _object(card.get("architecture")).get("input_modalities")
    modalities = frozenset(m for m in inputs if isinstance(m, str)) if isinstance(inputs, list) else frozenset()
    server_caps = ollama_style.get(card["id"], frozenset())
    vision = "multimodal" in server_caps or "image" in modalities
    capabilities = set(_TEXT_CAPABILITIES)
    if vision:
        capabilities.add("vision")
    if "audio" in modalities:
        capabilities.add("audio")
    status = card.get("status")
    loaded = status.get("value") == _ROUTER_LOADED if isinstance(status, dict) else True
    n_params = _int(meta.get("n_params"))
    ftype = meta.get("ftype")
    return ModelInfo(
        id=card["id"],
        kind=ModelKind.VISION if vision else ModelKind.LLM,
        context_length=_int(meta.get("n_ctx")),
        loaded=loaded,
        size_bytes=_int(meta.get("size")),
        parameter_size=human_count(n_params) if n_params else None,
        quantization=ftype if isinstance(ftype, str) and ftype else None,
        capabilities=frozenset(capabilities),
        owned_by=card.get("owned_by") if isinstance(card.get("owned_by"), str) else None,
    )


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class LlamaCpp:
    """`/health`, then `/v1/models`, then `/props`.

    `/health` and `/v1/models` stay public under `--api-key`, so only `/props` proves the key works: it is
    the cheapest protected route and brings the build version with it. A 401 there is an AUTH failure.
    """

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health = await http.get(spec.health_endpoint or self.defaults.health_path or "/health")
        not_ready = read_health(health)
        if not_ready is not None:
            return not_ready
        listing = await http.get(models_path(spec, self.defaults))
        if is_loading(listing):
            return _loading("model is loading (HTTP 503 Loading model)")
        try:
            observation = judge_models(read_models(expect_ok(listing)), router_states(listing))
        except ProbeError as exc:  # /health said ready: a list that cannot be read leaves the models unknown
            observation = models_or_unknown(exc, health)
        props_answer = await http.get("/props")
        if is_loading(props_answer):
            return _loading("model is loading (HTTP 503 Loading model)")
        if props_answer.status in (401, 403):
            raise error_for_status(props_answer)
        props = read_props(props_answer) if props_answer.status == 200 else Props(slots_route=False)
        load = await self._capacity(http, spec, props) if observation.status is not Status.LOADING else None
        return replace(observation, server_version=props.version, capacity=load)

    async def _capacity(self, http: ProbeHttp, spec: ProviderSpec, props: Props) -> Capacity | None:
        """`/slots` (busy slots) when on, `/metrics` (queue, tokens) only when `/props` says it is on."""
        slots = capacity.read_llamacpp_slots(await optional_get(http, "/slots", spec)) if props.slots_route else None
        metrics = (capacity.read_metrics(await optional_get(http, "/metrics", spec), capacity.LLAMACPP_METRICS)
                   if props.metrics_route else None)
        total = Capacity(slots_total=props.total_slots) if props.total_slots is not None else None
        return capacity.merge(slots, metrics, total)
