"""API fixtures: a World of configured providers fed with real ProbeResults, and `api` to serve it on 127.0.0.1.

`assert_error(resp, status, code)` is the one check of the API's error shape; every negative API test uses it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitord.api import ApiContext, make_app
from monitord.api.events import EventHub
from monitord.health import LiveState
from monitord.model import ErrorClass, GenerationSample, ModelInfo, ModelKind, ProbeResult, ProviderSpec, Secret, Status
from monitord.pipeline import Recorded
from monitord.store import Store, migrate

NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)
TOKEN = "tok-3f9a1c2e"
# Values that must never leave the API: keys, header values, the password in a base URL.
SECRETS = ("sk-alpha-7c1d", "hdr-beta-99e0", "pw-gamma-41b2", TOKEN)

CHAT = frozenset({"chat", "completion", "streaming"})
LLAVA = ModelInfo("llava:13b", parameter_size="13B", context_length=4096,
                  capabilities=frozenset({"completion", "vision"}))
QWEN = ModelInfo("qwen2.5:7b", parameter_size="7.6B", context_length=32768,
                 capabilities=frozenset({"completion", "tools"}))
LLAMA = ModelInfo("meta-llama/Llama-3.1-8B-Instruct", context_length=8192)
EMBED = ModelInfo("nomic-embed-text", kind=ModelKind.EMBEDDING, context_length=8192)


def default_specs() -> dict[str, ProviderSpec]:
    """alpha: vision and tools; beta: plain chat, slower; gamma: down; delta: embeddings only."""
    specs = [
        ProviderSpec("alpha", "ollama", "http://127.0.0.1:11434", api_key=Secret(SECRETS[0]),
                     capabilities=CHAT | {"vision", "tools"}, models=("llava:13b",)),
        ProviderSpec("beta", "vllm", "http://127.0.0.1:8000", headers=(("X-Api-Token", Secret(SECRETS[1])),),
                     capabilities=CHAT),
        ProviderSpec("gamma", "llamacpp", f"http://admin:{SECRETS[2]}@127.0.0.1:8080", capabilities=CHAT),
        ProviderSpec("delta", "localai", "http://127.0.0.1:8081", capabilities=frozenset({"embeddings"})),
    ]
    return {spec.name: spec for spec in specs}


def probe(spec: ProviderSpec, status: Status = Status.UP, *, at: datetime = NOW, total_ms: float = 20.0,
          models: tuple[ModelInfo, ...] = (), error_class: ErrorClass | None = None,
          error: str | None = None) -> ProbeResult:
    if status is Status.DOWN and error_class is None:
        error_class, error = ErrorClass.REFUSED, "connection refused"
    return ProbeResult(provider=spec.name, provider_type=spec.type, started_at=at, status=status,
                       total_ms=total_ms, error_class=error_class, error=error, models=models,
                       http_status=200 if status is Status.UP else None)


@dataclass
class World:
    """Configured providers, their live state and the API context over them, on a settable clock."""

    store: Store
    specs: dict[str, ProviderSpec] = field(default_factory=default_specs)
    now: datetime = NOW
    ready: bool = True
    token: str | None = None
    heartbeat_s: float = 15.0
    live: LiveState = field(default_factory=LiveState)
    ctx: ApiContext = field(init=False)

    def __post_init__(self) -> None:
        for spec in self.specs.values():
            self.live.track(spec.name, spec.type)
        self.ctx = ApiContext(
            live=self.live, specs=lambda: self.specs, store=self.store, ready=lambda: self.ready,
            token=Secret(self.token) if self.token else None, clock=lambda: self.now,
            events=EventHub(heartbeat_s=self.heartbeat_s), best_check_interval_s=0.01,
        )

    def feed(self, result: ProbeResult) -> None:
        """What the daemon does with each probe result."""
        self.store.enqueue(result)
        changes = self.live.fold(result, self.now)
        self.ctx.on_result(result, changes)

    def feed_sample(self, sample: GenerationSample) -> None:
        """What the daemon's pipeline does with each generation canary sample (monitord.pipeline.wire)."""
        self.store.enqueue(sample)
        changes = self.live.fold_sample(sample, self.now)
        self.ctx.generation_stats.fold(sample, self.now)
        self.ctx.on_sample(Recorded(sample, tuple(changes), self.now, True))

    def feed_standard(self, rounds: int = 5) -> None:
        """alpha up and fast, beta up and slower, gamma down, delta (embeddings) up."""
        s = self.specs
        for index in range(rounds):
            at = self.now - timedelta(seconds=10 * (rounds - index))
            self.feed(probe(s["alpha"], at=at, total_ms=15.0, models=(LLAVA, QWEN)))
            self.feed(probe(s["beta"], at=at, total_ms=120.0, models=(LLAMA,)))
            self.feed(probe(s["gamma"], Status.DOWN, at=at, total_ms=3.0))
            self.feed(probe(s["delta"], at=at, total_ms=30.0, models=(EMBED,)))

    def reconfigure(self, specs: Mapping[str, ProviderSpec]) -> None:
        removed = set(self.specs) - set(specs)
        self.specs = dict(specs)
        for name in removed:
            self.live.remove(name)
        for spec in specs.values():
            self.live.track(spec.name, spec.type)
        self.ctx.on_reload(removed)


ApiFactory = Callable[..., Awaitable[tuple[TestClient[web.Request, web.Application], World]]]


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test gets a copy (migrating takes longer than most tests)."""
    path = tmp_path_factory.mktemp("api-template") / "monitord.db"
    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
async def sqlite_store(migrated_sqlite: Path, tmp_path: Path) -> AsyncIterator[Store]:
    """A started Store on a fresh, migrated SQLite file (closed after the test)."""
    path = tmp_path / "api.db"
    shutil.copyfile(migrated_sqlite, path)
    store = await Store.open(f"sqlite+aiosqlite:///{path}", flush_interval_s=0.05)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def api_factory(sqlite_store: Store) -> AsyncIterator[ApiFactory]:
    """`client, world = await api_factory(token=..., feed=True, store=...)`: the app on a real TestServer."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(*, feed: bool = True, store: Store | None = None, **world_options: Any) -> tuple[
            TestClient[web.Request, web.Application], World]:
        world = World(store=store or sqlite_store, **world_options)
        if feed:
            world.feed_standard()
        client = TestClient(TestServer(make_app(world.ctx), host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client, world

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def api(api_factory: ApiFactory) -> tuple[TestClient[web.Request, web.Application], World]:
    """The standard world, fed, served without a token."""
    return await api_factory()


async def assert_error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """The one error shape: status, JSON content type, {"error": {"code", "message", "details"?}} and no more."""
    text = await resp.text()
    assert resp.status == status, f"expected {status} {code}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", resp.content_type
    body = await resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "details"} and {"code", "message"} <= set(error), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error.get("details", {}), dict), error
    error_dict: dict[str, Any] = error
    return error_dict
