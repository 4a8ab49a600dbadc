"""DOUBLES: provider type → the aiohttp app factory of its double (see tests/doubles/base.py for the framework).

One line per type; a test walks this mapping and the ADAPTERS registry and fails when a type has no double.
"""

from __future__ import annotations

from tests.doubles.base import DoubleControl, DoubleFactory, ProviderDouble, Scenario
from tests.doubles.kobold import koboldcpp_app
from tests.doubles.llamacpp import llamacpp_app
from tests.doubles.lmstudio import lmstudio_app
from tests.doubles.localai import localai_app
from tests.doubles.ollama import ollama_app
from tests.doubles.openai import fastchat_app, gpt4all_app, jan_app, mistralrs_app, mlx_app, openai_app, vllm_app
from tests.doubles.sglang import sglang_app
from tests.doubles.tabby import tabby_app
from tests.doubles.textgen import textgen_app
from tests.doubles.tgi import tgi_app

DOUBLES: dict[str, DoubleFactory] = {
    "koboldai": koboldcpp_app,  # KoboldAI Client: tests.doubles.kobold.koboldai_client_app
    "koboldcpp": koboldcpp_app,
    "llamacpp": llamacpp_app,
    "ollama": ollama_app,
    "vllm": vllm_app,
    "localai": localai_app,
    "fastchat": fastchat_app,
    "textgen": textgen_app,
    "lmstudio": lmstudio_app,
    "jan": jan_app,
    "tabbyapi": tabby_app,
    "mlx": mlx_app,
    "mistralrs": mistralrs_app,
    "gpt4all": gpt4all_app,
    "tgi": tgi_app,
    "sglang": sglang_app,
    "openai": openai_app,
    "auto": llamacpp_app,  # `type: auto` detects whatever answers; a llama.cpp server stands in
}

__all__ = ["DOUBLES", "DoubleControl", "DoubleFactory", "ProviderDouble", "Scenario"]
