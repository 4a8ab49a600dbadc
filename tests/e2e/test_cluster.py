"""Three `monitord run` processes on one PostgreSQL schema, nine provider doubles, one webhook receiver; one process
is SIGKILLed. Shown from the outside: every provider keeps being probed (the probes table), each alert arrives
once, and the survivors name the same best provider."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from tests.doubles.base import ProviderDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.e2e.test_run import REPO, STARTED, sync_engine

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

INTERVAL_S = 1.0
LEASE_S = 0.6  # at most 3/4 of the interval (config check); renewed every 0.2 s
PROVIDERS = [f"p{i}" for i in range(9)]
BEST = "p4"  # weighted up, so every instance that sees the same probes names it best


class Instance:
    """One `python -m monitord run` with its stderr (JSON log lines) read as it comes."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            if line.startswith(b"{"):
                self.events.append(orjson.loads(line))

    @property
    def api_port(self) -> int | None:
        return next((e["api_port"] for e in self.events if e["event"] == "daemon.started"), None)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout=20)
        await self._reader
        return code


def write_configs(tmp_path: Path, doubles: dict[str, ProviderDouble], url: str, hook: str) -> list[Path]:
    paths = []
    for index in range(3):
        lines = ["providers:"]
        for name, double in doubles.items():
            weight = 5 if name == BEST else 1
            lines += [f"  {name}:", "    type: vllm", f"    endpoint: {double.url}",
                      f"    parameters: {{timeout: 500ms, max_retries: 0, weight: {weight}}}"]
        lines += ["monitor:", f"  interval: {INTERVAL_S}s", "storage:", f"  url: {url}", "  flush_interval: 100ms",
                  "api:", "  listen: 127.0.0.1:0", "logging:", "  format: json",
                  "cluster:", "  enabled: true", f"  instance_id: i{index + 1}", f"  lease: {LEASE_S}s",
                  "alerts:", "  failure_threshold: 2", "  success_threshold: 1", "  webhooks:",
                  f"    - {{name: ops, url: {hook}, timeout: 2s}}"]
        path = tmp_path / f"monitord-{index + 1}.yaml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


async def start(index: int, config: Path) -> Instance:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", "run", "-c", str(config), cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    STARTED.append(proc)  # reaped by tests/e2e/conftest.py whatever happens
    return Instance(f"i{index + 1}", proc)


def query(url: str, sql: str) -> list[Any]:
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    except Exception:  # tables not migrated yet
        return []
    finally:
        engine.dispose()


def holders(url: str) -> dict[str, str]:
    return {name: holder for name, holder in query(
        url, "SELECT name, holder FROM cluster_leases JOIN cluster_instances ON instance_id = holder "
             "WHERE cluster_instances.expires_at > now() AND name NOT LIKE 'role:%'")}


async def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(0.1)


async def best_of(instance: Instance) -> str | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.api_port)
    try:
        writer.write(b"GET /v1/ranking HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    ranking = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["ranking"]
    return ranking[0]["provider"] if ranking else None


def gaps(url: str, since: datetime, until: datetime) -> dict[str, float]:
    """The longest time between two probes of each provider within [since, until]."""
    rows = query(url, "SELECT provider, ts FROM probes ORDER BY provider, ts")
    longest: dict[str, float] = {}
    for provider in PROVIDERS:
        times = [since] + [ts for name, ts in rows if name == provider and since <= ts <= until] + [until]
        longest[provider] = max((b - a).total_seconds() for a, b in itertools.pairwise(times))
    return longest


async def test_three_instances_survive_a_sigkill(tmp_path: Path, postgres_url: str, provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in PROVIDERS}
    async with WebhookReceiver() as receiver:
        configs = write_configs(tmp_path, doubles, postgres_url, receiver.url)
        instances = [await start(i, path) for i, path in enumerate(configs)]
        try:
            await wait_until(lambda: all(i.api_port for i in instances), 30, "all three started")
            await wait_until(lambda: sorted(Counter(holders(postgres_url).values()).values()) == [3, 3, 3],
                             15, "three leases each")
            await asyncio.sleep(2 * INTERVAL_S)  # steady: every provider probed by its holder at least once
            steady_from = datetime.now(UTC)

            victim = instances[2]
            orphans = sorted(name for name, holder in holders(postgres_url).items() if holder == victim.name)
            killed_at = datetime.now(UTC)
            victim.proc.kill()  # SIGKILL: no hand-back; its leases must run out
            await victim.stop()
            failing = orphans[0]  # a provider that goes down right after its prober died
            await doubles[failing].set("down")
            survivors = instances[:2]

            await wait_until(lambda: set(holders(postgres_url)) == set(PROVIDERS)
                             and victim.name not in holders(postgres_url).values(), 10, "takeover")
            takeovers = query(postgres_url, "SELECT name, acquired_at FROM cluster_leases")  # before the clean stops
            await wait_until(lambda: any(r.header("X-Monitord-Event") == "provider.down"
                                         and r.json()["provider"]["name"] == failing for r in receiver.requests),
                             15, "the down alert")
            await doubles[failing].set("up")
            await wait_until(lambda: any(r.header("X-Monitord-Event") == "provider.up"
                                         and r.json()["provider"]["name"] == failing for r in receiver.requests),
                             15, "the up alert")
            await asyncio.sleep(2 * INTERVAL_S)  # time for any duplicate to show up
            until = datetime.now(UTC) - timedelta(seconds=0.5)  # rows of the last probes may still be in flight
            bests = [await best_of(instance) for instance in survivors]
        finally:
            codes = [await instance.stop() for instance in instances]

    assert codes[:2] == [0, 0], [e for i in instances[:2] for e in i.events if e.get("level") == "error"]
    longest = gaps(postgres_url, steady_from, until)
    assert max(longest.values()) <= 2 * INTERVAL_S, f"a provider went unprobed too long: {longest}"

    ids = Counter(r.header("X-Monitord-Delivery") for r in receiver.requests)
    assert all(count == 1 for count in ids.values()), f"a delivery came twice: {ids}"
    alerts = Counter((r.header("X-Monitord-Event"), r.json().get("provider", {}).get("name"))
                     for r in receiver.requests if (r.header("X-Monitord-Event") or "").startswith("provider."))
    assert alerts == {("provider.down", failing): 1, ("provider.up", failing): 1}, alerts

    assert bests == [BEST, BEST], bests

    taken_s = max((at - killed_at).total_seconds() for name, at in takeovers if name in orphans)
    first_probe_s = max(min((ts - killed_at).total_seconds() for name, ts in query(
        postgres_url, "SELECT provider, ts FROM probes") if name == orphan and ts > killed_at) for orphan in orphans)
    print(f"\nfailover: leases taken {taken_s:.2f} s after SIGKILL (lease {LEASE_S} s), first probe of every "
          f"orphan within {first_probe_s:.2f} s; longest gap per provider: "
          f"{ {k: round(v, 2) for k, v in longest.items()} }")
