"""ADAPTERS: the one mapping from a provider `type` to the adapter (and its defaults) that speaks to it."""

from __future__ import annotations

from collections.abc import Mapping

from monitord.providers.base import Adapter, TypeDefaults
from monitord.providers.openai import OpenAICompatible

_CHAT = frozenset({"chat", "completion", "streaming"})

ADAPTERS: Mapping[str, Adapter] = {
    "vllm": OpenAICompatible(TypeDefaults(port=8000, health_path="/health", summary="vLLM OpenAI server")),
    "localai": OpenAICompatible(TypeDefaults(port=8080, health_path="/readyz", summary="LocalAI")),
    "fastchat": OpenAICompatible(TypeDefaults(port=8000, summary="FastChat openai_api_server")),
    "textgen": OpenAICompatible(TypeDefaults(port=5000, health_path="/v1/internal/health",
                                             summary="text-generation-webui (--api)")),
    "lmstudio": OpenAICompatible(TypeDefaults(port=1234, summary="LM Studio local server")),
    "jan": OpenAICompatible(TypeDefaults(port=1337, summary="Jan local API server")),
    "tabbyapi": OpenAICompatible(TypeDefaults(port=5000, health_path="/health", summary="TabbyAPI")),
    "mlx": OpenAICompatible(TypeDefaults(port=8080, health_path="/health", summary="mlx_lm.server")),
    "mistralrs": OpenAICompatible(TypeDefaults(port=1234, health_path="/health", summary="mistral.rs serve")),
    "gpt4all": OpenAICompatible(TypeDefaults(port=4891, capabilities=frozenset({"chat", "completion"}),
                                             streaming=False, summary="GPT4All desktop API server")),
    "koboldai": OpenAICompatible(TypeDefaults(port=5001, summary="KoboldCpp / KoboldAI")),
    "ollama": OpenAICompatible(TypeDefaults(port=11434, models_path="/api/tags", health_path="/api/version",
                                            chat_path="/api/chat", summary="Ollama")),
    "llamacpp": OpenAICompatible(TypeDefaults(port=8080, health_path="/health", summary="llama.cpp llama-server")),
    "tgi": OpenAICompatible(TypeDefaults(port=3000, health_path="/health",
                                         summary="Hugging Face text-generation-inference")),
    "sglang": OpenAICompatible(TypeDefaults(port=30000, health_path="/health", summary="SGLang")),
    "openai": OpenAICompatible(TypeDefaults(port=8000, summary="any other OpenAI-compatible server")),
}

__all__ = ["ADAPTERS", "Adapter", "TypeDefaults"]
