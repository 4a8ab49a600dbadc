"""Generation canaries against the real llama.cpp server (the `xllamacpp` wheel) on a tiny generated GGUF.

What doubles can only imitate: the server's own stream (role chunk, tokens, `timings`, `[DONE]`), its `/slots`
while real work holds them, and `chat_template_kwargs` accepted by its chat template.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from monitord.canary import run_canary
from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import CanarySpec, ErrorClass, GenerationSample, SampleKind, Status
from tests.integration.test_llamacpp_real import ALIAS, RealServer, spec_for, wait_up
from tests.tools.polling import eventually

pytestmark = pytest.mark.slow

CANARY = CanarySpec(enabled=True, deadline_s=10.0, timeout_s=30.0, max_tokens=8)
BUSY_BUDGET_S = 30.0


async def test_the_canary_records_ttft_and_tokens_per_s(start_server: Any, session: aiohttp.ClientSession) -> None:
    server: RealServer = start_server(None, "--slots")
    await wait_up(server, session)

    sample = await run_canary(spec_for(server, canary=CANARY), ALIAS, session)

    assert (sample.ok, sample.error_class, sample.error) == (True, None, None)
    assert (sample.kind, sample.streamed, sample.stream_complete) == (SampleKind.GENERATION, True, True)
    assert sample.ttft_ms is not None and sample.ttft_ms > 0
    assert sample.tokens_per_s is not None and sample.tokens_per_s > 0
    assert sample.completion_tokens is not None and 1 <= sample.completion_tokens <= 8
    assert sample.prompt_tokens is not None and sample.prompt_tokens > 0
    assert sample.finish_reason in ("length", "stop")

    whole = await run_canary(spec_for(server, canary=CanarySpec(enabled=True, stream=False)), ALIAS, session)
    assert whole.ok and whole.ttft_ms is None and whole.completion_tokens


async def test_with_its_slot_busy_the_canary_says_busy_not_stalled(start_server: Any,
                                                                   session: aiohttp.ClientSession) -> None:
    """Real work keeps the one slot generating (long replies that ignore EOS, back to back from three clients):
    the canary must find the slot taken and step back, and never call the server stalled."""
    server: RealServer = start_server(None, "--slots", "--parallel", "1")
    await wait_up(server, session)
    spec = spec_for(server, canary=CanarySpec(enabled=True, deadline_s=5.0, timeout_s=20.0, max_tokens=8))
    stop = asyncio.Event()

    async def real_work() -> None:
        work = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 480,
                "ignore_eos": True}
        while not stop.is_set():
            async with session.post(server.url + "/v1/chat/completions", json=work) as resp:
                await resp.read()

    workers = [asyncio.ensure_future(real_work()) for _ in range(3)]
    samples: list[GenerationSample] = []

    async def found_busy() -> bool:
        samples.append(await run_canary(spec, ALIAS, session))
        return samples[-1].error_class is ErrorClass.BUSY

    try:
        await eventually(found_busy, BUSY_BUDGET_S, "the canary finding the slot busy", every_s=0)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)

    busy = [s for s in samples if s.error_class is ErrorClass.BUSY]
    assert busy[0].skipped and busy[0].server_busy is True and busy[0].error is not None
    assert "slots busy" in busy[0].error
    # a canary that slipped into a gap between two real requests just ran; none was called stalled
    assert all(s.ok or s.error_class is ErrorClass.BUSY for s in samples), samples


async def test_the_daemon_measures_it_then_sees_the_process_go(start_server: Any, session: aiohttp.ClientSession,
                                                               sqlite_url: str) -> None:
    server: RealServer = start_server(None, "--slots")
    await wait_up(server, session)
    interval_s = 5.0
    text = (f"providers:\n  llama-real:\n    type: llamacpp\n    endpoint: {server.url}\n"
            "    parameters: {timeout: 1s, max_retries: 0, probe_interval: 1s, "
            f"canary: {{interval: {interval_s:g}s, deadline: 5s, timeout: 10s}}}}\n"
            f"storage:\n  url: {sqlite_url}\n  flush_interval: 50ms\napi:\n  listen: 127.0.0.1:0\n"
            "alerts:\n  failure_threshold: 2\n")
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    try:
        measured: list[Any] = []

        async def a_good_sample() -> bool:
            await daemon.store.flush()
            measured[:] = [s for s in await daemon.store.generation_history("llama-real") if s.ok]
            return bool(measured)

        await eventually(a_good_sample, 3 * interval_s + 10, "a canary of the real server")
        sample = measured[0]
        assert (sample.model, sample.kind) == (ALIAS, SampleKind.GENERATION)
        assert sample.ttft_ms is not None and sample.ttft_ms > 0
        assert sample.tokens_per_s is not None and sample.tokens_per_s > 0

        server.stop()
        took_s = await eventually(lambda: daemon.live.get("llama-real").status is not Status.UP,  # type: ignore[union-attr]
                                  2 * interval_s + 10, "not up once the process stopped")
        assert took_s <= 2 * interval_s + 5, took_s  # loose: two canary intervals and a loaded machine's slack
        state = daemon.live.get("llama-real")
        assert state is not None and state.status is Status.DOWN and state.last_error_class is ErrorClass.REFUSED
    finally:
        await daemon.stop()
