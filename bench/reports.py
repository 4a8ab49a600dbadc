"""Outcome reports: the daemon's CPU per POST /v1/report beside a trivial aiohttp handler taking the same requests.

The daemon is the real one (`Daemon`: the API, the pipeline, the ranking, the alert rules, the store) with 1,000
providers, all up (one vLLM double answers for every one of them, in its own process), probed every 10 minutes
so probing adds little to the windows; its logging as under systemd (info, JSON, to /dev/null here). Each report
goes where an application's goes: the API's checks, the pipeline (the provider's report window and `suspect`,
the ranking, the metrics, the log sink). The trivial handler reads the body and answers 202 "ok" (no parsing):
what any handler that takes a report must do at least.

Both servers run in spawned processes pinned to core 0 on the loop `monitord run` uses; the load is `wrk` (one
thread, CONNECTIONS connections) pinned to core 1, or an aiohttp load generator without wrk. Every request
names the next of the 1,000 providers (a provider gets a few reports a second, under the per-provider budget of
20, so every report counts) and one in twenty reports a failure. Each repeat runs the trivial handler, then the
daemon, for RUN_S each; a repeat's figure is the server process's CPU (user + system, /proc) per request answered
over the trivial handler's, and min / median / max are over the repeats. Issue 16 sets no bound for this route;
for reference, its bound for POST /v1/select with new criteria is <= 5x the trivial handler's CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import Table, Target, busy_note, fmt, raise_fd_limit, run_async, spread_text

ORDER = 32
TITLE = "outcome reports: daemon CPU per POST /v1/report vs a trivial aiohttp handler"

PROVIDERS, QUICK_PROVIDERS = 1_000, 20
CONNECTIONS = 50
RUN_S, REPEATS = 5.0, 3
QUICK_RUN_S, QUICK_REPEATS = 1.0, 1
SPAWN_TIMEOUT_S = 120.0
FAILURE_EVERY = 20
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SELECT_CPU_MAX = 5.0  # issue 16's bound for POST /v1/select, quoted for reference


def _body(counter: int, providers: int) -> str:
    outcome = "timeout" if counter % FAILURE_EVERY == 0 else "ok"
    return (f'{{"provider": "p{counter % providers:04d}", "model": "{MODEL}", "outcome": "{outcome}", '
            f'"ttft_ms": {50 + counter % 500}, "completion_tokens": 16, "duration_ms": 900, "client": "bench"}}')


def _lua(providers: int) -> str:
    """The wrk script: what `_body` builds, request after request."""
    return f"""\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local outcome = "ok"
  if counter % {FAILURE_EVERY} == 0 then outcome = "timeout" end
  local body = string.format('{{"provider": "p%04d", "model": "{MODEL}", "outcome": "%s", "ttft_ms": %d, ' ..
    '"completion_tokens": 16, "duration_ms": 900, "client": "bench"}}', counter % {providers}, outcome,
    50 + counter % 500)
  return wrk.format(nil, "/v1/report", nil, body)
