"""A database connection that goes silent (half-open TCP through a proxy) under the real daemon on PostgreSQL.

Issue 14, item 7: the writer never hangs. A stuck batch is given up after storage.write_timeout, its connection
cut and the batch retried on a new one; while writes fail the store is red (/readyz 503, monitord_store_healthy 0);
a stop while the database stays silent ends within its bounds and reports the rows it could not write.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from monitord.config import parse_config
from monitord.daemon import Daemon
from tests.plugins.api import assert_error
from tests.test_outage import (
    TcpProxy,
    config,
    eventually,
    metric,
    probes_recorded,
    rows_in_database,
    running,
    via,
)

pytestmark = pytest.mark.postgres

WRITE_TIMEOUT = "1s"
STOP_BOUND_S = 60.0  # a hang guard, not a timing target: the daemon's own bounds add up to well under it


def silent_config(url: str, endpoints: dict[str, str]) -> str:
    return config(url, endpoints, buffer=f"batch_size: 5\n  buffer_limit: 10000\n  write_timeout: {WRITE_TIMEOUT}")


def timed_out(logs: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "store.write_failed" and "no answer within" in e["error"] for e in logs)


async def test_a_write_stuck_on_a_silent_connection_is_abandoned_and_retried(postgres_url: str, proxy: TcpProxy,
                                                                               provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    text = silent_config(via(proxy, postgres_url), {name: d.url for name, d in doubles.items()})
    with capture_logs() as logs:
        async with running(text) as (daemon, _http, _api):
            await eventually(lambda: daemon.first_round_done and daemon.store.written_total > 10, what="first rows")
            proxy.silence()  # every open connection (the writer's among them) goes half-open; new ones work
            written = daemon.store.written_total
            await eventually(lambda: timed_out(logs), what="the stuck write given up")
            await eventually(lambda: daemon.store.written_total > written + 20, what="writing on a new connection")
            await eventually(lambda: daemon.store.healthy and daemon.store.pending < 20, what="the store green")
        recorded = probes_recorded(daemon)

    assert daemon.store.dropped_total == 0
    assert await rows_in_database(postgres_url) == daemon.store.written_total == recorded
    assert any(e["event"] == "store.write_recovered" for e in logs)


async def test_a_silent_database_turns_readyz_red_and_the_stop_stays_bounded(postgres_url: str, proxy: TcpProxy,
                                                                            provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    daemon = Daemon(parse_config(silent_config(via(proxy, postgres_url), {n: d.url for n, d in doubles.items()})),
                    install_signal_handlers=False)
    await daemon.start()
    with capture_logs() as logs:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                api = f"http://127.0.0.1:{daemon.api_port}"
                await eventually(lambda: daemon.first_round_done and daemon.store.written_total > 10,
                                 what="first rows")
                proxy.silence(new_connections_too=True)
                await eventually(lambda: timed_out(logs), what="the stuck write given up")
                assert not daemon.store.healthy
                async with http.get(f"{api}/readyz") as reply:
                    error = await assert_error(reply, 503, "not_ready")
                assert error["details"]["checks"]["store"] is False
                assert "no answer within" in error["details"]["store"]["error"], error
                async with http.get(f"{api}/metrics") as reply:
                    assert metric(await reply.text(), "monitord_store_healthy") == 0.0
                await eventually(lambda: daemon.store.pending > 10, what="rows waiting")
        finally:
            await asyncio.wait_for(daemon.stop(), STOP_BOUND_S)

    lost = [e for e in logs if e["event"] == "store.rows_dropped" and e["reason"] == "closed_with_database_unreachable"]
    assert lost and lost[0]["rows"] > 0, [e["event"] for e in logs]
    closed = next(e for e in logs if e["event"] == "store.closed")
    assert closed["dropped"] >= lost[0]["rows"]
    assert await rows_in_database(postgres_url) == daemon.store.written_total
