"""Probe engine cost: CPU per probe, achieved rate, scheduling lateness and peak RSS of monitord's probe path,
beside a bare aiohttp loop that makes the same GETs to the same fleet at the same rate and concurrency.

The fleet is N simulated vLLM servers (one loopback port each, up to 2,500 ports per server process, answering
`/health`, `/v1/models` with the vLLM fixture body, `/version` and `/metrics`). Servers run in their own processes so
their CPU is not counted, and each variant runs in a fresh spawned process so its CPU time and peak RSS are its own.
The probe rate is held at RATE_PER_S for every N (interval = N / rate), so the cost per probe compares across N.
Canaries and capacity are on as in production: the fleet streams chat completions, monitord sends one canary per
provider every CANARY_EVERY intervals and the bare loop the same request at the same pace. Each variant process
measures FULL_WINDOWS windows after its warm-up; the targets give min / median / max over those windows.
monitord is the real `Daemon` (run as `monitord run` runs it, info-level JSON logs): ProbeScheduler ->
probe_provider on the create_session() session -> Daemon.record (Store.enqueue into a migrated SQLite file,
LiveState.fold, the API's ranking refresh, alert rules), its API, best-provider watch and heartbeat. A third
variant, monitord's scheduler and probe alone, shows how the cost divides.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import socket
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.common import (
    REPO_ROOT,
    Meter,
    Table,
    Target,
    busy_note,
    peak_rss_mb,
    percentile,
    raise_fd_limit,
    run_async,
    spread_text,
)

ORDER = 10
TITLE = "probe engine cost vs a bare aiohttp loop (CPU per probe, lateness, RSS)"

RATE_PER_S = 200.0  # probes per second, for every fleet size; 2 cores sustain it with room to spare
FULL_SIZES = (100, 1_000, 5_000, 10_000)
QUICK_SIZES = (50, 200)
FULL_WINDOWS = 3  # measurement windows per variant process, one after the other (min / median / max)
BREAKDOWN_SIZES = (1_000,)  # sizes that also run the scheduler + probe only variant
PORTS_PER_SERVER = 2_500
MONITORD, MONITORD_PROBE_ONLY, BASELINE = "monitord", "monitord-probe-only", "baseline"
CONCURRENCY = 64  # monitor.concurrency's default
CANARY_EVERY = 10  # canary interval / probe interval (the defaults: 300 s and 30 s)
CANARY_CONCURRENCY = 2  # monitor.canary.concurrency's default
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "vllm"
SPAWN_TIMEOUT_S = 120.0

# Targets from the issue (16)
CPU_RATIO_MAX = 1.5
LATENESS_P99_MAX_MS = 250.0
RSS_MAX_MB = {1_000: 100.0, 10_000: 200.0}
TARGET_N = 1_000


@dataclass(frozen=True, slots=True)
class Plan:
    """What one variant process runs."""

    ports: tuple[int, ...]
    interval_s: float
    warmup_s: float
    measure_s: float  # one window
    concurrency: int
    paths: tuple[str, ...] = ()  # the GETs of one probe (the baseline repeats monitord's)
    windows: int = 1  # measured one after the other in the same process
    canary_model: str = ""  # the model the bare loop's canary asks for (monitord picks it from the list)
    cpus: tuple[int, ...] = ()  # the cores the variant process may use (empty: any)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one variant measured over its measurement window (CPU of the whole process, all threads)."""

    variant: str
    probes: int
    failed: int
    wall_s: float
    cpu_s: float
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    peak_rss_mb: float
    paths: tuple[str, ...]
    skipped: int = 0
    rank_ms: float | None = None  # CPU of one recompute of the default ranking at the end of the window
    rows_written: int = 0
    rows_dropped: int = 0
    waited_s: float = 0.0  # time the process's threads were ready to run but waited for a core (other work)

    @property
    def rate_per_s(self) -> float:
        return self.probes / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_probe(self) -> float | None:
        return self.cpu_s * 1e6 / self.probes if self.probes else None


# --- the simulated fleet (server processes) ---------------------------------------------------------------------


def _serve(conn: Connection, count: int, fast: bool = False, cpus: tuple[int, ...] = ()) -> None:
    raise_fd_limit()
    if cpus:
        os.sched_setaffinity(0, cpus)
    run_async(_serve_fast(conn, count) if fast else _serve_async(conn, count))


