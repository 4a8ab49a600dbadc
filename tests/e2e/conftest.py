"""End-to-end fixtures: no `monitord` subprocess outlives the test that started it, pass or fail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.test_run import STARTED


@pytest.fixture(autouse=True)
async def _reap_daemons() -> AsyncIterator[None]:
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.communicate(), timeout=10)
