"""Generation canaries against doubles that stream like the real servers: every outcome is a classified sample."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import structlog.testing

from monitord.canary import CanaryBudget, CanaryRunner, canary_models, run_canary
from monitord.model import (
    CanarySpec,
    ErrorClass,
    GenerationSample,
    ModelInfo,
    ModelKind,
    ProviderSpec,
    SampleKind,
    Secret,
    Status,
)
from monitord.probe import create_session, probe_provider
from monitord.providers import ADAPTERS
from monitord.providers.generate import DIALECTS, CanaryRequest, Skip, plan
from tests.doubles.base import ProviderDouble
from tests.plugins.doubles import StartDouble
from tests.tools.polling import eventually

VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
OLLAMA_MODEL = "llama3.2:3b"  # the one the Ollama double holds in memory
STALL_DEADLINE_S = 0.5  # stall tests: short so stalls are seen quickly (doubles send a token every 10 ms)
DEADLINE_S = 5.0  # every other test: a loaded 2-core machine never pauses this long between two reads


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = create_session()
    yield client
    await client.close()


def spec_for(double: ProviderDouble, **canary: Any) -> ProviderSpec:
    settings = {"enabled": True, "deadline_s": DEADLINE_S, "timeout_s": 10.0, "stream": True, **canary}
    return ProviderSpec(name=f"{double.provider_type}-1", type=double.provider_type, base_url=double.url,
                        timeout_s=2.0, max_retries=0, canary=CanarySpec(**settings))


async def canary(double: ProviderDouble, session: aiohttp.ClientSession, model: str = VLLM_MODEL, *,
                 kind: ModelKind | None = None, **settings: Any) -> GenerationSample:
    return await run_canary(spec_for(double, **settings), model, session, kind=kind)


def chat_posts(double: ProviderDouble) -> list[str]:
    return [r.path for r in double.requests if r.method == "POST"]


# -- every family streams and is measured ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_type", "model", "path"),
    [
        ("vllm", VLLM_MODEL, "/v1/chat/completions"),
        ("llamacpp", "any", "/v1/chat/completions"),
        ("ollama", OLLAMA_MODEL, "/api/chat"),
        ("koboldcpp", "koboldcpp/model", "/api/extra/generate/stream"),
        ("tgi", "any", "/generate_stream"),
        ("localai", "any", "/v1/chat/completions"),
    ],
)
async def test_a_streamed_canary_measures_ttft_and_decode_rate(provider_type: str, model: str, path: str,
                                                               provider_double: StartDouble,
                                                               session: aiohttp.ClientSession) -> None:
    double = await provider_double(provider_type, token_interval_s=0.02, reply_tokens=6)
    if provider_type == "localai":
        model = (await probe_provider(spec_for(double), ADAPTERS["localai"], session)).models[0].id

    sample = await canary(double, session, model, max_tokens=8)

    assert (sample.ok, sample.error_class, sample.error, sample.skipped) == (True, None, None, False)
    assert (sample.kind, sample.streamed, sample.stream_complete) == (SampleKind.GENERATION, True, True)
    assert sample.ttft_ms is not None and 0 < sample.ttft_ms < sample.total_ms  # type: ignore[operator]
    assert sample.completion_tokens == 6 and sample.finish_reason is not None
    # six tokens 20 ms apart: about 50 tokens/s (a loaded machine stretches gaps, or bunches two in one read)
    assert sample.tokens_per_s is not None and 5 < sample.tokens_per_s < 500
    assert path in chat_posts(double)


async def test_chat_endpoint_is_where_the_canary_goes(provider_double: StartDouble,
                                                      session: aiohttp.ClientSession) -> None:
    double = await provider_double("llamacpp")
    spec = replace(spec_for(double), chat_endpoint="/chat/completions")

    sample = await run_canary(spec, "any", session)

    assert sample.ok and chat_posts(double) == ["/chat/completions"]


async def test_a_server_that_cannot_stream_is_asked_without_streaming(provider_double: StartDouble,
                                                                      session: aiohttp.ClientSession) -> None:
    double = await provider_double("gpt4all")

    sample = await canary(double, session, "Llama 3 8B Instruct", stream=False)

    assert (sample.ok, sample.streamed, sample.stream_complete, sample.ttft_ms) == (True, False, None, None)
    assert sample.completion_tokens == 2 and sample.total_ms is not None


# -- failures that mean "cannot generate" ---------------------------------------------------------------------


async def test_stall_before_the_first_token_is_a_generation_timeout(provider_double: StartDouble,
                                                                    session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", generation="stall_before_first")

    sample = await canary(double, session, deadline_s=STALL_DEADLINE_S)

    assert (sample.ok, sample.error_class, sample.ttft_ms) == (False, ErrorClass.GENERATION_TIMEOUT, None)
    assert sample.error == f"no first token within {STALL_DEADLINE_S:g}s" and not sample.skipped
    assert sample.server_busy is False  # nothing said the server was busy: this is a stall, not a queue


async def test_health_answering_while_generation_hangs(provider_double: StartDouble,
                                                       session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", generation="hang")
    spec = spec_for(double, deadline_s=STALL_DEADLINE_S)

    health, sample = await asyncio.gather(probe_provider(spec, ADAPTERS["vllm"], session),
                                          run_canary(spec, VLLM_MODEL, session))

    assert health.status is Status.UP  # /health and /v1/models answer in milliseconds
    assert (sample.ok, sample.error_class) == (False, ErrorClass.GENERATION_TIMEOUT)


async def test_stall_mid_stream_is_stream_stalled(provider_double: StartDouble,
                                                  session: aiohttp.ClientSession) -> None:
    double = await provider_double("ollama", generation="stall_mid_stream")

    sample = await canary(double, session, OLLAMA_MODEL, deadline_s=STALL_DEADLINE_S)

    assert (sample.ok, sample.error_class) == (False, ErrorClass.STREAM_STALLED)
    assert sample.ttft_ms is not None and sample.error is not None and "no token for 0.5s" in sample.error
    assert sample.stream_complete is False


async def test_tokens_that_keep_coming_within_the_deadline_are_not_a_stall(provider_double: StartDouble,
                                                                           session: aiohttp.ClientSession) -> None:
    """The idle deadline is checked lazily (one timer that looks again when it fires): a slow stream that lasts
    several deadlines, each gap within it, must come through whole."""
    double = await provider_double("vllm", token_interval_s=0.25, reply_tokens=10)

    sample = await canary(double, session, max_tokens=10, deadline_s=1.0)

    assert (sample.ok, sample.error_class, sample.completion_tokens) == (True, None, 10)
    assert sample.total_ms is not None and sample.total_ms > 2000  # longer than two deadlines, never cut


async def test_a_stall_after_tokens_is_called_at_the_deadline_of_the_last_token(
        provider_double: StartDouble, session: aiohttp.ClientSession) -> None:
    """The timer armed at the start must not end the wait early: the tokens moved the deadline past it."""
    double = await provider_double("vllm", generation="stall_mid_stream", token_interval_s=0.3)

    sample = await canary(double, session, deadline_s=0.5)

    assert (sample.ok, sample.error_class) == (False, ErrorClass.STREAM_STALLED)
    assert sample.error == "no token for 0.5s after 2 chunk(s)"
    # two tokens 0.3 s apart, then nothing: the stall is called 0.5 s after the second token, not 0.5 s after the
    # start (the first timer's moment) nor 0.5 s after the first token
    assert sample.ttft_ms is not None and sample.total_ms is not None
    assert sample.total_ms >= sample.ttft_ms + 300 + 500 - 5  # 5 ms: the loop's timers round to a millisecond


async def test_keep_alive_comments_do_not_hide_a_stall(provider_double: StartDouble,
                                                       session: aiohttp.ClientSession) -> None:
    """A stalled engine behind sse-starlette still sends `: ping` comments; only tokens move the stall clock."""
    double = await provider_double("tabbyapi", generation="stall_before_first")
    served = (await probe_provider(spec_for(double), ADAPTERS["tabbyapi"], session)).models[0].id

    sample = await canary(double, session, served, deadline_s=STALL_DEADLINE_S)

    assert sample.error_class is ErrorClass.GENERATION_TIMEOUT


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ("malformed", "malformed chunk: a chunk that is not JSON"),
        ("no_terminal", "stream ended without [DONE]"),
        ("cut", "connection cut mid-stream"),
    ],
)
async def test_a_broken_stream_is_stream_broken(generation: str, message: str, provider_double: StartDouble,
                                                session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", generation=generation)

    sample = await canary(double, session)

    assert (sample.ok, sample.error_class, sample.skipped) == (False, ErrorClass.STREAM_BROKEN, False)
    assert sample.error is not None and sample.error.startswith(message)
    assert sample.stream_complete is not True


async def test_a_kobold_stream_without_its_finish_is_broken(provider_double: StartDouble,
                                                            session: aiohttp.ClientSession) -> None:
    double = await provider_double("koboldcpp", generation="no_terminal")

    sample = await canary(double, session, "koboldcpp/model")

    assert (sample.error_class, sample.error) == (ErrorClass.STREAM_BROKEN, "stream ended without a finish_reason")


async def test_server_errors_keep_their_http_class(provider_double: StartDouble,
                                                   session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", "error")

    sample = await canary(double, session)

    assert (sample.ok, sample.error_class, sample.skipped) == (False, ErrorClass.HTTP_5XX, False)


async def test_a_server_that_is_down_is_refused_not_stalled(provider_double: StartDouble,
                                                            session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", "down")

    sample = await canary(double, session)

    assert (sample.ok, sample.error_class) == (False, ErrorClass.REFUSED)


async def test_html_instead_of_a_stream_is_classified_never_raised(provider_double: StartDouble,
                                                                   session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", "html")

    streamed = await canary(double, session)
    whole = await canary(double, session, stream=False)

    assert (streamed.ok, streamed.error_class) == (False, ErrorClass.STREAM_BROKEN)
    assert (whole.ok, whole.error_class) == (False, ErrorClass.BAD_PAYLOAD)


async def test_secrets_never_reach_the_sample(provider_double: StartDouble, session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", api_key="sk-canary-secret-1234")
    wrong = replace(spec_for(double), api_key=Secret("sk-wrong-secret-5678"))
    right = replace(spec_for(double), api_key=Secret("sk-canary-secret-1234"))

    refused = await run_canary(wrong, VLLM_MODEL, session)
    accepted = await run_canary(right, VLLM_MODEL, session)

    assert (refused.error_class, accepted.ok) == (ErrorClass.AUTH, True)
    assert "sk-" not in repr(refused) and "sk-" not in repr(accepted)


# -- replies that are fine although they look odd ---------------------------------------------------------------


@pytest.mark.parametrize(("provider_type", "model"), [("vllm", VLLM_MODEL), ("ollama", OLLAMA_MODEL)])
async def test_a_reasoning_only_reply_stopping_on_length_is_a_success(provider_type: str, model: str,
                                                                      provider_double: StartDouble,
                                                                      session: aiohttp.ClientSession) -> None:
    double = await provider_double(provider_type, generation="reasoning_only")

    sample = await canary(double, session, model)

    assert (sample.ok, sample.error_class, sample.finish_reason) == (True, None, "length")
    assert sample.ttft_ms is not None and sample.completion_tokens == 6


@pytest.mark.parametrize(("provider_type", "model", "path"),
                         [("vllm", VLLM_MODEL, "/v1/embeddings"), ("ollama", "nomic-embed-text:latest", "/api/embed")])
async def test_an_embedding_model_is_asked_for_an_embedding(provider_type: str, model: str, path: str,
                                                            provider_double: StartDouble,
                                                            session: aiohttp.ClientSession) -> None:
    double = await provider_double(provider_type, embedding_only=True, resident=True)

    sample = await canary(double, session, model, kind=ModelKind.EMBEDDING, load=True)

    assert (sample.ok, sample.kind, sample.error) == (True, SampleKind.EMBEDDING, None)
    assert sample.prompt_tokens is not None and sample.completion_tokens is None
    assert chat_posts(double) == [path]


async def test_a_rerank_model_is_skipped_with_a_reason(provider_double: StartDouble,
                                                       session: aiohttp.ClientSession) -> None:
    double = await provider_double("localai")

    sample = await canary(double, session, "bge-reranker", kind=ModelKind.RERANK)

    assert (sample.ok, sample.skipped, sample.error) == (False, True, "rerank model: no cheap probe")
    assert chat_posts(double) == []


# -- the canary never loads a model and never queues behind real work ------------------------------------------


async def test_a_model_not_in_memory_is_skipped_not_loaded(provider_double: StartDouble,
                                                           session: aiohttp.ClientSession) -> None:
    double = await provider_double("ollama")

    skipped = await canary(double, session, "gemma3:4b")  # on disk, not in /api/ps
    assert (skipped.skipped, skipped.error_class) == (True, ErrorClass.NOT_LOADED)
    assert chat_posts(double) == []

    allowed = await canary(double, session, "gemma3:4b", load=True)
    assert allowed.ok and chat_posts(double) == ["/api/chat"]


@pytest.mark.parametrize(("api", "loaded", "unloaded"), [
    ("v1", "qwen/qwen3-8b", "text-embedding-nomic-embed-text-v1.5"),
    ("v0", "qwen2.5-7b-instruct", "qwen2-vl-7b-instruct"),
])
async def test_lm_studio_models_not_loaded_are_skipped(api: str, loaded: str, unloaded: str,
                                                       provider_double: StartDouble,
                                                       session: aiohttp.ClientSession) -> None:
    double = await provider_double("lmstudio", api=api)

    assert (await canary(double, session, unloaded)).error_class is ErrorClass.NOT_LOADED
    assert (await canary(double, session, loaded)).ok
    assert chat_posts(double) == ["/v1/chat/completions"]


@pytest.mark.parametrize(("provider_type", "options"), [("llamacpp", {"slots_busy": True}),
                                                        ("koboldcpp", {"busy": True})])
async def test_no_idle_slot_is_busy_not_a_stall(provider_type: str, options: dict[str, Any],
                                                provider_double: StartDouble,
                                                session: aiohttp.ClientSession) -> None:
    double = await provider_double(provider_type, **options)

    sample = await canary(double, session, "any")

    assert (sample.ok, sample.skipped, sample.error_class, sample.server_busy) == (
        False, True, ErrorClass.BUSY, True)
    assert chat_posts(double) == []  # it did not queue behind the real work


async def test_an_overloaded_answer_is_busy(provider_double: StartDouble, session: aiohttp.ClientSession) -> None:
    double = await provider_double("tgi", overloaded=True)

    sample = await canary(double, session, "any")

    assert (sample.skipped, sample.error_class) == (True, ErrorClass.BUSY)


# -- budget, cap, model choice --------------------------------------------------------------------------------


async def test_the_daily_budget_pauses_the_canary_and_says_so(provider_double: StartDouble,
                                                              session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", reply_tokens=6)
    spec = spec_for(double, max_tokens=8, max_tokens_per_day=18)
    budget = CanaryBudget()
    day = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def at(hours: float) -> Any:
        return lambda: day + timedelta(hours=hours)

    runs = [await run_canary(spec, VLLM_MODEL, session, budget=budget, now=at(h)) for h in (0, 1, 2)]
    next_day = await run_canary(spec, VLLM_MODEL, session, budget=budget, now=at(12))

    assert [r.ok for r in runs] == [True, True, False]  # 6 + 6 spent; 12 + 8 > 18 could overrun
    assert (runs[2].skipped, runs[2].error_class) == (True, ErrorClass.BUDGET_EXHAUSTED)
    assert runs[2].error == ("daily canary budget spent: 12 of 18 tokens; resumes at 2026-03-02T00:00:00+00:00")
    assert next_day.ok and budget.spent(spec.name, VLLM_MODEL, day + timedelta(hours=12)) == 6
    assert len(chat_posts(double)) == 3


async def test_canaries_never_delay_health_probes(provider_double: StartDouble,
                                                  session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", generation="hang")
    spec = spec_for(double, deadline_s=30.0, timeout_s=30.0)
    runner = CanaryRunner(session, concurrency=1)
    hung = [asyncio.ensure_future(runner.run(spec, VLLM_MODEL)) for _ in range(3)]
    try:
        await eventually(lambda: chat_posts(double), 10, "the first canary reaching the server")

        result = await probe_provider(spec, ADAPTERS["vllm"], session)

        assert result.status is Status.UP and len(chat_posts(double)) == 1  # the cap held the other two back
    finally:
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)


def test_which_models_a_canary_tests() -> None:
    chat = ModelInfo("qwen", kind=ModelKind.LLM)
    embed = ModelInfo("nomic-embed", kind=ModelKind.EMBEDDING)
    rerank = ModelInfo("bge-reranker", kind=ModelKind.RERANK)
    spec = ProviderSpec(name="p", type="ollama", base_url="http://127.0.0.1:1")

    assert canary_models(spec, [embed, rerank, chat]) == (("qwen", ModelKind.LLM),)  # first chat model listed
    assert canary_models(spec, [embed]) == ()
    resident = ModelInfo("llama", kind=ModelKind.LLM, loaded=True)
    assert canary_models(spec, [chat, resident]) == (("llama", ModelKind.LLM),)  # never load one to test it
    assert canary_models(replace(spec, models=("nomic-embed", "other")), [embed]) == (
        ("nomic-embed", ModelKind.EMBEDDING), ("other", None))
    with_canary = replace(spec, models=("qwen",), canary=CanarySpec(models=("bge-reranker",)))
    assert canary_models(with_canary, [chat, rerank]) == (("bge-reranker", ModelKind.RERANK),)


# -- what each family is sent ---------------------------------------------------------------------------------


def planned(provider_type: str, kind: ModelKind | None = None, **canary: Any) -> CanaryRequest:
    spec = ProviderSpec(name="p", type=provider_type, base_url="http://127.0.0.1:1",
                        canary=CanarySpec(enabled=True, **canary))
    request = plan(spec, "m", kind)
    assert isinstance(request, CanaryRequest)
    return request


def test_every_provider_type_has_a_canary_dialect() -> None:
    assert set(DIALECTS) == set(ADAPTERS)


@pytest.mark.parametrize("provider_type", ["vllm", "sglang", "llamacpp"])
def test_servers_that_can_skip_thinking_are_asked_to(provider_type: str) -> None:
    request = planned(provider_type, max_tokens=8)

    assert request.payload["chat_template_kwargs"] == {"enable_thinking": False}
    assert (request.payload["max_tokens"], request.payload["stream"]) == (8, True)
    assert request.payload["stream_options"] == {"include_usage": True}


def test_ollama_is_asked_natively_without_thinking() -> None:
    request = planned("ollama", max_tokens=4)

    assert request.path == "/api/chat"
    assert (request.payload["think"], request.payload["options"]["num_predict"]) == (False, 4)
    assert planned("ollama", ModelKind.EMBEDDING).path == "/api/embed"


def test_other_families_use_their_own_generate_routes() -> None:
    assert planned("tgi").path == "/generate_stream"
    assert planned("tgi", stream=False).path == "/generate"
    assert planned("koboldcpp").path == "/api/extra/generate/stream"
    assert planned("koboldai").path == "/api/v1/generate"  # the KoboldAI Client has no stream
    assert planned("gpt4all", stream=False).payload.get("stream_options") is None
    assert "chat_template_kwargs" not in planned("ollama").payload
    spec = ProviderSpec(name="p", type="tgi", base_url="http://127.0.0.1:1")
    assert isinstance(plan(spec, "m", ModelKind.EMBEDDING), Skip)


async def test_a_paused_canary_says_so_once(provider_double: StartDouble, session: aiohttp.ClientSession) -> None:
    double = await provider_double("vllm", reply_tokens=8)
    spec = spec_for(double, max_tokens=8, max_tokens_per_day=8)
    runner = CanaryRunner(session)

    with structlog.testing.capture_logs() as logs:
        samples = [await runner.run(spec, VLLM_MODEL) for _ in range(3)]

    assert [s.error_class for s in samples] == [None, ErrorClass.BUDGET_EXHAUSTED, ErrorClass.BUDGET_EXHAUSTED]
    paused = [e for e in logs if e["event"] == "canary.paused"]
    assert len(paused) == 1 and paused[0]["provider"] == spec.name and paused[0]["model"] == VLLM_MODEL


def test_only_canaries_the_server_may_have_answered_are_charged() -> None:
    spec = ProviderSpec(name="p", type="vllm", base_url="http://127.0.0.1:1", canary=CanarySpec(max_tokens=8))
    budget = CanaryBudget()
    at = datetime(2026, 3, 1, tzinfo=UTC)

    def charged(**fields: Any) -> int:
        return budget.charge(GenerationSample(provider="p", provider_type="vllm", model="m", started_at=at,
                                              **fields), spec)

    assert charged(ok=True, completion_tokens=5) == 5
    assert charged(ok=False, error_class=ErrorClass.GENERATION_TIMEOUT) == 8  # it may have generated them all
    assert charged(ok=False, error_class=ErrorClass.REFUSED) == 0
    assert charged(ok=False, error_class=ErrorClass.HTTP_4XX) == 0
    assert charged(ok=False, skipped=True, error_class=ErrorClass.BUSY) == 0
    assert charged(ok=True, kind=SampleKind.EMBEDDING, prompt_tokens=7) == 7
    assert budget.spent("p", "m", at) == 20
