"""monitord.client against the real API on 127.0.0.1, and the CLI commands that ask the daemon (health, rank,
monitor): answers, errors, timeouts, the last-known-good fallback, the event stream and the direct-probe fallback.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from rich.console import Console

from monitord import cli_monitor
from monitord.api import make_app
from monitord.client import (
    AllCandidatesFailed,
    ApiError,
    Attempt,
    DaemonUnavailable,
    MonitordClient,
    NoProviderError,
    ServerEvent,
    classify_failure,
)
from monitord.model import Criteria, ErrorClass, GenerationSample, ModelInfo, ProviderSpec, Secret, Status
from monitord.store import Store
from tests.doubles import ProviderDouble, Scenario
from tests.doubles.llamacpp import llamacpp_app
from tests.plugins.api import NOW, TOKEN, World, probe
from tests.test_outage import eventually
from tests.tools.ports import refused_port

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    """The API over a fed World on a real port; `outage = True` answers 502 like a proxy whose upstream is gone."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.outage = False
        app = make_app(world.ctx)
        app.middlewares.append(self._gate)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.outage:
            return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")
        return await handler(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def daemon(sqlite_store: Store) -> AsyncIterator[Daemon]:
    world = World(store=sqlite_store)
    world.feed_standard()
    running = Daemon(world)
    await running.server.start_server()
    yield running
    await running.server.close()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[MonitordClient]:
    async with MonitordClient(daemon.url, timeout_s=1.0) as monitord:
        yield monitord


# --- answers ---


async def test_select_returns_the_best_and_its_fallbacks(client: MonitordClient) -> None:
    choice = await client.select(task_type="chat", required_capabilities=["vision", "tools"])
    assert choice.provider.provider == "alpha" and choice.provider.status is Status.UP
    assert choice.fallbacks == () and not choice.stale and choice.age_s == 0.0
    assert choice.criteria == Criteria.from_mapping({"task_type": "chat", "required_capabilities": "tools,vision"})
    assert choice.generated_at == NOW
    assert set(choice.provider.components) >= {"availability", "latency", "recency"}
    assert choice.provider.api_base == "http://127.0.0.1:11434/v1"
    assert choice.provider.model in ("llava:13b", "qwen2.5:7b")  # neither lists both vision and tools
    assert choice.provider.chat_url == "http://127.0.0.1:11434/v1/chat/completions"
    choice = await client.select(Criteria(), fallbacks=5)
    assert [c.provider for c in choice.candidates] == ["alpha", "delta", "beta"]
    choice = await client.select({"task_type": "embedding"})
    assert choice.provider.provider == "delta"


async def test_select_raises_no_provider_with_the_reasons(client: MonitordClient) -> None:
    with pytest.raises(NoProviderError) as caught:
        await client.select(required_capabilities=["rerank"])
    assert caught.value.status == 503 and caught.value.code == "no_provider"
    assert set(caught.value.excluded) == {"alpha", "beta", "gamma", "delta"}


async def test_bad_criteria_fail_before_asking(client: MonitordClient) -> None:
    with pytest.raises(ValueError, match="task_type"):
        await client.select(task_type="dancing")
    with pytest.raises(TypeError):
        await client.select(Criteria(), model="x")


async def test_ranking_providers_and_provider(client: MonitordClient) -> None:
    ranking = await client.ranking(required_capabilities=["tools"], quality_preference="fast")
    assert [e.provider for e in ranking.entries] == ["alpha"]
    assert ranking.excluded["beta"] == ("missing capabilities: tools",)
    assert ranking.criteria.quality_preference.value == "fast"
    assert len((await client.ranking(limit=2)).entries) == 2
    providers = await client.providers()
    assert [p["name"] for p in providers.providers] == ["alpha", "beta", "delta", "gamma"]
    gamma = await client.provider("gamma")
    assert gamma.provider["status"] == "down" and not gamma.stale
    with pytest.raises(ApiError) as caught:
        await client.provider("no such/provider")
    assert (caught.value.status, caught.value.code) == (404, "provider_not_found")


async def test_token(sqlite_store: Store) -> None:
    world = World(store=sqlite_store, token=TOKEN)
    world.feed_standard()
    running = Daemon(world)
    await running.server.start_server()
    try:
        async with MonitordClient(running.url, token=Secret(TOKEN)) as good:
            assert (await good.select()).provider.provider == "alpha"
            assert TOKEN not in repr(good)
        async with MonitordClient(running.url, token="wrong") as bad:
            with pytest.raises(ApiError) as caught:
                await bad.select()
            assert caught.value.code == "unauthorized"
    finally:
        await running.server.close()


# --- outages: last known good, timeouts ---


async def test_last_good_answer_stands_in_while_the_daemon_is_away(daemon: Daemon) -> None:
    now = [100.0]
    async with MonitordClient(daemon.url, timeout_s=1.0, max_stale_s=60.0, clock=lambda: now[0]) as client:
        fresh = await client.select(task_type="chat")
        await client.providers()
        daemon.outage = True
        now[0] += 30.0
        stale = await client.select(task_type="chat")
        assert stale.stale and stale.age_s == 30.0
        assert stale.provider == fresh.provider and stale.fallbacks == fresh.fallbacks
        assert (await client.providers()).stale
        with pytest.raises(DaemonUnavailable):  # never asked before: nothing to stand in
            await client.select(task_type="embedding")
        now[0] += 31.0
        with pytest.raises(DaemonUnavailable):  # too old to trust
            await client.select(task_type="chat")
        daemon.outage = False
        assert not (await client.select(task_type="chat")).stale


async def test_stopped_daemon_is_unavailable_then_stale(daemon: Daemon) -> None:
    async with MonitordClient(daemon.url, timeout_s=1.0) as client:
        await client.ranking()
        await daemon.server.close()
        answer = await client.ranking()
        assert answer.stale and [e.provider for e in answer.entries] == ["alpha", "delta", "beta"]
    async with MonitordClient(f"http://127.0.0.1:{refused_port()}", timeout_s=1.0) as nobody:
        with pytest.raises(DaemonUnavailable):
            await nobody.providers()


async def test_a_hanging_daemon_times_out() -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/providers", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with MonitordClient(f"http://127.0.0.1:{runner.addresses[0][1]}", timeout_s=0.2) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(DaemonUnavailable, match="timed out"):
                await client.providers()
            assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        await runner.cleanup()


# --- events ---


async def test_events_follow_changes_and_end_on_shutdown(daemon: Daemon, client: MonitordClient) -> None:
    received: list[ServerEvent] = []
    two = asyncio.Event()

    async def follow() -> None:
        async for event in client.events():
            received.append(event)
            if len(received) == 2:
                two.set()

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    world = daemon.world
    for step in range(1, 4):
        world.feed(probe(world.specs["alpha"], Status.DOWN, at=NOW + timedelta(seconds=step)))
    await asyncio.wait_for(two.wait(), 2)
    world.ctx.events.close()
    await asyncio.wait_for(task, 2)
    assert [e.kind for e in received] == ["provider.status_changed", "ranking.best_changed", "shutdown"]
    assert received[0].data["current"] == "down" and received[1].id == received[0].id + 1
    assert received[1].data["current"] == "delta"


async def test_events_without_a_daemon() -> None:
    async with MonitordClient(f"http://127.0.0.1:{refused_port()}", timeout_s=0.5) as client:
        with pytest.raises(DaemonUnavailable):
            async for _ in client.events():
                pass


# --- CLI: health, rank, monitor ---


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config_file(path: Path, port: int, providers: dict[str, tuple[str, str]], token: str | None = None) -> str:
    lines = ["providers:"]
    for name, (kind, url) in providers.items():
        lines += [f"  {name}:", f"    type: {kind}", f"    endpoint: {url}",
                  "    parameters: {timeout: 1s, max_retries: 0}"]
    lines += ["api:", f"  listen: 127.0.0.1:{port}"] + ([f"  token: {token}"] if token else [])
    path.write_text("\n".join(lines) + "\n")
    return str(path)


WORLD_PROVIDERS = {"alpha": ("ollama", "http://127.0.0.1:11434"), "beta": ("vllm", "http://127.0.0.1:8000"),
                   "gamma": ("llamacpp", "http://127.0.0.1:8080"), "delta": ("localai", "http://127.0.0.1:8081")}


def port_of(daemon: Daemon) -> int:
    port = daemon.server.port
    assert port is not None
    return port


async def test_cli_health_asks_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    config = config_file(tmp_path / "m.yaml", port_of(daemon), WORLD_PROVIDERS)
    code, out, err = await run_cli("health", "-c", config)
    assert code == 1, err  # gamma is down
    assert "alpha" in out and "gamma" in out and "refused: connection refused" in out and "3/4 up" in out
    code, out, _ = await run_cli("health", "--provider", "alpha", "--json", "-c", config)
    body = orjson.loads(out)
    assert code == 0 and body["source"] == "daemon" and [p["name"] for p in body["providers"]] == ["alpha"]
    code, _, err = await run_cli("health", "--provider", "omega", "-c", config)
    assert code == 2 and "unknown provider" in err


async def test_cli_health_probes_directly_when_no_daemon_answers(tmp_path: Path, provider_double: Any) -> None:
    double = await provider_double("ollama")
    config = config_file(tmp_path / "m.yaml", refused_port(), {"local": ("ollama", double.url)})
    code, out, err = await run_cli("health", "-c", config)
    assert "no daemon answers" in err and "probing directly instead" in err
    assert code == 0 and "local" in out and "1/1 up" in out


async def test_cli_health_with_a_wrong_token(sqlite_store: Store, tmp_path: Path) -> None:
    world = World(store=sqlite_store, token=TOKEN)
    running = Daemon(world)
    await running.server.start_server()
    try:
        config = config_file(tmp_path / "m.yaml", port_of(running), WORLD_PROVIDERS, token="not-it")
        code, _, err = await run_cli("health", "-c", config)
        assert code == 1 and "unauthorized" in err and "not-it" not in err
    finally:
        await running.server.close()


async def test_cli_rank_prints_the_score_components(daemon: Daemon, tmp_path: Path) -> None:
    config = config_file(tmp_path / "m.yaml", port_of(daemon), WORLD_PROVIDERS)
    code, out, err = await run_cli("rank", "--task-type", "chat", "-c", config)
    assert code == 0, err
    header = next(line for line in out.splitlines() if "PROVIDER" in line)
    for column in ("SCORE", "AVAILABILITY", "SPEED", "RECENCY", "PRIORITY", "QUALITY", "TASK FIT"):
        assert column in header
    rows = [line.replace("│", " ").split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert rows == ["alpha", "beta"]
    assert "gamma: status down" in out and "delta: missing capabilities" in out
    code, out, _ = await run_cli("rank", "--capability", "vision", "--capability", "tools", "--json", "-c", config)
    body = orjson.loads(out)
    assert code == 0 and [e["provider"] for e in body["ranking"]] == ["alpha"]
    assert body["criteria"]["required_capabilities"] == ["tools", "vision"]
    code, _, err = await run_cli("rank", "--task-type", "dancing", "-c", config)
    assert code == 2 and "task_type" in err
    code, _, _ = await run_cli("rank", "--capability", "rerank", "-c", config)
    assert code == 1


async def test_cli_health_and_rank_show_ttft_and_tokens_per_second_where_measured(daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    config = config_file(tmp_path / "m.yaml", port_of(daemon), WORLD_PROVIDERS)
    code, out, _ = await run_cli("health", "-c", config)
    assert "TTFT" not in out  # no canary yet: no empty columns
    world = daemon.world
    for seconds in (30, 20, 10):
        world.feed_sample(GenerationSample(provider="alpha", provider_type="ollama", model="qwen2.5:7b",
                                           started_at=NOW - timedelta(seconds=seconds), ok=True, ttft_ms=123.0,
                                           tokens_per_s=45.5, total_ms=300.0, completion_tokens=8))
    world.now += timedelta(seconds=2)  # cached answers show new timings within the cache's refresh (1 s)
    code, out, err = await run_cli("health", "-c", config)
    header = next(line for line in out.splitlines() if "PROVIDER" in line)
    assert "TTFT" in header and "TOK/S" in header, out
    alpha = next(line for line in out.splitlines() if line.lstrip().startswith("alpha"))
    assert "123 ms" in alpha and "45.5" in alpha
    beta = next(line for line in out.splitlines() if line.lstrip().startswith("beta"))
    assert "123 ms" not in beta
    code, out, err = await run_cli("rank", "--task-type", "chat", "-c", config)
    assert code == 0, err
    header = next(line for line in out.splitlines() if "PROVIDER" in line)
    assert "SPEED" in header and "TTFT" in header and "TOK/S" in header
    assert "123 ms" in next(line for line in out.splitlines() if " alpha " in line)


async def test_cli_rank_without_a_daemon(tmp_path: Path) -> None:
    config = config_file(tmp_path / "m.yaml", refused_port(), WORLD_PROVIDERS)
    code, _, err = await run_cli("rank", "-c", config)
    assert code == 1 and "no daemon answers" in err and "monitord run" in err


async def test_monitor_shows_the_table_and_the_events(daemon: Daemon) -> None:
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=True, color_system=None)  # Live redraws into it
    watcher = asyncio.create_task(cli_monitor.monitor(MonitordClient(daemon.url, timeout_s=1.0), None,
                                                      console=console, plain=False))
    try:
        await eventually(lambda: "live: following events" in output.getvalue(), what="the stream open")
        world = daemon.world
        world.feed(probe(world.specs["gamma"], at=NOW + timedelta(seconds=1)))
        world.feed(probe(world.specs["gamma"], at=NOW + timedelta(seconds=2)))  # gamma: down -> up
        await eventually(lambda: "gamma: down -> up" in output.getvalue(), what="the event shown")
        text = output.getvalue()
        assert "alpha" in text and "PROVIDER" in text and "connecting" in text
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


def test_describe_event() -> None:
    event = ServerEvent(3, "ranking.best_changed", {"at": "t", "previous": None, "current": "a"})
    assert cli_monitor.describe_event(event) == "t  best provider: - -> a"
    stats = {"provider": "p", "model": "m", "last_sample_at": "t", "ttft_p50_ms": 120.0, "tokens_per_s_p50": 33.3}
    describe = cli_monitor.describe_event
    assert describe(ServerEvent(4, "generation.updated", stats)) == "t  p/m: TTFT p50 120 ms, 33.3 tok/s"
    failed = {**stats, "last_error_at": "t", "last_error_class": "stream_stalled"}
    assert describe(ServerEvent(5, "generation.updated", failed)) == "t  p/m: canary failed (stream_stalled)"
    skipped = {**stats, "last_skip_at": "t", "last_skip_class": "busy"}
    assert describe(ServerEvent(6, "generation.updated", skipped)) == "t  p/m: canary skipped (busy)"


# --- attempts: the caller's request measured, reported, and the next fallback after a failure ---


@pytest.fixture
async def fleet(sqlite_store: Store) -> AsyncIterator[tuple[Daemon, dict[str, ProviderDouble]]]:
    """Three llama.cpp doubles ranked dead > broken > good (by weight): refused, 500, and a real answer."""
    doubles = {name: await ProviderDouble("llamacpp", llamacpp_app).start() for name in ("dead", "broken", "good")}
    await doubles["dead"].set(Scenario.DOWN)
    await doubles["broken"].set(Scenario.ERROR)
    specs = {name: ProviderSpec(name, "llamacpp", double.url, capabilities=frozenset({"chat"}), weight=weight)
             for (name, double), weight in zip(doubles.items(), (1.0, 0.9, 0.8), strict=True)}
    world = World(store=sqlite_store, specs=specs)
    for spec in specs.values():  # every one looked fine to the probes
        world.feed(probe(spec, models=(ModelInfo("qwen2.5-0.5b-instruct"),)))
    running = Daemon(world)
    await running.server.start_server()
    yield running, doubles
    await running.server.close()
    for double in doubles.values():
        await double.stop()


async def ask(http: aiohttp.ClientSession, call: Attempt) -> None:
    assert call.chat_url is not None
    async with http.post(call.chat_url, json={"model": call.model, "messages": [{"role": "user", "content": "hi"}]},
                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
        resp.raise_for_status()
        call.first_token()
        body = await resp.json()
    call.completion_tokens = body["usage"]["completion_tokens"]


async def test_attempts_report_each_outcome_and_fall_back_until_one_answers(
        fleet: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, _ = fleet
    tried = []
    async with MonitordClient(daemon.url) as monitord, aiohttp.ClientSession() as http:
        choice = await monitord.select(fallbacks=2)
        async for call in monitord.attempts(choice, client="tests"):
            tried.append(call)
            async with call:
                await ask(http, call)
        await monitord.flush()
        states = {name: (await monitord.provider(name)).provider for name in ("dead", "broken", "good")}
    assert [(c.provider, c.ok, c.error_class) for c in tried] == [
        ("dead", False, ErrorClass.REFUSED), ("broken", False, ErrorClass.HTTP_5XX), ("good", True, None)]
    good = tried[-1]
    assert good.model == "qwen2.5-0.5b-instruct" and good.completion_tokens == 1
    assert good.ttft_ms is not None and good.duration_ms is not None and 0 < good.ttft_ms <= good.duration_ms
    assert states["dead"]["suspect"] and states["dead"]["last_report_error_class"] == "refused"
    assert states["broken"]["suspect"] and states["broken"]["last_report_error_class"] == "http_5xx"
    assert not states["good"]["suspect"] and states["good"]["reports_ok"] == 1
    # the next selection already avoids both, before any probe
    async with MonitordClient(daemon.url) as monitord:
        assert (await monitord.select()).provider.provider == "good"


async def test_attempts_raise_when_all_fail_and_leave_the_callers_own_errors_alone(
        fleet: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, doubles = fleet
    await doubles["good"].set(Scenario.HANG)
    async with MonitordClient(daemon.url) as monitord, aiohttp.ClientSession() as http:
        choice = await monitord.select(fallbacks=2)
        with pytest.raises(AllCandidatesFailed) as caught:
            async for call in monitord.attempts(choice):
                async with call:
                    async with asyncio.timeout(0.3):
                        await ask(http, call)
        assert [a.error_class for a in caught.value.attempts] == [
            ErrorClass.REFUSED, ErrorClass.HTTP_5XX, ErrorClass.TIMEOUT]
        with pytest.raises(KeyError):  # a bug in the caller's block is not the provider's failure
            async for call in monitord.attempts(choice):
                async with call:
                    {}["missing"]
        await monitord.flush()
        state = (await monitord.provider("good")).provider
    assert state["last_report_error_class"] == "timeout" and state["reports"] == 1


@pytest.mark.parametrize(("exc", "expected"), [
    (TimeoutError(), ErrorClass.TIMEOUT),
    (ConnectionRefusedError(), ErrorClass.REFUSED),
    (ConnectionResetError(), ErrorClass.CONNECTION),
    (aiohttp.ServerDisconnectedError(), ErrorClass.CONNECTION),
    (type("APIStatusError", (Exception,), {"status_code": 503})(), ErrorClass.HTTP_5XX),
    (type("HTTPStatusError", (Exception,), {"response": type("R", (), {"status_code": 429})()})(),
     ErrorClass.RATE_LIMITED),
    (type("ReadTimeout", (Exception,), {})(), ErrorClass.TIMEOUT),
    (type("ConnectError", (Exception,), {})(), ErrorClass.CONNECTION),
    (ValueError("the caller's own"), None),
    (asyncio.CancelledError(), None),
])
def test_failures_are_classified_like_probes(exc: BaseException, expected: ErrorClass | None) -> None:
    assert classify_failure(exc) is expected


def test_monitor_lines_carry_the_canary_speed_where_measured() -> None:
    now = NOW
    plain_line = {"name": "a", "status": "up", "since": now.isoformat()}
    assert "TTFT" not in cli_monitor.provider_line(plain_line, now)
    generation = {"small": {"model": "small", "samples_ok": 1, "ttft_p50_ms": 40.0, "tokens_per_s_p50": 90.0},
                  "big": {"model": "big", "samples_ok": 4, "ttft_p50_ms": 310.0, "tokens_per_s_p50": 12.25}}
    line = cli_monitor.provider_line({**plain_line, "generation": generation}, now)
    assert line == "a  up  for 0s  TTFT 310 ms 12.2 tok/s"  # the model with the most successful samples


async def test_the_readme_example_selects_calls_through_api_base_and_reports(
        fleet: tuple[Daemon, dict[str, ProviderDouble]]) -> None:
    daemon, _ = fleet
    readme = (REPO / "README.md").read_text()
    start = readme.index("```python\nimport aiohttp\nfrom monitord.client import MonitordClient")
    code = readme[start + len("```python\n"): readme.index("```\n", start + 10)]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own code, as a user would paste it
    async with MonitordClient(daemon.url) as monitord, aiohttp.ClientSession() as http:
        answer = await namespace["ask"](monitord, http, [{"role": "user", "content": "hi"}])
        await monitord.flush()
        good = (await monitord.provider("good")).provider
    assert answer == "Hello"  # the llama.cpp double's reply, reached through api_base after any failed candidate
    assert good["reports_ok"] == 1 and good["last_report_ok"] is True
