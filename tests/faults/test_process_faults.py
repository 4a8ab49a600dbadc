"""The process killed: SIGKILL in the middle of a write burst, then a restart on the same SQLite file.

The database must be intact (`PRAGMA integrity_check`), every row committed before the kill unchanged, the new
process writing again, and an alert that was waiting for its webhook at the kill delivered after the restart exactly
once, under the delivery id its failed attempts carried. SIGHUP with a broken config (refused, the old config keeps
running) is tests/e2e/test_signals.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import select

from monitord.store.schema import alert_deliveries
from tests.doubles.webhook_receiver import Reply, WebhookReceiver
from tests.e2e.test_run import sync_engine
from tests.faults.conftest import StartMonitord
from tests.test_outage import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET = "whsec-kill-9"
BURST_PROVIDERS = 24  # x 5 probes/s: ~120 rows/s, in batches of 5 (many small transactions)
SAFE_KILL_MARGIN_S = 0.3  # kill only when no claim is held and none is due this soon (a live claim would delay
#                           the restarted dispatcher by the claim's lease, webhook timeout + 15 s)


def burst_config(path: Path, db_url: str, doubles: Sequence[str], doomed: str, receiver: WebhookReceiver) -> Path:
    providers: dict[str, Any] = {
        f"burst{i:02d}": {"type": "vllm", "endpoint": doubles[i % len(doubles)],
                          "parameters": {"timeout": "500ms", "max_retries": 0}}
        for i in range(BURST_PROVIDERS)
    }
    providers["doomed"] = {"type": "vllm", "endpoint": doomed, "parameters": {"timeout": "500ms", "max_retries": 0}}
    doc = {
        "providers": providers,
        "monitor": {"interval": "200ms", "jitter": "0s"},
        "storage": {"url": db_url, "batch_size": 5, "flush_interval": "20ms"},
        "api": {"listen": "127.0.0.1:0"},
        "logging": {"format": "json"},
        "alerts": {"failure_threshold": 1, "success_threshold": 1,
                   # Only doomed's alerts: a burst provider that misses its 500 ms on a loaded machine is not the case.
                   "webhooks": [{"name": "ops", "url": receiver.url, "secret": SECRET, "timeout": "500ms",
                                 "providers": ["doomed"]}]},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def db_file(url: str) -> str:
    return url.split("///", 1)[1]


def probe_rows(url: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_file(url)) as conn:
        return conn.execute("SELECT * FROM probes ORDER BY ts, provider").fetchall()


def count_rows(url: str) -> int:
    with sqlite3.connect(db_file(url)) as conn:
        return int(conn.execute("SELECT count(*) FROM probes").fetchone()[0])


def newest_status(url: str, provider: str) -> str | None:
    with sqlite3.connect(db_file(url)) as conn:
        row = conn.execute("SELECT status FROM probes WHERE provider = ? ORDER BY ts DESC LIMIT 1", (provider,))
        found = row.fetchone()
    return str(found[0]) if found else None


def deliveries(url: str) -> list[Any]:
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(alert_deliveries)).all())
    finally:
        engine.dispose()


def safe_to_kill(url: str, event_id: str) -> bool:
    """The pending delivery has failed twice, is claimed by nobody and is not due within the margin."""
    (row,) = [d for d in deliveries(url) if d.event_id == event_id]
    soon = datetime.now(UTC) + timedelta(seconds=SAFE_KILL_MARGIN_S)
    return (row.state == "pending" and row.attempts >= 2 and row.claimed_by is None
            and row.next_attempt_at is not None and row.next_attempt_at > soon)


async def test_sigkill_mid_burst_then_restart(tmp_path: Path, sqlite_url: str, provider_double: Any,
                                              monitord_run: StartMonitord) -> None:
    doubles = [(await provider_double("vllm")).url for _ in range(3)]
    doomed = await provider_double("vllm")
    async with WebhookReceiver() as receiver, aiohttp.ClientSession() as http:
        receiver.reject(500, b"receiver broken")
        config = burst_config(tmp_path / "monitord.yaml", sqlite_url, doubles, doomed.url, receiver)
        first = await monitord_run(config)
        await eventually(lambda: count_rows(sqlite_url) >= 100, what="a write burst under way")

        # An alert waits for the receiver: provider.down, answered 500 twice (same delivery id each time).
        await doomed.set("down")
        await eventually(lambda: len(receiver.requests) >= 2, what="two failed deliveries")
        (down_id,) = {r.header("X-Monitord-Delivery") or "" for r in receiver.requests}
        assert {r.header("X-Monitord-Event") for r in receiver.requests} == {"provider.down"}
        # The event and doomed's alert state commit in the down probe's transaction: once that row is there, the
        # restart knows the outage was announced (tests/faults/test_alert_faults.py kills before that point too).
        await eventually(lambda: newest_status(sqlite_url, "doomed") == "down", timeout_s=30.0,
                         what="the down probe committed")
        await eventually(lambda: safe_to_kill(sqlite_url, down_id), what="a moment with no claim held")

        before = probe_rows(sqlite_url)  # committed before the kill
        code = await first.kill()
        assert code == -9, (code, first.other_lines[-5:])
        assert not first.named("daemon.stopped")  # it never got to say goodbye

        with sqlite3.connect(db_file(sqlite_url)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after_kill = probe_rows(sqlite_url)
        assert after_kill[:len(before)] == before, "rows committed before the kill changed"
        assert len(after_kill) >= len(before) >= 100

        # Restart: the receiver works now; the waiting alert goes out once, with the id it had.
        receiver.answer(Reply())
        second = await monitord_run(config)
        assert second.named("daemon.started")[0]["restored"] > 0
        await eventually(lambda: any(r.delivered for r in receiver.requests[2:]), timeout_s=40.0,
                         what="the pending alert delivered after the restart")
        await eventually(lambda: count_rows(sqlite_url) > len(after_kill) + 50, what="the new process writing")
        async with http.get(f"{second.api_url}/v1/providers") as reply:
            assert reply.status == 200
            statuses = {p["name"]: p["status"] for p in (await reply.json())["providers"]}
            assert statuses["doomed"] == "down" and statuses["burst00"] == "up"
        async with http.get(f"{second.api_url}/readyz") as reply:
            assert reply.status == 200, await reply.text()
        await asyncio.sleep(1.5)  # a duplicate would arrive within the dispatcher's poll interval
        assert await second.stop() == 0

    (row,) = [d for d in deliveries(sqlite_url) if d.event_id == down_id]
    assert (row.state, row.last_status) == ("delivered", 200)
    ids = [r.header("X-Monitord-Delivery") for r in receiver.requests]
    answered = [r for r in receiver.requests if r.delivered]
    assert len(answered) == 1 and answered[0].header("X-Monitord-Delivery") == down_id, [
        (r.reply_status, r.json()["type"], r.json()["previous_status"], r.json()["at"]) for r in receiver.requests]
    assert set(ids) == {down_id}  # nothing else raised: the restart knew doomed was down already
    assert all(r.signature_valid(SECRET) for r in receiver.requests)
    assert row.attempts == len(receiver.requests)
    with sqlite3.connect(db_file(sqlite_url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert probe_rows(sqlite_url)[:len(before)] == before
