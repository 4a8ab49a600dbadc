"""Canary cost: CPU per generation canary, its HTTP read alone and its whole path in a running daemon, beside a bare
aiohttp client that sends the same request to the same server and reads the same stream.

The server is the vLLM double (OpenAI-compatible SSE, a chunk per token at a fixed pace, the finish chunk, usage
and `[DONE]`) in a process of its own, so its CPU is not counted. Everything measured runs in this process, at the
same concurrency (monitor.canary's default cap), and the CPU is this process's (user + system), so other work on
the machine shows as noise, not as cost. Four clients, interleaved in rounds so load changes hit all of them:

- bare, reads: the canary's POST on a monitord client session, the body drained with `iter_any()` (no parsing:
  the least any streaming client does; the baseline of the target).
- bare, parses: the same, plus splitting SSE frames and decoding every chunk's JSON with orjson (the least a
  client that wants the tokens does).
- canary, HTTP read: `run_canary` (the dialect's request, the first-token and per-chunk idle deadline, the SSE
  reader, the tally: TTFT, tokens/s, terminal marker, the GenerationSample).
- daemon, whole path: what a running daemon does per canary: its CanaryRunner (concurrency cap, daily budget)
  and `Daemon.record` (the pipeline: the stall fold of the live state, GenerationState, the ranking, the API's
  metrics and events, the alert rules, the log sink, the store writer's row), with the store flushed inside the
  measured window so the SQLite write is counted. The daemon (SQLite, API on) runs throughout; with one
  provider probed every 10 minutes its idle tasks add a few µs per second to every client alike.

Each run is ROUNDS rounds of PER_ROUND canaries per client; a run's ratio is its client's CPU over its bare
client's, and the targets report min / median / max of the runs' ratios. Target (issue 10, kept by issue 16):
the canary's own CPU per sample <= 1.5x the bare streaming client, for its HTTP read and for its whole path.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import Meter, Table, Target, busy_note, fmt, spread_text
from monitord import logs
from monitord.canary import run_canary
from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import ModelKind, ProviderSpec, Status
from monitord.probe import create_session
from monitord.providers.generate import CanaryRequest, plan

ORDER = 35
TITLE = "generation canary: CPU per canary (HTTP read, whole daemon path) vs a bare aiohttp client on the same stream"

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROVIDER = "bench"
TOKENS = (8, 128)  # the default max_tokens, and a long reply
CONCURRENCY = 2  # monitor.canary's default cap
TOKEN_INTERVAL_S = 0.002  # a 500 tokens/s server: each chunk arrives on its own, as from a real one
RUNS, QUICK_RUNS = 5, 1
ROUNDS = 4  # per run: the clients take turns this many times
PER_ROUND = {8: 50, 128: 15}  # canaries per client per round
QUICK_PER_ROUND = 3
RATIO_MAX = 1.5
BARE_READ, BARE_PARSE, CANARY, DAEMON = "bare, reads", "bare, parses", "canary, HTTP read", "daemon, whole path"
CLIENTS = (BARE_READ, BARE_PARSE, CANARY, DAEMON)


def _serve(conn: Connection, tokens: int) -> None:
    """Child process: the vLLM double streaming `tokens` tokens at TOKEN_INTERVAL_S, until told to stop."""
    from tests.doubles import DOUBLES
    from tests.doubles.base import DoubleControl, ProviderDouble

    async def main() -> None:
        double = await ProviderDouble("vllm", DOUBLES["vllm"], DoubleControl()).start()
        await double.set("up", reply_tokens=tokens, token_interval_s=TOKEN_INTERVAL_S)
        conn.send(double.url)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await double.stop()

    asyncio.run(main())


def _config(url: str, tokens: int, db: Path) -> str:
    """One vLLM provider with its canary on (the interval long: the benchmark runs the canaries), SQLite, API on."""
    return f"""
providers:
  {PROVIDER}:
    type: vllm
    endpoint: "{url}"
    models: [{MODEL}]
    parameters:
      probe_interval: 600s
      canary: {{interval: 3600s, max_tokens: {tokens}, max_tokens_per_day: 1000000000}}