class _CannedHttp(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive responder with canned answers by path: an aiohttp server costs the fleet
    several times more CPU per request, and at 20,000 providers a core of servers could not keep up."""

    def __init__(self, answers: dict[bytes, bytes], missing: bytes) -> None:
        self._answers = answers
        self._missing = missing
        self._buffer = b""
        self._transport: Any = None  # an asyncio or uvloop TCP transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            at = head.lower().find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop > 0 else len(head)])
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length:]
            path = head.split(b" ", 2)[1]
            self._transport.write(self._answers.get(path, self._missing))


def _canned(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Server: bench\r\n\r\n").encode() + body


async def _serve_fast(conn: Connection, count: int) -> None:
    models = (FIXTURES / "models.json").read_bytes()
    model = orjson.loads(models)["data"][0]["id"]
    answers = {
        b"/health": _canned("200 OK", "application/octet-stream", b""),
        b"/v1/models": _canned("200 OK", "application/json", models),
        b"/version": _canned("200 OK", "application/json", (FIXTURES / "version.json").read_bytes()),
        b"/metrics": _canned("200 OK", "text/plain; charset=utf-8", (FIXTURES / "metrics.txt").read_bytes()),
        b"/v1/chat/completions": _canned("200 OK", "text/event-stream; charset=utf-8",
                                         b"".join(_chat_frames(model, 8))),
    }
    missing = _canned("404 Not Found", "text/plain", b"404: Not Found")
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    ports: list[int] = []
    try:
        for _ in range(count):
            server = await loop.create_server(lambda: _CannedHttp(answers, missing), "127.0.0.1", 0, backlog=256)
            servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        conn.send(ports)
        await loop.run_in_executor(None, conn.recv)  # any message means stop
    finally:
        for server in servers:
            server.close()


async def _serve_async(conn: Connection, count: int) -> None:
    models = (FIXTURES / "models.json").read_bytes()
    version = (FIXTURES / "version.json").read_bytes()
    metrics = (FIXTURES / "metrics.txt").read_bytes()  # the capacity the vLLM adapter reads on every probe

    async def health(_request: web.Request) -> web.Response:
        return web.Response()  # vLLM: 200 with an empty body while the engine lives

    async def model_list(_request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def server_version(_request: web.Request) -> web.Response:
        return web.Response(body=version, content_type="application/json")

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(body=metrics, content_type="text/plain", charset="utf-8")

    async def chat(request: web.Request) -> web.StreamResponse:
        """The canary's streamed chat completion: vLLM's SSE frames, one per token, usage, `[DONE]`."""
        payload = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        with contextlib.suppress(ConnectionError):  # a client that stops (a variant's end) closes mid-stream
            await response.prepare(request)
            for frame in _chat_frames(payload.get("model") or "", int(payload.get("max_tokens") or 1)):
                await response.write(frame)
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", model_list)
    app.router.add_get("/version", server_version)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports: list[int] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock, backlog=256).start()
            ports.append(sock.getsockname()[1])
        conn.send(ports)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # any message means stop
    finally:
        await runner.cleanup()


def _chat_frames(model: str, tokens: int) -> list[bytes]:
    def frame(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": " ok"}) for _ in range(tokens)),
            chunk({}, "length"), frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                                        "model": model, "choices": [], "usage": usage}), b"data: [DONE]\n\n"]


class Fleet:
    """N simulated providers spread over server processes; `with Fleet(n) as fleet: fleet.ports`."""

    def __init__(self, count: int, *, fast: bool = False, cpus: tuple[int, ...] = (), servers: int = 0) -> None:
        self.count = count
        self.fast = fast  # canned answers (_CannedHttp) instead of an aiohttp server
        self.cpus = cpus  # the cores the server processes may use (empty: any)
        self.servers = servers or math.ceil(count / PORTS_PER_SERVER)
        self.ports: tuple[int, ...] = ()
        self._procs: list[tuple[SpawnProcess, Connection]] = []

    def __enter__(self) -> Fleet:
        ctx = _spawn()
        ports: list[int] = []
        try:
            for index in range(self.servers):
                share = self.count // self.servers + (1 if index < self.count % self.servers else 0)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, share, self.fast, self.cpus),
                                   name=f"bench-fleet-{index}", daemon=True)
                proc.start()
                self._procs.append((proc, parent))
            for proc, parent in self._procs:
                ports += _receive(proc, parent, SPAWN_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        self.ports = tuple(ports)
        return self

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._procs if proc.pid is not None]

    def __exit__(self, *_exc: object) -> None:
        for _proc, parent in self._procs:
            with contextlib.suppress(OSError):
                parent.send("stop")
        for proc, _ in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self._procs.clear()


def _receive(proc: SpawnProcess, conn: Connection, timeout_s: float) -> Any:
    """The child's one message; fails fast when the child dies first instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.2):
        if not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"{proc.name} exited with code {proc.exitcode} before reporting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} reported nothing within {timeout_s:g} s")
    return conn.recv()


