"""The supervisor's stop ends every task, even one that swallowed a cancel; `aio` waits never lose a cancel."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from monitord.aio import get_within, wait_event
from monitord.supervisor import Supervisor


async def test_a_cancel_racing_the_event_is_not_lost() -> None:
    """The race that hung Daemon.stop on 3.11: the event is set in the same loop step as the cancel."""
    event = asyncio.Event()
    looped = 0

    async def loop() -> None:
        nonlocal looped
        while True:
            await wait_event(event, 5.0)
            looped += 1

    for _ in range(50):
        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the task is waiting on the event
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2.0)
        event.clear()


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_get_within_times_out_and_returns_items() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    with pytest.raises(TimeoutError):
        await get_within(queue, 0.01)
    queue.put_nowait(7)
    assert await get_within(queue, 1.0) == 7


async def test_stop_cancels_again_a_task_that_swallowed_the_first_cancel() -> None:
    supervisor = Supervisor(on_failure=lambda name: None)
    stubborn_cancels = 0

    async def stubborn() -> None:
        nonlocal stubborn_cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                stubborn_cancels += 1
                if stubborn_cancels > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # what 3.11's wait_for race did

    task = supervisor.spawn("stubborn", stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(supervisor.stop(), 5.0)
    assert task.done() and stubborn_cancels == 2


async def test_stop_is_bounded_and_names_a_task_that_never_ends() -> None:
    supervisor = Supervisor(on_failure=lambda name: None)
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = supervisor.spawn("immortal", immortal())
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await asyncio.wait_for(supervisor.stop(timeout_s=0.3), 5.0)
    assert {"event": "task.stuck", "task": "immortal", "log_level": "error"} in logs
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
