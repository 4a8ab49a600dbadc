"""Generation canaries against the real llama.cpp server (the `xllamacpp` wheel) on a tiny generated GGUF.

What doubles can only imitate: the server's own stream (role chunk, tokens, `timings`, `[DONE]`), its `/slots`
while real work holds them, and `chat_template_kwargs` accepted by its chat template.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from monitord.canary import run_canary
from monitord.model import CanarySpec, ErrorClass, GenerationSample, SampleKind
from tests.integration.test_llamacpp_real import ALIAS, RealServer, spec_for, wait_up

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
    try:
        deadline = time.monotonic() + BUSY_BUDGET_S
        while not any(s.error_class is ErrorClass.BUSY for s in samples):
            assert time.monotonic() < deadline, f"never found the slot busy: {samples}"
            samples.append(await run_canary(spec, ALIAS, session))
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)

    busy = [s for s in samples if s.error_class is ErrorClass.BUSY]
    assert busy[0].skipped and busy[0].server_busy is True and busy[0].error is not None
    assert "slots busy" in busy[0].error
    # a canary that slipped into a gap between two real requests just ran; none was called stalled
    assert all(s.ok or s.error_class is ErrorClass.BUSY for s in samples), samples