def _spawn() -> Any:
    import multiprocessing

    return multiprocessing.get_context("spawn")


# --- the two variants (each in a fresh process) -----------------------------------------------------------------


def _variant_main(conn: Connection, variant: str, plan: Plan) -> None:
    raise_fd_limit()
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)
    try:
        if variant in (MONITORD, MONITORD_PROBE_ONLY):
            from monitord import logs

            with open(os.devnull, "w") as devnull:
                logs.configure("info", "json", stream=devnull)  # production level: probe.done is not rendered
                outcome = run_async(_run_monitord(plan) if variant == MONITORD else _run_probe_only(plan))
        else:
            outcome = run_async(_run_baseline(plan))
        conn.send([asdict(one) for one in outcome])
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


def measure(variant: str, plan: Plan) -> list[Outcome]:
    """Run one variant against the fleet in a fresh process and collect its figures, one Outcome per window."""
    ctx = _spawn()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_variant_main, args=(child, variant, plan), name=f"bench-{variant}")
    proc.start()
    try:
        raw: Any = _receive(proc, parent, plan.warmup_s + plan.measure_s * plan.windows + SPAWN_TIMEOUT_S)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if isinstance(raw, dict):
        raise RuntimeError(f"{variant} run failed:\n{raw['error']}")
    return [Outcome(**{**one, "paths": tuple(one["paths"])}) for one in raw]


