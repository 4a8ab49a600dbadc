"""Capacity: the pure readers on stored bodies, then whole probes against doubles whose load changes mid-test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from monitord.model import Capacity, ProbeResult, ProviderSpec, ResidentModel, Secret, Status
from monitord.probe import create_session, probe_provider
from monitord.providers import ADAPTERS
from monitord.providers import capacity as cap
from monitord.providers.base import HttpResponse
from tests.doubles import DOUBLES, ProviderDouble
from tests.doubles.base import DoubleControl, fixture_bytes


def stored(server: str, name: str, *, status: int = 200, path: str = "/",
           content_type: str = "application/json") -> HttpResponse:
    return HttpResponse(status=status, headers={"Content-Type": content_type}, body=fixture_bytes(server, name),
                        path=path)


def answer(body: Any, *, status: int = 200, path: str = "/") -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status=status, headers={}, body=raw, path=path)


# -- Prometheus readers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("server", "name", "names", "expected"), [
    ("vllm", "metrics.txt", cap.VLLM_METRICS,
     Capacity(requests_running=3, queue_depth=2, kv_cache_usage=0.4375, generation_tokens_total=91522.0)),
    ("vllm", "metrics-0.6.txt", cap.VLLM_METRICS,  # the older gpu_cache_usage_perc name
     Capacity(requests_running=1, queue_depth=0, kv_cache_usage=0.0625, generation_tokens_total=1024.0)),
    ("sglang", "metrics.txt", cap.SGLANG_METRICS,
     Capacity(requests_running=5, queue_depth=0, kv_cache_usage=0.28, generation_tokens_total=7557572.0)),
    ("tgi", "metrics.txt", cap.TGI_METRICS,
     Capacity(requests_running=8, queue_depth=4, generation_tokens_total=7040.0)),
    ("llamacpp", "metrics.txt", cap.LLAMACPP_METRICS,
     Capacity(requests_running=1, queue_depth=0, generation_tokens_total=3469.0)),
])
def test_metrics_readers(server: str, name: str, names: cap.MetricNames, expected: Capacity) -> None:
    response = stored(server, name, path="/metrics", content_type="text/plain")
    assert cap.read_metrics(response, names) == expected


def test_metrics_sum_engines_and_take_the_fullest_cache() -> None:
    text = (b'vllm:num_requests_running{engine="0"} 2\nvllm:num_requests_running{engine="1"} 3\n'
            b'vllm:num_requests_waiting{engine="0"} 1\nvllm:kv_cache_usage_perc{engine="0"} 0.2\n'
            b'vllm:kv_cache_usage_perc{engine="1"} 0.9\nvllm:num_requests_waiting{engine="1",x="a b"} 4 1700000\n')
    assert cap.read_metrics(answer(text, path="/metrics"), cap.VLLM_METRICS) == Capacity(
        requests_running=5, queue_depth=5, kv_cache_usage=0.9)


@pytest.mark.parametrize("response", [
    None,  # the route could not be read at all (timeout, refused)
    stored("llamacpp", "error-501-metrics-disabled.json", status=501, path="/metrics"),
    answer({"detail": "Not Found"}, status=404, path="/metrics"),
    answer({"error": "Unauthorized"}, status=401, path="/metrics"),
    answer(b"<!DOCTYPE html><html>metrics</html>", path="/metrics"),
    answer(b"# HELP nothing\nprocess_cpu_seconds_total 12\n", path="/metrics"),  # none of the server's metrics
    answer(b"vllm:num_requests_running{engine=\"0\"} NaN\nvllm:num_requests_waiting garbage\n", path="/metrics"),
])
def test_metrics_that_say_nothing_are_unknown(response: HttpResponse | None) -> None:
    assert cap.read_metrics(response, cap.VLLM_METRICS) is None


# -- llama.cpp /slots, KoboldCpp /api/extra/perf, Ollama /api/ps ---------------------------------------------------

def test_llamacpp_slots() -> None:
    load = cap.read_llamacpp_slots(stored("llamacpp", "slots.json", path="/slots"))
    assert load == Capacity(slots_total=2, slots_busy=1)
    assert load is not None and not load.saturated and load.slots_idle == 1


def test_llamacpp_slots_of_older_builds_and_garbage() -> None:
    old = [{"id": 0, "state": 1}, {"id": 1, "state": 1}]
    assert cap.read_llamacpp_slots(answer(old)) == Capacity(slots_total=2, slots_busy=2)
    assert cap.read_llamacpp_slots(answer([{"id": 0}])) == Capacity(slots_total=1)
    for bad in (answer([]), answer({"slots": 2}), answer(b"not json"),
                stored("llamacpp", "error-401.json", status=401), None):
        assert cap.read_llamacpp_slots(bad) is None


def test_kobold_perf() -> None:
    assert cap.read_kobold_perf(stored("koboldcpp", "api-extra-perf.json")) == Capacity(
        slots_total=1, slots_busy=0, queue_depth=0, requests_running=0)
    busy = cap.read_kobold_perf(answer({"idle": 0, "queue": 2}))
    assert busy == Capacity(slots_total=1, slots_busy=1, queue_depth=2, requests_running=1) and busy.saturated
    assert cap.read_kobold_perf(answer({"result": "KoboldCpp"})) is None


def test_ollama_ps_with_expiry() -> None:
    resident = cap.read_ollama_ps(stored("ollama", "api-ps.json", path="/api/ps"))
    assert resident == (ResidentModel(id="llama3.2:3b", size_bytes=3558703104,
                                      expires_at=datetime(2025, 11, 25, 1, 5, 0, 123456, tzinfo=UTC)),)
    assert cap.read_ollama_ps(stored("ollama", "api-ps-empty.json", path="/api/ps")) == ()
    assert cap.read_ollama_ps(answer({"error": "boom"}, status=500)) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-11-25T01:05:00.123456789Z", datetime(2025, 11, 25, 1, 5, 0, 123456, tzinfo=UTC)),
    ("2025-11-25T01:05:00Z", datetime(2025, 11, 25, 1, 5, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("2025-11-25T01:05:00", None),  # no zone: not trusted
    ("soon", None), (None, None), (3, None),
])
def test_parse_time(text: Any, expected: datetime | None) -> None:
    assert cap.parse_time(text) == expected


def test_merge_keeps_the_first_known_value() -> None:
    merged = cap.merge(Capacity(slots_total=2, slots_busy=2), None, Capacity(slots_total=4, queue_depth=1))
    assert merged == Capacity(slots_total=2, slots_busy=2, queue_depth=1)
    assert cap.merge(None, None) is None


@pytest.mark.parametrize(("load", "saturated"), [
    (Capacity(), False),
    (Capacity(slots_total=2, slots_busy=1), False),
    (Capacity(slots_total=2, slots_busy=2), True),
    (Capacity(queue_depth=1), True),
    (Capacity(slots_total=4, slots_busy=0, queue_depth=0), False),
])
def test_saturated(load: Capacity, saturated: bool) -> None:
    assert load.saturated is saturated


# -- whole probes: the doubles' load changes while the test runs ---------------------------------------------------

@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = create_session()
    yield client
    await client.close()


@pytest.fixture
async def doubles() -> AsyncIterator[list[ProviderDouble]]:
    started: list[ProviderDouble] = []
    yield started
    for double in started:
        await double.stop()


async def start(doubles: list[ProviderDouble], provider_type: str, **options: Any) -> ProviderDouble:
    double = ProviderDouble(provider_type, DOUBLES[provider_type])
    doubles.append(double)
    await double.set("up", **options)
    return await double.start()


async def probe(double: ProviderDouble, session: aiohttp.ClientSession, **fields: Any) -> ProbeResult:
    spec = ProviderSpec(name=f"{double.provider_type}-1", type=double.provider_type, base_url=double.url,
                        timeout_s=2.0, max_retries=0, **fields)
    return await probe_provider(spec, ADAPTERS[double.provider_type], session)


async def test_llamacpp_slots_fill_and_free(doubles: list[ProviderDouble], session: aiohttp.ClientSession) -> None:
    double = await start(doubles, "llamacpp", slots=2)
    idle = await probe(double, session)
    assert (idle.status, idle.capacity) == (Status.UP, Capacity(slots_total=2, slots_busy=0))
    await double.set("up", busy=2)
    full = await probe(double, session)
    assert full.status is Status.UP and full.capacity == Capacity(slots_total=2, slots_busy=2)
    assert full.capacity.saturated
    await double.set("up", busy=1)
    assert (await probe(double, session)).capacity == Capacity(slots_total=2, slots_busy=1)


async def test_llamacpp_metrics_only_when_props_says_so(doubles: list[ProviderDouble],
                                                        session: aiohttp.ClientSession) -> None:
    double = await start(doubles, "llamacpp", slots=1, busy=1, queue=3, tokens=120)
    without = await probe(double, session)
    assert "/metrics" not in [c.path for c in without.calls]
    assert without.capacity == Capacity(slots_total=1, slots_busy=1)
    await double.set("up", metrics=True)
    with_metrics = await probe(double, session)
    assert with_metrics.capacity == Capacity(slots_total=1, slots_busy=1, queue_depth=3, requests_running=1,
                                             generation_tokens_total=120.0)


async def test_llamacpp_without_slots_route_keeps_the_slot_count(doubles: list[ProviderDouble],
                                                                 session: aiohttp.ClientSession) -> None:
    double = await start(doubles, "llamacpp", slots=3, no_slots=True)
    result = await probe(double, session)
    assert (result.status, result.capacity) == (Status.UP, Capacity(slots_total=3))
    assert "/slots" not in [c.path for c in result.calls]  # /props said endpoint_slots: false


async def test_llamacpp_slots_behind_a_key_stay_unknown_not_down(doubles: list[ProviderDouble],
                                                                 session: aiohttp.ClientSession) -> None:
    """`/props` and `/slots` need the key; without one the provider is down for auth (from /props), and with the
    right one the slots are read. A `/slots` 401 alone (the key works on /props) would only leave them unknown."""
    double = await start(doubles, "llamacpp", api_key="k-1", busy=1)
    result = await probe(double, session, api_key=Secret("k-1"))
    assert (result.status, result.capacity) == (Status.UP, Capacity(slots_total=2, slots_busy=1))


@pytest.mark.parametrize(("provider_type", "options", "expected"), [
    ("vllm", {"busy": 4, "queue": 2, "kv_cache": 0.5, "tokens": 10},
     Capacity(requests_running=4, queue_depth=2, kv_cache_usage=0.5, generation_tokens_total=10.0)),
    ("tgi", {"busy": 1, "queue": 0, "tokens": 5},
     Capacity(requests_running=1, queue_depth=0, generation_tokens_total=5.0)),
    ("sglang", {"metrics": True, "busy": 2, "queue": 1, "kv_cache": 0.25, "tokens": 7},
     Capacity(requests_running=2, queue_depth=1, kv_cache_usage=0.25, generation_tokens_total=7.0)),
    ("sglang", {}, None),  # without --enable-metrics /metrics is 404: unknown, and the provider is up
    ("koboldcpp", {"busy": True, "queue": 1},
     Capacity(slots_total=1, slots_busy=1, queue_depth=1, requests_running=1)),
    ("koboldcpp", {}, Capacity(slots_total=1, slots_busy=0, queue_depth=0, requests_running=0)),
    ("ollama", {"resident": []}, Capacity(resident_models=())),
    ("mlx", {}, None),  # publishes nothing
])
async def test_capacity_per_server(doubles: list[ProviderDouble], session: aiohttp.ClientSession,
                                   provider_type: str, options: dict[str, Any], expected: Capacity | None) -> None:
    double = await start(doubles, provider_type, **options)
    result = await probe(double, session)
    assert (result.status, result.capacity) == (Status.UP, expected), result.error


async def test_ollama_resident_models_follow_keep_alive(doubles: list[ProviderDouble],
                                                        session: aiohttp.ClientSession) -> None:
    double = await start(doubles, "ollama")
    first = await probe(double, session)
    assert first.capacity is not None and first.capacity.resident_models is not None
    [resident] = first.capacity.resident_models
    assert resident.expires_at == datetime(2025, 11, 25, 1, 5, 0, 123456, tzinfo=UTC)
    assert first.capacity.resident(resident.id) and not first.capacity.saturated
    await double.set("up", resident=[])  # keep_alive ran out
    later = await probe(double, session)
    assert later.capacity == Capacity(resident_models=()) and later.capacity.resident(resident.id) is False


async def test_lmstudio_resident_models_from_state(doubles: list[ProviderDouble],
                                                   session: aiohttp.ClientSession) -> None:
    double = await start(doubles, "lmstudio")
    result = await probe(double, session)
    assert result.capacity is not None and result.capacity.resident_models is not None
    loaded = {m.id for m in result.models if m.loaded}
    assert {m.id for m in result.capacity.resident_models} == loaded and loaded


@pytest.mark.parametrize("provider_type", ["vllm", "tgi"])
async def test_metrics_route_failing_never_downs_a_healthy_server(doubles: list[ProviderDouble],
                                                                  session: aiohttp.ClientSession,
                                                                  provider_type: str) -> None:
    """/metrics answering 500 HTML, or hanging past the optional-route budget: unknown capacity, provider up."""
    hang_forever = {"on": False}

    def factory(control: DoubleControl) -> web.Application:
        app = DOUBLES[provider_type](control)

        @web.middleware
        async def broken_metrics(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path != "/metrics":
                return await handler(request)
            if hang_forever["on"]:
                await asyncio.Event().wait()
            return web.Response(status=500, text="<html>oops</html>", content_type="text/html")

        app.middlewares.append(broken_metrics)
        return app

    double = ProviderDouble(provider_type, factory)
    doubles.append(double)
    await double.start()
    broken = await probe(double, session)
    assert (broken.status, broken.capacity, broken.error) == (Status.UP, None, None)
    hang_forever["on"] = True
    hung = await probe(double, session)
    assert (hung.status, hung.capacity) == (Status.UP, None), hung.error


@pytest.mark.parametrize(("provider_type", "model_path"), [("tabbyapi", "/v1/model"), ("koboldcpp", "/api/v1/model"),
                                                          ("llamacpp", "/v1/models"), ("vllm", "/v1/models"),
                                                          ("tgi", "/info"), ("ollama", "/api/tags")])
async def test_a_model_route_failing_behind_a_good_health_route_leaves_models_unknown(
        doubles: list[ProviderDouble], session: aiohttp.ClientSession, provider_type: str, model_path: str) -> None:
    def factory(control: DoubleControl) -> web.Application:
        app = DOUBLES[provider_type](control)

        @web.middleware
        async def broken_models(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == model_path:
                return web.Response(status=500, text="Internal Server Error")
            return await handler(request)

        app.middlewares.append(broken_models)
        return app

    double = ProviderDouble(provider_type, factory)
    doubles.append(double)
    await double.start()
    result = await probe(double, session)
    assert (result.status, result.error_class, result.models) == (Status.UP, None, ()), result.error
    assert (result.error or "").startswith(f"models unknown: {model_path}: HTTP 500")
