"""A real `monitord run` subprocess under real signals and a real sd_notify socket:
READY, STATUS and WATCHDOG arrive; SIGHUP reloads (RELOADING then READY) and a broken config is refused;
SIGTERM sends STOPPING and exits 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_run import probe_rows, start_monitord, stop, write_config

pytestmark = pytest.mark.e2e


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.messages: list[str] = []

    async def wait_for(self, prefix: str, timeout_s: float = 15.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.messages:
                if message.startswith(prefix):
                    self.messages.remove(message)
                    return message
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), deadline - time.monotonic())
            except TimeoutError:
                break
            self.messages.append(data.decode())
        raise AssertionError(f"no {prefix!r} datagram; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


async def test_notify_watchdog_reload_and_stop(tmp_path: Path, sqlite_url: str, provider_double: Any) -> None:
    first = await provider_double("ollama")
    second = await provider_double("llamacpp")
    config = write_config(tmp_path / "monitord.yaml", {"first": ("ollama", first.url)}, sqlite_url)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        proc = await start_monitord("run", "-c", str(config),
                                    env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        ready = await notify.wait_for("READY=1")
        assert "STATUS=" in ready
        await notify.wait_for("WATCHDOG=1")
        status = await notify.wait_for("STATUS=1 up")
        assert "best: first" in status

        # SIGHUP with a new provider: it starts probing, the old one stops.
        write_config(config, {"second": ("llamacpp", second.url)}, sqlite_url)
        proc.send_signal(signal.SIGHUP)
        await notify.wait_for("RELOADING=1")
        await notify.wait_for("READY=1")
        for _ in range(100):
            if any(r.path == "/health" for r in second.requests):
                break
            await asyncio.sleep(0.1)
        assert any(r.path == "/health" for r in second.requests)

        # SIGHUP with a broken config: refused, the running config keeps probing.
        config.write_text("providers:\n  second:\n    type: nosuchserver\n")
        proc.send_signal(signal.SIGHUP)
        await notify.wait_for("READY=1")
        before = len(second.requests)
        await asyncio.sleep(1.0)
        assert len(second.requests) > before

        code, events, stderr = await stop(proc)
        await notify.wait_for("STOPPING=1")
    finally:
        notify.close()
    assert code == 0, stderr
    names = [e["event"] for e in events]
    assert "config.reloaded" in names and "config.reload_failed" in names
    failed = next(e for e in events if e["event"] == "config.reload_failed")
    assert "providers.second.type" in failed["problems"]
    providers = {p for p, _, _ in probe_rows(sqlite_url)}
    assert providers == {"first", "second"}
