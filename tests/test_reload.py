"""Reload as a diff (monitord.reload): every documented key is declared reloadable or restart-only, each
reloadable key is in force after a reload wherever it is used, a restart-only change is refused by name, and a
database failure in the middle of a reload leaves everything as it was.

In-process daemons against real doubles, a real webhook receiver and real databases; the API over real HTTP.
The reload through a real SIGHUP is in tests/e2e/test_reload_signal.py.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import text
from structlog.testing import capture_logs

from docs.gen import config_rows
from monitord.config import load_config
from monitord.daemon import Daemon, probe_all
from monitord.model import Status
from monitord.reload import DECLARED, RELOADABLE, RESTART_ONLY, ReloadRefused, plan
from tests.doubles.base import ProviderDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.e2e.test_run import sync_engine
from tests.test_outage import eventually

TOKEN_A, TOKEN_B = "token-a-0123456789", "token-b-9876543210"


def base_config(db_url: str, providers: dict[str, str]) -> dict[str, Any]:
    return {
        "providers": {name: {"type": "ollama", "endpoint": url,
                             "parameters": {"timeout": "1s", "max_retries": 0, "probe_interval": "1h"}}
                      for name, url in providers.items()},
        "monitor": {"interval": "1h", "jitter": "0s", "concurrency": 4},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0", "token": TOKEN_A},
        "alerts": {"failure_threshold": 3, "success_threshold": 1},
        "ranking": {"window": "15m"},
        "logging": {"level": "info", "format": "json"},
    }


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Running:
    daemon: Daemon
    path: Path
    config: dict[str, Any]

    async def reload(self, change: Callable[[dict[str, Any]], None]) -> bool:
        """Edit the config file as an operator would, then reload."""
        new = copy.deepcopy(self.config)
        change(new)
        self.path.write_text(yaml.safe_dump(new))
        applied = await self.daemon.reload()
        if applied:
            self.config = new
        return applied

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.api_port}"

    async def status_with(self, token: str) -> int:
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.url}/v1/providers", headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status

    def state(self, name: str) -> Status:
        state = self.daemon.live.get(name)
        assert state is not None
        return state.status

    def gauge(self) -> bytes:
        assert self.daemon.api is not None
        return next(line for line in self.daemon.api.metrics.render().splitlines()
                    if line.startswith(b"monitord_config_last_reload_success "))


@pytest.fixture
async def running(tmp_path: Path, db_url: str, provider_double: Any) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def start(providers: dict[str, ProviderDouble], change: Callable[[dict[str, Any]], None] = lambda c: None,
                    clock: Clock | None = None) -> Running:
        config = base_config(db_url, {name: double.url for name, double in providers.items()})
        change(config)
        path = tmp_path / "monitord.yaml"
        path.write_text(yaml.safe_dump(config))
        daemon = Daemon(load_config(path), config_path=path, install_signal_handlers=False,
                        **({"clock": clock} if clock else {}))
        await daemon.start()
        started.append(daemon)
        return Running(daemon, path, config)

    yield start
    for daemon in started:
        await daemon.stop()


# -- the declaration -----------------------------------------------------------------------------------------------

def test_every_documented_key_is_reloadable_or_restart_only() -> None:
    documented = {key for key, *_ in config_rows()}
    undeclared = sorted(documented - DECLARED)
    assert not undeclared, f"declare these keys in monitord/reload.py (RELOADABLE or RESTART_ONLY): {undeclared}"
    assert sorted(DECLARED - documented) == [], "monitord/reload.py declares keys the reference does not have"
    assert not RELOADABLE & set(RESTART_ONLY)


def test_a_restart_only_change_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(base_config("sqlite+aiosqlite:///a.db", {"a": "http://127.0.0.1:9"})))
    old = load_config(path)
    changed = base_config("sqlite+aiosqlite:///b.db", {"a": "http://127.0.0.1:9"})
    changed["api"]["listen"] = "127.0.0.1:9999"
    changed["api"]["token"] = TOKEN_B
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(ReloadRefused) as refused:
        plan(old, load_config(path))
    assert refused.value.keys == ("api.listen", "storage.url")
    assert "api.listen cannot change on reload" in str(refused.value)
    assert "storage.url cannot change on reload" in str(refused.value)


async def test_a_refused_reload_applies_nothing(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    with capture_logs() as logs:
        assert not await run.reload(lambda c: (c["api"].update(listen="127.0.0.1:1", token=TOKEN_B),
                                               c["alerts"].update(failure_threshold=1)))
    [failed] = [e for e in logs if e["event"] == "config.reload_failed"]
    assert failed["keys"] == ["api.listen"] and "api.listen cannot change on reload" in failed["problems"]
    assert await run.status_with(TOKEN_A) == 200 and await run.status_with(TOKEN_B) == 401
    assert run.daemon.live.policy_of("a").failure_threshold == 3  # type: ignore[union-attr]
    assert run.gauge().endswith(b" 0.0")


# -- each reloadable key in force ------------------------------------------------------------------------------------

async def test_api_token_rotates(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    assert await run.status_with(TOKEN_A) == 200 and await run.status_with(TOKEN_B) == 401
    assert await run.reload(lambda c: c["api"].update(token=TOKEN_B))
    assert await run.status_with(TOKEN_B) == 200
    assert await run.status_with(TOKEN_A) == 401
    assert await run.reload(lambda c: c["api"].pop("token"))  # cleared: the API is open again
    assert await run.status_with("anything") == 200


async def test_a_lowered_failure_threshold_changes_an_existing_providers_state(running: Any,
                                                                               provider_double: Any) -> None:
    double = await provider_double("ollama")
    run: Running = await running({"a": double})
    await run.daemon.run_once()
    assert run.state("a") is Status.UP
    await double.set("down")
    await run.daemon.run_once()
    assert run.state("a") is Status.UP  # one failure of three

    assert await run.reload(lambda c: c["alerts"].update(failure_threshold=2))
    await run.daemon.run_once()
    assert run.state("a") is Status.DOWN  # two failures: down under the new threshold (the old one wanted three)


async def test_a_lowered_success_threshold_brings_an_existing_provider_up(running: Any, provider_double: Any) -> None:
    double = await provider_double("ollama", "down")
    run: Running = await running({"a": double}, lambda c: c["alerts"].update(failure_threshold=1,
                                                                               success_threshold=3))
    await run.daemon.run_once()
    assert run.state("a") is Status.DOWN
    await double.set("up")
    await run.daemon.run_once()
    assert run.state("a") is Status.DOWN  # one success of three

    assert await run.reload(lambda c: c["alerts"].update(success_threshold=2))
    await run.daemon.run_once()
    assert run.state("a") is Status.UP


async def test_a_shorter_ranking_window_ages_existing_providers_at_once(running: Any, provider_double: Any) -> None:
    double = await provider_double("ollama", "down")
    clock = Clock()
    run: Running = await running({"a": double}, clock=clock)
    await run.daemon.run_once()
    clock.now += timedelta(minutes=6)
    await double.set("up")
    await run.daemon.run_once()
    state = run.daemon.live.get("a")
    assert state is not None and (state.samples, state.availability) == (2, 0.5)

    assert await run.reload(lambda c: c["ranking"].update(window="5m"))
    state = run.daemon.live.get("a")
    assert state is not None and (state.samples, state.availability) == (1, 1.0)  # the failure left the window
    assert run.daemon.live.policy_of("a").window_s == 300.0  # type: ignore[union-attr]


async def test_stall_window_reaches_existing_providers(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    assert await run.reload(lambda c: c["monitor"].update(stall_window="7s"))
    assert run.daemon.live.policy_of("a").stall_window_s == 7.0  # type: ignore[union-attr]


async def test_concurrency_caps_the_next_probes(running: Any, provider_double: Any) -> None:
    slow = {name: await provider_double("ollama", "hang") for name in ("a", "b")}

    def fast_and_hanging(c: dict[str, Any]) -> None:
        c["monitor"]["concurrency"] = 1
        for provider in c["providers"].values():
            provider["parameters"].update(probe_interval="200ms", timeout="30s")

    run: Running = await running(slow, fast_and_hanging)
    scheduler = run.daemon._scheduler
    assert scheduler is not None
    await eventually(lambda: scheduler.in_flight == 2, what="both probes started")
    assert scheduler.probing == 1  # the other waits for the cap

    assert await run.reload(lambda c: c["monitor"].update(concurrency=2))
    await eventually(lambda: scheduler.probing == 2, what="the second probe running under the new cap")
    assert scheduler.concurrency == 2


async def test_canary_concurrency_resizes_the_canary_cap(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    assert await run.reload(lambda c: c["monitor"].update(canary={"concurrency": 5}))
    assert run.daemon._canary_scheduler is not None and run.daemon._canary_scheduler.concurrency == 5
    assert run.daemon.canaries is not None and run.daemon.canaries._limit.capacity == 5


async def test_jitter_is_the_schedulers_next(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    assert await run.reload(lambda c: c["monitor"].update(jitter="20m"))
    assert run.daemon._scheduler is not None and run.daemon._scheduler.jitter_s == 1200.0


async def test_provider_keys_reach_the_next_probe(running: Any, provider_double: Any) -> None:
    """Provider keys (and monitor.interval / timeout, their defaults) are applied by replacing the specs."""
    first, second = await provider_double("ollama"), await provider_double("ollama")
    run: Running = await running({"a": first})
    await run.daemon.run_once()

    def moved(c: dict[str, Any]) -> None:
        c["providers"]["a"]["endpoint"] = second.url
        c["providers"]["a"]["parameters"].update(probe_interval="10m", headers={"X-Team": "infra"})
        c["monitor"]["timeout"] = "3s"

    assert await run.reload(moved)
    spec = run.daemon.specs["a"]
    assert run.daemon._scheduler is not None and run.daemon._scheduler.specs["a"] == spec
    assert spec.probe_interval_s == 600.0
    before = len(first.requests)
    await run.daemon.run_once()
    assert len(first.requests) == before and second.requests
    assert all(r.header("X-Team") == "infra" for r in second.requests)


async def test_storage_batching_takes_effect(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")},
                                 lambda c: c["storage"].update(flush_interval="1h", batch_size=1000))
    store = run.daemon.store
    for result in await probe_all(list(run.daemon.specs.values())):  # probed and recorded, not flushed
        run.daemon.pipeline.record(result)
    assert store.pending == 1  # a flush an hour away

    def batching(c: dict[str, Any]) -> None:
        c["storage"].update(flush_interval="50ms", batch_size=200, buffer_limit=5000, write_timeout="5s",
                            forget_models_after="2d")
        c["monitor"]["max_models"] = 50

    assert await run.reload(batching)
    assert store.writer_settings == (200, 0.05, 5000, 5.0, 50, 172800.0)
    await eventually(lambda: store.pending == 0, what="the buffered row written by the new flush interval")


async def test_retention_keys_are_the_next_runs(running: Any, provider_double: Any) -> None:
    run: Running = await running({"a": await provider_double("ollama")})
    assert await run.reload(lambda c: c["storage"].update(retention={
        "raw": "2h", "minute_rollups": "3h", "hour_rollups": "4h", "prune_interval": "2m", "batch_size": 10}))
    interval_s, policy = run.daemon._retention_schedule()
    assert (interval_s, policy.raw_s, policy.minute_rollups_s, policy.hour_rollups_s, policy.batch_size) == (
        120.0, 7200.0, 10800.0, 14400.0, 10)


async def test_silences_from_a_reload_silence_the_next_alert(running: Any, provider_double: Any) -> None:
    double = await provider_double("ollama")
    run: Running = await running({"a": double}, lambda c: c["alerts"].update(failure_threshold=1))
    await run.daemon.run_once()
    now = datetime.now(UTC)
    assert await run.reload(lambda c: c["alerts"].update(silences=[{
        "provider": "a", "start": (now - timedelta(minutes=1)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(), "reason": "maintenance"}]))
    assert run.daemon.alerts is not None and [s.reason for s in run.daemon.alerts.silences()] == ["maintenance"]
    await double.set("down")
    with capture_logs() as logs:
        await run.daemon.run_once()
    raised = [e for e in logs if e["event"] == "alert.raised"]
    assert [(e["type"], e["silenced"]) for e in raised] == [("provider.down", True)]


async def test_webhooks_swap_and_unsaved_events_survive_it(running: Any, provider_double: Any,
                                                           db_url: str) -> None:
    double = await provider_double("ollama")
    async with WebhookReceiver() as old_hook, WebhookReceiver() as new_hook:
        run: Running = await running({"a": double}, lambda c: c["alerts"].update(
            failure_threshold=1, webhooks=[{"name": "old", "url": old_hook.url}]))
        await run.daemon.run_once()
        engine = sync_engine(db_url)
        try:
            with engine.begin() as conn:  # the outbox is away: raised events wait in memory
                conn.execute(text("ALTER TABLE alert_events RENAME TO alert_events_away"))
            await double.set("down")
            await run.daemon.run_once()
            dispatcher = run.daemon.dispatcher
            assert dispatcher is not None
            await eventually(lambda: dispatcher.unsaved == 1, what="the event waiting for the outbox")

            assert await run.reload(lambda c: c["alerts"].update(webhooks=[{"name": "new", "url": new_hook.url}]))
            assert run.daemon.dispatcher is not dispatcher
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE alert_events_away RENAME TO alert_events"))
        finally:
            engine.dispose()
        [got] = await new_hook.wait_for(1, timeout_s=30)
        assert got.json()["type"] == "provider.down" and got.json()["provider"]["name"] == "a"
        assert old_hook.requests == []


# -- a database failure in the middle ----------------------------------------------------------------------------

async def test_a_database_failure_mid_reload_leaves_everything_as_it_was(running: Any, provider_double: Any,
                                                                         db_url: str) -> None:
    a, b = await provider_double("ollama"), await provider_double("ollama")
    async with WebhookReceiver() as hook:
        run: Running = await running({"a": a})
        daemon = run.daemon
        dispatcher, specs = daemon.dispatcher, daemon.specs
        assert daemon._scheduler is not None
        engine = sync_engine(db_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE providers RENAME TO providers_away"))

            def everything(c: dict[str, Any]) -> None:
                c["providers"]["b"] = {"type": "ollama", "endpoint": b.url}
                c["api"]["token"] = TOKEN_B
                c["alerts"].update(failure_threshold=1, webhooks=[{"name": "h", "url": hook.url}])
                c["monitor"].update(concurrency=9, jitter="5s")
                c["storage"].update(batch_size=7)

            with capture_logs() as logs:
                assert not await run.reload(everything)
            [failed] = [e for e in logs if e["event"] == "config.reload_failed"]
            assert "providers" in failed["problems"]
            assert run.gauge().endswith(b" 0.0")
            # nothing applied
            assert daemon.specs is specs and set(daemon.specs) == {"a"} and set(daemon._scheduler.specs) == {"a"}
            assert daemon.live.get("b") is None
            assert await run.status_with(TOKEN_A) == 200 and await run.status_with(TOKEN_B) == 401
            assert daemon.live.policy_of("a").failure_threshold == 3  # type: ignore[union-attr]
            assert daemon.dispatcher is dispatcher
            assert (daemon._scheduler.concurrency, daemon._scheduler.jitter_s) == (4, 0.0)
            assert daemon.store.writer_settings[0] == 500

            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE providers_away RENAME TO providers"))
        finally:
            engine.dispose()
        assert await run.reload(everything)
        assert set(daemon.specs) == {"a", "b"} and await run.status_with(TOKEN_B) == 200
        assert run.gauge().endswith(b" 1.0")
