"""Capacity and identity against the real llama.cpp server (the `xllamacpp` wheel).

What doubles can only imitate: the server's own `/slots`, `/props` and `/metrics` while real streamed work holds a
slot, and what a real llama.cpp answers when it is probed as every other type (it once answered `up` as 13 of 16).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from monitord.model import ErrorClass, ProviderSpec, Status
from monitord.probe import probe_provider
from monitord.providers import ADAPTERS
from tests.integration.test_llamacpp_real import RealServer, probe, wait_up
from tests.tools.polling import eventually

pytestmark = pytest.mark.slow

# Types whose adapters find llama.cpp's own signals (its Server header, its cards' owned_by, its 404 body).
OTHER_TYPES = ("vllm", "localai", "fastchat", "textgen", "lmstudio", "tabbyapi", "mlx", "mistralrs", "gpt4all",
               "sglang", "tgi", "ollama", "koboldcpp", "koboldai")


async def test_slots_and_metrics_follow_real_work(start_server: Any, session: aiohttp.ClientSession) -> None:
    server: RealServer = start_server(None, "--slots", "--metrics", "--parallel", "2")
    await wait_up(server, session)
    idle = await probe(server, session, timeout_s=5.0)
    assert idle.status is Status.UP and idle.capacity is not None, idle.error
    assert (idle.capacity.slots_total, idle.capacity.slots_busy, idle.capacity.queue_depth) == (2, 0, 0)
    assert idle.capacity.requests_running == 0 and not idle.capacity.saturated
    assert idle.capacity.generation_tokens_total is not None
    assert [c.path for c in idle.calls] == ["/health", "/v1/models", "/props", "/slots", "/metrics"]

    stop = asyncio.Event()

    async def long_streamed_generations() -> None:
        work = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 480,
                "ignore_eos": True, "stream": True}
        while not stop.is_set():
            async with session.post(server.url + "/v1/chat/completions", json=work) as resp:
                async for _ in resp.content.iter_any():
                    pass

    worker = asyncio.ensure_future(long_streamed_generations())
    try:
        async def one_slot_busy() -> bool:
            load = (await probe(server, session, timeout_s=5.0)).capacity
            return load is not None and load.slots_busy == 1 and (load.requests_running or 0) >= 1
        await eventually(one_slot_busy, 20.0, "/slots and /metrics showing the generation")
        before = (await probe(server, session, timeout_s=5.0)).capacity
        assert before is not None and before.generation_tokens_total is not None

        async def tokens_moved() -> bool:
            load = (await probe(server, session, timeout_s=5.0)).capacity
            return load is not None and (load.generation_tokens_total or 0) > (before.generation_tokens_total or 0)
        await eventually(tokens_moved, 20.0, "the generated-token counter moving")
    finally:
        stop.set()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await worker

    async def freed() -> bool:
        load = (await probe(server, session, timeout_s=5.0)).capacity
        return load is not None and load.slots_busy == 0
    await eventually(freed, 20.0, "the slot freed")


async def test_a_real_llamacpp_is_itself_and_no_other_type(start_server: Any,
                                                           session: aiohttp.ClientSession) -> None:
    server: RealServer = start_server()
    await wait_up(server, session)
    verdicts: dict[str, tuple[Status, str | None]] = {}
    for provider_type in (*OTHER_TYPES, "llamacpp", "openai", "jan", "auto"):
        spec = ProviderSpec(name="real", type=provider_type, base_url=server.url, timeout_s=5.0, max_retries=0)
        result = await probe_provider(spec, ADAPTERS[provider_type], session)
        verdicts[provider_type] = (result.status, result.identity.looks_like if result.identity else None)
        if result.status is Status.MISCONFIGURED:
            assert result.error_class is ErrorClass.WRONG_SERVER
            assert result.error is not None and "use `type: llamacpp`" in result.error
    assert {t: v for t, v in verdicts.items() if t in OTHER_TYPES} == {
        t: (Status.MISCONFIGURED, "llamacpp") for t in OTHER_TYPES}, verdicts
    assert verdicts["llamacpp"] == verdicts["openai"] == verdicts["jan"] == verdicts["auto"] == (
        Status.UP, "llamacpp"), verdicts
