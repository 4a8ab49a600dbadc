"""`python -m monitord run` as a subprocess for the fault suite: its JSON log lines collected as they come (so the
pipe never fills), its API port from the `daemon.started` line, and a stop by SIGTERM or SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.test_run import start_monitord

START_TIMEOUT_S = 30.0  # imports and migrations on a loaded 2-core machine


class MonitordProcess:
    """One `monitord run -c CONFIG`; `events` holds every JSON log line so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []  # stderr lines that are not JSON (a traceback would land here)
        self._readers = [asyncio.ensure_future(self._read_stderr()), asyncio.ensure_future(self._drain_stdout())]
        self._arrived = asyncio.Event()

    @classmethod
    async def spawn(cls, config: Path, *, env: dict[str, str] | None = None) -> MonitordProcess:
        """Started, not yet serving: see `started`."""
        return cls(await start_monitord("run", "-c", str(config), env=env))

    async def started(self) -> None:
        """Returns once `daemon.started` is logged (raises if the process dies first)."""
        await self.wait_for("daemon.started", timeout_s=START_TIMEOUT_S)

    @property
    def api_url(self) -> str:
        started = next(e for e in self.events if e["event"] == "daemon.started")
        return f"http://127.0.0.1:{started['api_port']}"

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    async def wait_for(self, event: str, *, timeout_s: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first log line named `event` whose fields include `fields`."""
        deadline = time.monotonic() + timeout_s
        while True:
            for entry in self.events:
                if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            if self.proc.returncode is not None and all(r.done() for r in self._readers):
                raise AssertionError(f"monitord exited ({self.proc.returncode}) before logging {event}: "
                                     f"{self.other_lines[-20:]}")
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise AssertionError(f"no {event} {fields or ''} within {timeout_s}s; last lines: {self.events[-5:]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining_s, 0.5))

    async def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then the exit code once every log line is read."""
        return await self._end(signal.SIGTERM, timeout_s)

    async def kill(self) -> int:
        """SIGKILL: no flush, no goodbye."""
        return await self._end(signal.SIGKILL, 10.0)

    async def _end(self, signum: int, timeout_s: float) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(asyncio.gather(*self._readers), timeout_s)
        return code

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.events.append(orjson.loads(line))
                    self._arrived.set()
                    continue
            self.other_lines.append(line)
        self._arrived.set()

    async def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for _ in self.proc.stdout:
            pass
