"""A database outage, for real: the daemon reaches PostgreSQL through a TCP proxy the test cuts and restores.

Meanwhile probing and the API go on from memory, /readyz and /metrics say the store is degraded, rows wait in the
buffer; after the restore every buffered row is written (or, past the buffer's bound, counted as dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.store import dialects
from monitord.store.schema import probes
from tests.plugins.api import assert_error

pytestmark = pytest.mark.postgres


class TcpProxy:
    """127.0.0.1:port → target. cut() resets every connection and refuses new ones (as a PostgreSQL restart or a
    dead link does); restore() listens on the same port again. silence() makes connections half-open: they stay
    up, bytes are taken from the sender and never passed on (a hung middlebox); speak() lets them flow again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._links: list[asyncio.Event] = []  # one per connection: set while it passes bytes on
        self._new_links_speak = True

    def silence(self, *, new_connections_too: bool = False) -> None:
        """Every open connection goes silent mid-stream; new ones too when asked (else they work normally)."""
        for speaking in self._links:
            speaking.clear()
        self._new_links_speak = not new_connections_too

    def speak(self) -> None:
        for speaking in self._links:
            speaking.set()
        self._new_links_speak = True

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # RST, not a polite FIN: the client learns at its next read or write
        for speaking in self._links:
            speaking.set()  # silenced pipes wake up to find their connection gone
        self._links.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        speaking = asyncio.Event()
        if self._new_links_speak:
            speaking.set()
        self._links.append(speaking)
        for source, sink in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._pipe(source, sink, speaking))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, speaking: asyncio.Event) -> None:
        try:
            while data := await source.read(65536):
                await speaking.wait()  # silenced: the bytes read are held, the peer's kernel still ACKs them
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    parsed = make_url(postgres_url)
    running = await TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    yield running
    await running.close()


def via(proxy: TcpProxy, url: str) -> str:
    """The URL, pointed at the proxy; a short connect timeout so an attempt during the cut fails fast."""
    parsed = make_url(url).set(host="127.0.0.1", port=proxy.port)
    return parsed.update_query_dict({"timeout": "1"}).render_as_string(hide_password=False)


def config(url: str, endpoints: dict[str, str], *, buffer: str = "batch_size: 50\n  buffer_limit: 10000") -> str:
    lines = ["providers:"]
    for name, endpoint in endpoints.items():
        lines += [f"  {name}:", "    type: vllm", f"    endpoint: {endpoint}",
                  "    parameters: {timeout: 500ms, max_retries: 0}"]
    lines += ["monitor:", "  interval: 100ms", "storage:", f"  url: {url}", "  flush_interval: 50ms",
              f"  {buffer}", "api:", "  listen: 127.0.0.1:0"]
    return "\n".join(lines) + "\n"


async def eventually(condition: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await _value(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(0.05)


async def _value(condition: Callable[[], Any]) -> Any:
    value = condition()
    return await value if asyncio.iscoroutine(value) else value


async def rows_in_database(url: str) -> int:
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(probes))).scalar_one())
    finally:
        await engine.dispose()


def probes_recorded(daemon: Daemon) -> int:
    """Results the daemon recorded, from its own monitord_probes_total counter."""
    assert daemon.api is not None
    return int(sum(sample.value for metric in daemon.api.metrics.probes.collect() for sample in metric.samples
                   if sample.name.endswith("_total")))


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@contextlib.asynccontextmanager
async def running(text: str) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession, str]]:
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            yield daemon, http, f"http://127.0.0.1:{daemon.api_port}"
    finally:
        await daemon.stop()


async def test_an_outage_loses_no_buffered_row(postgres_url: str, proxy: TcpProxy, provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    text = config(via(proxy, postgres_url), {name: d.url for name, d in doubles.items()})
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.first_round_done and daemon.store.written_total > 4, what="first rows")

            await proxy.cut()
            await eventually(lambda: not daemon.store.healthy, what="the writer noticing")
            seen = {name: len(d.requests) for name, d in doubles.items()}
            await eventually(lambda: daemon.store.pending >= 20, what="rows piling up in the buffer")
            assert all(len(d.requests) > seen[name] for name, d in doubles.items()), "probing stopped"

            async with http.get(f"{api}/v1/providers") as reply:  # the API answers from memory
                assert reply.status == 200
                assert {p["name"]: p["status"] for p in (await reply.json())["providers"]} == {
                    "alpha": "up", "beta": "up"}
            async with http.get(f"{api}/v1/ranking") as reply:
                assert reply.status == 200 and (await reply.json())["ranking"]
            async with http.get(f"{api}/readyz") as reply:
                error = await assert_error(reply, 503, "not_ready")
                assert error["details"]["checks"] == {"first_round": True, "store": False, "probes_fresh": True}
                assert error["details"]["store"]["state"] == "degraded" and error["details"]["store"]["pending_rows"]
                assert "store degraded" in error["message"]
            async with http.get(f"{api}/metrics") as reply:
                scraped = await reply.text()
                assert metric(scraped, "monitord_store_healthy") == 0.0
                assert metric(scraped, "monitord_store_pending_rows") >= 20
                assert metric(scraped, "monitord_store_dropped_total") == 0.0

            await proxy.restore()
            await eventually(lambda: daemon.store.healthy and daemon.store.pending == 0, what="the buffer draining")
            async with http.get(f"{api}/readyz") as reply:
                assert reply.status == 200
        recorded = probes_recorded(daemon)

    assert daemon.store.dropped_total == 0
    assert await rows_in_database(postgres_url) == daemon.store.written_total == recorded
    events = [entry["event"] for entry in logs]
    assert "store.write_failed" in events and "store.write_recovered" in events
    assert "store.rows_dropped" not in events


async def test_past_the_bound_rows_are_dropped_and_counted(postgres_url: str, proxy: TcpProxy,
                                                            provider_double: Any) -> None:
    double = await provider_double("vllm")
    text = config(via(proxy, postgres_url), {"alpha": double.url}, buffer="batch_size: 5\n  buffer_limit: 10")
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.store.written_total > 2, what="first rows")
            await proxy.cut()
            await eventually(lambda: daemon.store.dropped_total >= 5, what="the buffer overflowing")
            async with http.get(f"{api}/metrics") as reply:
                scraped = await reply.text()
                assert metric(scraped, "monitord_store_dropped_total") >= 5
                assert metric(scraped, "monitord_store_pending_rows") <= 10
            await proxy.restore()
            await eventually(lambda: daemon.store.healthy and daemon.store.pending == 0, what="the buffer draining")
        recorded = probes_recorded(daemon)

    assert await rows_in_database(postgres_url) == daemon.store.written_total == recorded - daemon.store.dropped_total
    dropped = [entry for entry in logs if entry["event"] == "store.rows_dropped"]
    assert dropped and dropped[0]["reason"] == "buffer_full"  # one line when dropping starts, with the total
