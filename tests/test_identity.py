"""Server identity: what each answer says about the server (pure), then doubles of one family on another's port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from monitord.model import ErrorClass, Identity, ProbeResult, ProviderSpec, Status
from monitord.probe import create_session, probe_provider
from monitord.providers import ADAPTERS
from monitord.providers.base import HttpResponse
from monitord.providers.identity import Sighting, accepts, identify, mismatch, sight
from tests.doubles import DOUBLES, ProviderDouble
from tests.doubles.base import fixture_bytes


def stored(server: str, name: str, path: str, *, status: int = 200) -> HttpResponse:
    return HttpResponse(status=status, headers={}, body=fixture_bytes(server, name), path=path)


def answer(body: Any, path: str, *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status=status, headers=headers or {}, body=raw, path=path)


@pytest.mark.parametrize(("response", "looks_like", "strong"), [
    (answer({"status": "ok"}, "/health", headers={"Server": "llama.cpp"}), "llamacpp", True),
    (stored("llamacpp", "models.json", "/v1/models"), "llamacpp", True),  # owned_by, past the Ollama-style list
    (stored("llamacpp", "error-404.json", "/api/version", status=404), "llamacpp", True),
    (answer(b"Ollama is running", "/"), "ollama", True),
    (stored("ollama", "api-version.json", "/api/version"), "ollama", True),
    (stored("ollama", "api-tags.json", "/api/tags"), "ollama", True),
    (stored("sglang", "root.json", "/"), "sglang", True),
    (stored("sglang", "api-tags.json", "/api/tags"), "sglang", True),  # its imitation of Ollama
    (stored("sglang", "model-info.json", "/model_info"), "sglang", True),
    (stored("sglang", "models.json", "/v1/models"), "sglang", True),
    (stored("koboldcpp", "api-extra-version.json", "/api/extra/version"), "koboldcpp", True),
    (stored("koboldcpp", "api-tags.json", "/api/tags"), "koboldcpp", True),  # its imitation of Ollama
    (stored("koboldcpp", "v1-models.json", "/v1/models"), "koboldcpp", True),
    (answer(b"Error: HTTP Server is running, but this endpoint does not exist. Please check the URL.",
            "/api/version", status=404), "koboldcpp", True),
    (stored("tgi", "info.json", "/info"), "tgi", True),
    (stored("tgi", "health-503.json", "/health", status=503), "tgi", True),
    (stored("tabbyapi", "health.json", "/health"), "tabbyapi", True),
    (stored("tabbyapi", "models.json", "/v1/models"), "tabbyapi", True),
    (stored("textgen", "internal-model-info.json", "/v1/internal/model/info"), "textgen", True),
    (stored("textgen", "models.json", "/v1/models"), "textgen", False),  # owned_by "user", like Jan
    (stored("jan", "models.json", "/v1/models"), "jan", False),
    (stored("lmstudio", "api-v0-models.json", "/api/v0/models"), "lmstudio", True),
    (stored("lmstudio", "api-v1-models.json", "/api/v1/models"), "lmstudio", True),
    (answer({"error": "Unexpected endpoint or method. (GET /api/version)"}, "/api/version"), "lmstudio", True),
    (stored("localai", "models-capabilities.json", "/v1/models/capabilities"), "localai", True),
    (stored("localai", "readyz-starting.json", "/readyz", status=503), "localai", True),
    (stored("mistralrs", "models.json", "/v1/models"), "mistralrs", True),
    (stored("vllm", "models.json", "/v1/models"), "vllm", True),
    (stored("fastchat", "models.json", "/v1/models"), "fastchat", True),
    (stored("gpt4all", "models.json", "/v1/models"), "gpt4all", True),
])
def test_sightings_on_the_reference_bodies(response: HttpResponse, looks_like: str, strong: bool) -> None:
    found = sight(response)
    assert found is not None and (found.identity.looks_like, found.strong) == (looks_like, strong)


@pytest.mark.parametrize("response", [
    stored("mlx", "models.json", "/v1/models"),  # no owner: any OpenAI server
    stored("localai", "models.json", "/v1/models"),
    stored("vllm", "version.json", "/version"),  # {"version"} is vLLM's and LocalAI's
    stored("mlx", "health.json", "/health"),  # {"status": "ok"} is mlx's and llama.cpp's
    answer({"detail": "Not Found"}, "/nope", status=404),  # every FastAPI server
    answer(b"", "/health"),
    answer(b"<html>Swagger</html>", "/"),
])
def test_answers_many_servers_give_say_nothing(response: HttpResponse) -> None:
    assert sight(response) is None


def test_versions_come_with_the_sighting() -> None:
    found = sight(stored("koboldcpp", "api-extra-version.json", "/api/extra/version"))
    assert found is not None and found.identity.version == "1.98.1"
    tgi = sight(stored("tgi", "info.json", "/info"))
    assert tgi is not None and tgi.identity.version


def test_identify_prefers_a_strong_sighting() -> None:
    weak = stored("textgen", "models.json", "/v1/models")
    strong = answer({}, "/props", headers={"Server": "llama.cpp"})
    found = identify([weak, strong])
    assert found is not None and found.identity.looks_like == "llamacpp"
    only_weak = identify([weak])
    assert only_weak is not None and not only_weak.strong


def test_mismatch_only_on_strong_signals_and_never_for_openai() -> None:
    llama = Sighting(Identity("llamacpp", None, "Server: llama.cpp header"), strong=True)
    hint = mismatch("vllm", llama)
    assert hint is not None and "looks like llamacpp" in hint and "`type: llamacpp`" in hint
    assert "Server: llama.cpp header" in hint
    assert mismatch("llamacpp", llama) is None
    assert mismatch("openai", llama) is None and mismatch("auto", llama) is None
    assert mismatch("jan", llama) is None  # Jan runs llama.cpp underneath
    assert mismatch("vllm", Sighting(Identity("textgen"), strong=False)) is None
    assert mismatch("vllm", None) is None
    assert accepts("koboldai", "koboldcpp") and accepts("koboldcpp", "koboldai")


# -- servers of one family answering on another's port -----------------------------------------------------------

@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = create_session()
    yield client
    await client.close()


@pytest.fixture
async def started() -> AsyncIterator[dict[str, ProviderDouble]]:
    doubles: dict[str, ProviderDouble] = {}
    yield doubles
    for double in doubles.values():
        await double.stop()


async def probe_as(started: dict[str, ProviderDouble], server: str, provider_type: str,
                   session: aiohttp.ClientSession) -> ProbeResult:
    double = started.get(server)
    if double is None:
        double = started[server] = await ProviderDouble(server, DOUBLES[server]).start()
    spec = ProviderSpec(name="p", type=provider_type, base_url=double.url, timeout_s=2.0, max_retries=0)
    return await probe_provider(spec, ADAPTERS[provider_type], session)


# (server on the port, configured type): every OpenAI-shaped type answered `up` against these before.
WRONG = [
    *[("llamacpp", t) for t in ("vllm", "localai", "fastchat", "textgen", "lmstudio", "tabbyapi", "mlx",
                                "mistralrs", "gpt4all", "sglang", "tgi", "ollama", "koboldcpp")],
    *[("ollama", t) for t in ("mlx", "fastchat", "lmstudio", "llamacpp", "vllm", "koboldcpp")],
    *[("vllm", t) for t in ("sglang", "fastchat", "mlx", "llamacpp")],
    ("sglang", "ollama"), ("sglang", "vllm"), ("koboldcpp", "ollama"), ("koboldcpp", "llamacpp"),
    ("tabbyapi", "textgen"), ("tabbyapi", "llamacpp"), ("lmstudio", "mistralrs"), ("mistralrs", "lmstudio"),
    ("tgi", "ollama"), ("tgi", "koboldcpp"), ("fastchat", "vllm"), ("gpt4all", "jan"),
]


@pytest.mark.parametrize(("server", "provider_type"), WRONG)
async def test_another_server_on_the_port_is_misconfigured(started: dict[str, ProviderDouble],
                                                            session: aiohttp.ClientSession, server: str,
                                                            provider_type: str) -> None:
    result = await probe_as(started, server, provider_type, session)
    assert (result.status, result.error_class) == (Status.MISCONFIGURED, ErrorClass.WRONG_SERVER), result.error
    assert result.identity is not None and result.identity.looks_like == server
    assert result.error is not None and f"`type: {server}`" in result.error and f"as {provider_type}" in result.error


@pytest.mark.parametrize(("server", "provider_type", "status"), [
    ("llamacpp", "openai", Status.UP),  # any OpenAI server is what `openai` means
    ("llamacpp", "jan", Status.UP),  # Jan serves through llama.cpp
    ("koboldcpp", "koboldai", Status.UP),
    ("jan", "vllm", Status.DOWN),  # Jan gives only weak signals: not called misconfigured
    ("mlx", "fastchat", Status.UP),  # nothing in mlx's answers names it
    ("textgen", "fastchat", Status.UP),
])
async def test_ambiguous_or_compatible_servers_are_not_misconfigured(started: dict[str, ProviderDouble],
                                                                      session: aiohttp.ClientSession, server: str,
                                                                      provider_type: str, status: Status) -> None:
    result = await probe_as(started, server, provider_type, session)
    assert result.status is status, result.error


@pytest.mark.parametrize("server", sorted(set(DOUBLES) - {"openai", "koboldai"}))
async def test_every_server_is_itself(started: dict[str, ProviderDouble], session: aiohttp.ClientSession,
                                      server: str) -> None:
    result = await probe_as(started, server, server, session)
    assert result.status is Status.UP, result.error
    if result.identity is not None:
        assert accepts(server, result.identity.looks_like or server)


async def test_a_failed_probe_keeps_the_failing_status_code(started: dict[str, ProviderDouble],
                                                            session: aiohttp.ClientSession) -> None:
    """Identifying requests after a failure are recorded, but http_status stays the failing request's."""
    result = await probe_as(started, "tgi", "ollama", session)
    assert result.status is Status.MISCONFIGURED
    assert result.calls[0].path == "/api/version" and result.http_status == result.calls[0].status == 404
    assert [c.path for c in result.calls][1:] == ["/", "/v1/models", "/api/extra/version", "/info"]


