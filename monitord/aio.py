"""asyncio helpers that keep a cancellation.

On Python 3.11, `asyncio.wait_for(event.wait(), t)` swallows a cancel that arrives as the event is set (the
result wins, CPython gh-86296): a loop built on it ignores the one `cancel()` a stop sends and never ends, so
`Daemon.stop()` hung. `asyncio.timeout` counts cancellations instead, and loses none.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passed; True when it was set. A cancel always propagates."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def get_within(queue: asyncio.Queue[T], timeout_s: float) -> T:
    """The next item of `queue`, or TimeoutError after `timeout_s`. A cancel always propagates."""
    async with asyncio.timeout(timeout_s):
        return await queue.get()
