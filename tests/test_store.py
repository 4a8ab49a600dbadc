"""Store: every test runs on SQLite and on PostgreSQL (the db_url fixture), through the public facade."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from monitord.model import (
    Capacity,
    ErrorClass,
    ModelInfo,
    ModelKind,
    ProbeResult,
    ProviderSpec,
    ResidentModel,
    Secret,
    Status,
)
from monitord.store import Store, dialects, migrate, queries
from monitord.store.schema import metadata
from monitord.store.writer import MODEL_REFRESH_S

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def result(
    provider: str,
    at: datetime,
    status: Status = Status.UP,
    total_ms: float = 10.0,
    **fields: Any,
) -> ProbeResult:
    if status is Status.DOWN:
        fields.setdefault("error_class", ErrorClass.REFUSED)
        fields.setdefault("error", "connection refused")
    return ProbeResult(
        provider=provider, provider_type="vllm", started_at=at, status=status, total_ms=total_ms, **fields
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def dump_tables(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, read around the Store, to check what really landed."""
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                table.name: [dict(row._mapping) for row in (await conn.execute(select(table))).all()]
                for table in metadata.sorted_tables
            }
    finally:
        await engine.dispose()


# --- reads ------------------------------------------------------------------------------------------


async def test_history_is_newest_first_within_since_inclusive_until_exclusive(store: Store) -> None:
    for minute in range(10):
        store.enqueue(result("a", T0 + timedelta(minutes=minute), total_ms=float(minute)))
        store.enqueue(result("b", T0 + timedelta(minutes=minute)))
    await store.flush()

    everything = await store.history("a")
    assert [s.total_ms for s in everything] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert {s.provider for s in everything} == {"a"}

    window = await store.history("a", since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5))
    assert [s.ts for s in window] == [T0 + timedelta(minutes=m) for m in (4, 3, 2)]
    assert [s.total_ms for s in await store.history("a", limit=3)] == [9, 8, 7]
    assert await store.history("nobody") == []


async def test_samples_carry_every_column(store: Store) -> None:
    store.enqueue(
        result(
            "a", T0, Status.DEGRADED, total_ms=12.5, error_class=ErrorClass.MODEL_MISSING,
            error="model llama missing", connect_ms=1.5, ttfb_ms=4.25, http_status=200, attempts=2,
            models=(ModelInfo(id="m1"), ModelInfo(id="m2")),
        )
    )
    await store.flush()
    (sample,) = await store.history("a")
    assert sample == queries.ProbeSample(
        ts=T0, provider="a", status=Status.DEGRADED, error_class=ErrorClass.MODEL_MISSING,
        error="model llama missing", connect_ms=1.5, ttfb_ms=4.25, total_ms=12.5, http_status=200,
        model_count=2, attempts=2,
    )


async def test_capacity_is_stored_with_the_probe(store: Store) -> None:
    load = Capacity(slots_total=4, slots_busy=4, queue_depth=2, requests_running=4, kv_cache_usage=0.75,
                    generation_tokens_total=1234.0, resident_models=(ResidentModel("m1"),))
    store.enqueue(replace(result("a", T0), capacity=load))
    store.enqueue(result("a", T0 + timedelta(minutes=1)))  # a server that publishes nothing
    await store.flush()
    later, first = await store.history("a")
    # the load figures are history; the token counter and resident models are live state only
    assert first.capacity == Capacity(slots_total=4, slots_busy=4, queue_depth=2, requests_running=4,
                                      kv_cache_usage=0.75)
    assert first.capacity.saturated and later.capacity is None


