"""ADAPTERS: the one mapping from a provider `type` to the adapter (and its defaults) that speaks to it."""

from __future__ import annotations

from collections.abc import Mapping

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

_CHAT = frozenset({"chat", "completion", "streaming"})
# KoboldCpp's port; `koboldcpp` names the same adapter, which also reads the older KoboldAI Client (port 5000)
_KOBOLD = TypeDefaults(port=5001, models_path="/api/v1/model", health_path="/api/extra/version",
                       summary="KoboldCpp / KoboldAI Client")

ADAPTERS: Mapping[str, Adapter] = {
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
    "koboldai": Kobold(_KOBOLD),
    "koboldcpp": Kobold(_KOBOLD),
    "ollama": Ollama(TypeDefaults(port=11434, models_path="/api/tags", health_path="/api/version",
                                  chat_path="/api/chat", summary="Ollama")),
    "llamacpp": LlamaCpp(TypeDefaults(port=8080, health_path="/health", summary="llama.cpp llama-server")),
    "tgi": TGI(TypeDefaults(port=3000, health_path="/health", summary="Hugging Face text-generation-inference")),
    "sglang": SGLang(TypeDefaults(port=30000, summary="SGLang")),
    "openai": OpenAICompatible(TypeDefaults(port=8000, summary="any other OpenAI-compatible server")),
}

__all__ = ["ADAPTERS", "Adapter", "TypeDefaults"]
