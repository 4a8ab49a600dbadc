"""Serving the ranking: GET /v1/ranking and POST /v1/select with 1,000 providers in state, beside a trivial aiohttp
handler ("ok") measured in the same run with the same load.

Each server runs in its own spawned process pinned to core 0 on the loop `monitord run` uses; the load comes from
`wrk` (one thread, 50 connections) pinned to core 1, or, without wrk, from an aiohttp load generator in another
process. monitord's server is the real app (`make_app` over an ApiContext on a migrated SQLite store) with 1,000
providers of mixed types, statuses, models and capabilities, capacity published by some and canary statistics
(TTFT, tokens/s) for others, and keeps folding probe results and canary samples while it serves (RESULTS_PER_S,
i.e. 1,000 providers probed every 30 s; SAMPLES_PER_S), so its caches are invalidated as in production.
Every run of a request is paired with a run of the trivial server just before it, and the median of the pairs'
ratios is reported, so load from other work on a shared machine moves the ratio far less than the figures.
Throughput is taken at saturation (closed loop), where latency is only connections / throughput; latency is
taken separately at a fixed request rate (open loop, PACED_RATE_PER_S), which is what the p99 target is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import Table, Target, busy_note, fmt, percentile, raise_fd_limit, run_async, spread_text

ORDER = 30
TITLE = "query API: /v1/ranking and /v1/select vs a trivial aiohttp handler (req/s, p50/p99)"

PROVIDERS = 1_000
CONNECTIONS = 50
RESULTS_PER_S = 1_000 / 30  # the default probe interval over 1,000 providers
SAMPLES_PER_S = 1_000 * 0.3 / 60  # canaries on 30% of the providers, one sample a minute each
CANARY_SHARE_PERCENT = 30
CAPACITY_SHARE_PERCENT = 40
QUICK_PROVIDERS = 100
RUN_S, REPEATS, WARMUP_S, PACED_S = 4.0, 3, 2.0, 5.0
QUICK_RUN_S, QUICK_REPEATS, QUICK_WARMUP_S, QUICK_PACED_S = 1.0, 1, 0.0, 1.0
SPAWN_TIMEOUT_S = 60.0

# One selection per LLM request: a few local servers take tens to hundreds of requests a second between them.
PACED_RATE_PER_S = 200.0

# Targets from issue 16
RATIO_MIN = 0.9
P99_MAX_MS = 5.0
PACED_P99_VS_TRIVIAL_MAX = 1.5
SELECT_CPU_MAX = 5.0

SELECT_BODY = '{"task_type": "chat", "required_capabilities": ["tools"]}'
# A different max_tokens on every request: never the same criteria twice in a generation, so nothing is cached.
VARYING_SELECT_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"task_type": "chat", "max_tokens": ' .. (counter % 8192 + 1) .. '}')
end
"""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    server: str  # "trivial" or "monitord"
    method: str
    path: str
    body: str | None = None
    lua: str | None = None  # a wrk script that builds each request itself
    gzip: bool = False  # send Accept-Encoding: gzip (as aiohttp, requests and curl --compressed do)


TRIVIAL = Scenario("trivial handler", "trivial", "GET", "/ok")
SCENARIOS = (
    Scenario("GET /v1/ranking (default, all entries), gzip", "monitord", "GET", "/v1/ranking", gzip=True),
    Scenario("GET /v1/ranking (default, all entries), identity", "monitord", "GET", "/v1/ranking"),
    Scenario("GET /v1/ranking?limit=10", "monitord", "GET", "/v1/ranking?limit=10"),
    Scenario("GET /v1/ranking?capability=vision", "monitord", "GET", "/v1/ranking?capability=vision", gzip=True),
    Scenario("POST /v1/select (chat + tools)", "monitord", "POST", "/v1/select", body=SELECT_BODY),
    Scenario("POST /v1/select, new criteria each request", "monitord", "POST", "/v1/select",
             lua=VARYING_SELECT_LUA),
)
# Quick mode (the smoke test) runs one request of each kind.
QUICK_SCENARIOS = tuple(SCENARIOS[i] for i in (0, 4, 5))