async def test_latest_is_the_newest_sample_of_each_provider(store: Store) -> None:
    assert await store.latest() == {}
    for minute, provider, status in [
        (0, "a", Status.UP), (5, "a", Status.DOWN), (3, "a", Status.UP),
        (1, "b", Status.UP),
        (2, "c", Status.LOADING), (2, "c", Status.UP),  # same instant: the later write is stored 1 µs on, and wins
    ]:
        store.enqueue(result(provider, T0 + timedelta(minutes=minute), status))
    await store.flush()

    latest = await store.latest()
    assert {name: (s.ts, s.status) for name, s in latest.items()} == {
        "a": (T0 + timedelta(minutes=5), Status.DOWN),
        "b": (T0 + timedelta(minutes=1), Status.UP),
        "c": (T0 + timedelta(minutes=2, microseconds=1), Status.UP),
    }


async def test_recent_is_oldest_first_across_providers(store: Store) -> None:
    for minute, provider in [(4, "a"), (1, "b"), (3, "b"), (0, "a"), (2, "c")]:
        store.enqueue(result(provider, T0 + timedelta(minutes=minute)))
    await store.flush()

    samples = await store.recent(T0 + timedelta(minutes=1))
    assert [(s.ts - T0, s.provider) for s in samples] == [
        (timedelta(minutes=1), "b"), (timedelta(minutes=2), "c"),
        (timedelta(minutes=3), "b"), (timedelta(minutes=4), "a"),
    ]


async def test_models_remember_first_and_last_sighting(store: Store) -> None:
    old = ModelInfo(id="llama", kind=ModelKind.LLM, loaded=False)
    new = ModelInfo(id="llama", kind=ModelKind.LLM, loaded=True, context_length=8192)
    store.enqueue(result("a", T0 + timedelta(minutes=1), models=(old, ModelInfo(id="embed"))))
    store.enqueue(result("a", T0 + timedelta(minutes=2), models=(new,)))
    store.enqueue(result("b", T0, models=(ModelInfo(id="llama"),)))
    await store.flush()
    # A batch that was held back by an outage lands late: it must not move last_seen backwards.
    store.enqueue(result("a", T0, models=(old,)))
    await store.flush()

    by_key = {(m.provider, m.model_id): m for m in await store.models()}
    assert list(by_key) == [("a", "embed"), ("a", "llama"), ("b", "llama")]
    llama = by_key["a", "llama"]
    assert (llama.first_seen, llama.last_seen) == (T0, T0 + timedelta(minutes=2))
    assert llama.info == new
    assert [m.model_id for m in await store.models("b")] == ["llama"]


async def test_aggregate_buckets_count_availability_and_latency(store: Store) -> None:
    samples = [  # (seconds after T0, status, total_ms)
        (0, Status.UP, 10), (10, Status.UP, 20), (20, Status.DOWN, 5000), (30, Status.UP, 30), (50, Status.UP, 40),
        (60, Status.DOWN, 5000), (70, Status.LOADING, 15),
        (190, Status.UP, 7),
        (300, Status.UP, 1),  # at `until`: outside
    ]
    for seconds, status, total_ms in samples:
        store.enqueue(result("a", T0 + timedelta(seconds=seconds), status, total_ms=total_ms))
    store.enqueue(result("b", T0, Status.DOWN))
    await store.flush()

    buckets = await store.aggregate("a", step_s=60, since=T0, until=T0 + timedelta(seconds=300))
    summary = [
        (b.start - T0, b.count, b.ok_count, b.availability, b.latency_avg_ms, b.latency_p95_ms)
        for b in buckets
    ]
    assert summary == [
        (timedelta(0), 5, 4, 0.8, 25.0, pytest.approx(38.5)),
        (timedelta(seconds=60), 2, 0, 0.0, None, None),
        (timedelta(seconds=180), 1, 1, 1.0, 7.0, 7.0),
    ]
    assert all(b.step_s == 60 and b.start.tzinfo == UTC for b in buckets)
    assert await store.aggregate("nobody", step_s=60, since=T0, until=T0 + timedelta(hours=1)) == []


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.95, None), ([5.0], 0.95, 5.0), ([10, 20, 30, 40], 0.95, 38.5), ([1, 2], 0.5, 1.5)],
)
def test_percentile_matches_sql_percentile_cont(values: list[float], fraction: float, expected: Any) -> None:
    assert queries.percentile_cont(values, fraction) == expected


