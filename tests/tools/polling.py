"""Waiting for a condition in tests: poll it with a deadline, never sleep a fixed time to synchronise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], timeout_s: float, what: str, *, every_s: float = 0.05) -> float:
    """Poll `check` (sync, or returning an awaitable) until it is truthy; the seconds it took. Fails the test,
    naming `what`, when `timeout_s` passes first."""
    started = time.monotonic()
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s:g}s: {what}"
        await asyncio.sleep(every_s)
