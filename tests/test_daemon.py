"""The daemon in-process: run_once records what the doubles did, a restart remembers, reload applies or refuses,
and starting and stopping many times leaks no task and no file descriptor."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import ErrorClass, Status


def config_text(providers: dict[str, tuple[str, str]], db_url: str, *, extra: str = "") -> str:
    lines = ["providers:"]
    for name, (provider_type, url) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  "    parameters: {timeout: 500ms, max_retries: 0, probe_interval: 1h}"]
    lines += ["storage:", f"  url: {db_url}", "  flush_interval: 50ms", "api:", "  listen: 127.0.0.1:0",
              "alerts:", "  failure_threshold: 2",
              "  success_threshold: 1", extra]
    return "\n".join(lines) + "\n"


def daemon_for(text: str, path: Path | None = None) -> Daemon:
    return Daemon(parse_config(text), config_path=path, install_signal_handlers=False)


async def test_run_once_records_every_provider(db_url: str, provider_double: Any) -> None:
    up = await provider_double("ollama")
    down = await provider_double("vllm", "down")
    daemon = daemon_for(config_text({"up": ("ollama", up.url), "down": ("vllm", down.url)}, db_url))
    await daemon.start()
    try:
        results = {r.provider: r for r in await daemon.run_once()}
        assert results["up"].status is Status.UP and results["down"].error_class is ErrorClass.REFUSED
        latest = await daemon.store.latest()
        assert {name: s.status for name, s in latest.items()} == {"up": "up", "down": "down"}
        assert daemon.first_round_done
        assert daemon.live.get("up") is not None and daemon.live.get("up").status is Status.UP  # type: ignore[union-attr]
    finally:
        await daemon.stop()


async def test_restart_remembers_a_provider_was_down(db_url: str, provider_double: Any) -> None:
    dead = await provider_double("llamacpp", "down")
    text = config_text({"dead": ("llamacpp", dead.url)}, db_url)
    first = daemon_for(text)
    await first.start()
    for _ in range(2):
        await first.run_once()
    assert first.live.get("dead").status is Status.DOWN  # type: ignore[union-attr]
    await first.stop()

    second = daemon_for(text)
    await second.start()
    try:
        state = second.live.get("dead")
        assert state is not None and state.status is Status.DOWN and state.failures_in_a_row >= 2
    finally:
        await second.stop()


async def test_reload_applies_completely_or_not_at_all(tmp_path: Path, sqlite_url: str,
                                                       provider_double: Any) -> None:
    a = await provider_double("ollama")
    b = await provider_double("llamacpp")
    path = tmp_path / "monitord.yaml"
    path.write_text(config_text({"a": ("ollama", a.url)}, sqlite_url))
    daemon = daemon_for(path.read_text(), path)
    await daemon.start()
    try:
        await daemon.run_once()
        path.write_text(config_text({"b": ("llamacpp", b.url)}, sqlite_url))
        assert await daemon.reload()
        assert set(daemon.specs) == {"b"} and daemon.live.get("a") is None
        await daemon.run_once()
        assert daemon.live.get("b").status is Status.UP  # type: ignore[union-attr]

        assert b"monitord_config_last_reload_success 1.0" in daemon.api.metrics.render()  # type: ignore[union-attr]
        path.write_text("providers:\n  b:\n    type: nosuchserver\n")
        assert not await daemon.reload()
        assert set(daemon.specs) == {"b"}  # the old config keeps running
        assert b"monitord_config_last_reload_success 0.0" in daemon.api.metrics.render()  # type: ignore[union-attr]
        # History of a removed provider stays in the store.
        assert await daemon.store.history("a")
    finally:
        await daemon.stop()


async def test_start_stop_repeatedly_leaks_nothing(sqlite_url: str, provider_double: Any) -> None:
    double = await provider_double("ollama")
    text = config_text({"a": ("ollama", double.url)}, sqlite_url)

    async def cycle() -> None:
        daemon = daemon_for(text)
        await daemon.start()
        await daemon.run_once()
        await daemon.stop()

    await cycle()  # warm up imports, the migration and the connection pools
    fds_before = len(os.listdir("/proc/self/fd"))
    tasks_before = len(asyncio.all_tasks())
    for _ in range(10):
        await cycle()
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= tasks_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
