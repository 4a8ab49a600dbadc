"""Store faults on SQLite against the real daemon: the file locked by another process, and the disk full.

Meanwhile probing and the API go on from memory; /readyz and the monitord_store_* metrics say the store is
degraded once a write fails; rows wait in the bounded buffer (past the bound the oldest are dropped and counted);
when the fault goes, every buffered row is written. A PostgreSQL outage (the server restarting or the link cut) is
tests/test_outage.py: the daemon reaches PostgreSQL through a TCP proxy the test cuts and restores. Restarting the
shared PostgreSQL server itself would break every other test using it at the time, so it is not done here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from monitord.daemon import Daemon
from tests.faults.conftest import state_of
from tests.plugins.api import assert_error
from tests.test_outage import config, eventually, metric, probes_recorded, rows_in_database, running

BUSY_TIMEOUT_S = 5.0  # dialects.SQLITE_PRAGMAS: how long a write waits for another process's lock
DISK_BYTES = 4 << 20  # room for the migrated database and its WAL, and little else
LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
print("released", flush=True)
"""


def sqlite_path(url: str) -> str:
    return url.split("///", 1)[1]


def integrity(path: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def scrape(http: aiohttp.ClientSession, api: str) -> str:
    async with http.get(f"{api}/metrics") as reply:
        assert reply.status == 200
        return await reply.text()


async def assert_serving_from_memory(daemon: Daemon, http: aiohttp.ClientSession, api: str) -> None:
    """Probing goes on and the API answers while the store cannot write."""
    samples = {name: state.samples for name, state in daemon.live.all().items()}
    await eventually(lambda: all(state_of(daemon, n).samples > s for n, s in samples.items()),
                     what="probing going on")
    assert daemon.healthy()
    async with http.get(f"{api}/v1/providers") as reply:
        assert reply.status == 200
        assert {p["name"]: p["status"] for p in (await reply.json())["providers"]} == {"alpha": "up", "beta": "up"}


async def assert_degraded(http: aiohttp.ClientSession, api: str, error: str) -> dict[str, Any]:
    async with http.get(f"{api}/readyz") as reply:
        body = await assert_error(reply, 503, "not_ready")
    details: dict[str, Any] = body["details"]
    assert details["checks"] == {"first_round": True, "store": False, "probes_fresh": True}
    assert details["store"]["state"] == "degraded" and error in details["store"]["error"], details
    assert metric(await scrape(http, api), "monitord_store_healthy") == 0.0
    return details


async def assert_recovered(daemon: Daemon, http: aiohttp.ClientSession, api: str) -> None:
    await eventually(lambda: daemon.store.healthy and daemon.store.pending == 0, timeout_s=20.0,
                     what="the buffer draining")
    async with http.get(f"{api}/readyz") as reply:
        assert reply.status == 200
    assert metric(await scrape(http, api), "monitord_store_healthy") == 1.0


@pytest.mark.parametrize(
    "hold_s",
    [
        pytest.param(2.5, id="within-busy-timeout"),  # the batch waits for the lock; nothing fails
        pytest.param(BUSY_TIMEOUT_S + 3.0, id="past-busy-timeout", marks=pytest.mark.slow),  # the write fails
    ],
)
async def test_a_file_locked_by_another_process_loses_no_row(hold_s: float, sqlite_url: str,
                                                             provider_double: Any) -> None:
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    text = config(sqlite_url, {name: d.url for name, d in doubles.items()},
                  buffer="batch_size: 5\n  buffer_limit: 10000")
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.first_round_done and daemon.store.written_total > 4, what="first rows")
            locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, sqlite_path(sqlite_url),
                                                          str(hold_s), stdout=asyncio.subprocess.PIPE)
            try:
                assert locker.stdout is not None
                assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
                written = daemon.store.written_total
                await eventually(lambda: daemon.store.pending >= 10, what="rows waiting in the buffer")
                await assert_serving_from_memory(daemon, http, api)
                if hold_s > BUSY_TIMEOUT_S:
                    await eventually(lambda: not daemon.store.healthy, timeout_s=hold_s + 2, what="a failed write")
                    await assert_degraded(http, api, "database is locked")
                else:  # a batch waiting for a lock is not a failure: still ready
                    async with http.get(f"{api}/readyz") as reply:
                        assert reply.status == 200
                assert daemon.store.written_total == written  # nothing got past the lock
                assert await asyncio.wait_for(locker.stdout.readline(), hold_s + 10) == b"released\n"
            finally:
                if locker.returncode is None:
                    locker.kill()
                await locker.wait()
            await assert_recovered(daemon, http, api)
        recorded = probes_recorded(daemon)

    assert daemon.store.dropped_total == 0
    assert await rows_in_database(sqlite_url) == daemon.store.written_total == recorded
    assert integrity(sqlite_path(sqlite_url)) == "ok"
    failed = [entry for entry in logs if entry["event"] == "store.write_failed"]
    if hold_s > BUSY_TIMEOUT_S:
        assert failed and "database is locked" in failed[0]["error"]
        assert any(entry["event"] == "store.write_recovered" for entry in logs)
    else:
        assert not failed


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted for the test (root only); skips with the reason where mounting is refused."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount/umount command: cannot make a tiny filesystem to fill")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run([umount, "-l", str(disk)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC; returns the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    # Unbuffered: a buffered file keeps what a short write left over and raises ENOSPC again when it closes.
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_disk_full_is_reported_rows_past_the_bound_are_counted_and_writing_resumes(
        tiny_disk: Path, provider_double: Any) -> None:
    url = f"sqlite+aiosqlite:///{tiny_disk / 'monitord.db'}"
    doubles = {name: await provider_double("vllm") for name in ("alpha", "beta")}
    buffer_limit = 40
    text = config(url, {name: d.url for name, d in doubles.items()},
                  buffer=f"batch_size: 5\n  buffer_limit: {buffer_limit}")
    with capture_logs() as logs:
        async with running(text) as (daemon, http, api):
            await eventually(lambda: daemon.first_round_done and daemon.store.written_total > 4, what="first rows")
            filler = fill(tiny_disk)
            await eventually(lambda: not daemon.store.healthy, what="a write failing for lack of room")
            await eventually(lambda: daemon.store.dropped_total > 0, what="the buffer overflowing")
            await assert_serving_from_memory(daemon, http, api)
            details = await assert_degraded(http, api, "database or disk is full")
            assert details["store"]["pending_rows"] <= buffer_limit and details["store"]["dropped_rows"] > 0
            scraped = await scrape(http, api)
            assert metric(scraped, "monitord_store_pending_rows") <= buffer_limit
            assert metric(scraped, "monitord_store_dropped_total") > 0

            os.remove(filler)
            written = daemon.store.written_total
            await assert_recovered(daemon, http, api)
            await eventually(lambda: daemon.store.written_total > written + buffer_limit, what="writing again")
        recorded = probes_recorded(daemon)

    store = daemon.store
    assert store.dropped_total > 0
    assert await rows_in_database(url) == store.written_total == recorded - store.dropped_total
    assert integrity(sqlite_path(url)) == "ok"
    events = [entry["event"] for entry in logs]
    assert "store.write_failed" in events and "store.write_recovered" in events
    dropped = [entry for entry in logs if entry["event"] == "store.rows_dropped"]
    assert dropped and dropped[0]["reason"] == "buffer_full"
    failed = next(entry for entry in logs if entry["event"] == "store.write_failed")
    assert "database or disk is full" in failed["error"]