@dataclass(frozen=True, slots=True)
class Load:
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # non-2xx answers and socket errors
    body_bytes: int
    requests: int = 0
    server_cpu_us: float | None = None  # the server process's CPU per request answered (Linux)


# --- servers (spawned processes) ---------------------------------------------------------------------------------


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _serve(conn: Connection, kind: str, providers: int) -> None:
    from monitord import logs

    _pin(0)
    raise_fd_limit()
    try:
        with open(os.devnull, "w") as devnull:
            logs.configure("info", "json", stream=devnull)  # as under systemd, minus the journal
            run_async(_serve_async(conn, kind, providers))
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


async def _serve_async(conn: Connection, kind: str, providers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="monitord-bench-api-") as workdir:
        app, feeder, closers, feed_stats = await (_monitord_app(Path(workdir), providers) if kind == "monitord"
                                                  else _trivial_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            conn.send({"port": runner.addresses[0][1]})
            feeding = asyncio.create_task(feeder()) if feeder else None
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # any message means stop
            if feeding is not None:
                feeding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeding
            conn.send(feed_stats)
        finally:
            await runner.cleanup()
            for close in closers:
                await close()


async def _trivial_app() -> tuple[web.Application, None, list[Callable[[], Any]], dict[str, Any]]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    bodies: dict[int, bytes] = {}

    async def sized(request: web.Request) -> web.Response:
        """A trivial handler answering a body of the given size: the cost of the bytes alone."""
        size = int(request.query["bytes"])
        body = bodies.get(size)
        if body is None:
            body = bodies[size] = random.Random(size).randbytes(size)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/sized", sized)
    return app, None, [], {}


async def _monitord_app(workdir: Path, providers: int) -> tuple[
        web.Application, Callable[[], Any], list[Callable[[], Any]], dict[str, Any]]:
    from monitord.api import ApiContext, make_app
    from monitord.health import LiveState
    from monitord.store import Store, migrate

    url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    await migrate.upgrade(url)
    store = await Store.open(url)
    await store.start()
    rng = random.Random(3)
    specs = make_specs(providers, rng)
    live = LiveState()
    clock_start = datetime.now(UTC)
    for index in range(10):  # ten probes each: a window with some history
        at = clock_start - timedelta(seconds=30 * (10 - index))
        for spec in specs.values():
            live.fold(make_result(spec, at, rng), at)
    ctx = ApiContext(live=live, specs=lambda: specs, store=store, ready=lambda: True)
    spec_list = list(specs.values())
    canaried = [spec for spec in spec_list if zlib.crc32(spec.name.encode()) % 100 < CANARY_SHARE_PERCENT]
    for index in range(5):  # a few canary samples each: TTFT and tokens/s for the speed part
        at = clock_start - timedelta(seconds=60 * (5 - index))
        for spec in canaried:
            _fold_sample(ctx, live, make_sample(spec, live, at, rng), at)
    feed_stats: dict[str, Any] = {}

    async def feed() -> dict[str, Any]:
        stats = {"results_fed": 0, "results_per_s": 0.0, "samples_fed": 0}
        started = due = time.perf_counter()
        samples_due = 0.0
        try:
            while True:
                due += 1 / RESULTS_PER_S  # paced by deadline, so a busy loop catches up instead of drifting
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                now = datetime.now(UTC)
                result = make_result(rng.choice(spec_list), now, rng)
                ctx.on_result(result, live.fold(result, now))  # what the daemon does; the store is left out
                stats["results_fed"] += 1
                samples_due += SAMPLES_PER_S / RESULTS_PER_S
                while samples_due >= 1.0 and canaried:
                    samples_due -= 1.0
                    _fold_sample(ctx, live, make_sample(rng.choice(canaried), live, now, rng), now)
                    stats["samples_fed"] += 1
                stats["results_per_s"] = stats["results_fed"] / (time.perf_counter() - started)
        finally:
            feed_stats.update(stats)

    return make_app(ctx), feed, [store.close], feed_stats


def _fold_sample(ctx: Any, live: Any, sample: Any, now: datetime) -> None:
    """What the daemon's pipeline does with a canary sample (the store left out): statistics, live state, sinks."""
    from monitord.pipeline import Recorded

    if sample is None:
        return
    changes = tuple(live.fold_sample(sample, now))
    ctx.generation_stats.fold(sample, now)
    ctx.on_sample(Recorded(sample, changes, now, True))


def make_sample(spec: Any, live: Any, at: datetime, rng: random.Random) -> Any:
    """A canary sample of one of the provider's listed models (None when it lists none): mostly ok, with TTFT and
    tokens/s that vary per provider."""
    from monitord.model import ErrorClass, GenerationSample

    state = live.get(spec.name)
    if state is None or not state.models:
        return None
    model = state.models[zlib.crc32(spec.name.encode()) % len(state.models)].id
    base = 80 + zlib.crc32(spec.name.encode()) % 900
    if rng.random() < 0.03:
        return GenerationSample(spec.name, spec.type, model, at, ok=False, error_class=ErrorClass.TIMEOUT,
                                error="no first token by the deadline")
    return GenerationSample(spec.name, spec.type, model, at, ok=True, ttft_ms=base * rng.uniform(0.8, 1.2),
                            total_ms=base * 4, tokens_per_s=rng.uniform(10, 80), prompt_tokens=12,
                            completion_tokens=16, streamed=True, stream_complete=True)


def make_specs(count: int, rng: random.Random) -> dict[str, Any]:
    from monitord.model import ProviderSpec
    from monitord.providers import ADAPTERS

    types = sorted(ADAPTERS)
    specs = {}
    for index in range(count):
        extra = {c for c, share in (("vision", 0.2), ("tools", 0.4), ("embeddings", 0.1)) if rng.random() < share}
        name = f"p{index:04d}"
        specs[name] = ProviderSpec(name, types[index % len(types)], f"http://10.0.{index // 250}.{index % 250}:8000",
                                   capabilities=frozenset({"chat", "completion", "streaming"} | extra),
                                   priority=rng.choice((0, 0, 0, 1, -1)))
    return specs


_MODEL_POOL = (("llama3.1:8b", "8B", 8192), ("qwen2.5:32b", "32B", 32768), ("mistral-7b-instruct", "7B", 32768),
               ("llava:13b", "13B", 4096), ("phi3:mini", "3.8B", 4096), ("mixtral-8x7b", "47B", 32768))


def make_result(spec: Any, at: datetime, rng: random.Random) -> Any:
    """A provider's next probe: each keeps its own health (90% up, 3% degraded, 2% loading, 5% down) and models;
    an up one fails a probe now and then (1%), which moves its score but, below the threshold, not its status."""
    from monitord.model import Capacity, ErrorClass, HttpCall, ModelInfo, ProbeResult, ResidentModel, Status

    seed = zlib.crc32(spec.name.encode())
    roll = seed % 100
    status = Status.DOWN if roll < 5 else Status.LOADING if roll < 7 else Status.DEGRADED if roll < 10 else Status.UP
    if status is Status.UP and rng.random() < 0.01:
        status = Status.DOWN
    picks = [_MODEL_POOL[(seed + k) % len(_MODEL_POOL)] for k in range(1 + seed % 3)]
    models = tuple(ModelInfo(m, parameter_size=size, context_length=context) for m, size, context in picks)
    capacity = None
    if status is not Status.DOWN and seed % 100 < CAPACITY_SHARE_PERCENT:  # servers that publish their load
        busy = rng.randint(0, 4)
        capacity = Capacity(slots_total=4, slots_busy=busy, queue_depth=rng.choice((0, 0, 0, 1, 2)) if busy == 4
                            else 0, kv_cache_usage=rng.uniform(0.0, 0.9), requests_running=busy,
                            resident_models=tuple(ResidentModel(m.id) for m in models[:1]))
    total_ms = rng.uniform(5, 300)
    return ProbeResult(
        provider=spec.name, provider_type=spec.type, started_at=at, status=status,
        total_ms=total_ms, error_class=ErrorClass.REFUSED if status is Status.DOWN else None,
        error="connection refused" if status is Status.DOWN else None,
        models=models if status is not Status.DOWN else (), http_status=200 if status is Status.UP else None,
        calls=(HttpCall("GET", "/v1/models", 200, total_ms),) if status is Status.UP else (),
        capacity=capacity,
    )


class Server:
    """One server process; `with Server("monitord") as server: server.port`."""

    def __init__(self, kind: str, providers: int) -> None:
        import multiprocessing

        self.kind = kind
        self.port = 0
        self.stats: dict[str, Any] = {}
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, kind, providers), name=f"bench-api-{kind}",
                                 daemon=True)

    def __enter__(self) -> Server:
        self._proc.start()
        if not self._conn.poll(SPAWN_TIMEOUT_S):
            self._stop()
            raise RuntimeError(f"{self.kind} server did not start")
        reply = self._conn.recv()
        if "error" in reply:
            self._stop()
            raise RuntimeError(f"{self.kind} server failed:\n{reply['error']}")
        self.port = int(reply["port"])
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
            if self._conn.poll(10):
                self.stats = self._conn.recv()
        self._stop()

    def cpu_s(self) -> float | None:
        """User + system CPU the server process has used so far; None where /proc is not there."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _stop(self) -> None:
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# --- load: wrk, or an aiohttp load generator ---------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> Load:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    transfer = re.search(r"(\d+) requests in .*?, ([\d.]+)([KMG]?B) read", output)
    body_bytes = 0
    if transfer:
        scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[transfer.group(3)]
        body_bytes = int(float(transfer.group(2)) * scale / max(1, int(transfer.group(1))))
    done = re.search(r"(\d+) requests in", output)
    return Load(float(rate.group(1)), _ms(p50.group(1)) if p50 else None, _ms(p99.group(1)) if p99 else None,
                errors, body_bytes, int(done.group(1)) if done else 0)


def run_wrk(wrk: str, scenario: Scenario, port: int, duration_s: float, workdir: Path) -> Load:
    script = scenario.lua
    if script is None and scenario.method != "GET":
        body = (scenario.body or "").replace("\\", "\\\\").replace("'", "\\'")
        script = (f'wrk.method = "{scenario.method}"\nwrk.headers["Content-Type"] = "application/json"\n'
                  f"wrk.body = '{body}'\n")
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration_s))}s", "--latency"]
    if scenario.gzip:
        command += ["-H", "Accept-Encoding: gzip"]
    if script is not None:
        path = workdir / f"{zlib.crc32(scenario.name.encode())}.lua"
        path.write_text(script)
        command += ["-s", str(path)]
    command.append(f"http://127.0.0.1:{port}{scenario.path}")
    taskset = shutil.which("taskset")
    if taskset and len(os.sched_getaffinity(0)) > 1:
        command = [taskset, "-c", "1", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return parse_wrk(done.stdout)


def _generate(conn: Connection, scenario: Scenario, port: int, duration_s: float, rate_per_s: float | None) -> None:
    _pin(1)
    try:
        conn.send(run_async(_generate_async(scenario, port, duration_s, rate_per_s)))
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


def _body(scenario: Scenario, counter: int) -> str | None:
    if scenario.lua is not None:  # what VARYING_SELECT_LUA sends
        return f'{{"task_type": "chat", "max_tokens": {counter % 8192 + 1}}}'
    return scenario.body


async def _generate_async(scenario: Scenario, port: int, duration_s: float,
                          rate_per_s: float | None) -> dict[str, Any]:
    """Closed loop (rate None): CONNECTIONS workers, each sending its next request when the last is answered.
    Open loop (a rate): requests sent on a fixed schedule over up to CONNECTIONS connections; latency counts from
    each request's scheduled time, so waiting for a busy server is not hidden (no coordinated omission)."""
    url = f"http://127.0.0.1:{port}{scenario.path}"
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip" if scenario.gzip else "identity"}
    latencies_ms: list[float] = []
    tally = {"errors": 0, "size": 0, "sent": 0}

    async def send(session: aiohttp.ClientSession, due: float) -> None:
        tally["sent"] += 1
        try:
            async with session.request(scenario.method, url, data=_body(scenario, tally["sent"]),
                                       headers=headers) as response:
                payload = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            tally["errors"] += 1
            return
        latencies_ms.append((time.perf_counter() - due) * 1000)
        tally["size"] = len(payload)
        tally["errors"] += response.status >= 300

    started = time.perf_counter()
    deadline = started + duration_s
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS), timeout=timeout,
                                     auto_decompress=False) as session:
        if rate_per_s is None:
            async def worker() -> None:
                while time.perf_counter() < deadline:
                    await send(session, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        else:
            # open the connections first, so the schedule measures requests, not TCP handshakes
            await asyncio.gather(*(send(session, time.perf_counter()) for _ in range(CONNECTIONS)))
            latencies_ms.clear()
            tally["errors"] = 0
            started = time.perf_counter()
            in_flight = []
            for index in range(int(duration_s * rate_per_s)):
                due = started + index / rate_per_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                in_flight.append(asyncio.create_task(send(session, due)))
            await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - started
    return {"requests_per_s": len(latencies_ms) / elapsed, "requests": len(latencies_ms),
            "p50_ms": percentile(latencies_ms, 0.5),
            "p99_ms": percentile(latencies_ms, 0.99), "errors": tally["errors"], "body_bytes": tally["size"]}


def _body_size(port: int, scenario: Scenario) -> int:
    """How many body bytes one answer to `scenario` has (gzipped when the scenario asks for gzip)."""
    import urllib.request

    headers = {"Accept-Encoding": "gzip" if scenario.gzip else "identity"}
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{scenario.path}",
                                                       headers=headers), timeout=30) as answer:
        return len(answer.read())


