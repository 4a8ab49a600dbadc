"""Provider double fixtures: `provider_double(type, scenario="up", **options)` starts doubles and always stops them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.doubles import DOUBLES
from tests.doubles.base import DoubleControl, ProviderDouble, Scenario

StartDouble = Callable[..., Awaitable[ProviderDouble]]


@pytest.fixture
async def provider_double() -> AsyncIterator[StartDouble]:
    """Factory: `await provider_double("vllm", "loading", api_key="k", delay_s=0.5, jit=False)`.

    Keyword names that are DoubleControl fields set them; others go to `control.options` (family knobs).
    Every double started through the factory is stopped at teardown, whatever the test did.
    """
    started: list[ProviderDouble] = []

    async def start(provider_type: str, scenario: Scenario | str = Scenario.UP, **options: Any) -> ProviderDouble:
        try:
            factory = DOUBLES[provider_type]
        except KeyError:
            raise LookupError(f"no double registered for provider type {provider_type!r}") from None
        double = ProviderDouble(provider_type, factory, DoubleControl())
        started.append(double)
        await double.set(scenario, **options)
        await double.start()
        return double

    yield start
    for double in reversed(started):
        await double.stop()