end
"""


# --- servers (spawned processes) ---------------------------------------------------------------------------------


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _serve(conn: Connection, kind: str, providers: int) -> None:
    from monitord import logs

    _pin(0)
    raise_fd_limit()
    try:
        with open(os.devnull, "w") as devnull:
            logs.configure("info", "json", stream=devnull)  # as under systemd, minus the journal
            run_async(_serve_async(conn, kind, providers))
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise


async def _serve_async(conn: Connection, kind: str, providers: int) -> None:
    if kind == "trivial":
        async def report(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=202, text="ok")

        app = web.Application()
        app.router.add_post("/v1/report", report)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            conn.send({"port": runner.addresses[0][1]})
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        finally:
            await runner.cleanup()
        return
    await _serve_daemon(conn, providers)


async def _serve_daemon(conn: Connection, providers: int) -> None:
    from monitord.config import parse_config
    from monitord.daemon import Daemon
    from monitord.model import Status

    context = multiprocessing.get_context("spawn")
    double_conn, child = context.Pipe()
    double = context.Process(target=_double, args=(child,), daemon=True)
    double.start()
    try:
        url = await asyncio.get_running_loop().run_in_executor(None, double_conn.recv)
        with tempfile.TemporaryDirectory(prefix="monitord-bench-reports-") as tmp:
            lines = ["providers:"]
            lines += [f'  p{index:04d}: {{type: vllm, endpoint: "{url}", models: [{MODEL}], '
                      "parameters: {probe_interval: 600s}}" for index in range(providers)]
            lines += [f'storage: {{url: "sqlite+aiosqlite:///{Path(tmp) / "bench.db"}"}}',
                      'api: {listen: "127.0.0.1:0"}']
            daemon = Daemon(parse_config("\n".join(lines) + "\n"), install_signal_handlers=False)
            await daemon.start()
            try:
                await daemon.run_once()
                up = sum(1 for name in daemon.specs if (s := daemon.live.get(name)) and s.status is Status.UP)
                conn.send({"port": daemon.api_port, "up": up})
                await asyncio.get_running_loop().run_in_executor(None, conn.recv)
                suspect = sum(1 for name in daemon.specs if (s := daemon.live.get(name)) and s.suspect)
                reports = sum(s.reports for name in daemon.specs if (s := daemon.live.get(name)))
                conn.send({"suspect": suspect, "reports_in_window": reports})
            finally:
                await daemon.stop()
    finally:
        double_conn.send("stop")
        double.join(10)
        if double.is_alive():
            double.kill()


def _double(conn: Connection) -> None:
    """The vLLM double every provider points at, in a process of its own (its CPU is not the daemon's)."""
    from tests.doubles import DOUBLES
    from tests.doubles.base import DoubleControl, ProviderDouble

    async def main() -> None:
        double = await ProviderDouble("vllm", DOUBLES["vllm"], DoubleControl()).start()
        conn.send(double.url)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await double.stop()

    asyncio.run(main())


class Server:
    """One server process; `with Server("daemon", 1000) as server: server.port`."""

    def __init__(self, kind: str, providers: int) -> None:
        self.kind = kind
        self.port = 0
        self.info: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, kind, providers), name=f"bench-reports-{kind}")

    def __enter__(self) -> Server:
        self._proc.start()
        if not self._conn.poll(SPAWN_TIMEOUT_S):
            self._stop()
            raise RuntimeError(f"{self.kind} server did not start")
        reply = self._conn.recv()
        if "error" in reply:
            self._stop()
            raise RuntimeError(f"{self.kind} server failed:\n{reply['error']}")
        self.port = int(reply["port"])
        self.info = reply
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(OSError, EOFError):  # the trivial server just exits
            self._conn.send("stop")
            if self._conn.poll(30):
                self.final = self._conn.recv()
        self._stop()

    def cpu_s(self) -> float:
        """User + system CPU the server process has used so far (its own threads, not its children)."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _stop(self) -> None:
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# --- load --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    requests: int
    requests_per_s: float
    errors: int
    cpu_us: float  # the server's CPU per request answered


def _wrk(wrk: str, port: int, duration_s: float, providers: int, workdir: Path) -> tuple[int, float, int]:
    from bench.api import parse_wrk

    script = workdir / "report.lua"
    script.write_text(_lua(providers))
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration_s))}s", "-s", str(script),
               f"http://127.0.0.1:{port}/v1/report"]
    taskset = shutil.which("taskset")
    if taskset and len(os.sched_getaffinity(0)) > 1:
        command = [taskset, "-c", "1", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    load = parse_wrk(done.stdout)
    return load.requests, load.requests_per_s, load.errors


async def _generate(port: int, duration_s: float, providers: int) -> tuple[int, float, int]:
    """Without wrk: CONNECTIONS workers posting reports back to back (in this process, on core 1)."""
    url = f"http://127.0.0.1:{port}/v1/report"
    tally = {"done": 0, "errors": 0, "sent": 0}
    deadline = time.perf_counter() + duration_s
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                tally["sent"] += 1
                try:
                    async with session.post(url, data=_body(tally["sent"], providers), headers=headers) as resp:
                        await resp.read()
                        tally["errors"] += resp.status != 202
                        tally["done"] += 1
                except aiohttp.ClientError:
                    tally["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return tally["done"], tally["done"] / (time.perf_counter() - started), tally["errors"]


async def _load(server: Server, duration_s: float, providers: int, workdir: Path) -> Load:
    wrk = shutil.which("wrk")
    before = server.cpu_s()
    if wrk:
        requests, rate, errors = await asyncio.get_running_loop().run_in_executor(
            None, _wrk, wrk, server.port, duration_s, providers, workdir)
    else:
        requests, rate, errors = await _generate(server.port, duration_s, providers)
    cpu_s = server.cpu_s() - before
    return Load(requests, rate, errors, cpu_s * 1e6 / requests if requests else float("nan"))


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Measured:
    providers: int
    pairs: list[tuple[Load, Load]]  # (trivial, daemon) per repeat
    tool: str
    info: dict[str, Any]


async def _measure(quick: bool, progress: Callable[[str], None]) -> _Measured:
    providers = QUICK_PROVIDERS if quick else PROVIDERS
    run_s, repeats = (QUICK_RUN_S, QUICK_REPEATS) if quick else (RUN_S, REPEATS)
    pairs: list[tuple[Load, Load]] = []
    with tempfile.TemporaryDirectory(prefix="monitord-bench-reports-wrk-") as tmp, \
            Server("trivial", providers) as trivial, Server("daemon", providers) as daemon:
        if daemon.info.get("up") != providers:
            raise RuntimeError(f"only {daemon.info.get('up')} of {providers} providers came up")
        await _load(trivial, min(run_s, 2.0), providers, Path(tmp))  # warm-up: connections, first reports
        await _load(daemon, min(run_s, 2.0), providers, Path(tmp))
        for repeat in range(repeats):
            pair = (await _load(trivial, run_s, providers, Path(tmp)),
                    await _load(daemon, run_s, providers, Path(tmp)))
            pairs.append(pair)
            progress(f"  repeat {repeat + 1}: trivial {pair[0].requests_per_s:,.0f} req/s {pair[0].cpu_us:.0f} µs, "
                     f"daemon {pair[1].requests_per_s:,.0f} req/s {pair[1].cpu_us:.0f} µs")
    return _Measured(providers, pairs, "wrk, 1 thread" if shutil.which("wrk") else "an aiohttp load generator",
                     {**daemon.info, **daemon.final})


def _x(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else fmt(value)


async def run(quick: bool) -> list[Table]:
    measured = await _measure(quick, print if not quick else lambda _line: None)
    note = "; ".join(x for x in ("quick mode: not meaningful" if quick else "", busy_note()) if x)
    table = Table("Outcome reports: POST /v1/report",
                  ("server", "requests", "req/s", "server CPU µs/request", "x trivial"))
    trivial = [pair[0] for pair in measured.pairs]
    daemon = [pair[1] for pair in measured.pairs]
    ratios = [d.cpu_us / t.cpu_us for t, d in measured.pairs if t.cpu_us > 0]
    for name, loads in (("trivial handler", trivial), (f"monitord daemon, {measured.providers:,} providers", daemon)):
        table.add(name, sum(load.requests for load in loads), spread_text([load.requests_per_s for load in loads]),
                  spread_text([load.cpu_us for load in loads]),
                  spread_text(ratios, format_value=_x) if loads is daemon else "1.00x")
    errors = sum(load.errors for load in trivial + daemon)
    table.notes += [
        f"Load: {measured.tool}, {CONNECTIONS} connections, {RUN_S if not quick else QUICK_RUN_S:g} s per run, "
        f"trivial then daemon in each of {len(measured.pairs)} repeat(s); min / median / max over the repeats; "
        f"errors {errors}. Every request names the next provider; one in {FAILURE_EVERY} reports a failure.",
        f"After the runs the daemon had {measured.info.get('suspect', '-')} suspect provider(s) and "
        f"{fmt(measured.info.get('reports_in_window'))} report(s) in its windows; the trivial handler reads the "
        "body and answers 202 ok.",
    ]
    middle = statistics.median(ratios) if ratios else None
    table.targets.append(Target(
        f"daemon CPU per POST /v1/report vs a trivial aiohttp handler, {measured.providers:,} providers, "
        f"{CONNECTIONS} connections (a cost of issue 16's new work; the issue sets no bound for it)",
        f"<= {SELECT_CPU_MAX:g}x (borrowed: the issue's bound for POST /v1/select)",
        spread_text(ratios, format_value=_x),
        None if quick or middle is None or errors else middle <= SELECT_CPU_MAX,
        "; ".join(x for x in (note, f"{errors} errors" if errors else "") if x)))
    table.figures = {"cpu_us": {"trivial": [t.cpu_us for t in trivial], "daemon": [d.cpu_us for d in daemon]},
                     "ratios": ratios, "requests_per_s": {"trivial": [t.requests_per_s for t in trivial],
                                                          "daemon": [d.requests_per_s for d in daemon]}}
    return [table]