def run_generator(scenario: Scenario, port: int, duration_s: float, rate_per_s: float | None = None) -> Load:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_generate, args=(child, scenario, port, duration_s, rate_per_s), name="bench-api-load")
    proc.start()
    try:
        if not parent.poll(duration_s + SPAWN_TIMEOUT_S):
            raise RuntimeError("the load generator gave no result in time")
        raw: dict[str, Any] = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if "error" in raw:
        raise RuntimeError(f"load generator failed:\n{raw['error']}")
    return Load(**raw)


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pair:
    """One run of the trivial handler and, right after it, one run of a scenario: a ratio the load between runs
    on a shared machine moves much less than either figure."""

    trivial: Load
    ours: Load

    @property
    def ratio(self) -> float:
        return self.ours.requests_per_s / self.trivial.requests_per_s if self.trivial.requests_per_s else 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    scenarios: tuple[Scenario, ...]
    pairs: dict[str, list[Pair]]  # closed loop at CONNECTIONS connections: the most each handles
    paced: dict[str, list[Load]]  # open loop at PACED_RATE_PER_S: the latency a caller sees below saturation
    tool: str
    stats: dict[str, Any]
    sized: dict[str, list[Pair]] = field(default_factory=dict)  # vs a trivial handler answering as many bytes

    def median_pair(self, name: str) -> Pair:
        ordered = sorted(self.pairs[name], key=lambda pair: pair.ratio)
        return ordered[len(ordered) // 2]


def measure_all(quick: bool, progress: Callable[[str], None] = print) -> Measured:
    run_s, repeats, warmup_s, paced_s = ((QUICK_RUN_S, QUICK_REPEATS, QUICK_WARMUP_S, QUICK_PACED_S) if quick
                                         else (RUN_S, REPEATS, WARMUP_S, PACED_S))
    scenarios = QUICK_SCENARIOS if quick else SCENARIOS
    wrk = shutil.which("wrk")
    tool = "wrk, 1 thread" if wrk else "an aiohttp load generator"
    pairs: dict[str, list[Pair]] = {}
    sized: dict[str, list[Pair]] = {}  # against a trivial handler answering as many bytes
    paced: dict[str, list[Load]] = {}
    with tempfile.TemporaryDirectory(prefix="monitord-bench-wrk-") as tmp:
        workdir = Path(tmp)

        def load(scenario: Scenario, server: Server, seconds: float) -> Load:
            cpu_before_s = server.cpu_s()
            if wrk:
                measured = run_wrk(wrk, scenario, server.port, seconds, workdir)
            else:
                measured = run_generator(scenario, server.port, seconds)
            cpu_after_s = server.cpu_s()
            if cpu_before_s is None or cpu_after_s is None or not measured.requests:
                return measured
            return replace(measured, server_cpu_us=(cpu_after_s - cpu_before_s) * 1e6 / measured.requests)

        # Both servers share core 0; only the one under load uses it.
        with Server("trivial", 0) as trivial, Server("monitord", QUICK_PROVIDERS if quick else PROVIDERS) as ours:
            if warmup_s:
                load(TRIVIAL, trivial, warmup_s)
            progress(f"  {TRIVIAL.name}: {PACED_RATE_PER_S:g} req/s paced")
            paced[TRIVIAL.name] = []
            for scenario in scenarios:
                progress(f"  {scenario.name}: {repeats} x ({tool}, {CONNECTIONS} connections, {run_s:g} s, after the "
                         f"trivial handler), then {PACED_RATE_PER_S:g} req/s paced")
                if warmup_s:
                    load(scenario, ours, warmup_s)
                pairs[scenario.name] = [Pair(load(TRIVIAL, trivial, run_s), load(scenario, ours, run_s))
                                        for _ in range(repeats)]
                if scenario.path == "/v1/ranking" and scenario.gzip:  # the same bytes from a trivial handler
                    size = _body_size(ours.port, scenario)
                    same_bytes = Scenario(f"trivial handler, {size:,} bytes", "trivial", "GET",
                                          f"/sized?bytes={size}")
                    progress(f"  {same_bytes.name}: {repeats} x, each before a run of {scenario.name}")
                    sized[scenario.name] = [Pair(load(same_bytes, trivial, run_s), load(scenario, ours, run_s))
                                            for _ in range(repeats)]
                paced[scenario.name] = []
                for _ in range(repeats):  # each paced run after a paced run of the trivial handler
                    paced[TRIVIAL.name].append(run_generator(TRIVIAL, trivial.port, paced_s, PACED_RATE_PER_S))
                    paced[scenario.name].append(run_generator(scenario, ours.port, paced_s, PACED_RATE_PER_S))
        stats = ours.stats
    return Measured(scenarios, pairs, paced, tool, stats, sized)


async def run(quick: bool) -> list[Table]:
    measured = await asyncio.to_thread(measure_all, quick)
    return tables(measured, quick)


def _cpu_ratios(pairs: list[Pair]) -> list[float]:
    """Per pair: (server CPU per request) / (the trivial server's, in the run just before)."""
    return [p.ours.server_cpu_us / p.trivial.server_cpu_us for p in pairs
            if p.ours.server_cpu_us and p.trivial.server_cpu_us]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _x(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else fmt(value)


def _ms_text(value: object) -> str:
    return f"{value:.2f} ms" if isinstance(value, float) else fmt(value)


def tables(measured: Measured, quick: bool) -> list[Table]:
    rate = f"{PACED_RATE_PER_S:g}/s"
    main = Table("Query API under load", (
        "request", "req/s", "trivial req/s", "vs trivial", "server CPU µs/req", "vs trivial CPU", "p50 ms",
        "p99 ms", "bytes/response", "errors",
        f"p50 ms at {rate}", f"p99 ms at {rate}", "paced errors"))
    trivial_runs = [pair.trivial for pairs in measured.pairs.values() for pair in pairs]
    trivial_rates = sorted(run.requests_per_s for run in trivial_runs)
    typical = trivial_runs[[run.requests_per_s for run in trivial_runs].index(trivial_rates[len(trivial_rates) // 2])]
    trivial_paced = measured.paced[TRIVIAL.name]
    main.add(TRIVIAL.name, typical.requests_per_s, None, "1.00x", typical.server_cpu_us, "1.00x", typical.p50_ms,
             typical.p99_ms, typical.body_bytes or None, sum(run.errors for run in trivial_runs),
             _median([r.p50_ms for r in trivial_paced if r.p50_ms is not None]),
             _median([r.p99_ms for r in trivial_paced if r.p99_ms is not None]), sum(r.errors for r in trivial_paced))
    for scenario in measured.scenarios:
        pair = measured.median_pair(scenario.name)
        ours, steady = pair.ours, measured.paced[scenario.name]
        ratios = ", ".join(f"{p.ratio:.2f}" for p in measured.pairs[scenario.name])
        cpu = _median(_cpu_ratios(measured.pairs[scenario.name]))
        main.add(scenario.name, ours.requests_per_s, pair.trivial.requests_per_s, f"{pair.ratio:.2f}x ({ratios})",
                 ours.server_cpu_us, f"{cpu:.2f}x" if cpu is not None else None, ours.p50_ms, ours.p99_ms,
                 ours.body_bytes or None, ours.errors, _median([r.p50_ms for r in steady if r.p50_ms is not None]),
                 _median([r.p99_ms for r in steady if r.p99_ms is not None]), sum(r.errors for r in steady))
    for name, same in measured.sized.items():
        ratios = [p.ratio for p in same]
        cpu = _median(_cpu_ratios(same))
        middle = sorted(same, key=lambda p: p.ratio)[len(same) // 2]
        main.add(f"{name} vs a trivial handler answering as many bytes", middle.ours.requests_per_s,
                 middle.trivial.requests_per_s, spread_text(ratios, format_value=_x), middle.ours.server_cpu_us,
                 f"{cpu:.2f}x" if cpu is not None else None, middle.ours.p50_ms, middle.ours.p99_ms,
                 middle.ours.body_bytes or None, middle.ours.errors, None, None, None)
    stats = measured.stats
    main.notes += [
        f"{QUICK_PROVIDERS if quick else PROVIDERS:,} providers in state (mixed types, ~10% not up, 1-3 models "
        f"each; {CAPACITY_SHARE_PERCENT}% publish capacity (slots, queue, KV cache, resident model); "
        f"{CANARY_SHARE_PERCENT}% have canary samples (TTFT, tokens/s), so the speed part and headroom are real). "
        "Both servers run in their own processes on core 0; the load comes from core 1.",
        f"req/s, p50, p99: {measured.tool}, {CONNECTIONS} connections, each sending its next request when the last "
        f"is answered: at saturation, where latency is about {CONNECTIONS} / req/s whatever the handler. Every run "
        "follows a run of the trivial handler; 'vs trivial' is the median of those pairs' ratios (all in "
        "brackets), the other figures are from the median pair. Server CPU per request (from /proc, the server "
        "process alone) hardly moves with other work on the machine, unlike req/s.",
        f"The paced columns (median of the runs): {PACED_RATE_PER_S:g} requests/s on a fixed schedule over up to "
        f"{CONNECTIONS} connections (an aiohttp client in its own process, connections opened first); latency "
        "counts from each request's scheduled time, so a server that falls behind shows it. Each paced run follows "
        "a paced run of the trivial handler.",
        f"While serving, monitord folded {stats.get('results_fed', 0):,} probe results "
        f"({stats.get('results_per_s', 0):.0f}/s, as 1,000 providers every 30 s) and {stats.get('samples_fed', 0):,} "
        "canary samples: a status or model change ends the cache generation at once, any other result within 1 s "
        "(RankingCache.refresh_s); the default ranking is re-scored only for the providers that changed "
        "(ranking.Standing).",
        "Bodies of 8 KiB and more are gzipped for clients that accept gzip (aiohttp, requests and curl --compressed "
        "do), the default ranking once per body in a worker thread; the identity row is the same ranking "
        "uncompressed, where the bytes written bound the rate. bytes/response is what the client read per "
        "request.",
        "'vs a trivial handler answering as many bytes': the same default ranking against a trivial aiohttp "
        "handler that answers a prepared body of the same size (its 'trivial req/s' column), in pairs as above: "
        "what the ranking costs beyond writing its bytes. A 1,000-entry ranking is tens of KB gzipped, against "
        "the 2 bytes of the trivial handler, and sending them is most of the CPU per request.",
        "POST /v1/select with a new max_tokens on every request: max_tokens only matters against the fleet's known "
        "context lengths, so requests between the same two lengths share one ranking per cache generation "
        "(Ranker.canonical); the criteria are still parsed, checked and echoed per request.",
    ]
    if quick:
        main.notes.append(f"Quick mode: {QUICK_PROVIDERS} providers, 1 s runs without warm-up; figures are not "
                          "meaningful.")
    main.targets += _targets(measured, quick)
    targets = Table("Query API targets", ("target", "measured", "result"))
    for target in main.targets:
        targets.add(f"{target.figure}: {target.goal}", target.measured, target.result)
    main.figures["api"] = {
        "pairs": {name: [{"trivial": asdict(p.trivial), "ours": asdict(p.ours)} for p in pairs]
                  for name, pairs in measured.pairs.items()},
        "paced": {name: [asdict(load) for load in loads] for name, loads in measured.paced.items()},
        "same_bytes": {name: [{"trivial": asdict(p.trivial), "ours": asdict(p.ours)} for p in pairs]
                       for name, pairs in measured.sized.items()},
        "paced_rate_per_s": PACED_RATE_PER_S,
    }
    return [main, targets]


def _targets(measured: Measured, quick: bool) -> list[Target]:
    """Issue 16's goals for the query API, each from >= 3 paired runs (min / median / max)."""
    note = "quick mode: not meaningful" if quick else busy_note()
    providers = f"{QUICK_PROVIDERS if quick else PROVIDERS:,} providers"
    found: list[Target] = []
    trivial_p99 = [r.p99_ms for r in measured.paced[TRIVIAL.name] if r.p99_ms is not None]
    for scenario in measured.scenarios:
        pairs = measured.pairs[scenario.name]
        if scenario.path == "/v1/ranking":
            ratios = [p.ratio for p in pairs]
            middle = _median(ratios)
            same = measured.sized.get(scenario.name)
            bytes_note = ""
            if same:
                bytes_note = (f"against a trivial handler answering as many bytes "
                              f"({same[0].ours.body_bytes:,} per response): "
                              f"{spread_text([p.ratio for p in same], format_value=_x)}")
            found.append(Target(f"{scenario.name} req/s vs a trivial aiohttp handler, {providers}, {CONNECTIONS} "
                                "connections", f">= {RATIO_MIN:g}x", spread_text(ratios, format_value=_x),
                                None if quick or middle is None else middle >= RATIO_MIN,
                                "; ".join(part for part in (note, bytes_note) if part)))
            saturated = [p.ours.p99_ms for p in pairs if p.ours.p99_ms is not None]
            middle = _median(saturated)
            found.append(Target(f"{scenario.name} p99, {CONNECTIONS} connections, saturated",
                                f"< {P99_MAX_MS:g} ms", spread_text(saturated, format_value=_ms_text),
                                None if quick or middle is None else middle < P99_MAX_MS, note))
        if scenario.path.startswith("/v1/ranking") or scenario.lua is not None:
            paced = [r.p99_ms for r in measured.paced[scenario.name] if r.p99_ms is not None]
            relative = [ours / base for ours, base in zip(paced, trivial_p99, strict=False) if base]
            middle, middle_relative = _median(paced), _median(relative)
            met = None if quick or middle is None or middle_relative is None else (
                middle < P99_MAX_MS and middle_relative <= PACED_P99_VS_TRIVIAL_MAX)
            found.append(Target(
                f"{scenario.name} p99 paced at {PACED_RATE_PER_S:g} req/s over up to {CONNECTIONS} connections",
                f"< {P99_MAX_MS:g} ms and <= {PACED_P99_VS_TRIVIAL_MAX:g}x the trivial handler's paced p99",
                f"{spread_text(paced, format_value=_ms_text)}; vs trivial "
                f"{spread_text(relative, format_value=_x)}", met, note))
        if scenario.lua is not None:
            cpu = _cpu_ratios(pairs)
            middle = _median(cpu)
            found.append(Target(f"{scenario.name}: server CPU per request vs the trivial handler's, {providers}",
                                f"<= {SELECT_CPU_MAX:g}x", spread_text(cpu, format_value=_x),
                                None if quick or middle is None else middle <= SELECT_CPU_MAX, note))
    return found
