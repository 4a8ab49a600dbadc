"""Probe engine cost: CPU per probe, achieved rate, scheduling lateness and peak RSS of monitord's probe path,
beside a bare aiohttp loop that makes the same GETs to the same fleet at the same rate and concurrency.

The fleet is N simulated vLLM servers (one loopback port each, up to 2,500 ports per server process, answering
`/health`, `/v1/models` with the vLLM fixture body, `/version` and `/metrics`). Servers run in their own processes so
their CPU is not counted, and each variant runs in a fresh spawned process so its CPU time and peak RSS are its own.
The probe rate is held at RATE_PER_S for every N (interval = N / rate), so the cost per probe compares across N.
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

from bench.common import REPO_ROOT, Meter, Table, peak_rss_mb, percentile, raise_fd_limit, run_async, verdict

ORDER = 10
TITLE = "probe engine cost vs a bare aiohttp loop (CPU per probe, lateness, RSS)"

RATE_PER_S = 100.0  # probes per second, for every fleet size; 2 cores sustain it with room to spare
FULL_SIZES = (100, 1_000, 5_000)
QUICK_SIZES = (50, 200)
FULL_REPEATS = 2
PORTS_PER_SERVER = 2_500
MONITORD, MONITORD_PROBE_ONLY, BASELINE = "monitord", "monitord-probe-only", "baseline"
CONCURRENCY = 64  # monitor.concurrency's default
CANARY_EVERY = 10  # canary interval / probe interval (the defaults: 300 s and 30 s)
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "vllm"
SPAWN_TIMEOUT_S = 120.0

# Targets from the issue
CPU_RATIO_MAX = 2.0
LATENESS_P99_MAX_MS = 250.0
RSS_MAX_MB = 150.0
TARGET_N = 1_000


@dataclass(frozen=True, slots=True)
class Plan:
    """What one variant process runs."""

    ports: tuple[int, ...]
    interval_s: float
    warmup_s: float
    measure_s: float
    concurrency: int
    paths: tuple[str, ...] = ()  # the GETs of one probe (the baseline repeats monitord's)


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

    @property
    def rate_per_s(self) -> float:
        return self.probes / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_probe(self) -> float | None:
        return self.cpu_s * 1e6 / self.probes if self.probes else None


# --- the simulated fleet (server processes) ---------------------------------------------------------------------


def _serve(conn: Connection, count: int) -> None:
    raise_fd_limit()
    run_async(_serve_async(conn, count))


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

    def __init__(self, count: int) -> None:
        self.count = count
        self.servers = math.ceil(count / PORTS_PER_SERVER)
        self.ports: tuple[int, ...] = ()
        self._procs: list[tuple[SpawnProcess, Connection]] = []

    def __enter__(self) -> Fleet:
        ctx = _spawn()
        ports: list[int] = []
        try:
            for index in range(self.servers):
                share = self.count // self.servers + (1 if index < self.count % self.servers else 0)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, share), name=f"bench-fleet-{index}", daemon=True)
                proc.start()
                self._procs.append((proc, parent))
            for proc, parent in self._procs:
                ports += _receive(proc, parent, SPAWN_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        self.ports = tuple(ports)
        return self

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
    try:
        if variant in (MONITORD, MONITORD_PROBE_ONLY):
            from monitord import logs

            with open(os.devnull, "w") as devnull:
                logs.configure("info", "json", stream=devnull)  # production level: probe.done is not rendered
                outcome = run_async(_run_monitord(plan) if variant == MONITORD else _run_probe_only(plan))
        else:
            outcome = run_async(_run_baseline(plan))
        conn.send(asdict(outcome))
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


def measure(variant: str, plan: Plan) -> Outcome:
    """Run one variant against the fleet in a fresh process and collect its figures."""
    ctx = _spawn()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_variant_main, args=(child, variant, plan), name=f"bench-{variant}")
    proc.start()
    try:
        raw: dict[str, Any] = _receive(proc, parent, plan.warmup_s + plan.measure_s + SPAWN_TIMEOUT_S)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if "error" in raw:
        raise RuntimeError(f"{variant} run failed:\n{raw['error']}")
    raw["paths"] = tuple(raw["paths"])
    return Outcome(**raw)


class _Window:
    """Probe and lateness counts, split at the start of the measurement window."""

    def __init__(self) -> None:
        self.probes = 0
        self.failed = 0
        self.lateness_ms: deque[float] = deque(maxlen=100_000)
        self.meter = Meter()

    def start(self) -> None:
        self.probes = self.failed = 0
        self.lateness_ms.clear()
        self.meter.reset()

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


async def _run_monitord(plan: Plan) -> Outcome:
    """The real daemon (`Daemon.run`: store, live state, API, alert rules, best-provider watch, heartbeat);
    a subclass only adds a pipeline sink that counts the results."""
    from monitord.daemon import Daemon
    from monitord.model import ProbeResult, Status
    from monitord.pipeline import Recorded

    window = _Window()
    paths: list[tuple[str, ...]] = []

    class CountingDaemon(Daemon):
        async def start(self, *, serve_api: bool = True) -> None:
            await super().start(serve_api=serve_api)
            self.pipeline.subscribe(ProbeResult, self._count, name="bench")

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
    try:
        await asyncio.sleep(plan.warmup_s)
        window.start()
        daemon.lateness_ms.clear()
        skipped0 = daemon.skipped_total
        await asyncio.sleep(plan.measure_s)
        usage = window.meter.usage
        probes, failed, lateness = window.probes, window.failed, list(daemon.lateness_ms)
        skipped = daemon.skipped_total - skipped0
        rank_ms = _ranking_cpu_ms(daemon)
    finally:
        daemon.request_stop()
        await running
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(
        variant="monitord", probes=probes, failed=failed, wall_s=usage.wall_s, cpu_s=usage.cpu_s,
        lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
        peak_rss_mb=peak_rss_mb(), paths=paths[0] if paths else (), skipped=skipped, rank_ms=rank_ms,
        rows_written=daemon.store.written_total, rows_dropped=daemon.store.dropped_total,
    )


def _ranking_cpu_ms(daemon: Any) -> float | None:
    """CPU of one recompute of the default ranking, as the daemon's best-provider watch does once a second."""
    if daemon.api is None:
        return None
    daemon.api.ranking.invalidate()
    started = time.thread_time()  # this thread's CPU: other work on the machine does not count
    daemon.api.ranking.ranking()
    return (time.thread_time() - started) * 1000


