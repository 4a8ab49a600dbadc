"""DOUBLES: provider type → the aiohttp app factory of its double (see tests/doubles/base.py for the framework).

One line per type; a test walks this mapping and the ADAPTERS registry and fails when a type has no double.
"""

from __future__ import annotations

from tests.doubles.base import DoubleControl, DoubleFactory, ProviderDouble, Scenario

DOUBLES: dict[str, DoubleFactory] = {}

__all__ = ["DOUBLES", "DoubleControl", "DoubleFactory", "ProviderDouble", "Scenario"]