def run_queue_wait_s() -> float:
    """Seconds this process's threads spent runnable but waiting for a core (/proc/<pid>/task/*/schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[1])
    return total / 1e9


class _Window:
    """Probe and lateness counts, split at the start of the measurement window."""

    def __init__(self) -> None:
        self.probes = 0
        self.failed = 0
        self.lateness_ms: deque[float] = deque(maxlen=100_000)
        self.meter = Meter()
        self.waited_at = run_queue_wait_s()

    def start(self) -> None:
        self.probes = self.failed = 0
        self.lateness_ms.clear()
        self.meter.reset()
        self.waited_at = run_queue_wait_s()

    @property
    def waited_s(self) -> float:
        return run_queue_wait_s() - self.waited_at

    def count(self, failed: bool, calls: Sequence[Any], paths: list[tuple[str, ...]]) -> None:
        self.probes += 1
        self.failed += failed
        if not paths:
            paths.append(tuple(call.path for call in calls))


def _config(plan: Plan, workdir: str) -> Any:
    from monitord.config import Config

    return Config.model_validate({
        "providers": {f"p{i:05d}": {"type": "vllm", "endpoint": f"http://127.0.0.1:{port}"}
                      for i, port in enumerate(plan.ports)},
        "monitor": {"interval": plan.interval_s, "concurrency": plan.concurrency,
                    # canaries on, as the issue measures: one per provider every CANARY_EVERY intervals
                    "canary": {"enabled": True, "interval": max(plan.interval_s * CANARY_EVERY, 1.0),
                               "max_tokens_per_day": 10**9}},
        "storage": {"url": f"sqlite+aiosqlite:///{workdir}/monitord.db"},
        "api": {"listen": "127.0.0.1:0"},
    })


async def _run_monitord(plan: Plan) -> list[Outcome]:
    """The real daemon (`Daemon.run`: store, live state, API, alert rules, best-provider watch, heartbeat);
    a subclass only adds a pipeline sink that counts the results."""
    from monitord.daemon import Daemon
    from monitord.model import ProbeResult, Status
    from monitord.pipeline import Recorded

    window = _Window()
    paths: list[tuple[str, ...]] = []
    started = asyncio.Event()

    class CountingDaemon(Daemon):
        async def start(self, *, serve_api: bool = True) -> None:
            await super().start(serve_api=serve_api)
            self.pipeline.subscribe(ProbeResult, self._count, name="bench")
            started.set()

        @staticmethod
        def _count(recorded: Recorded[ProbeResult]) -> None:
            result = recorded.observation
            window.count(result.status is not Status.UP, result.calls, paths)

        @property
        def lateness_ms(self) -> deque[float]:
            assert self._scheduler is not None
            return self._scheduler.lateness_ms

        @property
        def skipped_total(self) -> int:
            return self._scheduler.skipped_total if self._scheduler is not None else 0

    workdir = tempfile.mkdtemp(prefix="monitord-bench-")
    daemon = CountingDaemon(_config(plan, workdir), install_signal_handlers=False)
    running = asyncio.create_task(daemon.run())
    outcomes: list[Outcome] = []
    try:
        waiter = asyncio.ensure_future(started.wait())  # start-up (config, migrations) is not warm-up
        await asyncio.wait([running, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await asyncio.sleep(plan.warmup_s)
        for _ in range(plan.windows):
            window.start()
            daemon.lateness_ms.clear()
            skipped0 = daemon.skipped_total
            await asyncio.sleep(plan.measure_s)
            usage = window.meter.usage
            probes, failed, lateness = window.probes, window.failed, list(daemon.lateness_ms)
            outcomes.append(Outcome(
                variant="monitord", probes=probes, failed=failed, wall_s=usage.wall_s, cpu_s=usage.cpu_s,
                lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
                peak_rss_mb=peak_rss_mb(), paths=paths[0] if paths else (),
                skipped=daemon.skipped_total - skipped0, rows_written=daemon.store.written_total,
                rows_dropped=daemon.store.dropped_total, waited_s=window.waited_s,
            ))
        outcomes[-1] = replace(outcomes[-1], rank_ms=_ranking_cpu_ms(daemon))
    finally:
        daemon.request_stop()
        await running
        shutil.rmtree(workdir, ignore_errors=True)
    return outcomes


def _ranking_cpu_ms(daemon: Any) -> float | None:
    """CPU of one recompute of the default ranking, as the daemon's best-provider watch does once a second."""
    if daemon.api is None:
        return None
    daemon.api.ranking.invalidate()
    started = time.thread_time()  # this thread's CPU: other work on the machine does not count
    daemon.api.ranking.ranking()
    return (time.thread_time() - started) * 1000


async def _run_probe_only(plan: Plan) -> list[Outcome]:
    """monitord's scheduler and probe alone (no state, store, API or alerts): where the rest of the cost sits."""
    from monitord.model import ProviderSpec, Status
    from monitord.probe import create_session, probe_provider, utcnow
    from monitord.providers import ADAPTERS
    from monitord.scheduler import ProbeScheduler

    config = _config(plan, tempfile.gettempdir())
    session = create_session(limit=max(config.monitor.concurrency, 10))
    window = _Window()
    paths: list[tuple[str, ...]] = []

    async def probe(spec: ProviderSpec) -> None:
        result = await probe_provider(spec, ADAPTERS[spec.type], session, now=utcnow)
        window.count(result.status is not Status.UP, result.calls, paths)

    scheduler = ProbeScheduler(probe, concurrency=config.monitor.concurrency, jitter_s=config.monitor.jitter_s)
    scheduler.sync(config.provider_specs())
    scheduler.start()
    outcomes: list[Outcome] = []
    try:
        await asyncio.sleep(plan.warmup_s)
        for _ in range(plan.windows):
            window.start()
            scheduler.lateness_ms.clear()
            await asyncio.sleep(plan.measure_s)
            usage = window.meter.usage
            probes, failed, lateness = window.probes, window.failed, list(scheduler.lateness_ms)
            outcomes.append(Outcome(
                variant="monitord: scheduler + probe only", probes=probes, failed=failed, wall_s=usage.wall_s,
                cpu_s=usage.cpu_s, lateness_p50_ms=percentile(lateness, 0.5),
                lateness_p99_ms=percentile(lateness, 0.99), peak_rss_mb=peak_rss_mb(), paths=paths[0] if paths else (),
            ))
    finally:
        await scheduler.shutdown()
        await session.close()
    return outcomes