# --- time zones -------------------------------------------------------------------------------------


async def test_timestamps_round_trip_as_aware_utc(store: Store) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    written = datetime(2025, 3, 1, 17, 30, 0, 123456, tzinfo=india)  # 12:00:00.123456 UTC
    store.enqueue(result("a", written))
    await store.flush()

    (sample,) = await store.history("a")
    assert sample.ts == written
    assert sample.ts.tzinfo == UTC and sample.ts.hour == 12 and sample.ts.microsecond == 123456
    # Bounds in any zone compare as instants.
    assert await store.history("a", since=written.astimezone(timezone(timedelta(hours=-7)))) != []
    assert await store.history("a", since=written + timedelta(microseconds=1)) == []


# --- batching ---------------------------------------------------------------------------------------


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store_factory: Any) -> None:
    store = await store_factory(batch_size=5, flush_interval_s=60)
    for second in range(4):
        store.enqueue(result("a", T0 + timedelta(seconds=second)))
    await asyncio.sleep(0.2)
    assert (store.written_total, store.pending) == (0, 4)

    store.enqueue(result("a", T0 + timedelta(seconds=4)))
    await wait_until(lambda: store.written_total == 5)
    assert store.pending == 0
    assert len(await store.history("a")) == 5


async def test_a_partial_batch_is_written_after_the_interval(store_factory: Any) -> None:
    store = await store_factory(batch_size=1000, flush_interval_s=0.2)
    started = time.monotonic()
    for second in range(3):
        store.enqueue(result("a", T0 + timedelta(seconds=second)))
    assert store.written_total == 0
    await wait_until(lambda: store.written_total == 3, timeout_s=3)
    assert 0.1 < time.monotonic() - started < 2.0
    assert len(await store.history("a")) == 3


async def test_close_writes_everything_still_buffered(db_url: str, store_factory: Any) -> None:
    store = await store_factory(batch_size=500, flush_interval_s=60)
    for i in range(1234):
        store.enqueue(result(f"p{i % 7}", T0 + timedelta(milliseconds=i)))
    await store.close()
    assert (store.written_total, store.pending, store.dropped_total) == (1234, 0, 0)

    rows = await dump_tables(db_url)
    assert len(rows["probe_rows"]) == 1234


async def test_enqueue_after_close_is_counted_not_raised(store: Store) -> None:
    await store.close()
    store.enqueue(result("a", T0))
    assert (store.pending, store.dropped_total) == (0, 1)


# --- what is stored about providers -----------------------------------------------------------------


SECRETS = ("pw-SECRET-1", "sk-SECRET-2", "hdr-SECRET-3")


def secret_spec(**fields: Any) -> ProviderSpec:
    base = {
        "name": "gpu-box",
        "type": "vllm",
        "base_url": f"http://alice:{SECRETS[0]}@llm.internal:8000",
        "api_key": Secret(SECRETS[1]),
        "headers": (("X-Token", Secret(SECRETS[2])),),
        "models": ("llama",),
        "capabilities": frozenset({"chat", "streaming"}),
    }
    return ProviderSpec(**{**base, **fields})


async def test_secrets_are_never_stored(db_url: str, store: Store) -> None:
    await store.sync_providers([secret_spec()], T0)
    store.enqueue(result("gpu-box", T0, models=(ModelInfo(id="llama"),), server_version="0.6.1"))
    await store.flush()

    tables = await dump_tables(db_url)
    everything = repr(tables)
    for secret in SECRETS:
        assert secret not in everything
    (row,) = tables["providers"]
    assert row["endpoint"] == "http://***@llm.internal:8000"
    assert row["settings"]["has_api_key"] is True
    assert row["settings"]["header_names"] == ["X-Token"]
    assert row["settings"]["capabilities"] == ["chat", "streaming"]


