"""Slowloris against the real `monitord run` under a low file limit: many idle connections and one that trickles
its request head. Issue 14, item 14.

The daemon runs under `prlimit --nofile=256` (the unit had 1,024 and 1,100 idle clients sufficed), is given
api.max_connections 64 and api.idle_timeout 1s, and is attacked with 300 idle connections: the API must keep
answering (the oldest idle connection makes room for a new one), and a head sent a byte at a time is cut off.
"""

from __future__ import annotations

import asyncio
import configparser
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from monitord.config import ApiConfig
from tests.faults.monitord_process import MonitordProcess

IDLE_CONNECTIONS = 300
FILE_LIMIT = 256
SpawnLimited = Callable[[Path], Awaitable[MonitordProcess]]
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "monitord.service"


def config(path: Path, db_url: str, endpoint: str) -> Path:
    path.write_text(yaml.safe_dump({
        "providers": {"alpha": {"type": "vllm", "endpoint": endpoint,
                                "parameters": {"timeout": "1s", "max_retries": 0, "probe_interval": "1s"}}},
        "storage": {"url": db_url},
        "api": {"listen": "127.0.0.1:0", "max_connections": 64, "idle_timeout": "1s"},
    }))
    return path


@pytest.fixture
async def spawn_limited() -> AsyncIterator[Callable[[Path], Awaitable[MonitordProcess]]]:
    """Factory: `monitord run -c PATH` under the low file limit; whatever still runs at teardown is killed."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("no prlimit (util-linux) to run monitord under a low file limit")
    started: list[MonitordProcess] = []

    async def spawn(path: Path) -> MonitordProcess:
        proc = await asyncio.create_subprocess_exec(
            prlimit, f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", sys.executable, "-m", "monitord", "run", "-c",
            str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        process = MonitordProcess(proc)
        started.append(process)
        await process.started()
        return process

    yield spawn
    for process in started:
        if process.proc.returncode is None:
            await process.kill()


def idle_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_idle_connections_do_not_starve_the_api(tmp_path: Path, sqlite_url: str, provider_double: Any,
                                                      spawn_limited: SpawnLimited) -> None:
    double = await provider_double("vllm")
    process = await spawn_limited(config(tmp_path / "monitord.yaml", sqlite_url, double.url))
    port = int(process.api_url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        idle = [idle_connection(port) for _ in range(IDLE_CONNECTIONS)]  # more than the daemon has descriptors
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(20):
                async with http.get(f"{process.api_url}/v1/providers") as reply:
                    assert reply.status == 200, await reply.text()
                async with http.get(f"{process.api_url}/healthz") as reply:
                    assert reply.status == 200
    finally:
        for sock in idle:
            sock.close()
    assert await process.stop() == 0
    assert not [line for line in process.other_lines if "Traceback" in line], process.other_lines[-20:]


async def test_a_trickled_request_head_is_cut_off(tmp_path: Path, sqlite_url: str, provider_double: Any,
                                                  spawn_limited: SpawnLimited) -> None:
    double = await provider_double("vllm")
    process = await spawn_limited(config(tmp_path / "monitord.yaml", sqlite_url, double.url))
    port = int(process.api_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /v1/providers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)  # well inside any per-read timeout: only a head deadline ends it

    sender = asyncio.create_task(trickle())
    try:
        closed = await asyncio.wait_for(reader.read(), 15.0)  # b"" (or a 4xx) once the daemon gives up on it
        assert closed == b"" or closed.startswith(b"HTTP/1.1 4"), closed[:200]
        assert not sender.done(), "the whole head was sent: the daemon waited for it"
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - started < 15.0
    async with aiohttp.ClientSession() as http, http.get(f"{process.api_url}/healthz") as reply:
        assert reply.status == 200
    assert await process.stop() == 0


def test_the_unit_raises_the_file_limit_above_the_connection_cap() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(UNIT)
    limit = int(unit["Service"]["LimitNOFILE"].split(":")[0])
    default_cap = ApiConfig.model_fields["max_connections"].default
    assert limit >= 8 * default_cap, (limit, default_cap)