async def _run_baseline(plan: Plan) -> list[Outcome]:
    """Task per provider sleeping to its next due time, one session with monitord's pool settings; every
    CANARY_EVERY-th probe of a provider is followed by the canary's streamed chat completion, read to its end
    (monitord's canaries run at that pace, under their own cap of 2)."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=max(plan.concurrency, 10), limit_per_host=4)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))
    limit = asyncio.Semaphore(plan.concurrency)
    canaries = asyncio.Semaphore(CANARY_CONCURRENCY)
    canary = {"model": plan.canary_model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8,
              "stream": True, "stream_options": {"include_usage": True}}
    rng = random.Random(0)
    window = _Window()
    started = loop.time()

    async def generate(base_url: str) -> None:
        async with canaries:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(base_url + "/v1/chat/completions", json=canary) as resp:
                    async for _ in resp.content.iter_any():
                        pass

    async def provider(base_url: str, first_s: float) -> None:
        due = started + first_s
        runs = rng.randrange(CANARY_EVERY)  # canaries spread like monitord's (their own random start)
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            window.lateness_ms.append((loop.time() - due) * 1000)
            ok = True
            async with limit:
                try:
                    for path in plan.paths:
                        async with session.get(base_url + path) as resp:
                            await resp.read()
                            ok = ok and resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
            window.probes += 1
            window.failed += not ok
            runs += 1
            if plan.canary_model and runs % CANARY_EVERY == 0:
                await generate(base_url)
            due = max(due + plan.interval_s, loop.time())  # after a stall run once, not once per missed slot

    tasks = [asyncio.create_task(provider(f"http://127.0.0.1:{port}", rng.uniform(0, plan.interval_s)))
             for port in plan.ports]
    outcomes: list[Outcome] = []
    try:
        await asyncio.sleep(plan.warmup_s)
        for _ in range(plan.windows):
            window.start()
            await asyncio.sleep(plan.measure_s)
            usage = window.meter.usage
            probes, failed, lateness = window.probes, window.failed, list(window.lateness_ms)
            outcomes.append(Outcome(
                variant="bare aiohttp", probes=probes, failed=failed, wall_s=usage.wall_s, cpu_s=usage.cpu_s,
                lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
                peak_rss_mb=peak_rss_mb(), paths=plan.paths,
            ))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    return outcomes


# --- the benchmark ------------------------------------------------------------------------------------------------


def durations(interval_s: float, quick: bool) -> tuple[float, float]:
    """(warm-up, one window) seconds: a whole interval to warm up (every provider probed once, its connection
    open and its state built), then windows of at least 10 s (a quarter of an interval at 10,000 providers)."""
    if quick:
        return 0.5, 1.0
    return max(interval_s, 3.0), max(interval_s / 4, 10.0)


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """Windows (or runs) of one variant as one: totals for the rates, the worst for lateness and RSS."""
    def worst(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    ranks = [o.rank_ms for o in outcomes if o.rank_ms is not None]
    return replace(
        outcomes[0], probes=sum(o.probes for o in outcomes), failed=sum(o.failed for o in outcomes),
        wall_s=sum(o.wall_s for o in outcomes), cpu_s=sum(o.cpu_s for o in outcomes),
        lateness_p50_ms=worst([o.lateness_p50_ms for o in outcomes]),
        lateness_p99_ms=worst([o.lateness_p99_ms for o in outcomes]),
        peak_rss_mb=max(o.peak_rss_mb for o in outcomes), skipped=sum(o.skipped for o in outcomes),
        rank_ms=sum(ranks) / len(ranks) if ranks else None, rows_written=max(o.rows_written for o in outcomes),
        rows_dropped=max(o.rows_dropped for o in outcomes),
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """Every variant measured against one fleet: pooled, and window by window."""

    plan: Plan
    ours: Outcome
    bare: Outcome
    probe_only: Outcome | None = None  # monitord's scheduler + probe alone: where the rest of the cost sits
    ours_windows: tuple[Outcome, ...] = ()
    bare_windows: tuple[Outcome, ...] = ()

    @property
    def n(self) -> int:
        return len(self.plan.ports)

    @property
    def rate_per_s(self) -> float:
        return self.n / self.plan.interval_s

    @property
    def ratio(self) -> float | None:
        return _ratio(self.ours, self.bare)

    @property
    def ratios(self) -> list[float]:
        """CPU per probe, monitord / bare, of each pair of windows (the i-th of each variant)."""
        pairs = zip(self.ours_windows, self.bare_windows, strict=False)
        return [r for r in (_ratio(ours, bare) for ours, bare in pairs) if r is not None]


def measure_size(count: int, quick: bool, *, breakdown: bool | None = None, repeats: int | None = None,
                 windows: int | None = None, progress: Callable[[str], None] = print) -> Sample:
    """The variants against one fleet of `count` providers, each in its own process measuring `windows` windows
    one after the other, `repeats` times interleaved; the probe-only variant at BREAKDOWN_SIZES unless quick, or
    as told."""
    interval_s = count / RATE_PER_S
    warmup_s, measure_s = durations(interval_s, quick)
    repeats = repeats or 1
    windows = windows or (1 if quick else FULL_WINDOWS)
    wants_breakdown = (not quick and count in BREAKDOWN_SIZES) if breakdown is None else breakdown
    variants = [MONITORD, BASELINE] + ([MONITORD_PROBE_ONLY] if wants_breakdown else [])
    runs: dict[str, list[Outcome]] = {variant: [] for variant in variants}
    model = orjson.loads((FIXTURES / "models.json").read_bytes())["data"][0]["id"]
    with Fleet(count) as fleet:
        plan = Plan(ports=fleet.ports, interval_s=interval_s, warmup_s=warmup_s, measure_s=measure_s,
                    concurrency=CONCURRENCY, windows=windows, canary_model=model)
        progress(f"  {count:,} providers on {fleet.servers} server process(es), every {interval_s:g} s")
        for repeat in range(repeats):
            for variant in variants:
                progress(f"    run {repeat + 1}/{repeats}: {variant}")
                paths = runs[MONITORD][0].paths if runs[MONITORD] else ()
                one = replace(plan, paths=paths, windows=1 if variant == MONITORD_PROBE_ONLY else plan.windows)
                runs[variant] += measure(variant, one)  # the breakdown needs no spread: one window
                if not runs[MONITORD][0].paths:
                    raise RuntimeError("monitord completed no probe; nothing to repeat in the baseline")
    probe_only = runs.get(MONITORD_PROBE_ONLY)
    return Sample(plan, combine(runs[MONITORD]), combine(runs[BASELINE]), combine(probe_only) if probe_only else None,
                  tuple(runs[MONITORD]), tuple(runs[BASELINE]))


def _ratio(ours: Outcome, bare: Outcome) -> float | None:
    if ours.cpu_us_per_probe is None or not bare.cpu_us_per_probe:
        return None
    return ours.cpu_us_per_probe / bare.cpu_us_per_probe


async def run(quick: bool) -> list[Table]:
    samples = []
    for count in QUICK_SIZES if quick else FULL_SIZES:
        samples.append(await asyncio.to_thread(measure_size, count, quick))
    return tables(samples, quick)


def tables(samples: list[Sample], quick: bool) -> list[Table]:
    main = Table(
        "Probe engine cost",
        ("providers", "interval s", "configured probes/s", "variant", "achieved probes/s", "CPU µs/probe",
         "vs bare", "lateness p50 ms", "lateness p99 ms", "peak RSS MB", "failed probes"),
    )
    for sample in samples:
        for outcome in (sample.ours, sample.probe_only, sample.bare):
            if outcome is not None:
                main.add(sample.n, sample.plan.interval_s, sample.rate_per_s, outcome.variant, outcome.rate_per_s,
                         outcome.cpu_us_per_probe, _ratio(outcome, sample.bare) if outcome is not sample.bare else None,
                         outcome.lateness_p50_ms, outcome.lateness_p99_ms, outcome.peak_rss_mb, outcome.failed)
    main.figures["probe_cost"] = [
        {"n": s.n, "rate_per_s": s.rate_per_s, "interval_s": s.plan.interval_s,
         "monitord_cpu_us": s.ours.cpu_us_per_probe, "baseline_cpu_us": s.bare.cpu_us_per_probe, "ratio": s.ratio,
         "ratios": s.ratios, "probe_only_cpu_us": s.probe_only.cpu_us_per_probe if s.probe_only else None,
         "monitord": asdict(s.ours), "baseline": asdict(s.bare)} for s in samples]
    paths = samples[0].ours.paths
    windows = samples[0].plan.windows
    main.notes += [
        f"Each probe is {len(paths)} GETs ({', '.join(paths)}), what monitord's vLLM adapter asks; the bare loop "
        f"makes the same GETs with the same pool (limit {max(CONCURRENCY, 10)}, 4 per host) and concurrency cap "
        f"({CONCURRENCY}). Canaries are on (monitor.canary, every {CANARY_EVERY} probe intervals, cap "
        f"{CANARY_CONCURRENCY}): monitord streams a chat completion from each provider at that pace and so does the "
        "bare loop (after every tenth probe of a provider), and capacity is read from /metrics on every probe. "
        "\"scheduler + probe only\" is monitord's ProbeScheduler and probe_provider alone.",
        "monitord is the real daemon (Daemon.run with its API on a loopback port, alert rules without webhooks, "
        "SQLite store, heartbeat, canaries); its best-provider watch looks at the default ranking once a second. "
        "CPU of one full recompute of that ranking at the end of the run: " + ", ".join(
            f"{s.n:,} providers {s.ours.rank_ms:.1f} ms" for s in samples if s.ours.rank_ms is not None) + ".",
        "CPU is the whole variant process (all threads, the SQLite writer's included) over each measurement "
        f"window, divided by the probes completed in it, after one interval of warm-up; each variant process "
        f"measures {windows} window(s) one after the other (\"vs bare\" targets: min / median / max over the "
        "pairs of windows; the table pools them). The servers run in other processes. "
        "Peak RSS is ru_maxrss of the variant's own freshly spawned process, start-up (migrations) included.",
        "Lateness: monitord's is the scheduler's start time minus the due time (ProbeScheduler.lateness_ms); "
        "the bare loop's is its wake-up time minus its due time.",
        "Rows written to SQLite by the daemon: " + ", ".join(
            f"{s.ours.rows_written:,} ({s.ours.rows_dropped} dropped)" for s in samples) + ".",
        "Past aiohttp's 15 s keep-alive (5,000 providers and up: intervals of 25 s and more) the first GET of every "
        "probe opens a new connection, in both variants alike.",
    ]
    if quick:
        main.notes.append("Quick mode: tiny fleets and a 1 s window; figures are not meaningful.")
    return [main, _targets(samples, quick)]  # the targets table carries the Target records


def _targets(samples: list[Sample], quick: bool) -> Table:
    table = Table("Probe engine targets", ("target", "measured", "result"))
    noisy = busy_note()
    caveat = "quick mode: tiny fleets, 1 s windows" if quick else noisy

    def add(target: Target) -> None:
        table.targets.append(target)
        table.add(f"{target.figure}: {target.goal}", target.measured, target.result)

    for s in samples:
        ratios = s.ratios or ([s.ratio] if s.ratio is not None else [])
        add(Target(f"CPU per probe vs a bare aiohttp loop, {s.n:,} providers, canaries and capacity on",
                   f"<= {CPU_RATIO_MAX:g}x", spread_text(ratios, "x") + f" ({s.ours.cpu_us_per_probe or 0:,.0f} vs "
                   f"{s.bare.cpu_us_per_probe or 0:,.0f} µs pooled)",
                   None if not ratios or quick else max(ratios) <= CPU_RATIO_MAX, caveat))
    for s in samples:
        bound = RSS_MAX_MB.get(s.n)
        if bound is not None:
            add(Target(f"peak RSS of the daemon, {s.n:,} providers (start-up included)", f"< {bound:g} MB",
                       f"{s.ours.peak_rss_mb:.0f} MB", None if quick else s.ours.peak_rss_mb < bound, caveat))
    for s in samples:
        if s.n == TARGET_N:
            late = [o.lateness_p99_ms for o in s.ours_windows if o.lateness_p99_ms is not None]
            add(Target(f"lateness p99, {s.n:,} providers every {s.plan.interval_s:g} s",
                       f"< {LATENESS_P99_MAX_MS:g} ms", spread_text(late, " ms"),
                       None if not late or quick else max(late) < LATENESS_P99_MAX_MS, caveat))
    for s in samples:
        share = s.ours.rate_per_s / s.rate_per_s
        add(Target(f"achieved probe rate, {s.n:,} providers at {s.rate_per_s:g}/s", ">= 0.95 of configured (check)",
                   f"{share:.2f} ({s.ours.skipped} runs skipped)", None if quick else share >= 0.95, caveat))
    return table
