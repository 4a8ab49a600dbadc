"""One supervisor for the daemon's background tasks (ranking watch, cluster beat, retention, systemd heartbeat,
reloads): a task that ends with an error is logged as `task.failed` (its name and the error) and the daemon is
told to stop with a non-zero exit, so systemd restarts it instead of it running on with a part missing.

A periodic loop that returns by itself is a bug too (`task.failed`, error "returned"); a one-shot task (a reload)
is spawned with `once=True` and may return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("monitord.supervisor")

STOP_TIMEOUT_S = 10.0
RECANCEL_EVERY_S = 0.5  # a loop that lost a cancel (see monitord.aio) gets another this often


class Supervisor:
    def __init__(self, on_failure: Callable[[str], None]) -> None:
        self.on_failure = on_failure  # called with the task's name after task.failed is logged
        self.failed: list[str] = []
        self._tasks: dict[asyncio.Task[None], tuple[str, bool]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(name for name, _ in self._tasks.values())

    def spawn(self, name: str, coro: Coroutine[Any, Any, None], *, once: bool = False) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"monitord.{name}")
        self._tasks[task] = (name, once)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        name, once = self._tasks.pop(task, ("?", True))
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and once:
            return
        error = "returned" if exc is None else (str(exc) or type(exc).__name__)
        log.error("task.failed", task=name, error=error, error_class=None if exc is None else type(exc).__name__)
        self.failed.append(name)
        self.on_failure(name)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel every task and wait for them to end, cancelling again any that swallowed the cancel; a stop is
        bounded: a task still running after `timeout_s` is logged as `task.stuck` and left behind."""
        pending = set(self._tasks)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending:
            for task in pending:
                task.cancel()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                for task in pending:
                    log.error("task.stuck", task=self._tasks.get(task, ("?", False))[0])
                return
            _, pending = await asyncio.wait(pending, timeout=min(remaining, RECANCEL_EVERY_S))
