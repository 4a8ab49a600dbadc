"""DOUBLES: provider type → the aiohttp app factory of its double (see tests/doubles/base.py for the framework).

One line per type; a test walks this mapping and the ADAPTERS registry and fails when a type has no double.
"""

from __future__ import annotations

from tests.doubles.base import DoubleControl, DoubleFactory, ProviderDouble, Scenario
from tests.doubles.kobold import koboldcpp_app
from tests.doubles.llamacpp import llamacpp_app
from tests.doubles.ollama import ollama_app

DOUBLES: dict[str, DoubleFactory] = {
    "koboldai": koboldcpp_app,  # KoboldAI Client: tests.doubles.kobold.koboldai_client_app
    "koboldcpp": koboldcpp_app,
    "llamacpp": llamacpp_app,
    "ollama": ollama_app,
}

__all__ = ["DOUBLES", "DoubleControl", "DoubleFactory", "ProviderDouble", "Scenario"]
