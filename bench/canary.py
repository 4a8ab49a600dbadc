"""Canary cost: client CPU per generation canary (monitord's `run_canary`) beside a bare aiohttp client that sends
the same request and reads the same stream.

The server is the vLLM double (OpenAI-compatible SSE, a chunk per token, usage and `[DONE]`) in a process of its
own, so its CPU is not counted. Both clients run in this process on one shared session, at the same concurrency,
and send the canary's own request (`providers.generate.plan`). "bare, reads" only drains the bytes; "bare,
parses" also splits the SSE frames and decodes each chunk's JSON, the least a client that wants the tokens does.
monitord adds the deadline and stall clock, the per-dialect reader, the tally (TTFT, tokens/s, integrity) and
the sample. Variants alternate; the median of the repetitions is reported. Target: monitord <= 1.5x bare.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from bench.common import Meter, Table, verdict
from monitord.canary import run_canary
from monitord.model import CanarySpec, ModelKind, ProviderSpec
from monitord.probe import create_session
from monitord.providers.generate import CanaryRequest, plan

ORDER = 35
TITLE = "generation canary: client CPU per canary vs a bare aiohttp client reading the same stream"

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TOKENS = (8, 128)  # the default max_tokens, and a long reply
CONCURRENCY = 2  # monitor.canary's default cap
TOKEN_INTERVAL_S = 0.002  # a 500 tokens/s server: each chunk arrives on its own, as from a real one
FULL_CANARIES = {8: 400, 128: 100}
QUICK_CANARIES = 10
FULL_REPEATS, QUICK_REPEATS = 3, 1
RATIO_MAX = 1.5
MONITORD, BARE_READ, BARE_PARSE = "monitord", "bare, reads", "bare, parses"


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


def _spec(url: str, tokens: int) -> ProviderSpec:
    return ProviderSpec(name="bench", type="vllm", base_url=url, models=(MODEL,),
                        canary=CanarySpec(enabled=True, max_tokens=tokens, max_tokens_per_day=10**9))


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


async def _measure(count: int, one: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(client CPU µs per call, wall s) for `count` calls at CONCURRENCY."""
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await one()

    with Meter() as meter:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    usage = meter.usage
    return usage.cpu_s * 1e6 / count, usage.wall_s


async def _variants(url: str, tokens: int, count: int, repeats: int) -> dict[str, list[float]]:
    spec = _spec(url, tokens)
    request = plan(spec, MODEL, ModelKind.LLM)
    assert isinstance(request, CanaryRequest) and request.stream
    cpu: dict[str, list[float]] = {MONITORD: [], BARE_READ: [], BARE_PARSE: []}
    session = create_session(limit=CONCURRENCY * 2)
    try:
        sample = await run_canary(spec, MODEL, session, kind=ModelKind.LLM)  # warm up, and prove it works
        if not sample.ok or sample.completion_tokens != tokens:
            raise RuntimeError(f"the warm-up canary failed: {sample}")
        await _bare(session, url, request, parse=True)

        async def canary() -> None:
            done = await run_canary(spec, MODEL, session, kind=ModelKind.LLM)
            if not done.ok:
                raise RuntimeError(f"a canary failed: {done.error_class}: {done.error}")

        variants: dict[str, Callable[[], Awaitable[Any]]] = {
            MONITORD: canary,
            BARE_READ: lambda: _bare(session, url, request, parse=False),
            BARE_PARSE: lambda: _bare(session, url, request, parse=True),
        }
        for _ in range(repeats):
            for name, one in variants.items():
                cpu[name].append((await _measure(count, one))[0])
    finally:
        await session.close()
    return cpu


async def run(quick: bool) -> list[Table]:
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    table = Table("Generation canary CPU",
                  ("reply tokens", "client", "canaries", "client CPU µs/canary", "x bare reads", "x bare parses"))
    count = 0
    targets = Table("Generation canary targets", ("target", "measured", "result"))
    context = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {}
    for tokens in TOKENS:
        parent, child = context.Pipe()
        server = context.Process(target=_serve, args=(child, tokens), daemon=True)
        server.start()
        try:
            url = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
            started = time.perf_counter()
            count = QUICK_CANARIES if quick else FULL_CANARIES[tokens]
            cpu = await _variants(url, tokens, count, repeats)
        finally:
            parent.send("stop")
            server.join(timeout=10)
            if server.is_alive():
                server.kill()
        medians = {name: statistics.median(values) for name, values in cpu.items()}
        for name, value in medians.items():
            table.add(tokens, name, count * repeats, value, value / medians[BARE_READ], value / medians[BARE_PARSE])
        ratio = medians[MONITORD] / medians[BARE_READ]
        targets.add(f"{tokens}-token reply: monitord <= {RATIO_MAX}x a bare client that reads the stream",
                    f"{medians[MONITORD]:.0f} vs {medians[BARE_READ]:.0f} µs = {ratio:.2f}x",
                    verdict(ratio, at_most=RATIO_MAX))
        figures[str(tokens)] = {"cpu_us": medians, "ratio_read": ratio,
                                "ratio_parse": medians[MONITORD] / medians[BARE_PARSE],
                                "elapsed_s": time.perf_counter() - started}
    table.notes += [
        f"The vLLM double streams a chunk per token every {TOKEN_INTERVAL_S * 1000:g} ms, then the usage chunk and "
        f"[DONE], from its own process; {CONCURRENCY} canaries at a time (monitor.canary's default cap) on one "
        f"session; median of {repeats} alternating repetition(s).",
        "monitord: run_canary (request, deadline and stall clock, SSE reader, tally, GenerationSample). "
        "bare, reads: the same POST, the stream drained. bare, parses: also splits the frames and decodes every "
        "chunk with orjson.",
    ]
    table.figures = figures
    return [table, targets]
