"""The wall clock steps backwards under the real daemon, and probing that stalls is seen.

Issue 14, item 8: scheduling runs on the event loop's monotonic clock, so a backward step of the wall clock (here
the whole process's wall clock, shifted with time-machine: datetime.now, time.time) neither stops nor slows
probing; probe freshness is part of readiness (/readyz 503 while providers go unprobed) and is exported.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import time_machine
import yaml

from monitord.daemon import Daemon
from tests.faults import servers
from tests.faults.conftest import StartServer, wait_for_samples
from tests.plugins.api import assert_error
from tests.test_outage import eventually, metric, running

STEP = timedelta(minutes=10)


def config_text(db_url: str, endpoints: dict[str, str], *, interval: str, timeout: str, concurrency: int) -> str:
    return yaml.safe_dump({
        "providers": {name: {"type": "vllm", "endpoint": url,
                             "parameters": {"timeout": timeout, "max_retries": 0, "probe_interval": interval}}
                      for name, url in endpoints.items()},
        "monitor": {"jitter": "0s", "concurrency": concurrency},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0"},
    })


def samples(daemon: Daemon) -> dict[str, int]:
    return {name: state.samples for name, state in daemon.live.all().items()}


async def test_a_backward_wall_clock_step_does_not_stop_probing(sqlite_url: str, provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    text = config_text(sqlite_url, {n: d.url for n, d in doubles.items()}, interval="200ms", timeout="1s",
                       concurrency=4)
    async with running(text) as (daemon, http, api):
        await eventually(lambda: daemon.first_round_done, what="first round")
        with time_machine.travel(datetime.now(UTC) - STEP, tick=True):
            assert datetime.now(UTC) < daemon.live.get("alpha").last_probe_at  # type: ignore[union-attr, operator]
            before = samples(daemon)
            # ten more probes each, at the 200 ms pace, with the wall clock ten minutes behind
            await wait_for_samples(daemon, {name: count + 10 for name, count in before.items()}, timeout_s=20.0)
            async with http.get(f"{api}/readyz") as reply:
                assert reply.status == 200, await reply.text()
            async with http.get(f"{api}/metrics") as reply:
                scraped = await reply.text()
            assert metric(scraped, "monitord_probes_stale") == 0.0
            ages = [line for line in scraped.splitlines() if line.startswith("monitord_provider_probe_age_seconds{")]
            assert len(ages) == 2 and all(float(line.split()[-1]) < 5.0 for line in ages), ages


async def test_stale_probes_make_readyz_503_and_show_in_metrics(sqlite_url: str, fault_server: StartServer) -> None:
    # six providers that each hold a probe for its whole 1 s timeout, one probe at a time: each is probed about
    # every 6 s, far past its 200 ms interval (stale after 2 x 0.2 + 1 + 2 s)
    hang = await fault_server(servers.hang_after_headers())
    endpoints = {f"p{i}": hang.url for i in range(6)}
    text = config_text(sqlite_url, endpoints, interval="200ms", timeout="1s", concurrency=1)
    async with running(text) as (_daemon, http, api):
        seen: list[dict[str, Any]] = []

        async def stale_reported() -> bool:
            async with http.get(f"{api}/readyz") as reply:
                if reply.status == 200:
                    return False
                error = await assert_error(reply, 503, "not_ready")
                seen.append(error)
                return error["details"]["checks"]["probes_fresh"] is False

        await eventually(stale_reported, timeout_s=30.0, what="/readyz reporting stale probes")
        details = seen[-1]["details"]
        assert details["stale_providers"] and set(details["stale_providers"]) <= set(endpoints), details
        assert "probes stale" in seen[-1]["message"]
        async with http.get(f"{api}/metrics") as reply:
            scraped = await reply.text()
        assert "monitord_probes_stale" in scraped and "monitord_provider_probe_age_seconds{" in scraped
        # probes outlive their 200 ms interval (one at a time, 1 s each): the scheduler skips runs and says so
        figures = {line.split(" ")[0]: float(line.split(" ")[1]) for line in scraped.splitlines()
                   if line.startswith("monitord_scheduler_")}
        assert figures['monitord_scheduler_skipped_runs_total{scheduler="probe"}'] > 0, figures
        assert figures['monitord_scheduler_lateness_seconds{quantile="0.99",scheduler="probe"}'] >= 0, figures
        assert figures['monitord_scheduler_lateness_seconds{quantile="0.5",scheduler="canary"}'] == 0, figures