storage: {{url: "sqlite+aiosqlite:///{db}"}}
api: {{listen: "127.0.0.1:0"}}
"""


async def _bare(session: aiohttp.ClientSession, url: str, request: CanaryRequest, parse: bool) -> int:
    """Send the canary's request, read the stream to its end; returns the chunks decoded (0 when not parsing)."""
    decoded = 0
    async with session.post(url + request.path, json=request.payload) as resp:
        resp.raise_for_status()
        if not parse:
            async for _ in resp.content.iter_any():
                pass
            return 0
        pending = b""
        async for data in resp.content.iter_any():
            pending += data
            *frames, pending = pending.split(b"\n\n")
            for frame in frames:
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        orjson.loads(line[6:])
                        decoded += 1
    return decoded


@dataclass
class _Client:
    """One way of doing a canary, and what its rounds cost so far."""

    one: Callable[[], Awaitable[Any]]
    after: Callable[[], Awaitable[Any]] | None = None  # inside the measured window, after the round's canaries
    cpu_s: float = 0.0
    count: int = 0
    runs: list[float] = field(default_factory=list)  # CPU µs per canary of each run

    async def round(self, count: int) -> None:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                await self.one()

        with Meter() as meter:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            if self.after is not None:
                await self.after()
        self.cpu_s += meter.usage.cpu_s
        self.count += count

    def close_run(self) -> None:
        self.runs.append(self.cpu_s * 1e6 / self.count)
        self.cpu_s, self.count = 0.0, 0


@dataclass
class _Measured:
    tokens: int
    per_round: int
    runs: int
    cpu_us: dict[str, list[float]]  # client -> CPU µs per canary, one per run
    record_us: list[float]  # Daemon.record alone (the pipeline's synchronous sinks), µs per sample, per run
    rows: int  # canary samples the daemon's store holds at the end
    notes: list[str]

    def ratios(self, client: str, base: str = BARE_READ) -> list[float]:
        return [ours / bare for ours, bare in zip(self.cpu_us[client], self.cpu_us[base], strict=True)]


async def _up(daemon: Daemon) -> None:
    """Probe now (the schedule's first probe may be minutes away) so the provider is up, as for a real canary."""
    results = await daemon.run_once()
    state = daemon.live.get(PROVIDER)
    if state is None or state.status is not Status.UP:
        raise RuntimeError(f"the provider is not up after a probe: {results}")


async def _measure(url: str, tokens: int, quick: bool) -> _Measured:
    runs = QUICK_RUNS if quick else RUNS
    per_round = QUICK_PER_ROUND if quick else PER_ROUND[tokens]
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(parse_config(_config(url, tokens, Path(tmp) / "bench.db")), install_signal_handlers=False)
        await daemon.start()
        session = create_session(limit=CONCURRENCY * 2)
        try:
            await _up(daemon)
            spec: ProviderSpec = daemon.specs[PROVIDER]
            request = plan(spec, MODEL, ModelKind.LLM)
            assert isinstance(request, CanaryRequest) and request.stream
            runner = daemon.canaries
            assert runner is not None
            record_s = [0.0]

            async def canary() -> None:
                sample = await run_canary(spec, MODEL, session, kind=ModelKind.LLM)
                if not sample.ok or sample.completion_tokens != tokens:
                    raise RuntimeError(f"a canary failed: {sample}")

            async def whole() -> None:
                sample = await runner.run(spec, MODEL, kind=ModelKind.LLM)
                if not sample.ok or sample.completion_tokens != tokens:
                    raise RuntimeError(f"a daemon canary failed: {sample}")
                started = time.thread_time()  # this thread only: the store's SQLite thread may be busy meanwhile
                daemon.record(sample)
                record_s[0] += time.thread_time() - started

            clients = {
                BARE_READ: _Client(lambda: _bare(session, url, request, parse=False)),
                BARE_PARSE: _Client(lambda: _bare(session, url, request, parse=True)),
                CANARY: _Client(canary),
                DAEMON: _Client(whole, after=daemon.store.flush),
            }
            for client in clients.values():  # warm up: connections, caches, the first rows
                await client.round(2)
                client.cpu_s, client.count = 0.0, 0
            record_s[0] = 0.0
            record_us: list[float] = []
            for _ in range(runs):
                for _ in range(ROUNDS):
                    for client in clients.values():
                        await client.round(per_round)
                record_us.append(record_s[0] * 1e6 / (ROUNDS * per_round))
                record_s[0] = 0.0
                for client in clients.values():
                    client.close_run()
            await daemon.store.flush()
            rows = len(await daemon.store.generation_history(PROVIDER, model=MODEL, limit=100_000))
        finally:
            await session.close()
            await daemon.stop()
    note = busy_note()
    return _Measured(tokens, per_round, runs, {name: c.runs for name, c in clients.items()}, record_us, rows,
                     [note] if note else [])