async def _run_probe_only(plan: Plan) -> Outcome:
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
    try:
        await asyncio.sleep(plan.warmup_s)
        window.start()
        scheduler.lateness_ms.clear()
        await asyncio.sleep(plan.measure_s)
        usage = window.meter.usage
        probes, failed, lateness = window.probes, window.failed, list(scheduler.lateness_ms)
    finally:
        await scheduler.shutdown()
        await session.close()
    return Outcome(
        variant="monitord: scheduler + probe only", probes=probes, failed=failed, wall_s=usage.wall_s,
        cpu_s=usage.cpu_s, lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
        peak_rss_mb=peak_rss_mb(), paths=paths[0] if paths else (),
    )


async def _run_baseline(plan: Plan) -> Outcome:
    """Task per provider sleeping to its next due time, one session with monitord's pool settings."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=max(plan.concurrency, 10), limit_per_host=4)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))
    limit = asyncio.Semaphore(plan.concurrency)
    rng = random.Random(0)
    window = _Window()
    started = loop.time()

    async def provider(base_url: str, first_s: float) -> None:
        due = started + first_s
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
            due = max(due + plan.interval_s, loop.time())  # after a stall run once, not once per missed slot

    tasks = [asyncio.create_task(provider(f"http://127.0.0.1:{port}", rng.uniform(0, plan.interval_s)))
             for port in plan.ports]
    try:
        await asyncio.sleep(plan.warmup_s)
        window.start()
        await asyncio.sleep(plan.measure_s)
        usage = window.meter.usage
        probes, failed, lateness = window.probes, window.failed, list(window.lateness_ms)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    return Outcome(
        variant="bare aiohttp", probes=probes, failed=failed, wall_s=usage.wall_s, cpu_s=usage.cpu_s,
        lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
        peak_rss_mb=peak_rss_mb(), paths=plan.paths,
    )


# --- the benchmark ------------------------------------------------------------------------------------------------


def durations(interval_s: float, quick: bool) -> tuple[float, float]:
    """(warm-up, measurement) seconds: a whole interval to warm up (every provider probed once, its connection
    open and its state built), then at least 15 s (half an interval at 5,000 providers) measured."""
    if quick:
        return 0.5, 1.0
    return max(interval_s, 3.0), max(interval_s / 2, 15.0)


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """Repeated runs of one variant as one: totals for the rates, the worst for lateness and RSS."""
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
        rank_ms=sum(ranks) / len(ranks) if ranks else None, rows_written=sum(o.rows_written for o in outcomes),
        rows_dropped=sum(o.rows_dropped for o in outcomes),
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """Every variant measured against one fleet."""

    plan: Plan
    ours: Outcome
    bare: Outcome
    probe_only: Outcome | None = None  # monitord's scheduler + probe alone: where the rest of the cost sits

    @property
    def n(self) -> int:
        return len(self.plan.ports)

    @property
    def rate_per_s(self) -> float:
        return self.n / self.plan.interval_s

    @property
    def ratio(self) -> float | None:
        return _ratio(self.ours, self.bare)


def measure_size(count: int, quick: bool, *, breakdown: bool | None = None, repeats: int | None = None,
                 progress: Callable[[str], None] = print) -> Sample:
    """The variants against one fleet of `count` providers, `repeats` times interleaved (a burst of other work
    on the machine then hits every variant alike); the probe-only variant unless quick or told not to."""
    interval_s = count / RATE_PER_S
    warmup_s, measure_s = durations(interval_s, quick)
    repeats = repeats or (1 if quick else FULL_REPEATS)
    variants = [MONITORD, BASELINE] + ([MONITORD_PROBE_ONLY] if (not quick if breakdown is None else breakdown)
                                       else [])
    runs: dict[str, list[Outcome]] = {variant: [] for variant in variants}
    with Fleet(count) as fleet:
        plan = Plan(ports=fleet.ports, interval_s=interval_s, warmup_s=warmup_s, measure_s=measure_s,
                    concurrency=CONCURRENCY)
        progress(f"  {count:,} providers on {fleet.servers} server process(es), every {interval_s:g} s")
        for repeat in range(repeats):
            for variant in variants:
                progress(f"    run {repeat + 1}/{repeats}: {variant}")
                paths = runs[MONITORD][0].paths if runs[MONITORD] else ()
                runs[variant].append(measure(variant, replace(plan, paths=paths)))
                if not runs[MONITORD][0].paths:
                    raise RuntimeError("monitord completed no probe; nothing to repeat in the baseline")
    probe_only = runs.get(MONITORD_PROBE_ONLY)
    return Sample(plan, combine(runs[MONITORD]), combine(runs[BASELINE]), combine(probe_only) if probe_only else None)


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
         "probe_only_cpu_us": s.probe_only.cpu_us_per_probe if s.probe_only else None,
         "monitord": asdict(s.ours), "baseline": asdict(s.bare)} for s in samples]
    paths = samples[0].ours.paths
    main.notes += [
        f"Each probe is {len(paths)} GETs ({', '.join(paths)}), what monitord's vLLM adapter asks; the bare loop "
        f"makes the same GETs with the same pool (limit {max(CONCURRENCY, 10)}, 4 per host) and concurrency cap "
        f"({CONCURRENCY}). \"scheduler + probe only\" is monitord's ProbeScheduler and probe_provider alone.",
        "monitord is the real daemon (Daemon.run with its API on a loopback port, alert rules without webhooks, "
        "SQLite store, heartbeat); its best-provider watch recomputes the default ranking once a second while "
        "states change. CPU of one such recompute at the end of the run: " + ", ".join(
            f"{s.n:,} providers {s.ours.rank_ms:.1f} ms" for s in samples if s.ours.rank_ms is not None) + ".",
        "CPU is the whole variant process (all threads, the SQLite writer's included) over the measurement window, "
        "divided by the probes completed in it, after one interval of warm-up; each variant runs "
        f"{FULL_REPEATS if not quick else 1} time(s), interleaved, and the runs are pooled (lateness and RSS: the "
        "worst run). The servers run in other processes. "
        "Peak RSS is ru_maxrss of the variant's own freshly spawned process, start-up (migrations) included.",
        "Lateness: monitord's is APScheduler's submit time minus the scheduled time (ProbeScheduler.lateness_ms); "
        "the bare loop's is its wake-up time minus its due time.",
        "Rows written to SQLite by the daemon: " + ", ".join(
            f"{s.ours.rows_written:,} ({s.ours.rows_dropped} dropped)" for s in samples) + ".",
        "Past aiohttp's 15 s keep-alive (5,000 providers: 50 s interval) the first GET of every probe opens a new "
        "connection, in both variants alike.",
    ]
    if quick:
        main.notes.append("Quick mode: tiny fleets and a 1 s window; figures are not meaningful.")
    return [main, _targets(samples)]


def _targets(samples: list[Sample]) -> Table:
    targets = Table("Probe engine targets", ("target", "measured", "result"))
    for s in samples:
        targets.add(f"CPU per probe <= {CPU_RATIO_MAX:g}x the bare loop ({s.n:,} providers)",
                    None if s.ratio is None else f"{s.ratio:.2f}x ({s.ours.cpu_us_per_probe:,.0f} vs "
                                                 f"{s.bare.cpu_us_per_probe:,.0f} µs)",
                    verdict(s.ratio, at_most=CPU_RATIO_MAX))
    for s in samples:
        if s.n == TARGET_N:
            targets.add(f"lateness p99 < {LATENESS_P99_MAX_MS:g} ms ({s.n:,} providers / {s.plan.interval_s:g} s)",
                        None if s.ours.lateness_p99_ms is None else f"{s.ours.lateness_p99_ms:.1f} ms",
                        verdict(s.ours.lateness_p99_ms, at_most=LATENESS_P99_MAX_MS))
            targets.add(f"peak RSS < {RSS_MAX_MB:g} MB ({s.n:,} providers)", f"{s.ours.peak_rss_mb:.0f} MB",
                        verdict(s.ours.peak_rss_mb, at_most=RSS_MAX_MB))
    for s in samples:
        share = s.ours.rate_per_s / s.rate_per_s
        targets.add(f"(check) achieved rate = configured ({s.n:,} providers, {s.rate_per_s:g}/s)",
                    f"{s.ours.rate_per_s:.1f}/s ({share:.0%}), {s.ours.skipped} runs skipped",
                    verdict(share, at_least=0.95))
    return targets
