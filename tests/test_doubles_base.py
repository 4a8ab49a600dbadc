"""The doubles framework itself: generic scenarios behave the same for every family, on a real socket."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.doubles.base import (
    DEFAULT_API_KEY,
    DoubleControl,
    ProviderDouble,
    Scenario,
    bearer_matches,
    control_of,
    json_response,
    new_app,
    scenario_of,
)

REPO = Path(__file__).resolve().parent.parent


def toy_app(control: DoubleControl) -> web.Application:
    app = new_app(control, refuses_while_loading=bool(control.options.get("refuses")))

    async def models(request: web.Request) -> web.StreamResponse:
        if not bearer_matches(request, control_of(request).expected_key):
            return json_response({"error": "Unauthorized"}, status=401)
        scenario = scenario_of(request)
        if scenario is Scenario.ERROR:
            return json_response({"error": "boom"}, status=500)
        if scenario is Scenario.LOADING:
            return json_response({"error": "loading"}, status=503)
        return json_response({"data": [] if scenario is Scenario.EMPTY else [{"id": "m"}]})

    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)
    return app


@pytest.fixture
async def double() -> ProviderDouble:
    toy = ProviderDouble("toy", toy_app)
    await toy.start()
    yield toy
    await toy.stop()


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        yield session


async def get(http: aiohttp.ClientSession, double: ProviderDouble, path: str = "/v1/models",
              **kwargs: object) -> tuple[int, bytes, str]:
    async with http.get(double.url + path, **kwargs) as resp:
        return resp.status, await resp.read(), resp.content_type


async def test_up_records_what_was_sent(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    status, body, content_type = await get(http, double, headers={"Authorization": "Bearer abc"})
    assert (status, orjson.loads(body), content_type) == (200, {"data": [{"id": "m"}]}, "application/json")
    [recorded] = double.requests
    assert (recorded.method, recorded.path, recorded.header("authorization")) == ("GET", "/v1/models", "Bearer abc")


async def test_down_refuses_and_comes_back_on_the_same_port(double: ProviderDouble,
                                                           http: aiohttp.ClientSession) -> None:
    port = double.port
    await double.set("down")
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get(http, double)
    assert isinstance(caught.value.os_error, ConnectionRefusedError)
    await double.set("up")
    assert double.port == port
    assert (await get(http, double))[0] == 200


async def test_down_drops_kept_alive_connections(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    assert (await get(http, double))[0] == 200  # leaves a pooled keep-alive connection
    await double.set("down")
    with pytest.raises(aiohttp.ClientError):
        await get(http, double)


@pytest.mark.parametrize(("refuses", "expected"), [(True, "refused"), (False, 503)])
async def test_loading_refuses_only_for_servers_that_do_not_listen(http: aiohttp.ClientSession, refuses: bool,
                                                                   expected: object) -> None:
    async with ProviderDouble("toy", toy_app, DoubleControl(options={"refuses": refuses})) as toy:
        await toy.set("loading")
        try:
            outcome: object = (await get(http, toy))[0]
        except aiohttp.ClientConnectorError:
            outcome = "refused"
        assert outcome == expected
        await toy.set("up")
        assert (await get(http, toy))[0] == 200


async def test_slow_delays_the_headers(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    await double.set("slow", delay_s=0.3)
    started = time.perf_counter()
    assert (await get(http, double))[0] == 200
    assert time.perf_counter() - started >= 0.3


async def test_hang_never_answers_and_stops_quickly(double: ProviderDouble) -> None:
    await double.set("hang")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await get(session, double)
    started = time.perf_counter()
    await double.stop()
    assert time.perf_counter() - started < 1


async def test_html_and_huge(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    await double.set("html")
    status, body, content_type = await get(http, double)
    assert (status, content_type) == (200, "text/html") and body.startswith(b"<!DOCTYPE html>")
    await double.set("huge")
    status, body, content_type = await get(http, double)
    assert (status, content_type) == (200, "application/json") and len(body) > 1 << 20
    assert len(orjson.loads(body)["data"]) > 1000  # valid JSON: only a body cap can reject it


async def test_unauthorized_enforces_the_default_key(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    await double.set("unauthorized")
    assert (await get(http, double))[0] == 401
    good = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    assert (await get(http, double, headers=good))[0] == 200
    await double.set("up", api_key="own-key")
    assert double.control.expected_key == "own-key"
    assert (await get(http, double, headers={"Authorization": "Bearer own-key"}))[0] == 200


async def test_flapping_alternates_probe_by_probe(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    await double.set("flapping")
    seen = []
    for _ in range(4):  # a "probe" is /health then /v1/models
        seen.append(((await get(http, double, "/health"))[0], (await get(http, double))[0]))
    assert seen == [(200, 200), (500, 500), (200, 200), (500, 500)]


async def test_family_scenarios_reach_the_handler(double: ProviderDouble, http: aiohttp.ClientSession) -> None:
    await double.set(Scenario.EMPTY)
    assert orjson.loads((await get(http, double))[1]) == {"data": []}
    await double.set(Scenario.ERROR)
    assert (await get(http, double))[0] == 500


async def test_command_line_serves_and_switches_doubles(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.doubles", "vllm", "mlx", "--stdin-stops",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO)
    assert process.stdin is not None and process.stdout is not None
    try:
        urls = {}
        while (line := (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()) != "ready":
            name, url = line.split()
            urls[name] = url
        async with http.get(urls["vllm"] + "/v1/models") as resp:
            assert resp.status == 200
        process.stdin.write(b"all down\n")
        await process.stdin.drain()
        assert (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip() == "ok all down"
        with pytest.raises(aiohttp.ClientConnectorError):
            await get_url(http, urls["mlx"] + "/health")
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def get_url(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        return resp.status
