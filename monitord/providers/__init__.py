"""ADAPTERS: the one mapping from a provider `type` to the adapter (and its defaults) that speaks to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from monitord.model import ProviderSpec, ProviderUrls
from monitord.providers.auto import Auto
from monitord.providers.base import Adapter, TypeDefaults
from monitord.providers.kobold import Kobold
from monitord.providers.llamacpp import LlamaCpp
from monitord.providers.lmstudio import LMStudio
from monitord.providers.localai import LocalAI
from monitord.providers.ollama import Ollama
from monitord.providers.openai import MLX, VLLM, FastChat, GPT4All, Jan, MistralRs, OpenAICompatible
from monitord.providers.sglang import SGLang
from monitord.providers.tabby import TabbyAPI
from monitord.providers.textgen import TextGen
from monitord.providers.tgi import TGI
from monitord.text import MASK, redact_url

_CHAT = frozenset({"chat", "completion", "streaming"})
# KoboldCpp's port; `koboldcpp` names the same adapter, which also reads the older KoboldAI Client (port 5000)
_KOBOLD = TypeDefaults(port=5001, models_path="/api/v1/model", health_path="/api/extra/version",
                       summary="KoboldCpp / KoboldAI Client")

_TYPES: Mapping[str, Adapter] = {
    "vllm": VLLM(TypeDefaults(port=8000, health_path="/health", summary="vLLM OpenAI server")),
    "localai": LocalAI(TypeDefaults(port=8080, health_path="/readyz", summary="LocalAI")),
    "fastchat": FastChat(TypeDefaults(port=8000, summary="FastChat openai_api_server")),
    "textgen": TextGen(TypeDefaults(port=5000, summary="text-generation-webui (--api)")),
    "lmstudio": LMStudio(TypeDefaults(port=1234, summary="LM Studio local server")),
    "jan": Jan(TypeDefaults(port=1337, summary="Jan local API server")),
    "tabbyapi": TabbyAPI(TypeDefaults(port=5000, health_path="/health", summary="TabbyAPI")),
    "mlx": MLX(TypeDefaults(port=8080, summary="mlx_lm.server")),
    "mistralrs": MistralRs(TypeDefaults(port=1234, summary="mistral.rs serve")),
    "gpt4all": GPT4All(TypeDefaults(port=4891, capabilities=frozenset({"chat", "completion"}), streaming=False,
                                    summary="GPT4All desktop API server")),
    # KoboldAI Client speaks only its own /api/v1; KoboldCpp also serves the OpenAI API under /v1
    "koboldai": Kobold(replace(_KOBOLD, api_base_path=None)),
    "koboldcpp": Kobold(_KOBOLD),
    "ollama": Ollama(TypeDefaults(port=11434, models_path="/api/tags", health_path="/api/version",
                                  chat_path="/api/chat", summary="Ollama")),
    "llamacpp": LlamaCpp(TypeDefaults(port=8080, health_path="/health", summary="llama.cpp llama-server")),
    "tgi": TGI(TypeDefaults(port=3000, health_path="/health", summary="Hugging Face text-generation-inference")),
    "sglang": SGLang(TypeDefaults(port=30000, summary="SGLang")),
    "openai": OpenAICompatible(TypeDefaults(port=8000, summary="any other OpenAI-compatible server")),
}
ADAPTERS: Mapping[str, Adapter] = {
    **_TYPES,
    # detects the server on the port and probes it as that type (providers/auto.py); default port: llama.cpp's
    "auto": Auto(TypeDefaults(port=8080, summary="detect the server type from its answers"), _TYPES),
}

_CHAT_SUFFIX = "/chat/completions"


def without_userinfo(url: str) -> str:
    """`url` with any user:password@ removed (hostile ones too, see text.redact_url): a URL to call, not to show."""
    redacted = redact_url(url)
    scheme, sep, rest = redacted.partition("://")
    if rest.startswith(MASK + "@"):
        return f"{scheme}{sep}{rest.removeprefix(MASK + '@')}"
    return redacted


def provider_urls(spec: ProviderSpec) -> ProviderUrls:
    """Where a caller sends requests to `spec`: its base URL, OpenAI-compatible base and chat URL.

    A configured `chat_endpoint` wins; one ending in /chat/completions also sets the OpenAI base in front of it.
    """
    endpoint = without_userinfo(spec.base_url)
    adapter = ADAPTERS.get(spec.type)
    base_path = adapter.defaults.api_base_path if adapter is not None else "/v1"
    api_base = endpoint + base_path if base_path is not None else None
    if spec.chat_endpoint:
        if spec.chat_endpoint.endswith(_CHAT_SUFFIX):
            api_base = endpoint + spec.chat_endpoint.removesuffix(_CHAT_SUFFIX)
        return ProviderUrls(endpoint, api_base, endpoint + spec.chat_endpoint)
    return ProviderUrls(endpoint, api_base, api_base + _CHAT_SUFFIX if api_base is not None else None)


__all__ = ["ADAPTERS", "Adapter", "TypeDefaults", "provider_urls", "without_userinfo"]
