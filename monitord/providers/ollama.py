"""Ollama's native API: `/api/version` (alive), `/api/tags` (models on disk), `/api/ps` (models in memory).

Ollama loads a model on first use and unloads it after `keep_alive`, so "not loaded" is normal, not degraded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitord.model import Capacity, ErrorClass, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    METADATA_FAILURES,
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_or_unknown,
    models_path,
)
from monitord.providers.capacity import read_ollama_ps

_VERSION_PATH = "/api/version"

# Ollama's capability words (types/model/capability.go) in monitord's vocabulary; unknown words are dropped.
_CAPABILITIES: Mapping[str, frozenset[str]] = {
    "completion": frozenset({"chat", "completion", "streaming"}),
    "tools": frozenset({"tools"}),
    "vision": frozenset({"vision"}),
    "embedding": frozenset({"embeddings"}),
    "thinking": frozenset({"reasoning"}),
    "audio": frozenset({"audio"}),
}


def read_version(response: HttpResponse) -> str:
    """`{"version": "0.13.0"}`; anything else is not Ollama."""
    body = response.json()
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not version:
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: no 'version' in the answer")
    return version


def read_tags(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Models on disk (`/api/tags`), loaded state unknown until joined with `/api/ps`."""
    return tuple(_entry_to_model(entry, loaded=None) for entry in _entries(response))


def read_ps(response: HttpResponse) -> tuple[ModelInfo, ...]:
    """Models in memory (`/api/ps`); `context_length` there is the allocated context."""
    return tuple(_entry_to_model(entry, loaded=True) for entry in _entries(response))


def merge(on_disk: Iterable[ModelInfo], in_memory: Iterable[ModelInfo] | None) -> tuple[ModelInfo, ...]:
    """Disk list with each model marked loaded or not; `in_memory` None means `/api/ps` was not available.

    A loaded model keeps the disk entry's details but reports the context it was actually loaded with.
    Models only in memory (e.g. a pulled-then-deleted model still resident) are appended.
    """
    if in_memory is None:
        return tuple(on_disk)
    loaded = {model.id: model for model in in_memory}
    merged: list[ModelInfo] = []
    for model in on_disk:
        resident = loaded.pop(model.id, None)
        merged.append(_with_loaded(model, resident))
    merged.extend(loaded.values())
    return tuple(merged)


def judge(models: tuple[ModelInfo, ...], version: str | None) -> Observation:
    if not models:
        return Observation(status=Status.DEGRADED, server_version=version, error_class=ErrorClass.EMPTY_MODELS,
                           message="no model pulled (/api/tags is empty)")
    return Observation(models=models, server_version=version)


def _with_loaded(model: ModelInfo, resident: ModelInfo | None) -> ModelInfo:
    if resident is None:
        return replace(model, loaded=False)
    return replace(model, loaded=True, context_length=resident.context_length or model.context_length)


def _entries(response: HttpResponse) -> list[Mapping[str, Any]]:
    body = response.json()
    entries = body.get("models") if isinstance(body, dict) else None
    if entries is None and isinstance(body, dict) and "models" in body:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and _name(e) for e in entries):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: 'models' is not a list of named models")
    return entries


def _name(entry: Mapping[str, Any]) -> str | None:
    for key in ("name", "model"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _entry_to_model(entry: Mapping[str, Any], *, loaded: bool | None) -> ModelInfo:
    details = entry.get("details")
    details = details if isinstance(details, dict) else {}
    words = entry.get("capabilities")
    capabilities: frozenset[str] = frozenset()
    if isinstance(words, list):
        capabilities = frozenset().union(*(_CAPABILITIES.get(w, frozenset()) for w in words if isinstance(w, str)))
    # /api/ps carries the allocated context at the top level; /api/tags the trained one in details
    context = entry.get("context_length") if loaded else details.get("context_length")
    return ModelInfo(
        id=_name(entry) or "",
        kind=_kind(words),
        context_length=_positive(context),
        loaded=loaded,
        size_bytes=_positive(entry.get("size")),
        family=_text(details.get("family")),
        parameter_size=_text(details.get("parameter_size")),
        quantization=_text(details.get("quantization_level")),
        capabilities=capabilities,
    )


def _kind(words: Any) -> ModelKind | None:
    if not isinstance(words, list):
        return None  # Ollama before capabilities were listed: unknown
    if "embedding" in words and "completion" not in words:
        return ModelKind.EMBEDDING
    if "vision" in words:
        return ModelKind.VISION
    return ModelKind.LLM if "completion" in words else ModelKind.OTHER


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class Ollama:
    """`/api/version`, `/api/tags`, `/api/ps`: three cheap requests, none of which touches a model.

    Ollama has no API key of its own. When it is bound to loopback it answers 403 with no body to a Host
    header it does not trust, which reads as AUTH here: point the provider at 127.0.0.1/localhost or set
    OLLAMA_HOST/OLLAMA_ORIGINS on the server.
    """

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        health_path = spec.health_endpoint or self.defaults.health_path or _VERSION_PATH
        health = await http.get(health_path)
        _explain_host_rejection(health)
        expect_ok(health)
        # a configured health path such as `/` ("Ollama is running") proves life but carries no version
        version = read_version(health) if health_path == _VERSION_PATH else None
        try:
            on_disk = read_tags(expect_ok(await http.get(models_path(spec, self.defaults))))
        except ProbeError as exc:  # the version route answered: an unreadable list leaves the models unknown
            return replace(models_or_unknown(exc, health), server_version=version)
        ps = await http.get("/api/ps")
        # /api/ps is younger than /api/tags (0.1.38): without it (or when it misbehaves) loaded stays unknown
        try:
            in_memory = None if ps.status == 404 else read_ps(expect_ok(ps))
        except ProbeError as exc:
            if exc.error_class not in METADATA_FAILURES:
                raise
            in_memory = None
        resident = read_ollama_ps(ps) if in_memory is not None else None
        observation = judge(merge(on_disk, in_memory), version)
        return replace(observation, capacity=Capacity(resident_models=resident) if resident is not None else None)


def _explain_host_rejection(response: HttpResponse) -> None:
    if response.status == 403 and not response.body:
        raise ProbeError(ErrorClass.AUTH, f"{response.path}: HTTP 403 with no body: Ollama refused the Host "
                         "header (it trusts only loopback/local names unless OLLAMA_HOST/OLLAMA_ORIGINS allow "
                         "more)", 403)
