"""Selection against two real llama.cpp servers (the `xllamacpp` wheel, one slot each) and the daemon in process.

What doubles can only imitate: a real slot taken by real streamed work (read from the server's own `/slots`), and a
real server process killed with SIGKILL. Timings here are loose (a loaded 2-core machine); `python -m bench
selection` measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from monitord.client import MonitordClient
from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import Status
from tests.integration.test_llamacpp_real import RealServer, wait_up
from tests.tools.polling import eventually

pytestmark = pytest.mark.slow

SLACK_S = 10.0  # a loaded CI machine: the targets themselves are measured by the bench


def config_text(servers: dict[str, RealServer], sqlite_url: str, *, interval: str, priorities: dict[str, int],
                retry_interval: str | None = None) -> str:
    retry = f"retry_interval: {retry_interval}, " if retry_interval else ""
    lines = ["providers:"]
    for name, server in servers.items():
        lines += [f"  {name}:", "    type: llamacpp", f"    endpoint: {server.url}",
                  f"    parameters: {{timeout: 1s, max_retries: 0, probe_interval: {interval}, {retry}"
                  f"priority: {priorities.get(name, 0)}}}"]
    lines += ["storage:", f"  url: {sqlite_url}", "  flush_interval: 50ms", "api:", "  listen: 127.0.0.1:0"]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def running(text: str) -> AsyncIterator[tuple[Daemon, MonitordClient]]:
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    try:
        async with MonitordClient(f"http://127.0.0.1:{daemon.api_port}", timeout_s=5.0, max_stale_s=0) as client:
            yield daemon, client
    finally:
        await daemon.stop()


async def selected(client: MonitordClient, **options: Any) -> str:
    return (await client.select(**options)).provider.provider


def selects(client: MonitordClient, name: str) -> Any:
    """A check for `eventually`: the default selection names `name`."""
    async def check() -> bool:
        return await selected(client) == name
    return check


async def test_a_saturated_server_loses_the_selection_and_wins_it_back_when_it_frees(
        start_server: Any, session: aiohttp.ClientSession, sqlite_url: str) -> None:
    servers: dict[str, RealServer] = {name: start_server(None, "--slots", "--parallel", "1")
                                      for name in ("first", "second")}
    for server in servers.values():
        await wait_up(server, session)
    interval_s = 1.0
    text = config_text(servers, sqlite_url, interval=f"{interval_s:g}s", priorities={"first": 5})
    async with running(text) as (daemon, client):
        await eventually(lambda: daemon.first_round_done, 10 + SLACK_S, "the first probe round")
        await eventually(selects(client, "first"), 5 + SLACK_S, "the higher priority server selected while both idle")
        stop = asyncio.Event()

        # its own connections, one per request: llama-server may close a kept-alive stream, and a worker that
        # died on that would leave the slot free
        load = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

        async def long_streamed_generations() -> None:
            work = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 480,
                    "ignore_eos": True, "stream": True}
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError):
                    async with load.post(servers["first"].url + "/v1/chat/completions", json=work) as resp:
                        async for _ in resp.content.iter_any():
                            pass

        workers = [asyncio.ensure_future(long_streamed_generations()) for _ in range(3)]
        try:
            moved_s = await eventually(selects(client, "second"), 2 * interval_s + SLACK_S,
                                       "the selection moving off the saturated server", every_s=0.05)
            state = daemon.live.get("first")
            assert state is not None and state.status is Status.UP  # busy is not down: no alert, only routing
            assert state.capacity is not None and state.capacity.saturated
            entries = {e.provider: e for e in (await client.ranking()).entries}
            assert entries["first"].saturated and entries["first"].components["headroom"] == 0.0
            assert (await client.select(strategy="least_loaded")).provider.provider == "second"
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            await load.close()
        back_s = await eventually(selects(client, "first"), 2 * interval_s + SLACK_S,
                                  "the selection coming back once the slot is free", every_s=0.05)
        print(f"moved off the saturated server after {moved_s:.2f}s, back {back_s:.2f}s after it freed "
              f"(probe interval {interval_s:g}s)")


async def test_a_killed_server_leaves_the_selection_at_once_and_the_down_alert_follows(
        start_server: Any, session: aiohttp.ClientSession, sqlite_url: str) -> None:
    servers: dict[str, RealServer] = {name: start_server() for name in ("victim", "spare")}
    for server in servers.values():
        await wait_up(server, session)
    # a probe interval well above the retry interval, as in production (10 s and the default 5 s) but shorter:
    # the first failed probe makes it suspect, the retries that follow it make it down
    interval_s, retry_interval_s = 4.0, 1.5
    text = config_text(servers, sqlite_url, interval=f"{interval_s:g}s", priorities={"victim": 5},
                       retry_interval=f"{int(retry_interval_s * 1000)}ms")
    async with running(text) as (daemon, client):
        await eventually(lambda: daemon.first_round_done, interval_s + SLACK_S, "the first probe round")
        spec = daemon.specs["victim"]
        assert spec.retry_interval_s == retry_interval_s
        await eventually(selects(client, "victim"), 5 + SLACK_S, "the victim selected while it serves")
        servers["victim"].process.kill()  # SIGKILL: no goodbye, the port just refuses
        servers["victim"].process.wait()
        killed_at = datetime.now(UTC)

        def first_failure() -> bool:
            state = daemon.live.get("victim")
            return state is not None and state.failures_in_a_row >= 1

        await eventually(first_failure, interval_s + SLACK_S, "the first failed probe after the kill", every_s=0.01)
        seen_at = datetime.now(UTC)
        # the very next selection no longer names it: suspect ranks below the spare at once
        assert await selected(client) == "spare"
        state = daemon.live.get("victim")
        assert state is not None and state.suspect and state.status is Status.UP  # alerts still wait
        first_failed_at = state.last_failure_at
        assert first_failed_at is not None

        async def down_alerted() -> bool:
            return bool(await daemon.alerts.recent_alerts(limit=5, since=None, provider="victim",
                                                          event_type="provider.down"))

        await eventually(down_alerted, 3 * spec.retry_interval_s + SLACK_S, "provider.down for the killed server")
        state = daemon.live.get("victim")
        assert state is not None and state.status is Status.DOWN and state.failures_in_a_row >= 3
        down_after_s = (datetime.now(UTC) - first_failed_at).total_seconds()
        print(f"first failed probe {(first_failed_at - killed_at).total_seconds():.2f}s after the kill; "
              f"select moved by {(seen_at - first_failed_at).total_seconds():.2f}s after it; "
              f"provider.down {down_after_s:.1f}s after it (target 3 x {spec.retry_interval_s:g}s)")
