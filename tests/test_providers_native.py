"""Ollama, KoboldCpp/KoboldAI and llama.cpp: pure readers on stored bodies, then whole probes against doubles."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from monitord.model import ErrorClass, ModelInfo, ModelKind, Status
from monitord.providers import kobold, llamacpp, ollama
from monitord.providers.base import HttpResponse, ProbeError
from tests.doubles.base import fixture_bytes

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
    assert (observation.status, observation.server_version, dict(observation.extra)) == (
        Status.UP, "1.98.1", {"server": "KoboldCpp"})
    assert observation.models == (ModelInfo(id="koboldcpp/x", kind=ModelKind.VISION, context_length=8192,
                                            loaded=True, capabilities=CHAT | {"vision"}, owned_by="koboldcpp"),)
    client = kobold.describe(None, None, None, "1.2.1")
    assert (client.status, client.error_class, client.server_version, dict(client.extra)) == (
        Status.DEGRADED, ErrorClass.EMPTY_MODELS, None, {"server": "KoboldAI", "api_version": "1.2.1"})
