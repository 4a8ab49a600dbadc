"""Limits under the real daemon: event-stream clients that never read, silences past their bounds, a FIFO where
the config file was, and the alert history asked for while the database is away.

Issue 14, item 15 (the duration bounds are in the bad-config corpus: tests/configs/bad/interval_*.yaml and
write_timeout_too_long.yaml, run by test_config_corpus.py through the real CLI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from monitord.api.alerts import MAX_ACTIVE_SILENCES, MAX_REASON_CHARS
from tests.faults import servers
from tests.faults.conftest import StartMonitord, StartServer
from tests.faults.servers import Exchange
from tests.plugins.api import assert_error
from tests.test_outage import TcpProxy, eventually, running, via


def flapping(period_s: float = 0.15) -> servers.Behaviour:
    """Up and down in turns, by the clock: every probe of a 100 ms interval is likely a status change."""

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is not None:
            status = 200 if int(time.monotonic() / period_s) % 2 else 503
            await ex.send(status, servers.MODELS_BODY if status == 200 else b"{}")

    return behaviour


def config_text(db_url: str, endpoints: dict[str, str], *, interval: str = "100ms") -> str:
    return yaml.safe_dump({
        "providers": {name: {"type": "vllm", "endpoint": url,
                             "parameters": {"timeout": "500ms", "max_retries": 0, "probe_interval": interval}}
                      for name, url in endpoints.items()},
        "monitor": {"jitter": "0s", "concurrency": 32},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0"},
        "alerts": {"failure_threshold": 1, "success_threshold": 1},
    })


def idle_subscriber(port: int) -> socket.socket:
    """Asks for the event stream with a tiny receive buffer and never reads a byte of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


async def test_event_clients_that_do_not_read_are_evicted(sqlite_url: str, fault_server: StartServer) -> None:
    flapper = await fault_server(flapping())
    text = config_text(sqlite_url, {f"f{i}": flapper.url for i in range(20)})
    idle: list[socket.socket] = []
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            assert daemon.api is not None
            hub = daemon.api.events
            hub.max_subscribers, hub.write_timeout_s = 4, 1.0
            try:
                idle = [idle_subscriber(daemon.api_port or 0) for _ in range(hub.max_subscribers)]
                await eventually(lambda: hub.subscribers == hub.max_subscribers, what="every slot taken")
                async with http.get(f"{api}/v1/events") as reply:
                    await assert_error(reply, 503, "too_many_subscribers")
                # the status events pile up in the idle sockets until a write stalls: those clients go
                await eventually(lambda: hub.subscribers < hub.max_subscribers, timeout_s=30.0,
                                 what="a client that does not read evicted")
                async with http.get(f"{api}/v1/events", timeout=aiohttp.ClientTimeout(total=10)) as reply:
                    assert reply.status == 200
                    assert (await reply.content.readuntil(b"\n\n")).startswith(b"retry:")
            finally:
                for sock in idle:
                    sock.close()
    assert any(e["event"] == "api.events_client_evicted" for e in logs)


async def test_silences_are_bounded_in_number_and_size(sqlite_url: str, provider_double: Any) -> None:
    double = await provider_double("vllm")
    async with running(config_text(sqlite_url, {"alpha": double.url}, interval="1s")) as (_daemon, http, api):
        async with http.post(f"{api}/v1/silences", json={"provider": "alpha", "duration_s": 60,
                                                         "reason": "x" * (MAX_REASON_CHARS + 1)}) as reply:
            await assert_error(reply, 400, "invalid_silence")
        async with http.post(f"{api}/v1/silences", json={"provider": "a" * 300, "duration_s": 60}) as reply:
            await assert_error(reply, 400, "invalid_silence")

        async def post(i: int) -> int:
            async with http.post(f"{api}/v1/silences",
                                 json={"provider": f"p{i}-*", "duration_s": 600, "reason": "r" * 100}) as reply:
                return reply.status

        for first in range(0, MAX_ACTIVE_SILENCES, 50):
            statuses = await asyncio.gather(*(post(i) for i in range(first, first + 50)))
            assert set(statuses) == {201}, statuses
        async with http.post(f"{api}/v1/silences", json={"provider": "one-more", "duration_s": 60}) as reply:
            error = await assert_error(reply, 409, "too_many_silences")
        assert "end some first" in error["message"]
        async with http.get(f"{api}/v1/silences") as reply:
            assert len((await reply.json())["silences"]) == MAX_ACTIVE_SILENCES


async def test_a_fifo_in_place_of_the_config_neither_hangs_reload_nor_stop(tmp_path: Path, sqlite_url: str,
                                                                           provider_double: Any,
                                                                           monitord_run: StartMonitord) -> None:
    double = await provider_double("vllm")
    path = tmp_path / "monitord.yaml"
    path.write_text(config_text(sqlite_url, {"alpha": double.url}, interval="1s"))
    process = await monitord_run(path)
    path.unlink()
    os.mkfifo(path)  # nothing ever writes to it: a blocking open or read would wait for ever
    process.proc.send_signal(signal.SIGHUP)
    failed = await process.wait_for("config.reload_failed", timeout_s=20.0)
    assert "not a regular file" in failed["problems"], failed
    async with aiohttp.ClientSession() as http, http.get(f"{process.api_url}/healthz") as reply:
        assert reply.status == 200  # still serving on the old config
    assert await process.stop(timeout_s=30.0) == 0


@pytest.mark.postgres
async def test_alert_history_during_a_database_outage_is_a_503_in_the_error_shape(
        postgres_url: str, proxy: TcpProxy, provider_double: Any) -> None:
    double = await provider_double("vllm")
    text = config_text(via(proxy, postgres_url), {"alpha": double.url}, interval="1s")
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.first_round_done, what="first round")
            async with http.get(f"{api}/v1/alerts") as reply:
                assert reply.status == 200
            await proxy.cut()
            for _ in range(3):
                async with http.get(f"{api}/v1/alerts", timeout=aiohttp.ClientTimeout(total=30)) as reply:
                    await assert_error(reply, 503, "store_unavailable")
            await proxy.restore()
    assert not [e for e in logs if e["event"] == "api.unhandled_error"]

