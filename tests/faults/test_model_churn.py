"""A server that invents new model ids on every probe, under the real daemon on SQLite and PostgreSQL.

Issue 14, item 13: a listing is cut to monitor.max_models, provider_models keeps at most that many per provider
(the least recently seen go), sightings older than storage.forget_models_after are forgotten, and model alerts
come at most once per provider per five minutes.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import yaml
from sqlalchemy import func, select
from structlog.testing import capture_logs

from monitord.store import dialects, migrate
from monitord.store.schema import provider_models, providers
from tests.faults.conftest import StartServer
from tests.faults.servers import Behaviour, Exchange
from tests.test_outage import eventually, running

MAX_MODELS = 20
LISTED = 30  # per probe, all new


def churning() -> Behaviour:
    """Every model list names LISTED ids never listed before."""
    counter = itertools.count()

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is not None:
            ids = [f"churn-{next(counter)}" for _ in range(LISTED)]
            body = orjson.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
            await ex.send(200, body)

    return behaviour


async def model_rows(url: str) -> dict[str, int]:
    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            query = select(provider_models.c.provider, func.count()).group_by(provider_models.c.provider)
            return {row[0]: int(row[1]) for row in await conn.execute(query)}
    finally:
        await engine.dispose()


async def seed_an_old_sighting(url: str, provider: str) -> None:
    """A model last seen 30 days ago, as a provider that stopped listing it long ago leaves behind."""
    await migrate.upgrade(url)
    engine = dialects.create_engine(url)
    old = datetime.now(UTC) - timedelta(days=30)
    try:
        async with engine.begin() as conn:
            await conn.execute(providers.insert().values(name=provider, type="vllm", endpoint="http://127.0.0.1:1",
                                                         enabled=True, settings={}, first_seen=old, updated_at=old))
            await conn.execute(provider_models.insert().values(provider=provider, model_id="long-gone",
                                                               details={}, first_seen=old, last_seen=old))
    finally:
        await engine.dispose()


async def test_a_churning_server_cannot_grow_the_model_table(db_url: str, fault_server: StartServer,
                                                            provider_double: Any) -> None:
    churner = await fault_server(churning())
    steady = await provider_double("vllm")
    await seed_an_old_sighting(db_url, "steady")
    text = yaml.safe_dump({
        "providers": {
            "churner": {"type": "vllm", "endpoint": churner.url,
                        "parameters": {"timeout": "1s", "max_retries": 0, "probe_interval": "100ms"}},
            "steady": {"type": "vllm", "endpoint": steady.url,
                       "parameters": {"timeout": "1s", "max_retries": 0, "probe_interval": "100ms"}},
        },
        "monitor": {"jitter": "0s", "max_models": MAX_MODELS},
        "storage": {"url": db_url, "flush_interval": "50ms", "batch_size": 10, "forget_models_after": "7d"},
        "api": {"listen": "127.0.0.1:0"},
    })
    with capture_logs() as logs:
        async with running(text) as (daemon, _http, _api):
            await eventually(lambda: (s := daemon.live.get("churner")) is not None and s.samples >= 15, timeout_s=30.0,
                             what="fifteen probes of the churning server")
            state = daemon.live.get("churner")
            assert state is not None and len(state.models) == MAX_MODELS  # the listing is cut to its first 20
            await daemon.store.flush()
            await eventually(lambda: daemon.store.pending == 0, what="every row written")
    # the first change is told, the churn after it waits out alerts' model_events_every (5 min): not 2 per probe
    model_events = [e for e in logs if e["event"] == "alert.raised" and e["type"].startswith("model.")
                    and e["provider"] == "churner"]
    assert len(model_events) <= 2, model_events
    counts = await model_rows(db_url)
    # 15+ probes listed 450+ ids; 20 are kept, the others forgotten as they came
    assert counts["churner"] <= MAX_MODELS, counts
    assert counts.get("steady", 0) >= 1  # its real model stays; "long-gone" (30 days unseen) is forgotten
    engine = dialects.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            gone = await conn.execute(select(provider_models).where(provider_models.c.model_id == "long-gone"))
            assert gone.first() is None
    finally:
        await engine.dispose()