# -- type: auto ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("server", "looks_like"), [
    ("llamacpp", "llamacpp"), ("ollama", "ollama"), ("vllm", "vllm"), ("koboldcpp", "koboldcpp"),
    ("tgi", "tgi"), ("sglang", "sglang"), ("lmstudio", "lmstudio"), ("tabbyapi", "tabbyapi"),
    ("textgen", "textgen"), ("localai", "localai"),
    ("mlx", "openai"),  # nothing in mlx's answers names it: probed as a generic OpenAI server
])
async def test_auto_detects_the_server_and_probes_it_as_that_type(started: dict[str, ProviderDouble],
                                                                   session: aiohttp.ClientSession, server: str,
                                                                   looks_like: str) -> None:
    result = await probe_as(started, server, "auto", session)
    assert (result.status, result.provider_type) == (Status.UP, "auto"), result.error
    assert result.identity is not None and result.identity.looks_like == looks_like
    assert result.models


async def test_auto_remembers_what_answered_until_a_probe_fails(session: aiohttp.ClientSession) -> None:
    adapter = ADAPTERS["auto"]
    llama = await ProviderDouble("llamacpp", DOUBLES["llamacpp"]).start()
    try:
        spec = ProviderSpec(name="p", type="auto", base_url=llama.url, timeout_s=2.0, max_retries=0)
        first = await probe_provider(spec, adapter, session)
        second = await probe_provider(spec, adapter, session)
        assert first.identity == second.identity and first.identity is not None
        assert first.calls[0].path == "/"  # detection first
        assert [c.path for c in second.calls] == ["/health", "/v1/models", "/props", "/slots"]  # straight in
        await llama.set("down")
        assert (await probe_provider(spec, adapter, session)).status is Status.DOWN
    finally:
        await llama.stop()
    ollama = await ProviderDouble("ollama", DOUBLES["ollama"], port=llama.port).start()  # another server, same port
    try:
        swapped = await probe_provider(spec, adapter, session)
        assert swapped.status is Status.UP and swapped.identity is not None
        assert swapped.identity.looks_like == "ollama"
    finally:
        await ollama.stop()