async def run(quick: bool) -> list[Table]:
    if not quick:  # a full run prints only its table; quick runs inside pytest must leave logging alone
        logs.configure("warning", "console")
    context = multiprocessing.get_context("spawn")
    measured: list[_Measured] = []
    for tokens in TOKENS:
        parent, child = context.Pipe()
        server = context.Process(target=_serve, args=(child, tokens), daemon=True)
        server.start()
        try:
            url = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
            measured.append(await _measure(url, tokens, quick))
        finally:
            parent.send("stop")
            server.join(timeout=10)
            if server.is_alive():
                server.kill()
    return [_table(measured, quick)]


def _x(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else fmt(value)


def _table(measured: list[_Measured], quick: bool) -> Table:
    table = Table("Generation canary CPU",
                  ("reply tokens", "client", "canaries", "CPU µs/canary", "x bare reads", "x bare parses"))
    figures: dict[str, Any] = {}
    for m in measured:
        for client in CLIENTS:
            values = m.cpu_us[client]
            table.add(m.tokens, client, ROUNDS * m.per_round * m.runs, spread_text(values),
                      spread_text(m.ratios(client), format_value=_x),
                      spread_text(m.ratios(client, BARE_PARSE), format_value=_x))
        table.add(m.tokens, "of which Daemon.record", "", spread_text(m.record_us), "", "")
        note = "; ".join(["quick mode: not meaningful"] * quick + m.notes)
        for client, what in ((CANARY, "its HTTP read (run_canary: request, stream, deadlines, tally, sample)"),
                             (DAEMON, "its whole path in the daemon (runner, pipeline sinks, store write)")):
            ratios = m.ratios(client)
            middle = statistics.median(ratios)
            table.targets.append(Target(
                f"generation canary's own CPU per sample, {what}, vs a bare aiohttp client reading the same "
                f"stream (no parsing), {m.tokens}-token replies",
                f"<= {RATIO_MAX:g}x", spread_text(ratios, format_value=_x),
                None if quick else middle <= RATIO_MAX,
                "; ".join(x for x in (note, f"vs a bare client that also decodes every chunk: "
                                            f"{spread_text(m.ratios(client, BARE_PARSE), format_value=_x)}") if x)))
        figures[str(m.tokens)] = {"cpu_us": m.cpu_us, "record_us": m.record_us, "rows": m.rows,
                                  "ratios": {client: m.ratios(client) for client in CLIENTS}}
    table.notes += [
        f"The vLLM double streams a chunk per token every {TOKEN_INTERVAL_S * 1000:g} ms, then the finish chunk, "
        f"the usage chunk and [DONE], from its own process; {CONCURRENCY} canaries at a time; each run is "
        f"{ROUNDS} rounds in which the clients take turns; figures are min / median / max over the runs, a "
        "ratio is taken within a run. CPU is this process's (user + system).",
        "bare, reads: the canary's POST, the stream drained. bare, parses: also splits the SSE frames and decodes "
        "every chunk with orjson. canary, HTTP read: run_canary. daemon, whole path: the daemon's CanaryRunner "
        "and Daemon.record (live-state stall fold, GenerationState, ranking, API metrics/events, alert rules, "
        "log, store writer), the store flushed in the window; 'of which Daemon.record' is the synchronous "
        "pipeline alone (this thread's CPU in the call); the rest of the difference to the HTTP read is the runner "
        "(cap, budget), the store writer (its task and its SQLite thread) and work the samples cause later (the "
        "ranking's refresh).",
    ]
    table.figures = figures
    return table
