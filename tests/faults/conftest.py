"""Fixtures of the fault suite: misbehaving servers, the real daemon on a SQLite file, and the checks every fault
case shares (classified live state, one stored row per probe, peak memory)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import ProviderState
from monitord.store import Store
from monitord.store.queries import ProbeSample
from tests.faults.monitord_process import MonitordProcess
from tests.faults.servers import Behaviour, FaultServer
from tests.test_outage import proxy  # noqa: F401 - the PostgreSQL proxy fixture, for the writer's faults

PROBE_TIMEOUT_S = 0.5
PROBE_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class Provider:
    """One `providers:` entry of a fault-suite config."""

    type: str
    endpoint: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


def config_text(providers: Mapping[str, Provider], db_url: str, *, interval_s: float | None) -> str:
    """A daemon config: short timeouts, no retries, thresholds of 1 so live status is the last probe's.

    `interval_s=None` keeps the scheduler out of the way (probes come from run_once only).
    """
    interval = f"{int(interval_s * 1000)}ms" if interval_s is not None else "1h"
    entries = {
        name: {"type": p.type, "endpoint": p.endpoint,
               "parameters": {"timeout": f"{int(PROBE_TIMEOUT_S * 1000)}ms", "max_retries": 0,
                              "probe_interval": interval, **p.parameters}}
        for name, p in providers.items()
    }
    doc = {
        "providers": entries,
        "monitor": {"jitter": "0s", "concurrency": 8},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0"},  # never the default port: a `make run` may be using it
        "alerts": {"failure_threshold": 1, "success_threshold": 1},
    }
    return yaml.safe_dump(doc, sort_keys=False)


class DaemonHarness:
    """Starts real daemons on one SQLite file and stops whatever a test left running."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._running: list[Daemon] = []

    async def start(self, providers: Mapping[str, Provider], *, interval_s: float | None = None) -> Daemon:
        daemon = Daemon(parse_config(config_text(providers, self.db_url, interval_s=interval_s)),
                        install_signal_handlers=False)
        self._running.append(daemon)
        await daemon.start()
        return daemon

    async def stop(self, daemon: Daemon) -> None:
        self._running.remove(daemon)
        await daemon.stop()

    async def stop_all(self) -> None:
        for daemon in reversed(list(self._running)):
            await self.stop(daemon)

    async def stored(self, provider: str) -> list[ProbeSample]:
        """Every stored row of `provider`, read through a Store of its own (works after the daemon stopped)."""
        store = await Store.open(self.db_url)
        try:
            return await store.history(provider, limit=100_000)
        finally:
            await store.close()


@pytest.fixture
async def harness(sqlite_url: str) -> AsyncIterator[DaemonHarness]:
    h = DaemonHarness(sqlite_url)
    yield h
    await h.stop_all()


StartServer = Callable[..., Awaitable[FaultServer]]


@pytest.fixture
async def fault_server() -> AsyncIterator[StartServer]:
    """Factory: `await fault_server(behaviour, host="127.0.0.1")`; every server is closed at teardown."""
    started: list[FaultServer] = []

    async def start(behaviour: Behaviour, host: str = "127.0.0.1") -> FaultServer:
        server = FaultServer(behaviour, host=host)
        started.append(server)
        return await server.start()

    yield start
    for server in started:
        await server.close()


def state_of(daemon: Daemon, name: str) -> ProviderState:
    state = daemon.live.get(name)
    assert state is not None, f"no live state for {name}"
    return state


async def wait_for_samples(daemon: Daemon, counts: Mapping[str, int], *, timeout_s: float = 8.0) -> None:
    """Until the scheduler has folded at least `counts[name]` results of each provider into live state."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = {name: (s.samples if (s := daemon.live.get(name)) else 0) for name in counts}
        if all(have[name] >= n for name, n in counts.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the scheduler did not keep probing: samples {have}, wanted {dict(counts)}")
        await asyncio.sleep(0.02)


# -- memory ----------------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PeakRss:
    baseline_bytes: int = 0
    peak_bytes: int = 0
    method: str = ""

    @property
    def delta_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


@contextmanager
def peak_rss() -> Iterator[PeakRss]:
    """The process's peak RSS over the block. Resets the kernel's high-water mark (clear_refs 5) so a spike that
    lives inside one synchronous step is still seen; where that is not allowed, samples statm from a task."""
    result = PeakRss()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        result.method = "VmHWM"
    except OSError:
        result.method = "statm sampling"
    result.baseline_bytes = _rss_bytes()
    result.peak_bytes = result.baseline_bytes
    sampler = asyncio.ensure_future(_sample(result)) if result.method != "VmHWM" else None
    try:
        yield result
    finally:
        if sampler is not None:
            sampler.cancel()
        if result.method == "VmHWM":
            hwm_kib = _status_kib("VmHWM")
            assert hwm_kib is not None
            result.peak_bytes = max(result.peak_bytes, hwm_kib * 1024)
        result.peak_bytes = max(result.peak_bytes, _rss_bytes())


async def _sample(result: PeakRss) -> None:
    while True:
        result.peak_bytes = max(result.peak_bytes, _rss_bytes())
        await asyncio.sleep(0.002)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reached the event loop's exception handler during the test (a task that died with an error, a
    callback that raised): the daemon must leave this empty whatever a server does."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


# -- `monitord run` subprocesses -------------------------------------------------------------------------------

StartMonitord = Callable[..., Awaitable[MonitordProcess]]


@pytest.fixture
async def monitord_run() -> AsyncIterator[StartMonitord]:
    """Factory: `await monitord_run(config_path)` starts `python -m monitord run` and waits for `daemon.started`;
    whatever is still running at teardown is killed."""
    started: list[MonitordProcess] = []

    async def start(config: Path, **options: Any) -> MonitordProcess:
        process = await MonitordProcess.spawn(config, **options)
        started.append(process)
        await process.started()
        return process

    yield start
    for process in started:
        if process.proc.returncode is None:
            await process.kill()