async def test_provider_snapshot_is_upserted_and_keeps_server_version(db_url: str, store: Store) -> None:
    await store.sync_providers([secret_spec(), secret_spec(name="other", api_key=None, headers=())], T0)
    store.enqueue(result("gpu-box", T0, server_version="0.6.1"))
    store.enqueue(result("gpu-box", T0 + timedelta(seconds=1)))  # says nothing: version stays
    await store.flush()
    later = T0 + timedelta(hours=1)
    await store.sync_providers([secret_spec(enabled=False, base_url="http://llm.internal:9000")], later)

    rows = {row["name"]: row for row in (await dump_tables(db_url))["providers"]}
    box = rows["gpu-box"]
    assert (box["first_seen"], box["updated_at"]) == (T0, later)
    assert (box["enabled"], box["endpoint"], box["server_version"]) == (False, "http://llm.internal:9000", "0.6.1")
    assert rows["other"]["settings"]["has_api_key"] is False


# --- the database goes away -------------------------------------------------------------------------


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of the database server, that a test can cut and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop accepting and reset every open connection, as a crashed server or a network cut would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_writer)
        try:
            try:
                server_reader, server_writer = await asyncio.open_connection(*self._target)
            except OSError:
                return
            self._writers.add(server_writer)
            await asyncio.gather(
                self._pump(client_reader, server_writer), self._pump(server_reader, client_writer)
            )
        finally:
            for writer in (client_writer, locals().get("server_writer")):
                if isinstance(writer, asyncio.StreamWriter):
                    writer.transport.abort()
                    self._writers.discard(writer)
            self._handlers.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@dataclass
class Outage:
    """A database URL that does not answer yet, and the way to bring it back (migrated)."""

    url: str
    restore: Callable[[], Any]


async def aiosqlite_workers_finished(timeout_s: float = 5.0) -> None:
    """aiosqlite does not wait for the worker thread of a connection that failed to open
    (omnilib/aiosqlite#389): let it finish while the loop is open, or it raises in its thread."""
    await wait_until(
        lambda: not any(t.name.endswith("(_connection_worker_thread)") for t in threading.enumerate()),
        timeout_s,
    )


@pytest.fixture
async def outage(db_url: str, tmp_path: Path) -> AsyncIterator[Outage]:
    real_url = make_url(db_url)
    if real_url.get_backend_name() == "sqlite":
        # A data directory that is not there yet (an unmounted volume): nothing can be opened.
        url = f"sqlite+aiosqlite:///{tmp_path / 'not-yet' / 'monitord.db'}"

        async def make_writable() -> None:
            (tmp_path / "not-yet").mkdir()
            await migrate.upgrade(url)

        yield Outage(url, make_writable)
        await aiosqlite_workers_finished()
        return
    await migrate.upgrade(db_url)
    proxy = TcpProxy(real_url.host or "127.0.0.1", real_url.port or 5432)
    await proxy.start()
    await proxy.cut()  # keep the port, refuse connections
    yield Outage(real_url.set(port=proxy.port).render_as_string(hide_password=False), proxy.start)
    await proxy.cut()


