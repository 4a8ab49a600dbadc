"""probe.py: every misbehaviour of a server ends as one classified ProbeResult; nothing raises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from monitord.model import ErrorClass, ProviderSpec, Secret, Status
from monitord.probe import create_session, probe_provider
from monitord.providers.base import Observation, ProbeHttp, TypeDefaults
from monitord.providers.openai import OpenAICompatible
from tests.tools.ports import refused_port

MODELS = {"object": "list", "data": [{"id": "m1", "object": "model", "max_model_len": 4096}]}
ADAPTER = OpenAICompatible(TypeDefaults(port=8000, health_path="/health"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a one-route-fits-all server answering with `handler`; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = create_session()
    yield s
    await s.close()


def spec_for(url: str, **changes: Any) -> ProviderSpec:
    base = ProviderSpec(name="p1", type="vllm", base_url=url, timeout_s=1.0, max_retries=0, retry_backoff_s=0.01)
    return replace(base, **changes)


async def ok_handler(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response(status=200)
    return web.json_response(MODELS)


async def test_up_reads_models_and_timings(serve: Any, session: Any) -> None:
    result = await probe_provider(spec_for(await serve(ok_handler)), ADAPTER, session)
    assert result.status is Status.UP and result.error_class is None
    assert result.model_ids == ("m1",) and result.models[0].context_length == 4096
    # nothing in these answers names a server, so `/` is asked too (it names several)
    assert [(c.method, c.path, c.status) for c in result.calls] == [("GET", "/health", 200), ("GET", "/v1/models", 200),
                                                                     ("GET", "/", 200)]
    assert result.connect_ms is not None and result.ttfb_ms is not None and result.total_ms >= result.ttfb_ms
    # The second probe reuses the keep-alive connection: no connect time.
    again = await probe_provider(spec_for(await serve(ok_handler)), ADAPTER, session)
    assert again.status is Status.UP


async def test_refused(session: Any) -> None:
    result = await probe_provider(spec_for(f"http://127.0.0.1:{refused_port()}"), ADAPTER, session)
    assert (result.status, result.error_class) == (Status.DOWN, ErrorClass.REFUSED)
    assert result.calls[0].status is None and result.http_status is None


async def test_retries_follow_max_retries_inside_the_timeout(session: Any) -> None:
    spec = spec_for(f"http://127.0.0.1:{refused_port()}", max_retries=2)
    result = await probe_provider(spec, ADAPTER, session)
    assert result.attempts == 3 and len(result.calls) == 3
    assert result.total_ms < spec.timeout_s * 1000 + 200


async def test_transient_5xx_then_success_is_up(serve: Any, session: Any) -> None:
    seen = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        seen["n"] += 1
        if seen["n"] == 1:
            return web.Response(status=502, text="bad gateway")
        return await ok_handler(request)

    result = await probe_provider(spec_for(await serve(flaky), max_retries=1), ADAPTER, session)
    assert result.status is Status.UP and result.attempts == 2


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.Response()


async def slow_body(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for byte in b'{"data": []}':
        await resp.write(bytes([byte]))
        await asyncio.sleep(0.3)
    return resp


async def html(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<!doctype html><html><body>Welcome</body></html>", content_type="text/html")


async def huge(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    return web.Response(body=b'{"data": [' + b" " * (2 << 20) + b"]}", content_type="application/json")


async def huge_chunked(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(40):
        await resp.write(b" " * 65536)
    return resp


async def unauthorized(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != "Bearer sekrit-key":
        return web.json_response({"error": "Unauthorized"}, status=401)
    return await ok_handler(request)


async def engine_dead(request: web.Request) -> web.StreamResponse:
    return web.Response(status=503)


async def wrong_shape(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    return web.json_response({"models": ["a", "b"]})


async def empty(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    return web.json_response({"object": "list", "data": []})


async def redirect_loop(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(request.path)


async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.Response()
    resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "5000"})
    await resp.prepare(request)
    await resp.write(b'{"data": [')
    assert request.transport is not None
    request.transport.close()
    return resp


@pytest.mark.parametrize(
    ("handler", "status", "error_class"),
    [
        (hang, Status.DOWN, ErrorClass.TIMEOUT),
        (slow_body, Status.DOWN, ErrorClass.TIMEOUT),
        (html, Status.DOWN, ErrorClass.BAD_PAYLOAD),
        (huge, Status.DOWN, ErrorClass.TOO_LARGE),
        (huge_chunked, Status.DOWN, ErrorClass.TOO_LARGE),
        (unauthorized, Status.DOWN, ErrorClass.AUTH),
        (engine_dead, Status.DOWN, ErrorClass.HTTP_5XX),
        (wrong_shape, Status.DOWN, ErrorClass.BAD_PAYLOAD),
        (empty, Status.DEGRADED, ErrorClass.EMPTY_MODELS),
        (redirect_loop, Status.DOWN, ErrorClass.REDIRECT),
        (reset_mid_body, Status.DOWN, ErrorClass.CONNECTION),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
async def test_misbehaviour_is_classified(serve: Any, session: Any, handler: Handler, status: Status,
                                          error_class: ErrorClass) -> None:
    result = await probe_provider(spec_for(await serve(handler), timeout_s=0.8), ADAPTER, session)
    assert (result.status, result.error_class) == (status, error_class), result.error
    assert result.error and result.total_ms < 2000


async def test_api_key_sent_and_never_recorded(serve: Any, session: Any) -> None:
    url = await serve(unauthorized)
    good = await probe_provider(spec_for(url, api_key=Secret("sekrit-key")), ADAPTER, session)
    assert good.status is Status.UP
    bad = await probe_provider(spec_for(url, api_key=Secret("wrong-key")), ADAPTER, session)
    assert bad.error_class is ErrorClass.AUTH and "wrong-key" not in repr(bad)


async def test_configured_model_missing_is_degraded(serve: Any, session: Any) -> None:
    result = await probe_provider(spec_for(await serve(ok_handler), models=("m1", "m2")), ADAPTER, session)
    assert (result.status, result.error_class) == (Status.DEGRADED, ErrorClass.MODEL_MISSING)
    assert "m2" in (result.error or "")


async def test_dns_failure(session: Any) -> None:
    result = await probe_provider(spec_for("http://no-such-host.invalid:8000"), ADAPTER, session)
    assert result.status is Status.DOWN
    assert result.error_class in (ErrorClass.DNS, ErrorClass.TIMEOUT)


class Broken:
    defaults = TypeDefaults(port=1)

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        raise KeyError("a bug in an adapter")


async def test_adapter_bug_is_recorded_not_raised(session: Any) -> None:
    result = await probe_provider(spec_for("http://127.0.0.1:1"), Broken(), session)
    assert (result.status, result.error_class) == (Status.DOWN, ErrorClass.INTERNAL)
