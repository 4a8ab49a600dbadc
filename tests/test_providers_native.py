"""Ollama, KoboldCpp/KoboldAI and llama.cpp: pure readers on stored bodies, then whole probes against doubles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from monitord.model import ErrorClass, Identity, ModelInfo, ModelKind, ProbeResult, ProviderSpec, Secret, Status
from monitord.probe import IDENTIFY_AFTER, create_session, probe_provider
from monitord.providers import ADAPTERS, kobold, llamacpp, ollama
from monitord.providers.base import HttpResponse, ProbeError
from monitord.providers.identity import AFTER_FAILURE_PATHS
from tests.doubles.base import DoubleFactory, ProviderDouble, Scenario, fixture_bytes
from tests.doubles.kobold import koboldai_client_app, koboldcpp_app
from tests.doubles.llamacpp import llamacpp_app
from tests.doubles.ollama import host_allowed, ollama_app

CHAT = frozenset({"chat", "completion", "streaming"})


def stored(server: str, name: str, *, status: int = 200, path: str = "/") -> HttpResponse:
    return HttpResponse(status=status, headers={"Content-Type": "application/json"},
                        body=fixture_bytes(server, name), path=path)


def answer(body: Any, *, status: int = 200, path: str = "/", content_type: str = "application/json") -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status=status, headers={"Content-Type": content_type}, body=raw, path=path)


# -- llama.cpp ---------------------------------------------------------------------------------------------------

QWEN = ModelInfo(id="qwen2.5-7b-instruct-q4_k_m.gguf", kind=ModelKind.LLM, context_length=8192, loaded=True,
                 size_bytes=4677120000, parameter_size="7.6B", quantization="Q4_K - Medium", capabilities=CHAT,
                 owned_by="llamacpp")


@pytest.mark.parametrize(("name", "expected"), [
    ("models.json", (QWEN,)),
    ("models-multimodal.json", (ModelInfo(
        id="gemma-3-4b-it-q4_k_m.gguf", kind=ModelKind.VISION, context_length=4096, loaded=True,
        size_bytes=2489757856, parameter_size="3.9B", quantization="Q4_K - Medium", capabilities=CHAT | {"vision"},
        owned_by="llamacpp"),)),
    ("models-observed.json", (ModelInfo(
        id="tiny", kind=ModelKind.LLM, context_length=512, loaded=True, size_bytes=492800, parameter_size="123K",
        quantization="all F32", capabilities=CHAT, owned_by="llamacpp"),)),
    ("router-models.json", (
        ModelInfo(id="qwen2.5-7b-instruct", kind=ModelKind.LLM, loaded=True, capabilities=CHAT, owned_by="llamacpp"),
        ModelInfo(id="llama-3.2-3b-instruct", kind=ModelKind.LLM, loaded=False, capabilities=CHAT,
                  owned_by="llamacpp"))),
])
def test_llamacpp_models(name: str, expected: tuple[ModelInfo, ...]) -> None:
    assert llamacpp.read_models(stored("llamacpp", name, path="/v1/models")) == expected


@pytest.mark.parametrize(("name", "status", "error_class", "ids"), [
    ("models.json", Status.UP, None, ["qwen2.5-7b-instruct-q4_k_m.gguf"]),
    ("router-models.json", Status.UP, None, ["qwen2.5-7b-instruct", "llama-3.2-3b-instruct"]),
    ("router-models-loading.json", Status.LOADING, ErrorClass.LOADING, ["qwen2.5-7b-instruct",
                                                                        "llama-3.2-3b-instruct"]),
    ("router-models-unloaded.json", Status.DEGRADED, ErrorClass.EMPTY_MODELS, ["qwen2.5-7b-instruct",
                                                                               "llama-3.2-3b-instruct"]),
])
def test_llamacpp_judge_models(name: str, status: Status, error_class: ErrorClass | None, ids: list[str]) -> None:
    response = stored("llamacpp", name, path="/v1/models")
    observation = llamacpp.judge_models(llamacpp.read_models(response), llamacpp.router_states(response))
    assert (observation.status, observation.error_class, [m.id for m in observation.models]) == (
        status, error_class, ids)


def test_llamacpp_empty_list_is_degraded() -> None:
    observation = llamacpp.judge_models((), {})
    assert (observation.status, observation.error_class) == (Status.DEGRADED, ErrorClass.EMPTY_MODELS)


@pytest.mark.parametrize(("response", "expected"), [
    (stored("llamacpp", "health.json"), None),
    (stored("llamacpp", "health-loading-503.json", status=503), Status.LOADING),
    (answer({"status": "loading model"}, status=503), Status.LOADING),  # 2024 builds
])
def test_llamacpp_health(response: HttpResponse, expected: Status | None) -> None:
    observation = llamacpp.read_health(response)
    assert (observation.status if observation else None) == expected


@pytest.mark.parametrize(("response", "error_class"), [
    (stored("llamacpp", "error-503-no-slot.json", status=503), ErrorClass.HTTP_5XX),
    (stored("llamacpp", "error-401.json", status=401), ErrorClass.AUTH),
    (answer(b"Internal Server Error", status=500, content_type="text/plain"), ErrorClass.HTTP_5XX),
])
def test_llamacpp_health_failures(response: HttpResponse, error_class: ErrorClass) -> None:
    with pytest.raises(ProbeError) as caught:
        llamacpp.read_health(response)
    assert caught.value.error_class is error_class


@pytest.mark.parametrize(("body", "expected"), [
    (fixture_bytes("llamacpp", "props.json"), "b7120-4a5b6c7d"),
    ({"build_info": "b0-unknown"}, None),  # builds without git metadata (e.g. the xllamacpp wheel)
    ({"total_slots": 1}, None),
])
def test_llamacpp_version(body: Any, expected: str | None) -> None:
    assert llamacpp.read_version(answer(body, path="/props")) == expected


@pytest.mark.parametrize(("count", "text"), [
    (7615616512, "7.6B"), (70553706496, "70.6B"), (405_000_000_000, "405B"), (137_000_000, "137M"),
    (3_000_000_000, "3B"), (123200, "123K"), (999, "999"), (1_200_000_000_000, "1.2T"),
])
def test_human_count(count: int, text: str) -> None:
    assert llamacpp.human_count(count) == text


@pytest.mark.parametrize("body", [{"object": "list"}, {"data": [{"object": "model"}]}, [1, 2]])
def test_llamacpp_bad_listing(body: Any) -> None:
    with pytest.raises(ProbeError) as caught:
        llamacpp.read_models(answer(body, path="/v1/models"))
    assert caught.value.error_class is ErrorClass.BAD_PAYLOAD


# -- Ollama ------------------------------------------------------------------------------------------------------

LLAMA32 = ModelInfo(id="llama3.2:3b", kind=ModelKind.LLM, context_length=131072, size_bytes=2019393189,
                    family="llama", parameter_size="3.2B", quantization="Q4_K_M", capabilities=CHAT | {"tools"})
GEMMA3 = ModelInfo(id="gemma3:4b", kind=ModelKind.VISION, context_length=131072, size_bytes=3338801804,
                   family="gemma3", parameter_size="4.3B", quantization="Q4_K_M", capabilities=CHAT | {"vision"})
NOMIC = ModelInfo(id="nomic-embed-text:latest", kind=ModelKind.EMBEDDING, context_length=2048,
                  size_bytes=274302450, family="nomic-bert", parameter_size="137M", quantization="F16",
                  capabilities=frozenset({"embeddings"}))


@pytest.mark.parametrize(("name", "expected"), [
    ("api-tags.json", (LLAMA32, GEMMA3, NOMIC)),
    ("api-tags-empty.json", ()),
    ("api-tags-old.json", (ModelInfo(id="llama3.2:3b", size_bytes=2019393189, family="llama", parameter_size="3.2B",
                                     quantization="Q4_K_M"),)),
])
def test_ollama_tags(name: str, expected: tuple[ModelInfo, ...]) -> None:
    assert ollama.read_tags(stored("ollama", name, path="/api/tags")) == expected


def test_ollama_ps_reports_the_allocated_context() -> None:
    [model] = ollama.read_ps(stored("ollama", "api-ps.json", path="/api/ps"))
    assert (model.id, model.loaded, model.context_length, model.size_bytes) == ("llama3.2:3b", True, 4096, 3558703104)


@pytest.mark.parametrize(("ps", "loaded", "contexts"), [
    ("api-ps.json", [True, False, False], [4096, 131072, 2048]),
    ("api-ps-empty.json", [False, False, False], [131072, 131072, 2048]),
    (None, [None, None, None], [131072, 131072, 2048]),  # no /api/ps (older than 0.1.38)
])
def test_ollama_merge(ps: str | None, loaded: list[bool | None], contexts: list[int]) -> None:
    on_disk = ollama.read_tags(stored("ollama", "api-tags.json"))
    in_memory = ollama.read_ps(stored("ollama", ps)) if ps else None
    merged = ollama.merge(on_disk, in_memory)
    assert [m.loaded for m in merged] == loaded
    assert [m.context_length for m in merged] == contexts
    assert [m.id for m in merged] == ["llama3.2:3b", "gemma3:4b", "nomic-embed-text:latest"]


def test_ollama_merge_keeps_models_only_in_memory() -> None:
    resident = ModelInfo(id="gone:1b", loaded=True, context_length=2048)
    assert ollama.merge([LLAMA32], [resident]) == (ModelInfo(**{**_fields(LLAMA32), "loaded": False}), resident)


def _fields(model: ModelInfo) -> dict[str, Any]:
    return {name: getattr(model, name) for name in ModelInfo.__dataclass_fields__}


@pytest.mark.parametrize(("response", "expected"), [
    (stored("ollama", "api-version.json"), "0.13.0"),
    (answer({"version": "0.0.0"}), "0.0.0"),
])
def test_ollama_version(response: HttpResponse, expected: str) -> None:
    assert ollama.read_version(response) == expected


@pytest.mark.parametrize("body", [{"models": "x"}, {"models": [{"size": 1}]}, {}, b"Ollama is running"])
def test_ollama_bad_payloads(body: Any) -> None:
    with pytest.raises(ProbeError) as caught:
        ollama.read_tags(answer(body, path="/api/tags"))
    assert caught.value.error_class is ErrorClass.BAD_PAYLOAD


def test_ollama_empty_is_degraded() -> None:
    observation = ollama.judge((), "0.13.0")
    assert (observation.status, observation.error_class, observation.server_version) == (
        Status.DEGRADED, ErrorClass.EMPTY_MODELS, "0.13.0")


# -- KoboldCpp / KoboldAI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version", "protected", "llm", "capabilities"), [
    ("api-extra-version.json", "1.98.1", False, True, CHAT | {"vision"}),
    ("api-extra-version-1.76.json", "1.76", False, True, CHAT),
])
def test_koboldcpp_extra_version(name: str, version: str, protected: bool, llm: bool,
                                 capabilities: frozenset[str]) -> None:
    assert kobold.read_extra_version(stored("koboldcpp", name)) == kobold.KoboldCppVersion(
        version, protected, llm, capabilities)


def test_koboldcpp_flags_without_llm() -> None:
    body = {**orjson.loads(fixture_bytes("koboldcpp", "api-extra-version.json")), "llm": False, "vision": False,
            "embeddings": True, "protected": True}
    assert kobold.read_extra_version(answer(body)) == kobold.KoboldCppVersion(
        "1.98.1", True, False, frozenset({"embeddings"}))


def test_koboldcpp_extra_version_of_something_else() -> None:
    with pytest.raises(ProbeError) as caught:
        kobold.read_extra_version(answer({"result": "1.2.5"}, path="/api/extra/version"))
    assert caught.value.error_class is ErrorClass.BAD_PAYLOAD


@pytest.mark.parametrize(("server", "name", "expected"), [
    ("koboldcpp", "api-v1-model.json", "koboldcpp/Meta-Llama-3.1-8B-Instruct-Q4_K_M"),
    ("koboldcpp", "api-v1-model-inactive.json", None),
    ("koboldcpp", "v1-models.json", "koboldcpp/Meta-Llama-3.1-8B-Instruct-Q4_K_M"),  # model_endpoint: /v1/models
    ("koboldai", "api-v1-model.json", "KoboldAI/fairseq-dense-13B-Nerys-v2"),
    ("koboldai", "api-v1-model-readonly.json", None),
])
def test_kobold_model_name(server: str, name: str, expected: str | None) -> None:
    assert kobold.read_model_name(stored(server, name, path="/api/v1/model")) == expected


def test_koboldcpp_protected_model_is_an_auth_failure_despite_200() -> None:
    with pytest.raises(ProbeError) as caught:
        kobold.read_model_name(stored("koboldcpp", "api-v1-model-protected.json", path="/api/v1/model"))
    assert (caught.value.error_class, caught.value.http_status) == (ErrorClass.AUTH, 200)


@pytest.mark.parametrize(("response", "expected"), [
    (stored("koboldcpp", "api-extra-true-max-context-length.json"), 8192),
    (answer({"value": 0}), None),
    (answer({"result": 5}), None),
])
def test_kobold_context(response: HttpResponse, expected: int | None) -> None:
    assert kobold.read_context(response) == expected


@pytest.mark.parametrize(("response", "reloading"), [
    (answer(b"<html><body>KoboldCpp is not available</body></html>", status=502, content_type="text/html"), True),
    (answer({"detail": "bad gateway"}, status=502), False),
    (stored("koboldcpp", "error-busy-503.json", status=503), False),
])
def test_koboldcpp_reloading(response: HttpResponse, reloading: bool) -> None:
    assert kobold.is_reloading(response) is reloading


def test_kobold_describe() -> None:
    build = kobold.read_extra_version(stored("koboldcpp", "api-extra-version.json"))
    observation = kobold.describe("koboldcpp/x", build, 8192)
    assert (observation.status, observation.server_version, observation.identity) == (
        Status.UP, "1.98.1", Identity("koboldcpp", "1.98.1", "/api/extra/version: result KoboldCpp"))
    assert observation.models == (ModelInfo(id="koboldcpp/x", kind=ModelKind.VISION, context_length=8192,
                                            loaded=True, capabilities=CHAT | {"vision"}, owned_by="koboldcpp"),)
    client = kobold.describe(None, None, None, "1.2.1")
    assert (client.status, client.error_class, client.server_version, client.identity) == (
        Status.DEGRADED, ErrorClass.EMPTY_MODELS, None,
        Identity("koboldai", None, "/api/v1/info/version: KoboldAI API 1.2.1 without /api/extra/version"))


# -- whole probes against the doubles ----------------------------------------------------------------------------

# "koboldai" is probed against the KoboldAI Client double here; its registered double is KoboldCpp's
ADAPTER_FOR = {server: ADAPTERS[server] for server in ("ollama", "koboldcpp", "koboldai", "llamacpp")}
DOUBLE_FOR: dict[str, DoubleFactory] = {
    "ollama": ollama_app, "koboldcpp": koboldcpp_app, "koboldai": koboldai_client_app, "llamacpp": llamacpp_app,
}
UP, DOWN, DEGRADED, LOADING = Status.UP, Status.DOWN, Status.DEGRADED, Status.LOADING
E = ErrorClass

# Scenario → (status, error class) per server, probed with no api key configured and a 0.5 s budget.
OUTCOMES: dict[str, dict[Scenario, tuple[Status, ErrorClass | None]]] = {
    "llamacpp": {
        Scenario.UP: (UP, None), Scenario.DOWN: (DOWN, E.REFUSED), Scenario.SLOW: (DOWN, E.TIMEOUT),
        Scenario.HANG: (DOWN, E.TIMEOUT), Scenario.LOADING: (LOADING, E.LOADING),
        Scenario.UNAUTHORIZED: (DOWN, E.AUTH),  # /health and /v1/models open, /props is not
        Scenario.HTML: (DOWN, E.BAD_PAYLOAD), Scenario.HUGE: (DOWN, E.TOO_LARGE),
        Scenario.EMPTY: (DEGRADED, E.EMPTY_MODELS), Scenario.ERROR: (DOWN, E.HTTP_5XX),
    },
    "ollama": {
        Scenario.UP: (UP, None), Scenario.DOWN: (DOWN, E.REFUSED), Scenario.SLOW: (DOWN, E.TIMEOUT),
        Scenario.HANG: (DOWN, E.TIMEOUT),
        Scenario.LOADING: (UP, None),  # loads on demand: on disk, not in memory, still serving
        Scenario.UNAUTHORIZED: (UP, None),  # Ollama has no api key
        Scenario.HTML: (DOWN, E.BAD_PAYLOAD), Scenario.HUGE: (DOWN, E.TOO_LARGE),
        # /api/version answered: a failing /api/tags leaves the models unknown, it does not take Ollama down
        Scenario.EMPTY: (DEGRADED, E.EMPTY_MODELS), Scenario.ERROR: (UP, None),
    },
    "koboldcpp": {
        Scenario.UP: (UP, None), Scenario.DOWN: (DOWN, E.REFUSED), Scenario.SLOW: (DOWN, E.TIMEOUT),
        Scenario.HANG: (DOWN, E.TIMEOUT),
        Scenario.LOADING: (DOWN, E.REFUSED),  # the model loads before the HTTP server starts
        Scenario.UNAUTHORIZED: (DOWN, E.AUTH),  # 200 "koboldcpp/protected-model"
        Scenario.HTML: (DOWN, E.BAD_PAYLOAD), Scenario.HUGE: (DOWN, E.TOO_LARGE),
        Scenario.EMPTY: (DEGRADED, E.EMPTY_MODELS), Scenario.ERROR: (DOWN, E.HTTP_5XX),
    },
    "koboldai": {
        Scenario.UP: (UP, None), Scenario.DOWN: (DOWN, E.REFUSED), Scenario.SLOW: (DOWN, E.TIMEOUT),
        Scenario.HANG: (DOWN, E.TIMEOUT), Scenario.LOADING: (DOWN, E.REFUSED),
        Scenario.UNAUTHORIZED: (UP, None),  # KoboldAI Client has no password
        Scenario.HTML: (DOWN, E.BAD_PAYLOAD), Scenario.HUGE: (DOWN, E.TOO_LARGE),
        Scenario.EMPTY: (DEGRADED, E.EMPTY_MODELS), Scenario.ERROR: (DOWN, E.HTTP_5XX),
    },
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = create_session()
    yield client
    await client.close()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[ProviderDouble]]]:
    doubles: list[ProviderDouble] = []

    async def start_double(server: str, scenario: Scenario = Scenario.UP, **changes: Any) -> ProviderDouble:
        double = ProviderDouble(server, DOUBLE_FOR[server])
        doubles.append(double)
        await double.set(scenario, **changes)
        return await double.start()

    yield start_double
    for double in doubles:
        await double.stop()


def spec_for(server: str, double: ProviderDouble, **changes: Any) -> ProviderSpec:
    spec = ProviderSpec(name=f"{server}-1", type=server, base_url=double.url, timeout_s=1.5, max_retries=0,
                        retry_backoff_s=0.01)
    return replace(spec, **changes)


async def probe(server: str, double: ProviderDouble, session: aiohttp.ClientSession, **changes: Any) -> ProbeResult:
    return await probe_provider(spec_for(server, double, **changes), ADAPTER_FOR[server], session)


@pytest.mark.parametrize(("server", "scenario", "expected"), [
    (server, scenario, outcome) for server, table in OUTCOMES.items() for scenario, outcome in table.items()
])
async def test_scenarios(server: str, scenario: Scenario, expected: tuple[Status, ErrorClass | None],
                         start: Any, session: aiohttp.ClientSession) -> None:
    double = await start(server, scenario, delay_s=2.0)
    result = await probe(server, double, session)
    assert (result.status, result.error_class) == expected, result.error
    # at most 4 requests (3 + one capacity route), plus the few that identify the server after a failure another
    # server would cause
    identifying = len(AFTER_FAILURE_PATHS) if result.error_class in IDENTIFY_AFTER else 0
    assert len(result.calls) <= 4 + identifying


@pytest.mark.parametrize("server", sorted(OUTCOMES))
async def test_flapping_alternates_probe_by_probe(server: str, start: Any, session: aiohttp.ClientSession) -> None:
    double = await start(server, Scenario.FLAPPING)
    seen = [await probe(server, double, session) for _ in range(4)]
    if server == "ollama":  # its failing /api/tags leaves the models unknown behind a good /api/version
        assert [(r.status, (r.error or "").startswith("models unknown")) for r in seen] == [
            (UP, False), (UP, True), (UP, False), (UP, True)]
    else:
        assert [r.error_class for r in seen] == [None, E.HTTP_5XX, None, E.HTTP_5XX]


@pytest.mark.parametrize("server", ["llamacpp", "koboldcpp"])
async def test_the_right_key_opens_protected_routes(server: str, start: Any,
                                                    session: aiohttp.ClientSession) -> None:
    double = await start(server, Scenario.UP, api_key="s3cret-key")
    wrong = await probe(server, double, session, api_key=Secret("nope"))
    right = await probe(server, double, session, api_key=Secret("s3cret-key"))
    assert (wrong.status, wrong.error_class, right.status) == (DOWN, E.AUTH, UP)
    assert double.requests[-1].header("Authorization") == "Bearer s3cret-key"
    assert "s3cret" not in repr(wrong) and "nope" not in (wrong.error or "")


async def test_llamacpp_up_reads_the_model_and_version(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", Scenario.UP, options={"multimodal": True})
    result = await probe("llamacpp", double, session)
    assert [(c.path, c.status) for c in result.calls] == [("/health", 200), ("/v1/models", 200), ("/props", 200),
                                                          ("/slots", 200)]
    [model] = result.models
    assert (model.id, model.context_length, model.kind, "vision" in model.capabilities) == (
        "gemma-3-4b-it-q4_k_m.gguf", 4096, ModelKind.VISION, True)
    assert result.server_version == "b7120-4a5b6c7d"


async def test_llamacpp_health_and_models_stay_public(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", Scenario.UNAUTHORIZED)
    result = await probe("llamacpp", double, session)
    assert [(c.path, c.status) for c in result.calls] == [("/health", 200), ("/v1/models", 200), ("/props", 401)]
    assert result.error == "/props: HTTP 401 Invalid API Key"


async def test_llamacpp_accepts_x_api_key(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", Scenario.UP, api_key="k-123")
    result = await probe("llamacpp", double, session, headers=(("X-Api-Key", Secret("k-123")),))
    assert result.status is UP


async def test_llamacpp_builds_that_protect_the_model_list(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", Scenario.UNAUTHORIZED, options={"models_public": False})
    result = await probe("llamacpp", double, session)
    assert (result.error_class, [c.status for c in result.calls]) == (E.AUTH, [200, 401])


@pytest.mark.parametrize(("scenario", "expected"), [
    (Scenario.UP, (UP, None, [True, False])),
    (Scenario.LOADING, (LOADING, E.LOADING, [False, False])),
    (Scenario.EMPTY, (DEGRADED, E.EMPTY_MODELS, [False, False])),
])
async def test_llamacpp_router_mode(scenario: Scenario, expected: tuple[Any, ...], start: Any,
                                    session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", scenario, options={"router": True})
    result = await probe("llamacpp", double, session)
    assert (result.status, result.error_class, [m.loaded for m in result.models]) == expected


async def test_llamacpp_models_configured_on_the_double(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("llamacpp", Scenario.UP, models=("a.gguf",))
    missing = await probe("llamacpp", double, session, models=("b.gguf",))
    assert (missing.model_ids, missing.status, missing.error_class) == (("a.gguf",), DEGRADED, E.MODEL_MISSING)


async def test_ollama_marks_loaded_models(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("ollama")
    result = await probe("ollama", double, session)
    assert [(c.path, c.status) for c in result.calls] == [("/api/version", 200), ("/api/tags", 200),
                                                          ("/api/ps", 200)]
    assert result.server_version == "0.13.0"
    assert [(m.id, m.loaded, m.context_length) for m in result.models] == [
        ("llama3.2:3b", True, 4096), ("gemma3:4b", False, 131072), ("nomic-embed-text:latest", False, 2048)]


async def test_ollama_refuses_a_foreign_host_header(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("ollama")
    result = await probe("ollama", double, session, headers=(("Host", Secret("ollama.example.com")),))
    assert (result.status, result.error_class, result.http_status) == (DOWN, E.AUTH, 403)
    assert "Host" in (result.error or "")
    trusted = await probe("ollama", double, session, headers=(("Host", Secret("gpu-box.local:11434")),))
    assert trusted.status is UP


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:11434", True), ("localhost", True), ("10.0.0.5", True), ("[::1]:11434", True), ("0.0.0.0", True),
    ("box.internal", True), ("ollama.example.com", False), ("8.8.8.8:11434", False),
])
def test_ollama_double_host_rule(host: str, allowed: bool) -> None:
    assert host_allowed(host) is allowed


async def test_koboldcpp_reads_flags_and_context(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("koboldcpp")
    result = await probe("koboldcpp", double, session)
    assert [c.path for c in result.calls] == ["/api/extra/version", "/api/v1/model",
                                              "/api/extra/true_max_context_length", "/api/extra/perf"]
    [model] = result.models
    assert (model.id, model.context_length, model.kind, result.server_version) == (
        "koboldcpp/Meta-Llama-3.1-8B-Instruct-Q4_K_M", 8192, ModelKind.VISION, "1.98.1")


async def test_koboldcpp_router_reload_is_loading(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("koboldcpp", Scenario.LOADING, options={"router": True})
    result = await probe("koboldcpp", double, session)
    assert (result.status, result.error_class, result.http_status) == (LOADING, E.LOADING, 502)


async def test_koboldai_client_falls_back_after_the_404(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("koboldai")
    result = await probe("koboldai", double, session)
    assert [(c.path, c.status) for c in result.calls] == [("/api/extra/version", 404),
                                                          ("/api/v1/info/version", 200), ("/api/v1/model", 200)]
    assert (result.status, result.model_ids, result.server_version) == (
        UP, ("KoboldAI/fairseq-dense-13B-Nerys-v2",), None)


async def test_koboldcpp_double_quirks(start: Any, session: aiohttp.ClientSession) -> None:
    double = await start("koboldcpp", Scenario.UP, api_key="pw", options={"busy": True})
    async with session.get(double.url + "/any/prefix/api/v1/model") as resp:  # suffix routing
        assert await resp.json() == {"result": "koboldcpp/protected-model"}
    async with session.get(double.url + "/nope") as resp:
        assert (resp.status, resp.content_type) == (404, "text/html")
    async with session.post(double.url + "/api/v1/generate", json={"prompt": "hi"}) as resp:
        assert resp.status == 401
    headers = {"Authorization": "Bearer pw"}
    async with session.post(double.url + "/api/v1/generate", json={"prompt": "hi"}, headers=headers) as resp:
        assert (resp.status, (await resp.json())["detail"]["type"]) == (503, "service_unavailable")