async def test_rows_wait_for_an_unreachable_database_and_the_oldest_overflow(outage: Outage) -> None:
    store = await Store.open(outage.url, batch_size=5, flush_interval_s=0.05, buffer_limit=20)
    try:
        assert not await store.ping()
        await store.start()
        with capture_logs() as logs:
            for i in range(30):
                store.enqueue(result("a", T0 + timedelta(seconds=i), models=(ModelInfo(id="m"),)))
            assert (store.pending, store.dropped_total) == (20, 10)
            await store.flush()  # fails quietly: the rows stay
            await asyncio.sleep(0.2)  # the writer task retries and backs off meanwhile
        assert (store.pending, store.written_total) == (20, 0)
        events = [entry["event"] for entry in logs]
        assert events.count("store.rows_dropped") == 1  # one line when dropping starts, not one per row
        failed = [entry for entry in logs if entry["event"] == "store.write_failed"]
        assert failed and failed[-1]["pending"] == 20 and failed[-1]["dropped_total"] == 10

        await outage.restore()
        await wait_until(lambda: store.written_total == 20, timeout_s=10)  # no flush(): the writer retries
        assert await store.ping()
        kept = await store.history("a")
        assert [s.ts for s in kept] == [T0 + timedelta(seconds=i) for i in range(29, 9, -1)]
        (model,) = await store.models("a")
        # last_seen is rewritten at most every MODEL_REFRESH_S per model: exact first, within that for last
        assert model.first_seen == T0 + timedelta(seconds=10)
        assert T0 + timedelta(seconds=29 - MODEL_REFRESH_S) <= model.last_seen <= T0 + timedelta(seconds=29)
    finally:
        await store.close()
    assert (store.pending, store.dropped_total) == (0, 10)


async def test_close_with_the_database_away_reports_the_loss_and_returns(outage: Outage) -> None:
    store = await Store.open(outage.url, batch_size=5, flush_interval_s=0.05)
    await store.start()
    store.enqueue(result("a", T0))
    await asyncio.wait_for(store.close(), timeout=10)
    assert (store.pending, store.written_total, store.dropped_total) == (0, 0, 1)


