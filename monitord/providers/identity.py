"""Pure: tell which server answered from what its answers say about it, and whether that fits the configured type.

OpenAI-compatible servers look alike (a llama.cpp server answers `up` as most other types), so only signals a
server gives about itself count (the provider reference, "Identify the server by what it says about itself"):
its `Server` header, its own health or version body, its native routes, the `owned_by` of its model cards, its
404 page. Each signal is strong (unique to one server in its source) or weak (likely, not unique); only a strong
one can make a provider `misconfigured`, and a type that accepts every OpenAI server (`openai`) is never one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitord.model import Identity, ProviderSpec
from monitord.providers.base import OPTIONAL_BUDGET_SHARE, HttpResponse, ProbeHttp, optional_get


@dataclass(frozen=True, slots=True)
class Sighting:
    """One signal: what it says the server is, and whether no other server gives it."""

    identity: Identity
    strong: bool


# `owned_by` of model cards, as each server's source writes it.
_OWNED_BY: Mapping[str, str] = {
    "llamacpp": "llamacpp",
    "vllm": "vllm",
    "sglang": "sglang",
    "fastchat": "fastchat",
    "tabbyAPI": "tabbyapi",
    "koboldcpp": "koboldcpp",
    "humanity": "gpt4all",
    "organization_owner": "lmstudio",
}
# Types that accept what looks like another type: the Kobold pair share one API; Jan proxies llama.cpp.
_ALSO_ACCEPTS: Mapping[str, frozenset[str]] = {
    "koboldai": frozenset({"koboldcpp"}),
    "koboldcpp": frozenset({"koboldai"}),
    "jan": frozenset({"llamacpp"}),
}
ACCEPTS_ANY = frozenset({"openai", "auto"})

# Routes that identify a server, cheapest and most telling first: used by `type: auto` and, after a failed probe,
# to explain what answered instead. Each answer goes through `sight`; the first strong sighting ends the search.
DETECTION_PATHS: tuple[str, ...] = (
    "/",
    "/v1/models",
    "/api/extra/version",
    "/info",
    "/api/version",
    "/v1/internal/model/info",
    "/.well-known/serviceinfo",
    "/v1/models/capabilities",
    "/model_info",
    "/api/v0/models",
    "/api/v1/info/version",
)
# After a failed probe only the few routes that tell most servers apart are asked (a failing server is probed
# again soon: its probe must stay cheap). `/` alone names Ollama, SGLang, LM Studio, llama.cpp and KoboldCpp.
AFTER_FAILURE_PATHS: tuple[str, ...] = DETECTION_PATHS[:5]


def sight(response: HttpResponse) -> Sighting | None:
    """What one answer says about the server that gave it, if anything."""
    server = response.headers.get("Server", "")
    if "llama.cpp" in server:
        return _strong("llamacpp", None, "Server: llama.cpp header")
    body_start = response.body.lstrip()[:1]
    if body_start in (b"{", b"[", b'"'):
        body = response.json_or_none()  # the adapter has mostly parsed it already
        if body is not None:
            return _sight_json(response, body)
    text = response.body[:300].decode("utf-8", errors="replace")  # a 100 KB /metrics page needs no full decode
    if text.startswith("Ollama is running"):
        return _strong("ollama", None, f"GET {response.path}: 'Ollama is running'")
    if "HTTP Server is running, but this endpoint does not exist" in text:
        return _strong("koboldcpp", None, f"{response.path}: KoboldCpp's 404 page")
    if "No models are available" in text or "No running session found for model" in text:
        return _weak("jan", None, f"{response.path}: Jan's plain-text error")
    return None


def identify(responses: Iterable[HttpResponse]) -> Sighting | None:
    """The most telling sighting over several answers: the first strong one, else the first weak one."""
    weak: Sighting | None = None
    for response in responses:
        found = sight(response)
        if found is None:
            continue
        if found.strong:
            return found
        weak = weak or found
    return weak


async def detect(http: ProbeHttp, spec: ProviderSpec, seen: Iterable[HttpResponse] = (),
                 paths: Iterable[str] = DETECTION_PATHS) -> Sighting | None:
    """Ask `paths` until one answer identifies the server strongly (within twice the optional-route budget);
    `seen` are answers already at hand, read first, and their paths are not asked again. The best sighting found."""
    seen = list(seen)
    best = identify(seen)
    if best is not None and best.strong:
        return best
    asked = {response.path for response in seen}
    try:
        async with asyncio.timeout(spec.timeout_s * OPTIONAL_BUDGET_SHARE * 2):
            for path in (p for p in paths if p not in asked):
                response = await optional_get(http, path, spec)
                found = sight(response) if response is not None else None
                if found is not None and found.strong:
                    return found
                best = best or found
    except TimeoutError:
        pass
    return best


def accepts(provider_type: str, looks_like: str) -> bool:
    """Whether a provider configured as `provider_type` may be served by what looks like `looks_like`."""
    return (provider_type in ACCEPTS_ANY or looks_like == provider_type
            or looks_like in _ALSO_ACCEPTS.get(provider_type, frozenset()))


def mismatch(provider_type: str, sighting: Sighting | None) -> str | None:
    """The hint for a provider whose server is, by a strong signal, another type; None when it fits or nothing
    tells."""
    if sighting is None or not sighting.strong:
        return None
    looks_like = sighting.identity.looks_like
    if looks_like is None or accepts(provider_type, looks_like):
        return None
    version = f" {sighting.identity.version}" if sighting.identity.version else ""
    return (f"configured as {provider_type}, but the server looks like {looks_like}{version} "
            f"({sighting.identity.evidence}): use `type: {looks_like}` (or `type: auto`)")


def _strong(looks_like: str, version: str | None, evidence: str) -> Sighting:
    return Sighting(Identity(looks_like=looks_like, version=version, evidence=evidence), strong=True)


def _weak(looks_like: str, version: str | None, evidence: str) -> Sighting:
    return Sighting(Identity(looks_like=looks_like, version=version, evidence=evidence), strong=False)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _sight_json(response: HttpResponse, body: Any) -> Sighting | None:
    path = response.path
    if body == "SGLang is running":
        return _strong("sglang", None, f"GET {path}: 'SGLang is running'")
    if not isinstance(body, dict):
        return None
    for rule in _OBJECT_RULES:
        found = rule(path, body)
        if found is not None:
            return found
    return None


def _by_self_description(path: str, body: dict[str, Any]) -> Sighting | None:
    """Bodies where a server names itself (version and info routes)."""
    if body.get("result") == "KoboldCpp":
        return _strong("koboldcpp", _str(body.get("version")), f"{path}: result KoboldCpp")
    if body.get("router") == "text-generation-router":
        return _strong("tgi", _str(body.get("version")), f"{path}: router text-generation-router")
    software = body.get("software")
    if isinstance(software, dict) and software.get("name") == "TabbyAPI":
        return _strong("tabbyapi", _str(software.get("version")), f"{path}: software TabbyAPI")
    if path.endswith("/api/version") and set(body) == {"version"} and _str(body.get("version")):
        return _strong("ollama", _str(body.get("version")), f"{path}: Ollama's version answer")
    return None


def _by_body_shape(path: str, body: dict[str, Any]) -> Sighting | None:
    """Health, state and error bodies only one server writes."""
    if body.get("status") in ("healthy", "unhealthy") and isinstance(body.get("issues"), list):
        return _strong("tabbyapi", None, f"{path}: TabbyAPI's health body")
    if body.get("error") == "unhealthy" and body.get("error_type") == "healthcheck":
        return _strong("tgi", None, f"{path}: TGI's health-check error")
    if "model_name" in body and "loader" in body and "lora_names" in body:
        return _strong("textgen", None, f"{path}: text-generation-webui's model info")
    if str(body.get("error", "")).startswith("Unexpected endpoint or method"):
        return _strong("lmstudio", None, f"{path}: LM Studio's 'Unexpected endpoint' answer")
    if "is_generation" in body and "model_path" in body:
        return _strong("sglang", None, f"{path}: SGLang's model info")
    if body.get("status") == "starting" and path.endswith("/readyz"):
        return _strong("localai", None, f"{path}: LocalAI's readiness gate")
    error = body.get("error")
    if isinstance(error, dict) and error.get("type") == "not_found_error" and error.get("message") == "File Not Found":
        return _strong("llamacpp", None, f"{path}: llama.cpp's 404 body")
    return None


def _by_model_list(path: str, body: dict[str, Any]) -> Sighting | None:
    found = _sight_model_entries(path, body["models"]) if isinstance(body.get("models"), list) else None
    if found is None and isinstance(body.get("data"), list):
        found = _sight_cards(path, body["data"])
    return found


_OBJECT_RULES = (_by_self_description, _by_body_shape, _by_model_list)


def _sight_cards(path: str, cards: list[Any]) -> Sighting | None:
    dicts = [c for c in cards if isinstance(c, dict)]
    for card in dicts:
        if card.get("id") == "default" and card.get("root") == "default" and card.get("owned_by") == "local":
            return _strong("mistralrs", None, f"{path}: mistral.rs's synthetic 'default' model")
        if card.get("state") in ("loaded", "not-loaded") and "compatibility_type" in card:
            return _strong("lmstudio", None, f"{path}: LM Studio's model states")
        if isinstance(card.get("capabilities"), list) and "input_modalities" in card:
            return _strong("localai", None, f"{path}: LocalAI's capability listing")
        owner = card.get("owned_by")
        if isinstance(owner, str) and owner in _OWNED_BY:
            return _strong(_OWNED_BY[owner], None, f"{path}: models owned_by {owner!r}")
    if dicts and all(c.get("owned_by") == "user" for c in dicts):
        created = {c.get("created") for c in dicts}
        return _weak("jan" if created == {1} else "textgen", None, f"{path}: models owned_by 'user'")
    return None


def _sight_model_entries(path: str, entries: list[Any]) -> Sighting | None:
    dicts = [e for e in entries if isinstance(e, dict)]
    for entry in dicts:
        digest = str(entry.get("digest", ""))
        if digest.startswith("sha256:sglang000"):
            return _strong("sglang", None, f"{path}: SGLang's imitation of Ollama's list")
        if entry.get("name") == "koboldcpp" or entry.get("model") == "koboldcpp":
            return _strong("koboldcpp", None, f"{path}: KoboldCpp's imitation of Ollama's list")
        if "key" in entry and ("loaded_instances" in entry or "max_context_length" in entry):
            return _strong("lmstudio", None, f"{path}: LM Studio's model list")
    if path.endswith(("/api/tags", "/api/ps")) and dicts and all(len(str(e.get("digest", ""))) == 64 for e in dicts):
        return _strong("ollama", None, f"{path}: Ollama's model list")
    return None
