"""Reload through a real SIGHUP to a real `monitord run`: a rotated token and a new log level are in force after
READY=1; a reload that meets a database failure applies nothing, logs config.reload_failed, and READY=1 still
follows RELOADING=1."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from sqlalchemy import text

from tests.e2e.test_run import start_monitord, sync_engine
from tests.e2e.test_signals import NotifySocket
from tests.test_outage import eventually

pytestmark = pytest.mark.e2e


class Log:
    """Drains the daemon's stderr while it runs (a full pipe would block it) and keeps the JSON events."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.events: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            if line.startswith(b"{"):
                self.events.append(orjson.loads(line))

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def first(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    async def close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=20)


def config(sqlite_url: str, url: str, *, token: str, level: str) -> str:
    return yaml.safe_dump({
        "providers": {"a": {"type": "ollama", "endpoint": url,
                            "parameters": {"timeout": "500ms", "max_retries": 0, "probe_interval": "300ms"}}},
        "storage": {"url": sqlite_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0", "token": token},
        "logging": {"level": level, "format": "json"},
    })


async def status_with(port: int, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/v1/providers", headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status


async def test_sighup_rotates_the_token_and_the_log_level(tmp_path: Path, sqlite_url: str,
                                                          provider_double: Any) -> None:
    double = await provider_double("ollama")
    path = tmp_path / "monitord.yaml"
    path.write_text(config(sqlite_url, double.url, token="old-token-123", level="info"))
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = await start_monitord("run", "-c", str(path), env={"NOTIFY_SOCKET": str(notify.path)})
    assert proc.stderr is not None
    log = Log(proc.stderr)
    try:
        await notify.wait_for("READY=1", timeout_s=60)
        await eventually(lambda: log.first("api.listening") is not None, what="api.listening")
        port = int(log.first("api.listening")["port"])  # type: ignore[index]
        assert await status_with(port, "old-token-123") == 200
        assert "probe.done" not in log.names()  # a debug line, hidden at info

        path.write_text(config(sqlite_url, double.url, token="new-token-456", level="debug"))
        proc.send_signal(signal.SIGHUP)
        await notify.wait_for("RELOADING=1")
        await notify.wait_for("READY=1")
        assert await status_with(port, "new-token-456") == 200
        assert await status_with(port, "old-token-123") == 401
        await eventually(lambda: "probe.done" in log.names(), what="debug lines after the reload")
        reloaded = log.first("config.reloaded")
        assert reloaded is not None and {"api.token", "logging.level"} <= set(reloaded["keys"])

        # The database fails in the middle of the next reload: nothing applies, READY=1 still follows.
        engine = sync_engine(sqlite_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE providers RENAME TO providers_away"))
            path.write_text(config(sqlite_url, double.url, token="third-token-789", level="debug"))
            proc.send_signal(signal.SIGHUP)
            await notify.wait_for("RELOADING=1")
            await notify.wait_for("READY=1")
            await eventually(lambda: log.first("config.reload_failed") is not None, what="config.reload_failed")
            assert await status_with(port, "new-token-456") == 200
            assert await status_with(port, "third-token-789") == 401
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE providers_away RENAME TO providers"))
        finally:
            engine.dispose()
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer new-token-456"}) as response:
            assert "monitord_config_last_reload_success 0.0" in await response.text()

        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)
        assert proc.returncode == 0
    finally:
        notify.close()
        if proc.returncode is None:
            proc.kill()
        await log.close()