@pytest.mark.postgres
async def test_postgres_connection_cut_mid_run_then_restored(postgres_url: str) -> None:
    """A network cut under live pooled connections: only PostgreSQL has a connection to cut (the SQLite
    outage above is the file being unavailable)."""
    await migrate.upgrade(postgres_url)
    real = make_url(postgres_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.start()
    store = await Store.open(
        real.set(port=proxy.port).render_as_string(hide_password=False), batch_size=100, flush_interval_s=0.05
    )
    try:
        await store.start()
        store.enqueue(result("a", T0))
        await store.flush()
        assert store.written_total == 1

        await proxy.cut()
        for second in range(1, 6):
            store.enqueue(result("a", T0 + timedelta(seconds=second)))
        await store.flush()
        assert (store.pending, store.written_total) == (5, 1)
        assert not await store.ping()

        await proxy.start()
        await wait_until(lambda: store.written_total == 6, timeout_s=10)
        assert len(await store.history("a")) == 6
    finally:
        await store.close()
        await proxy.cut()
    assert store.dropped_total == 0


async def test_unchanged_models_are_not_rewritten_every_batch(store: Store) -> None:
    """Probes list the same models over and over: provider_models is written when something changed, or once a
    MODEL_REFRESH_S to move last_seen, not with every batch."""
    from monitord.model import ModelInfo, ProbeResult, Status

    def result(at_s: float, context: int = 4096) -> ProbeResult:
        return ProbeResult(provider="a", provider_type="vllm", started_at=T0 + timedelta(seconds=at_s),
                           status=Status.UP, total_ms=5.0, models=(ModelInfo(id="m", context_length=context),))

    for at_s in (0, 1, 2):
        store.enqueue(result(at_s))
        await store.flush()
    (model,) = await store.models("a")
    assert (model.first_seen, model.last_seen) == (T0, T0)  # seen again at 1 s and 2 s: no rewrite yet
    store.enqueue(result(3, context=8192))  # the details changed: written at once
    await store.flush()
    (model,) = await store.models("a")
    assert model.info.context_length == 8192 and model.last_seen == T0 + timedelta(seconds=3)
    store.enqueue(result(3 + MODEL_REFRESH_S, context=8192))  # a minute later: last_seen moves
    await store.flush()
    (model,) = await store.models("a")
    assert model.last_seen == T0 + timedelta(seconds=3 + MODEL_REFRESH_S) and model.first_seen == T0


async def test_results_read_back_keep_their_models_between_last_seen_writes(store: Store) -> None:
    """Cluster peers rebuild results from the probes table and provider_models; a probe newer than the stored
    last_seen (written at most every MODEL_REFRESH_S) still lists its models."""
    from monitord.model import ModelInfo, ProbeResult, Status

    for at_s in (0, 30):
        store.enqueue(ProbeResult(provider="a", provider_type="vllm", started_at=T0 + timedelta(seconds=at_s),
                                  status=Status.UP, total_ms=5.0, models=(ModelInfo(id="m"),)))
        await store.flush()
    (model,) = await store.models("a")
    assert model.last_seen == T0  # the 30 s sighting was not rewritten
    results = await store.results_since(T0 - timedelta(seconds=1))
    assert [(r.started_at - T0).total_seconds() for r in results] == [0, 30]
    assert all(r.model_ids == ("m",) for r in results)


async def test_probes_stamped_with_one_microsecond_are_all_kept(store: Store) -> None:
    """Rows are keyed (provider, time): a probe stamped like one before it in the batch moves 1 µs on, even out of
    order; a batch written twice (its commit's answer lost) is not."""
    tick = timedelta(microseconds=1)
    for at in (T0, T0 + tick, T0, T0, T0 - tick):
        store.enqueue(result("a", at))
    await store.flush()
    assert [s.ts for s in await store.history("a")] == [T0 + n * tick for n in (3, 2, 1, 0, -1)]


async def test_a_row_written_twice_is_stored_once_and_the_batch_lands(store: Store) -> None:
    """A batch retried after a commit whose answer was lost holds rows already stored: they are skipped (on
    PostgreSQL the COPY fails on the key and the batch is written again with ON CONFLICT DO NOTHING), the rest land."""
    first = result("a", T0)
    store.enqueue(first)
    await store.flush()
    store.enqueue(first)
    store.enqueue(result("a", T0 + timedelta(seconds=30), Status.DOWN))
    await store.flush()
    assert (store.pending, store.dropped_total, store.written_total) == (0, 0, 3)
    assert [(s.ts, s.status) for s in await store.history("a")] == [(T0 + timedelta(seconds=30), Status.DOWN),
                                                                    (T0, Status.UP)]


@pytest.mark.postgres
async def test_a_kept_connection_closed_between_batches_costs_no_failed_write(postgres_url: str) -> None:
    """Batches share one connection while they keep coming (no pool pre-ping, three round trips on PostgreSQL, per
    batch); when the server has closed it meanwhile (a restart, an administrator), the batch is written at once on
    a fresh one, as a pre-ping would have made it: no failed write, no red store."""
    import asyncpg

    await migrate.upgrade(postgres_url)
    store = await Store.open(postgres_url, flush_interval_s=60)
    try:
        store.enqueue(result("a", T0))
        await store.flush()
        kept = store._writer._held.conn
        assert kept is not None
        pid = (await kept.get_raw_connection()).driver_connection.get_server_pid()  # type: ignore[union-attr]
        admin = await asyncpg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(
            hide_password=False).split("?")[0])
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        with capture_logs() as logs:
            store.enqueue(result("a", T0 + timedelta(seconds=30)))
            await store.flush()
        assert (store.written_total, store.pending, store.healthy) == (2, 0, True)
        assert [e for e in logs if e["event"] == "store.write_failed"] == []
        assert len(await store.history("a")) == 2
    finally:
        await store.close()


async def test_capacity_counts_past_their_column_are_capped(store: Store) -> None:
    """The counts are SMALLINT on PostgreSQL (revision 0009): a server claiming more is stored at the cap, never
    rejected with its batch."""
    store.enqueue(result("a", T0, capacity=Capacity(slots_total=70_000, slots_busy=3, queue_depth=-70_000)))
    await store.flush()
    [sample] = await store.history("a")
    assert sample.capacity is not None
    assert (sample.capacity.slots_total, sample.capacity.slots_busy, sample.capacity.queue_depth) == (
        32767, 3, -32767)
