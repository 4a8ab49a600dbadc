"""Does following monitord make real requests faster? Client workers against real llama.cpp servers, per policy.

Real `llama-server` processes (the xllamacpp wheel, one slot and one thread each) load a generated model big enough
that a token takes measurable time. Several client workers send short streamed chat completions back to back; each
policy gets the same run length and the same background load on the same clock: one server takes bursts of long
generations from elsewhere, one is slower (a bigger model) and stalls for a while (SIGSTOP, then SIGCONT), one is
left alone. Policies: round-robin and random (no monitord), and monitord's `best`, `weighted` and `least_loaded`,
each also with outcome reports and fallbacks through `MonitordClient.attempts`. A second fleet of equal servers
with no background load checks that asking monitord never costs against round-robin.

The daemon runs as its own process (`monitord run`, probe interval 1 s); its CPU is read from /proc. TTFT is taken
from before the select (the application pays for asking) to the first content token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import REPO_ROOT, Table, Target, busy_note, percentile
from monitord.client import MonitordClient

ORDER = 70
TITLE = "TTFT of monitord-guided clients against round-robin and random on real llama.cpp servers"

ALIAS = "bench"
REQUEST = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16, "ignore_eos": True,
           "stream": True}
BURST = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "ignore_eos": True}
REQUEST_TIMEOUT_S = 15.0
WORKERS = 4
TOOLS = REPO_ROOT / "tests" / "tools"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One llama-server process; its log goes to a file."""

    def __init__(self, name: str, model: Path, log: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self._command = [sys.executable, str(TOOLS / "llama_server.py"), "--model", str(model), "--port",
                         str(self.port), "--alias", ALIAS, "--n-ctx", "1024", "--threads", "1", "--parallel", "1",
                         "--slots", "--metrics"]
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._proc = await asyncio.create_subprocess_exec(*self._command, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"llama-server {self.name} not up within 60 s")

    def signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(sig)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._log.close()


@dataclass
class Outcome:
    ok: bool
    ttft_ms: float | None
    provider: str


@dataclass
class PolicyRun:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    select_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    daemon_cpu_s: float = 0.0
    seconds: float = 0.0

    @property
    def served(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def failures(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    def ttft(self, q: float) -> float | None:
        return percentile([o.ttft_ms for o in self.outcomes if o.ok and o.ttft_ms is not None], q)


class TimedClient(MonitordClient):
    """MonitordClient that times its select and report round trips."""

    def __init__(self, *args: Any, timings: PolicyRun, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings = timings

    async def report(self, provider: str, outcome: Any = "ok", **fields: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().report(provider, outcome, **fields)
        finally:
            self.timings.report_ms.append((time.perf_counter() - started) * 1000)


async def _stream(http: aiohttp.ClientSession, url: str, on_first: Callable[[], None]) -> None:
    """One streamed chat completion to its end; `on_first` at the first content token. Raises on failure."""
    async with http.post(url + "/v1/chat/completions", json={**REQUEST, "model": ALIAS},
                         timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
        resp.raise_for_status()
        first = True
        async for line in resp.content:
            if first and line.startswith(b"data: {"):
                delta = orjson.loads(line[6:])["choices"][0].get("delta") or {}
                if delta.get("content"):
                    first = False
                    on_first()


async def _worker(policy: str, servers: dict[str, Server], client: TimedClient | None, http: aiohttp.ClientSession,
                  run: PolicyRun, end: float, turn: itertools.count[int], rng: random.Random) -> None:
    names = sorted(servers)
    strategy, reports = _parse(policy)
    while time.monotonic() < end:
        started = time.perf_counter()
        ttft: list[float] = []

        def first() -> None:
            ttft.append((time.perf_counter() - started) * 1000)  # noqa: B023 - called within this iteration

        if client is None:
            name = names[next(turn) % len(names)] if policy == "round-robin" else rng.choice(names)
            try:
                await _stream(http, servers[name].url, first)
                run.outcomes.append(Outcome(True, ttft[0] if ttft else None, name))
            except (aiohttp.ClientError, TimeoutError):
                run.outcomes.append(Outcome(False, None, name))
            continue
        asked = time.perf_counter()
        try:
            choice = await client.select(strategy=strategy, fallbacks=len(servers) - 1 if reports else 0)
        except Exception:  # the daemon did not answer: a failed request for this policy
            run.outcomes.append(Outcome(False, None, "-"))
            await asyncio.sleep(0.05)
            continue
        run.select_ms.append((time.perf_counter() - asked) * 1000)
        if not reports:
            name = choice.provider.provider
            try:
                await _stream(http, servers[name].url, first)
                run.outcomes.append(Outcome(True, ttft[0] if ttft else None, name))
            except (aiohttp.ClientError, TimeoutError):
                run.outcomes.append(Outcome(False, None, name))
            continue
        try:
            async for call in client.attempts(choice, client="bench"):
                def both(attempt: Any = call) -> None:
                    attempt.first_token()
                    first()

                async with call:
                    await _stream(http, servers[call.provider].url, both)
                if call.ok:
                    run.outcomes.append(Outcome(True, ttft[0] if ttft else None, call.provider))
        except Exception:  # AllCandidatesFailed, or the daemon did not answer
            run.outcomes.append(Outcome(False, None, "-"))


def _parse(policy: str) -> tuple[str | None, bool]:
    """'weighted + reports' -> ('weighted', True); 'round-robin' -> (None, False)."""
    if not policy.startswith("monitord "):
        return None, False
    strategy = policy.removeprefix("monitord ").removesuffix(" + reports")
    return strategy, policy.endswith(" + reports")


async def _background(servers: dict[str, Server], http: aiohttp.ClientSession, started: float,
                      length_s: float) -> None:
    """The same load on the same clock for every policy: bursts on `bursty`, a stall of `slow` (where present)."""
    if "bursty" not in servers:
        return

    async def burst(until: float) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(servers["bursty"].url + "/v1/chat/completions", json={**BURST, "model": ALIAS},
                                     timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    await resp.read()

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, started + fraction * length_s - time.monotonic()))

    for begin, end in ((0.1, 0.35), (0.55, 0.8)):
        await at(begin)
        await asyncio.gather(*(burst(started + end * length_s) for _ in range(2)))
        if begin == 0.1 and "slow" in servers:
            await at(0.4)  # the slow server stalls between the bursts
            servers["slow"].signal(signal.SIGSTOP)
            await at(0.5)
            servers["slow"].signal(signal.SIGCONT)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def _daemon(servers: dict[str, Server], tmp: Path, http: aiohttp.ClientSession) -> AsyncIterator[
        tuple[str, int]]:
    port = _free_port()
    providers = "".join(f"  {name}: {{type: llamacpp, endpoint: \"{server.url}\", parameters: {{probe_interval: 1s, "
                        f"timeout: 1s, max_retries: 0}}}}\n" for name, server in servers.items())
    config = tmp / f"monitord-{port}.yaml"
    config.write_text(f"providers:\n{providers}storage:\n  url: sqlite+aiosqlite:///{tmp}/m-{port}.db\n"
                      f"api:\n  listen: 127.0.0.1:{port}\nlogging:\n  level: error\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "monitord", "run", "-c", str(config),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("monitord not ready within 60 s")
            await asyncio.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _run_policy(policy: str, servers: dict[str, Server], tmp: Path, length_s: float,
                      http: aiohttp.ClientSession) -> PolicyRun:
    run = PolicyRun(policy)
    rng = random.Random(7)
    turn = itertools.count()
    async with _daemon(servers, tmp, http) as (url, pid):
        cpu_before = _cpu_s(pid)
        client = TimedClient(url, timeout_s=2.0, max_stale_s=0, timings=run) if policy.startswith("monitord") \
            else None
        started = time.monotonic()
        end = started + length_s
        try:
            load = asyncio.ensure_future(_background(servers, http, started, length_s))
            await asyncio.gather(*(_worker(policy, servers, client, http, run, end, turn, rng)
                                   for _ in range(WORKERS)))
            await load
        finally:
            for server in servers.values():
                server.signal(signal.SIGCONT)
            if client is not None:
                await client.close()
        run.seconds = time.monotonic() - started
        run.daemon_cpu_s = _cpu_s(pid) - cpu_before
    return run


MIXED_POLICIES = ("round-robin", "random", "monitord best", "monitord weighted", "monitord least_loaded",
                  "monitord best + reports", "monitord weighted + reports", "monitord least_loaded + reports")
EQUAL_POLICIES = ("round-robin", "random", "monitord best", "monitord weighted", "monitord least_loaded",
                  "monitord least_loaded + reports")


async def run(quick: bool) -> list[Table]:
    from tests.tools.tiny_gguf import write_tiny_gguf

    tables: list[Table] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if quick:
            model = slow_model = write_tiny_gguf(tmp / "tiny.gguf")
        else:
            model = write_tiny_gguf(tmp / "bench.gguf", embd=256, layers=4, ff=768)
            slow_model = write_tiny_gguf(tmp / "slow.gguf", embd=512, layers=4, ff=1536)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)  # llama-server may close a kept-alive stream
        async with aiohttp.ClientSession(connector=connector) as http:
            scenarios: list[tuple[str, dict[str, Path], tuple[str, ...], float]] = (
                [("mixed", {"steady": model, "bursty": model}, ("round-robin", "monitord least_loaded + reports"),
                  4.0)] if quick else
                [("mixed", {"steady": model, "bursty": model, "slow": slow_model}, MIXED_POLICIES, 30.0),
                 ("equal", {"one": model, "two": model, "three": model}, EQUAL_POLICIES, 15.0)])
            for scenario, models, policies, length_s in scenarios:
                servers = {name: Server(name, path, tmp / f"{scenario}-{name}.log") for name, path in models.items()}
                try:
                    for server in servers.values():
                        await server.start(http)
                    runs = [await _run_policy(policy, servers, tmp, length_s, http) for policy in policies]
                finally:
                    for server in servers.values():
                        await server.stop()
                tables.append(_table(scenario, runs, length_s, quick))
    return tables


def _table(scenario: str, runs: list[PolicyRun], length_s: float, quick: bool) -> Table:
    described = {"mixed": "mixed fleet: one server with bursts of other work, one slower that stalls 10% of the "
                          "time, one left alone",
                 "equal": "equal fleet: identical servers, no other load"}[scenario]
    table = Table(f"selection, {described} ({WORKERS} clients, {length_s:g} s per policy)",
                  ("policy", "served", "failures", "TTFT p50 ms", "TTFT p95 ms", "TTFT p99 ms", "p95 / round-robin",
                   "select ms p50", "report ms p50", "daemon CPU ms / call"))
    baseline = next(r for r in runs if r.name == "round-robin")
    rr_p95 = baseline.ttft(0.95)
    probing_cpu_per_s = baseline.daemon_cpu_s / baseline.seconds if baseline.seconds else 0.0
    figures: dict[str, list[float]] = {}
    for run in runs:
        p95 = run.ttft(0.95)
        calls = len(run.select_ms) + len(run.report_ms)
        extra_cpu_s = run.daemon_cpu_s - probing_cpu_per_s * run.seconds
        table.add(run.name, run.served, run.failures, run.ttft(0.5), p95, run.ttft(0.99),
                  p95 / rr_p95 if p95 is not None and rr_p95 else None,
                  percentile(run.select_ms, 0.5) if run.select_ms else None,
                  percentile(run.report_ms, 0.5) if run.report_ms else None,
                  max(0.0, extra_cpu_s) * 1000 / calls if calls else None)
        figures[run.name] = [o.ttft_ms for o in run.outcomes if o.ok and o.ttft_ms is not None]
    monitord_runs = [r for r in runs if r.name.startswith("monitord") and r.ttft(0.95) is not None]
    if monitord_runs and rr_p95:
        best = min(monitord_runs, key=lambda r: r.ttft(0.95) or float("inf"))
        ratio = (best.ttft(0.95) or 0.0) / rr_p95
        if scenario == "mixed":
            met = ratio <= 0.5 and best.served >= baseline.served
            table.targets.append(Target("selection on a mixed fleet: TTFT p95 of the best monitord policy vs "
                                        "round-robin", "<= 0.5x, at least as many served",
                                        f"{ratio:.2f}x ({best.name}), {best.served} vs {baseline.served} served",
                                        met, busy_note()))
            table.notes.append(f"best monitord policy: {best.name}, p95 {ratio:.2f}x round-robin's with "
                               f"{best.served} served against {baseline.served} (target <= 0.5x with at least as "
                               f"many served: {'met' if met else 'missed'})")
        else:
            worst = max(monitord_runs, key=lambda r: r.ttft(0.95) or 0.0)
            worst_ratio = (worst.ttft(0.95) or 0.0) / rr_p95
            table.targets.append(Target("selection on an equal fleet: TTFT p95 of the worst monitord policy vs "
                                        "round-robin", "<= 1.0x (none worse)", f"{worst_ratio:.2f}x ({worst.name})",
                                        worst_ratio <= 1.0, busy_note()))
            table.notes.append(f"equal fleet: worst monitord policy {worst.name} at "
                               f"{(worst.ttft(0.95) or 0.0) / rr_p95:.2f}x round-robin's p95 (target: none worse)")
    table.notes.append(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; TTFT "
                       "counts from before the select; daemon CPU per call is the daemon's CPU above what probing "
                       "alone cost (the round-robin run), per select and report")
    if quick:
        table.notes.append("quick run: tiny model, two policies, not a measurement")
    table.figures[f"selection_ttft_{scenario}"] = figures
    return table
