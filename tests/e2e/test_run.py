"""`monitord run` as a real subprocess against provider doubles: probes land in the database, SIGTERM flushes,
a bad config exits 2 and starts nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from tests.doubles.base import ProviderDouble

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, providers: dict[str, tuple[str, str]], storage_url: str, *, interval: str = "300ms",
                 extra: str = "") -> Path:
    lines = ["providers:"]
    for name, (provider_type, url) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  "    parameters: {timeout: 500ms, max_retries: 0}"]
    lines += ["monitor:", f"  interval: {interval}", "storage:", f"  url: {storage_url}",
              "api:", "  listen: 127.0.0.1:0", "logging:", "  format: json", extra]
    path.write_text("\n".join(lines) + "\n")
    return path


# Every daemon a test starts, so tests/e2e/conftest.py can kill what a failing test left running.
STARTED: list[asyncio.subprocess.Process] = []


async def start_monitord(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    STARTED.append(proc)
    return proc


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, list[dict[str, Any]], str]:
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    events = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    assert proc.returncode is not None
    return proc.returncode, events, stderr.decode()


def sync_engine(url: str) -> Engine:
    """A synchronous engine on the daemon's database (psycopg2 takes the schema as a server option)."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return create_engine(parsed.set(drivername="sqlite"))
    schema = parsed.query.get("search_path")
    parsed = parsed.set(drivername="postgresql+psycopg2").difference_update_query(["search_path"])
    return create_engine(parsed, connect_args={"options": f"-csearch_path={schema}"} if schema else {})


async def wait_for_rows(url: str, minimum: int, timeout_s: float = 15.0) -> None:
    engine = sync_engine(url)
    try:
        for _ in range(int(timeout_s / 0.2)):
            try:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM probes")).scalar_one() >= minimum:
                        return
            except Exception:  # table not created yet
                pass
            await asyncio.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"fewer than {minimum} probe rows after {timeout_s}s")


def probe_rows(url: str) -> list[tuple[str, str, str | None]]:
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT provider, status, error_class FROM probes"))]
    finally:
        engine.dispose()


async def test_run_probes_records_and_stops_cleanly(tmp_path: Path, db_url: str, provider_double: Any) -> None:
    healthy: ProviderDouble = await provider_double("llamacpp")
    loading: ProviderDouble = await provider_double("llamacpp", "loading")
    ollama: ProviderDouble = await provider_double("ollama")
    dead: ProviderDouble = await provider_double("llamacpp", "down")
    config = write_config(tmp_path / "monitord.yaml", {
        "healthy": ("llamacpp", healthy.url), "loading": ("llamacpp", loading.url),
        "ollama": ("ollama", ollama.url), "dead": ("llamacpp", dead.url)}, db_url)

    proc = await start_monitord("run", "-c", str(config))
    await wait_for_rows(db_url, 12)
    code, events, stderr = await stop(proc)

    assert code == 0, stderr
    rows = probe_rows(db_url)
    by_provider = {name: Counter((s, e) for p, s, e in rows if p == name) for name in ("healthy", "loading",
                                                                                      "ollama", "dead")}
    assert set(by_provider["healthy"]) == {("up", None)}
    assert set(by_provider["ollama"]) == {("up", None)}
    assert set(by_provider["loading"]) == {("loading", "loading")}
    assert set(by_provider["dead"]) == {("down", "refused")}
    # What the doubles saw matches what was recorded: every recorded probe of "healthy" hit /health.
    assert sum(1 for r in healthy.requests if r.path == "/health") >= sum(by_provider["healthy"].values())
    names = [e["event"] for e in events]
    assert "daemon.started" in names and names[-1] == "daemon.stopped"
    changes = {e["provider"]: e["current"] for e in events if e["event"] == "provider.status_changed"}
    assert changes == {"healthy": "up", "loading": "loading", "ollama": "up", "dead": "down"}
    flushed = next(e for e in events if e["event"] == "store.closed")
    assert flushed["written"] == len(rows) and flushed["dropped"] == 0


async def test_sigterm_writes_pending_rows(tmp_path: Path, sqlite_url: str, provider_double: Any) -> None:
    """A long flush interval keeps rows in memory; SIGTERM must still write every one of them."""
    double = await provider_double("ollama")
    config = write_config(tmp_path / "monitord.yaml", {"a": ("ollama", double.url)}, sqlite_url,
                          interval="200ms", extra="")
    text_config = config.read_text().replace("storage:\n", "storage:\n  flush_interval: 1h\n  batch_size: 100000\n")
    config.write_text(text_config)
    proc = await start_monitord("run", "-c", str(config))
    for _ in range(100):
        if sum(1 for r in double.requests if r.path == "/api/tags") >= 5:
            break
        await asyncio.sleep(0.1)
    code, events, stderr = await stop(proc)
    assert code == 0, stderr
    written = next(e for e in events if e["event"] == "store.closed")["written"]
    assert written >= 5 and len(probe_rows(sqlite_url)) == written


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("providers:\n  vllm:\n    type: vllm\n    parameters:\n      timeout: soon\n",
         "providers.vllm.parameters.timeout"),
        ("providers:\n  x:\n    type: nosuchserver\n", "providers.x.type"),
        ("providers:\n  x:\n    type: vllm\n    api_key: ${MONITORD_TEST_UNSET_VAR}\n", "providers.x.api_key"),
    ],
)
async def test_bad_config_exits_2_and_starts_nothing(tmp_path: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text + "storage:\n  url: sqlite+aiosqlite:///" + str(tmp_path / "never.db") + "\n")
    proc = await start_monitord("run", "-c", str(config))
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2
    assert expected in stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert not (tmp_path / "never.db").exists()


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    """Checked after a real run by the store tests too; here the daemon's own default pragma."""
    db = tmp_path / "wal.db"
    import subprocess

    subprocess.run([sys.executable, "-m", "monitord", "migrate", "-c", str(write_config(
        tmp_path / "m.yaml", {"a": ("vllm", "http://127.0.0.1:9")}, f"sqlite+aiosqlite:///{db}"))],
        check=True, cwd=REPO, capture_output=True, timeout=60)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
