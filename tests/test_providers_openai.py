"""OpenAI-compatible family: pure readers on the stored bodies, then whole probes against each server's double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from monitord.model import Capability, ErrorClass, ModelInfo, ModelKind, ProbeResult, ProviderSpec, Secret, Status
from monitord.probe import create_session, probe_provider
from monitord.providers import ADAPTERS, lmstudio, localai, openai, sglang, tabby, textgen, tgi
from monitord.providers.base import HttpResponse, Observation, ProbeError
from tests.doubles import DOUBLES
from tests.doubles.base import DEFAULT_API_KEY, ProviderDouble, Scenario, fixture, fixture_bytes

FAMILY = ("vllm", "localai", "fastchat", "textgen", "lmstudio", "jan", "tabbyapi", "mlx", "mistralrs", "gpt4all",
          "tgi", "sglang", "openai")
CHAT = frozenset({Capability.CHAT, Capability.COMPLETION})


def stored(server: str, name: str, *, status: int = 200, path: str = "/v1/models") -> HttpResponse:
    return HttpResponse(status=status, headers={"Content-Type": "application/json"},
                        body=fixture_bytes(server, name), path=path)


def answer(body: Any, *, status: int = 200, path: str = "/v1/models",
           content_type: str = "application/json") -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status=status, headers={"Content-Type": content_type}, body=raw, path=path)


def fails(call: Callable[[], object]) -> tuple[ErrorClass, str]:
    with pytest.raises(ProbeError) as caught:
        call()
    return caught.value.error_class, caught.value.message


def outcome(observation: Observation) -> tuple[Status, ErrorClass | None, list[str]]:
    return observation.status, observation.error_class, [m.id for m in observation.models]


# -- shared helpers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("Qwen2.5-7B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
    ("Qwen3-4B-Instruct-2507-Q4_K_M", "Q4_K_M"),
    ("Llama-3.1-8B-Instruct-exl3-4.0bpw", "4.0bpw"),
    ("mlx-community/Llama-3.2-3B-Instruct-4bit", "4bit"),
    ("gemma-2b-it-IQ3_XXS.gguf", "IQ3_XXS"),
    ("phi-3-mini-f16.gguf", "F16"),
    ("models/q8_0/tiny-Q8_0.gguf", "Q8_0"),
    ("meta-llama/Llama-3.1-8B-Instruct", None),
    ("qwen/qwen3-8b", None),
    ("Qwen2-VL-7B", None),
])
def test_quantization_from_name(name: str, expected: str | None) -> None:
    assert openai.quantization_from_name(name) == expected


@pytest.mark.parametrize(("server", "name", "ids"), [
    ("vllm", "models.json", ["meta-llama/Llama-3.1-8B-Instruct"]),
    ("fastchat", "models.json", ["vicuna-7b-v1.5"]),
    ("fastchat", "models-empty.json", []),
    ("mlx", "models.json", ["mlx-community/Llama-3.2-3B-Instruct-4bit", "/Users/me/models/my-local-mlx-model"]),
    ("gpt4all", "models.json", ["Llama 3 8B Instruct"]),
    ("tgi", "models.json", ["meta-llama/Llama-3.1-8B-Instruct"]),
    ("lmstudio", "models.json", ["qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"]),
])
def test_generic_reader_takes_ids_from_any_openai_list(server: str, name: str, ids: list[str]) -> None:
    assert [m.id for m in openai.read_models(stored(server, name))] == ids


@pytest.mark.parametrize(("body", "content_type", "error_class"), [
    (b"<!DOCTYPE html><html></html>", "text/html", ErrorClass.BAD_PAYLOAD),
    ({"object": "list"}, "application/json", ErrorClass.BAD_PAYLOAD),
    ({"data": [{"object": "model"}]}, "application/json", ErrorClass.BAD_PAYLOAD),
    (b'{"data": [', "application/json", ErrorClass.BAD_PAYLOAD),
])
def test_generic_reader_rejects_what_is_not_a_model_list(body: Any, content_type: str,
                                                         error_class: ErrorClass) -> None:
    assert fails(lambda: openai.read_models(answer(body, content_type=content_type)))[0] is error_class


# -- vLLM -------------------------------------------------------------------------------------------------------


def test_vllm_models_carry_context_and_lora_inherits_it() -> None:
    models = openai.read_served_models(stored("vllm", "models-with-lora.json"))
    assert models == (
        ModelInfo(id="meta-llama/Llama-3.1-8B-Instruct", context_length=32768, loaded=True, owned_by="vllm"),
        ModelInfo(id="sql-lora", context_length=32768, loaded=True, owned_by="vllm"),
    )


@pytest.mark.parametrize(("status", "error_class"), [(200, None), (503, ErrorClass.HTTP_5XX),
                                                     (500, ErrorClass.HTTP_5XX), (404, ErrorClass.HTTP_4XX)])
def test_vllm_health(status: int, error_class: ErrorClass | None) -> None:
    response = answer(b"", status=status, path="/health", content_type="")
    if error_class is None:
        openai.read_vllm_health(response)
    else:
        assert fails(lambda: openai.read_vllm_health(response))[0] is error_class


@pytest.mark.parametrize(("response", "expected"), [
    (stored("vllm", "version.json", path="/version"), "0.33.0"),
    (stored("localai", "version.json", path="/version"), "v3.8.0 (5d8f2b1c9a0e)"),
    (answer({"detail": "Not Found"}, status=404, path="/version"), None),
    (answer(b"<html>", path="/version", content_type="text/html"), None),
])
def test_version(response: HttpResponse, expected: str | None) -> None:
    assert openai.read_version(response) == expected


# -- LocalAI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "status"), [
    (answer(b"", path="/readyz", content_type=""), None),
    (answer({"detail": "nope"}, status=404, path="/readyz"), None),
    (stored("localai", "readyz-starting.json", status=503, path="/readyz"), Status.LOADING),
])
def test_localai_readiness(response: HttpResponse, status: Status | None) -> None:
    observation = localai.read_readiness(response)
    assert (observation.status if observation else None) is status
    if observation:
        assert observation.message == "/readyz: startup preload in progress"


def test_localai_readiness_other_503_is_a_server_error() -> None:
    response = answer(b"Service Unavailable", status=503, path="/readyz", content_type="text/plain")
    assert fails(lambda: localai.read_readiness(response))[0] is ErrorClass.HTTP_5XX


def test_localai_capabilities() -> None:
    assert localai.read_models(stored("localai", "models-capabilities.json")) == (
        ModelInfo(id="llama-3.2-1b-instruct:q4_k_m", kind=ModelKind.LLM, quantization="Q4_K_M",
                  capabilities=frozenset({"chat", "completion", "tools"})),
        ModelInfo(id="nomic-embed-text-v1.5", kind=ModelKind.EMBEDDING, capabilities=frozenset({"embeddings"})),
        ModelInfo(id="loose-file.gguf"),
    )


@pytest.mark.parametrize(("raw", "modalities", "kind", "capabilities"), [
    (["chat", "vision"], ["text", "image"], ModelKind.VISION, {"chat", "vision"}),
    (["chat", "thinking"], ["text"], ModelKind.LLM, {"chat", "reasoning"}),
    (["transcript"], ["audio"], ModelKind.OTHER, {"audio"}),
    (["rerank"], ["text"], ModelKind.RERANK, {"rerank"}),
    (["tts"], ["text"], ModelKind.OTHER, {"tts"}),
])
def test_localai_capability_names(raw: list[str], modalities: list[str], kind: ModelKind,
                                  capabilities: set[str]) -> None:
    body = {"object": "list", "data": [{"id": "m", "object": "model", "capabilities": raw,
                                        "input_modalities": modalities, "output_modalities": ["text"]}]}
    [model] = localai.read_models(answer(body))
    assert (model.kind, set(model.capabilities)) == (kind, capabilities)


# -- FastChat, Jan, GPT4All, mistral.rs --------------------------------------------------------------------------


def test_fastchat_models_are_loaded_worker_models() -> None:
    assert openai.read_fastchat_models(stored("fastchat", "models.json")) == (
        ModelInfo(id="vicuna-7b-v1.5", loaded=True, owned_by="fastchat"),)


@pytest.mark.parametrize(("response", "expected"), [
    (stored("jan", "models.json"), (Status.UP, None, ["Qwen3-4B-Instruct-2507-Q4_K_M"])),
    (stored("jan", "models-empty.json"), (Status.UP, None, [])),  # probe.py judges the empty list
    (answer(b"No models are available", status=503, content_type="text/plain"),
     (Status.DEGRADED, ErrorClass.EMPTY_MODELS, [])),
])
def test_jan_models(response: HttpResponse, expected: tuple[Status, ErrorClass | None, list[str]]) -> None:
    assert outcome(openai.read_jan_models(response)) == expected


def test_jan_model_quantization_comes_from_its_name() -> None:
    [model] = openai.read_jan_models(stored("jan", "models.json")).models
    assert (model.quantization, model.loaded, model.owned_by) == ("Q4_K_M", True, "user")


@pytest.mark.parametrize(("status", "text", "error_class", "says"), [
    (401, "Missing authorization header", ErrorClass.AUTH, "Missing authorization header"),
    (403, "Invalid host header", ErrorClass.HTTP_4XX, "trusted Host"),
    (502, "Proxy request to model failed: refused", ErrorClass.HTTP_5XX, "Proxy request"),
])
def test_jan_plain_text_errors(status: int, text: str, error_class: ErrorClass, says: str) -> None:
    response = answer(text.encode(), status=status, content_type="text/plain")
    found, message = fails(lambda: openai.read_jan_models(response))
    assert found is error_class and says in message


def test_gpt4all_empty_401_means_the_api_setting_is_off() -> None:
    response = answer(b"", status=401, content_type="")
    error_class, message = fails(lambda: openai.read_gpt4all_models(response))
    assert error_class is ErrorClass.AUTH
    assert message == "/v1/models: HTTP 401 with an empty body: GPT4All's 'Enable Local API Server' setting is off"


def test_gpt4all_models() -> None:
    assert openai.read_gpt4all_models(stored("gpt4all", "models.json")) == (
        ModelInfo(id="Llama 3 8B Instruct", owned_by="humanity"),)


def mistralrs_body(*states: str | None, tools: bool = False) -> dict[str, Any]:
    data: list[dict[str, Any]] = [{"id": "default", "object": "model", "owned_by": "local", "root": "default"}]
    for index, state in enumerate(states):
        card: dict[str, Any] = {"id": f"m{index}", "object": "model", "owned_by": "local", "root": f"m{index}"}
        if state is not None:
            card["status"] = state
        if tools:
            card["tools_available"] = True
        data.append(card)
    return {"object": "list", "data": data}


@pytest.mark.parametrize(("states", "status", "error_class"), [
    (("loaded", "unloaded"), Status.UP, None),
    (("reloading", "unloaded"), Status.LOADING, ErrorClass.LOADING),
    (("unloaded", "unloaded"), Status.DEGRADED, ErrorClass.EMPTY_MODELS),
    ((None,), Status.UP, None),  # single-model servers omit the status
    ((), Status.UP, None),  # only the synthetic card: probe.py calls the empty list degraded
])
def test_mistralrs_states(states: tuple[str | None, ...], status: Status, error_class: ErrorClass | None) -> None:
    observation = openai.read_mistralrs_models(answer(mistralrs_body(*states)))
    assert (observation.status, observation.error_class) == (status, error_class)
    assert "default" not in [m.id for m in observation.models]


def test_mistralrs_fixture_and_tools() -> None:
    models = openai.read_mistralrs_models(stored("mistralrs", "models.json")).models
    assert [(m.id, m.loaded) for m in models] == [("Qwen/Qwen3-4B", True), ("google/gemma-3-4b-it", False)]
    [tooled] = openai.read_mistralrs_models(answer(mistralrs_body("loaded", tools=True))).models
    assert tooled.capabilities == {Capability.TOOLS}


# -- text-generation-webui ---------------------------------------------------------------------------------------


def test_textgen_model_info() -> None:
    observation = textgen.read_model_info(stored("textgen", "internal-model-info.json"))
    assert observation.models == (ModelInfo(id="Qwen2.5-7B-Instruct-Q4_K_M.gguf", loaded=True,
                                            quantization="Q4_K_M"),)
    assert (observation.status, observation.capacity, observation.identity) == (Status.UP, None, None)


def test_textgen_none_string_means_no_model() -> None:
    observation = textgen.read_model_info(stored("textgen", "internal-model-info-none.json"))
    assert outcome(observation) == (Status.DEGRADED, ErrorClass.EMPTY_MODELS, [])


@pytest.mark.parametrize(("name", "status", "error_class", "says"), [
    ("error-invalid-host.json", 400, ErrorClass.HTTP_4XX, "localhost/127.0.0.1"),
    ("error-401.json", 401, ErrorClass.AUTH, "Unauthorized"),
])
def test_textgen_refusals(name: str, status: int, error_class: ErrorClass, says: str) -> None:
    response = stored("textgen", name, status=status, path=textgen.MODEL_INFO_PATH)
    found, message = fails(lambda: textgen.read_model_info(response))
    assert found is error_class and says in message


# -- LM Studio --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "unknown"), [
    (answer({"error": "Unexpected endpoint or method. (GET /api/v1/models)"}, path="/api/v1/models"), True),
    (answer({"detail": "Not Found"}, status=404, path="/api/v1/models"), True),
    (stored("lmstudio", "api-v1-models.json", path="/api/v1/models"), False),
    (answer({"error": {"message": "Unexpected endpoint"}}, status=500, path="/api/v1/models"), False),
])
def test_lmstudio_unknown_route(response: HttpResponse, unknown: bool) -> None:
    assert lmstudio.is_unknown_route(response) is unknown


def test_lmstudio_v1_models() -> None:
    assert lmstudio.read_v1_models(stored("lmstudio", "api-v1-models.json", path="/api/v1/models")) == (
        ModelInfo(id="qwen/qwen3-8b", kind=ModelKind.LLM, context_length=8192, loaded=True, size_bytes=5027783488,
                  family="qwen3", parameter_size="8B", quantization="Q4_K_M",
                  capabilities=CHAT | {Capability.TOOLS, Capability.REASONING}, owned_by="qwen"),
        ModelInfo(id="text-embedding-nomic-embed-text-v1.5", kind=ModelKind.EMBEDDING, context_length=2048,
                  loaded=False, size_bytes=84106624, quantization="Q4_0",
                  capabilities=frozenset({Capability.EMBEDDINGS}), owned_by="nomic-ai"),
    )


def test_lmstudio_v0_models() -> None:
    models = lmstudio.read_v0_models(stored("lmstudio", "api-v0-models.json", path="/api/v0/models"))
    assert [(m.id, m.kind, m.loaded, m.context_length, m.family, m.quantization) for m in models] == [
        ("qwen2.5-7b-instruct", ModelKind.LLM, True, 8192, "qwen2", "Q4_K_M"),
        ("qwen2-vl-7b-instruct", ModelKind.VISION, False, 32768, "qwen2_vl", "4bit"),
        ("text-embedding-nomic-embed-text-v1.5", ModelKind.EMBEDDING, False, 2048, "nomic-bert", "Q4_0"),
    ]
    assert Capability.VISION in models[1].capabilities


@pytest.mark.parametrize(("openai_ids", "status", "error_class"), [
    (None, Status.UP, None),
    (["a"], Status.UP, None),  # JIT on: listed models load on the first request
    ([], Status.DEGRADED, ErrorClass.EMPTY_MODELS),  # JIT off and nothing loaded
])
def test_lmstudio_jit(openai_ids: list[str] | None, status: Status, error_class: ErrorClass | None) -> None:
    models = (ModelInfo(id="a", loaded=False),)
    listed = None if openai_ids is None else tuple(ModelInfo(id=i) for i in openai_ids)
    observation = lmstudio.judge_jit(models, listed)
    assert (observation.status, observation.error_class, observation.models) == (status, error_class, models)


# -- TabbyAPI ---------------------------------------------------------------------------------------------------


def test_tabby_health() -> None:
    assert tabby.read_health(stored("tabbyapi", "health.json", path="/health")) is None
    problem = tabby.read_health(stored("tabbyapi", "health-unhealthy.json", status=503, path="/health"))
    assert problem == ("/health: HTTP 503 unhealthy, 1 issue(s) recorded, last: RuntimeError: CUDA error: "
                       "out of memory")


def test_tabby_loaded_model() -> None:
    observation = tabby.read_loaded_model(stored("tabbyapi", "model.json", path="/v1/model"))
    assert observation.models == (ModelInfo(
        id="Llama-3.1-8B-Instruct-exl3-4.0bpw", kind=ModelKind.LLM, context_length=16384, loaded=True,
        quantization="4.0bpw", capabilities=CHAT, owned_by="tabbyAPI"),)


def test_tabby_no_model_is_empty() -> None:
    observation = tabby.read_loaded_model(stored("tabbyapi", "error-no-model-503.json", status=503,
                                                 path="/v1/model"))
    assert outcome(observation) == (Status.DEGRADED, ErrorClass.EMPTY_MODELS, [])
    assert observation.message == "/v1/model: No models are currently loaded."


@pytest.mark.parametrize(("problem", "loaded", "status", "error_class"), [
    (None, Observation(), Status.UP, None),
    ("sick", Observation(), Status.DEGRADED, ErrorClass.HTTP_5XX),
    ("sick", Observation(status=Status.DEGRADED, error_class=ErrorClass.EMPTY_MODELS, message="none"),
     Status.DEGRADED, ErrorClass.EMPTY_MODELS),
])
def test_tabby_sticky_health_degrades(problem: str | None, loaded: Observation, status: Status,
                                      error_class: ErrorClass | None) -> None:
    combined = tabby.combine(problem, loaded)
    assert (combined.status, combined.error_class) == (status, error_class)


# -- TGI and SGLang ---------------------------------------------------------------------------------------------


def test_tgi_info() -> None:
    model, version = tgi.read_info(stored("tgi", "info.json", path="/info"))
    assert (model, version) == (ModelInfo(id="meta-llama/Llama-3.1-8B-Instruct", kind=ModelKind.LLM,
                                          context_length=8192, loaded=True, capabilities=CHAT), "3.3.6")


def test_tgi_unhealthy_is_a_server_error() -> None:
    response = stored("tgi", "health-503.json", status=503, path="/health")
    assert fails(lambda: tgi.read_health(response)) == (
        ErrorClass.HTTP_5XX, "/health: HTTP 503 unhealthy (model health check failed)")


@pytest.mark.parametrize(("changes", "kind", "capabilities"), [
    ({}, ModelKind.LLM, CHAT | {Capability.TOOLS}),
    ({"has_image_understanding": True, "tool_call_parser": None}, ModelKind.VISION, CHAT | {Capability.VISION}),
    ({"is_generation": False, "tool_call_parser": None}, ModelKind.EMBEDDING, {Capability.EMBEDDINGS}),
    ({"reasoning_parser": "qwen3"}, ModelKind.LLM, CHAT | {Capability.TOOLS, Capability.REASONING}),
])
def test_sglang_model_info_flags(changes: dict[str, Any], kind: ModelKind, capabilities: set[str]) -> None:
    models = openai.read_served_models(stored("sglang", "models.json"))
    [model] = sglang.apply_model_info(models, {**fixture("sglang", "model-info.json"), **changes})
    assert (model.kind, set(model.capabilities), model.context_length, model.family) == (
        kind, capabilities, 32768, "qwen2")


def test_sglang_without_model_info_keeps_the_list() -> None:
    models = openai.read_served_models(stored("sglang", "models.json"))
    assert sglang.apply_model_info(models, None) == models
    assert sglang.read_model_info(answer({"detail": "Not Found"}, status=404, path="/model_info")) is None


# -- whole probes against the doubles ----------------------------------------------------------------------------

Probe = Callable[..., Awaitable[ProbeResult]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session() as client:
        yield client


@pytest.fixture
def probe(session: aiohttp.ClientSession) -> Probe:
    async def run(double: ProviderDouble, *, api_key: str | None = None, timeout_s: float = 1.0,
                  **spec_fields: Any) -> ProbeResult:
        spec = ProviderSpec(name=f"{double.provider_type}-double", type=double.provider_type, base_url=double.url,
                            api_key=Secret(api_key) if api_key else None, timeout_s=timeout_s, max_retries=0,
                            retry_backoff_s=0.01, **spec_fields)
        return await probe_provider(spec, ADAPTERS[double.provider_type], session)

    return run


UP = (Status.UP, None)
DOWN_REFUSED = (Status.DOWN, ErrorClass.REFUSED)
AUTH = (Status.DOWN, ErrorClass.AUTH)
EMPTY = (Status.DEGRADED, ErrorClass.EMPTY_MODELS)
LOADING = (Status.LOADING, ErrorClass.LOADING)
SERVER_ERROR = (Status.DOWN, ErrorClass.HTTP_5XX)
# the server's own health route said ready and only its model list failed: up, models unknown (not down)
MODELS_UNKNOWN = (Status.UP, None)

# type: (loading, unauthorized without a key, empty, error). Each server's own truth, see the doubles' docstrings.
EXPECTED: dict[str, tuple[tuple[Status, ErrorClass | None], ...]] = {
    "vllm": (DOWN_REFUSED, AUTH, UP, SERVER_ERROR),
    "localai": (LOADING, AUTH, EMPTY, MODELS_UNKNOWN),
    "fastchat": (EMPTY, AUTH, EMPTY, SERVER_ERROR),
    "textgen": (EMPTY, AUTH, EMPTY, SERVER_ERROR),
    "lmstudio": (UP, AUTH, EMPTY, SERVER_ERROR),
    "jan": (EMPTY, AUTH, EMPTY, SERVER_ERROR),
    "tabbyapi": (DOWN_REFUSED, AUTH, EMPTY, (Status.DEGRADED, ErrorClass.HTTP_5XX)),
    "mlx": (UP, UP, UP, (Status.DOWN, ErrorClass.CONNECTION)),
    "mistralrs": (LOADING, UP, EMPTY, SERVER_ERROR),
    "gpt4all": (UP, AUTH, EMPTY, SERVER_ERROR),
    "tgi": (DOWN_REFUSED, UP, UP, SERVER_ERROR),
    "sglang": (UP, AUTH, UP, SERVER_ERROR),
    "openai": (LOADING, AUTH, EMPTY, SERVER_ERROR),
}
FAMILY_SCENARIOS = (Scenario.LOADING, Scenario.UNAUTHORIZED, Scenario.EMPTY, Scenario.ERROR)
COMMON: dict[Scenario, tuple[Status, ErrorClass | None]] = {
    Scenario.UP: UP,
    Scenario.DOWN: DOWN_REFUSED,
    Scenario.HTML: (Status.DOWN, ErrorClass.BAD_PAYLOAD),
    Scenario.HUGE: (Status.DOWN, ErrorClass.TOO_LARGE),
}


def test_every_type_of_the_family_has_an_adapter_and_a_double() -> None:
    assert set(FAMILY) <= set(ADAPTERS) & set(DOUBLES) == set(ADAPTERS)


@pytest.mark.parametrize("provider_type", FAMILY)
@pytest.mark.parametrize("scenario", [*COMMON, *FAMILY_SCENARIOS])
async def test_probe_outcome_per_scenario(provider_double: Any, probe: Probe, provider_type: str,
                                          scenario: Scenario) -> None:
    double = await provider_double(provider_type, scenario)
    result = await probe(double)
    expected = COMMON.get(scenario) or EXPECTED[provider_type][FAMILY_SCENARIOS.index(scenario)]
    assert (result.status, result.error_class) == expected, result.error
    assert result.attempts == 1
    if scenario is Scenario.ERROR and expected == MODELS_UNKNOWN:
        assert result.models == () and (result.error or "").startswith("models unknown: "), result.error


@pytest.mark.parametrize("provider_type", FAMILY)
async def test_up_reports_models_and_the_right_key_lets_the_probe_in(provider_double: Any, probe: Probe,
                                                                     provider_type: str) -> None:
    double = await provider_double(provider_type, "unauthorized")
    result = await probe(double, api_key=DEFAULT_API_KEY)
    gpt4all_api_off = provider_type == "gpt4all"  # no keys at all: only the app setting turns it back on
    assert (result.status, result.error_class) == (AUTH if gpt4all_api_off else UP), result.error
    if not gpt4all_api_off:
        assert result.models and result.error is None and result.http_status == 200


@pytest.mark.parametrize("provider_type", FAMILY)
@pytest.mark.parametrize("scenario", [Scenario.SLOW, Scenario.HANG])
async def test_slow_and_hanging_servers_time_out(provider_double: Any, probe: Probe, provider_type: str,
                                                 scenario: Scenario) -> None:
    double = await provider_double(provider_type, scenario, delay_s=1.0)
    result = await probe(double, timeout_s=0.2)
    assert (result.status, result.error_class) == (Status.DOWN, ErrorClass.TIMEOUT)


@pytest.mark.parametrize("provider_type", FAMILY)
async def test_flapping_alternates_probe_by_probe(provider_double: Any, probe: Probe, provider_type: str) -> None:
    double = await provider_double(provider_type, "flapping")
    results = [await probe(double) for _ in range(4)]
    statuses = [r.status for r in results]
    # a failing phase is not up, or (a model list failing behind a good health route) up with models unknown
    failing = [r.status is not Status.UP or (r.error or "").startswith("models unknown") for r in results]
    assert statuses[0] is Status.UP and statuses[2] is Status.UP, statuses
    assert failing == [False, True, False, True], statuses


@pytest.mark.parametrize("provider_type", FAMILY)
async def test_down_then_back_on_the_same_port(provider_double: Any, probe: Probe, provider_type: str) -> None:
    double = await provider_double(provider_type)
    await double.set("down")
    assert (await probe(double)).error_class is ErrorClass.REFUSED
    await double.set("up")
    assert (await probe(double)).status is Status.UP


# -- what each probe asks, and what it reads ---------------------------------------------------------------------

# type: paths of one UP probe, and which of them carried the api key.
REQUESTS: dict[str, list[tuple[str, bool]]] = {
    "vllm": [("/health", False), ("/v1/models", True), ("/version", False), ("/metrics", False)],
    "localai": [("/readyz", False), ("/v1/models/capabilities", True), ("/version", True)],
    "fastchat": [("/v1/models", True)],
    "textgen": [("/v1/internal/model/info", True)],
    "lmstudio": [("/api/v1/models", True)],
    "jan": [("/v1/models", True)],
    "tabbyapi": [("/health", False), ("/v1/model", True)],
    "mlx": [("/v1/models", True), ("/", True)],  # nothing in the list names the server: `/` is asked
    "mistralrs": [("/v1/models", True)],
    "gpt4all": [("/v1/models", True)],
    "tgi": [("/health", False), ("/info", False), ("/metrics", False)],
    "sglang": [("/v1/models", True), ("/model_info", True), ("/metrics", False)],
    "openai": [("/v1/models", True)],
}


@pytest.mark.parametrize("provider_type", FAMILY)
async def test_requests_and_auth_headers(provider_double: Any, probe: Probe, provider_type: str) -> None:
    double = await provider_double(provider_type, api_key="k-123")
    await probe(double, api_key="k-123")
    sent = [(r.path, r.header("Authorization") == "Bearer k-123") for r in double.requests]
    assert sent == REQUESTS[provider_type]


async def test_vllm_reads_context_lora_and_version(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("vllm", lora=True))
    assert [(m.id, m.context_length) for m in result.models] == [
        ("meta-llama/Llama-3.1-8B-Instruct", 32768), ("sql-lora", 32768)]
    assert result.server_version == "0.33.0"


async def test_localai_older_builds_fall_back_to_the_plain_list(provider_double: Any, probe: Probe) -> None:
    double = await provider_double("localai", capabilities_route=False, readyz=False)
    result = await probe(double)
    assert result.status is Status.UP and result.model_ids == (
        "llama-3.2-1b-instruct:q4_k_m", "nomic-embed-text-v1.5", "whisper-1")
    # `/` last: the plain list names no server
    assert double.control.paths() == ["/readyz", "/v1/models/capabilities", "/v1/models", "/version", "/"]
    assert result.server_version == "v3.8.0 (5d8f2b1c9a0e)"


@pytest.mark.parametrize(("api", "paths", "loaded"), [
    ("v1", ["/api/v1/models"], {"qwen/qwen3-8b": True, "text-embedding-nomic-embed-text-v1.5": False}),
    ("v0", ["/api/v1/models", "/api/v0/models"], {"qwen2.5-7b-instruct": True, "qwen2-vl-7b-instruct": False,
                                                  "text-embedding-nomic-embed-text-v1.5": False}),
    ("openai", ["/api/v1/models", "/api/v0/models", "/v1/models"],
     {"qwen2.5-7b-instruct": None, "text-embedding-nomic-embed-text-v1.5": None}),
])
async def test_lmstudio_uses_the_richest_listing_it_has(provider_double: Any, probe: Probe, api: str,
                                                        paths: list[str], loaded: dict[str, bool | None]) -> None:
    double = await provider_double("lmstudio", api=api)
    result = await probe(double)
    assert result.status is Status.UP
    assert double.control.paths() == paths
    assert {m.id: m.loaded for m in result.models} == loaded


@pytest.mark.parametrize(("scenario", "jit", "expected"), [
    (Scenario.LOADING, True, UP),  # JIT: nothing loaded yet, the first request will load
    (Scenario.UP, False, UP),
    (Scenario.EMPTY, False, EMPTY),
])
async def test_lmstudio_jit_decides_whether_nothing_loaded_is_empty(provider_double: Any, probe: Probe,
                                                                    scenario: Scenario, jit: bool,
                                                                    expected: tuple[Status, Any]) -> None:
    result = await probe(await provider_double("lmstudio", scenario, jit=jit))
    assert (result.status, result.error_class) == expected


async def test_textgen_rejects_foreign_host_headers(provider_double: Any, session: aiohttp.ClientSession) -> None:
    double = await provider_double("textgen")
    async with session.get(double.url + "/v1/internal/model/info", headers={"Host": "example.test"}) as resp:
        assert (resp.status, await resp.json()) == (400, {"detail": "Invalid host header"})


async def test_jan_rejects_untrusted_hosts_and_answers_chat_in_plain_text(provider_double: Any,
                                                                          session: aiohttp.ClientSession) -> None:
    double = await provider_double("jan", "empty")
    async with session.get(double.url + "/v1/models", headers={"Host": "evil.test:1337"}) as resp:
        assert (resp.status, await resp.text()) == (403, "Invalid host header")
    async with session.post(double.url + "/v1/chat/completions", json={"model": "x"}) as resp:
        assert (resp.status, resp.content_type, await resp.text()) == (503, "text/plain", "No models are available")


async def test_gpt4all_api_off_says_so(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("gpt4all", api_enabled=False))
    assert (result.status, result.error_class, result.http_status) == (Status.DOWN, ErrorClass.AUTH, 401)
    assert result.error and "'Enable Local API Server' setting is off" in result.error


async def test_tabby_later_load_and_admin_listing(provider_double: Any, probe: Probe,
                                                  session: aiohttp.ClientSession) -> None:
    double = await provider_double("tabbyapi", "loading", loading_refuses=False)
    assert ((await probe(double)).status, (await probe(double)).error_class) == EMPTY
    await double.set("up", api_key="user-key", admin_key="admin-key")
    result = await probe(double, api_key="user-key")
    assert [(m.id, m.context_length) for m in result.models] == [("Llama-3.1-8B-Instruct-exl3-4.0bpw", 16384)]
    async with session.get(double.url + "/v1/models", headers={"x-admin-key": "admin-key"}) as resp:
        assert len((await resp.json())["data"]) == 2  # the admin key sees every model folder
    async with session.get(double.url + "/v1/models", headers={"x-api-key": "user-key"}) as resp:
        assert [c["id"] for c in (await resp.json())["data"]] == ["Llama-3.1-8B-Instruct-exl3-4.0bpw"]


async def test_tabby_sticky_unhealthy_keeps_the_model(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("tabbyapi", "error"))
    assert result.model_ids == ("Llama-3.1-8B-Instruct-exl3-4.0bpw",)
    assert result.error and "CUDA error: out of memory" in result.error


async def test_tgi_reads_info(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("tgi"))
    assert result.server_version == "3.3.6"
    assert [(m.id, m.context_length, m.kind) for m in result.models] == [
        ("meta-llama/Llama-3.1-8B-Instruct", 8192, ModelKind.LLM)]


async def test_tgi_guards_generation_only(provider_double: Any, session: aiohttp.ClientSession) -> None:
    double = await provider_double("tgi", "unauthorized")
    async with session.post(double.url + "/v1/chat/completions", json={"messages": []}) as resp:
        assert (resp.status, await resp.read()) == (401, b"")
    async with session.get(double.url + "/info") as resp:
        assert resp.status == 200


async def test_sglang_reads_model_info_flags(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("sglang", has_image_understanding=True))
    [model] = result.models
    assert (model.kind, model.context_length) == (ModelKind.VISION, 32768)
    assert {Capability.VISION, Capability.TOOLS} <= model.capabilities


@pytest.mark.parametrize(("scenario", "refuses", "expected"), [
    (Scenario.LOADING, False, LOADING),  # warm-up: /health 503 at once
    (Scenario.LOADING, True, DOWN_REFUSED),  # model loading: no listener yet
    (Scenario.UP, False, UP),
])
async def test_sglang_health_only_when_configured(provider_double: Any, probe: Probe, scenario: Scenario,
                                                  refuses: bool, expected: tuple[Status, Any]) -> None:
    double = await provider_double("sglang", scenario, loading_refuses=refuses, health_delay_s=0.05)
    result = await probe(double, health_endpoint="/health")
    assert (result.status, result.error_class) == expected


async def test_mistralrs_hides_the_synthetic_model(provider_double: Any, probe: Probe) -> None:
    result = await probe(await provider_double("mistralrs"))
    assert [(m.id, m.loaded) for m in result.models] == [("Qwen/Qwen3-4B", True), ("google/gemma-3-4b-it", False)]


async def test_mlx_empty_list_is_not_judged_and_configured_models_are_not_missing(provider_double: Any,
                                                                                  probe: Probe) -> None:
    result = await probe(await provider_double("mlx", "empty"), models=("mlx-community/whatever",))
    assert (result.status, result.error_class, result.models) == (Status.UP, None, ())


@pytest.mark.parametrize("provider_type", ["vllm", "fastchat", "jan", "sglang", "openai"])
async def test_configured_model_missing(provider_double: Any, probe: Probe, provider_type: str) -> None:
    result = await probe(await provider_double(provider_type, models=("served",)), models=("served", "absent"))
    assert (result.status, result.error_class) == (Status.DEGRADED, ErrorClass.MODEL_MISSING)
