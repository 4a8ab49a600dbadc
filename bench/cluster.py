"""Several instances on one PostgreSQL: three real `monitord run` processes share one fleet through leases.

A fresh PostgreSQL database per run (created and dropped here). The fleet is N simulated vLLM servers (one loopback
port each, up to PORTS_PER_SERVER ports per server process), which log the time of every `/health` GET: that log
is the ground truth of "each provider probed once per interval cluster-wide", beside the probe rows counted in
the database. A webhook receiver in this process counts deliveries per event id. The run, in order:

1. steady: every provider probed by its lease holder; a subset fails and recovers (provider.down, provider.up);
   scheduler lateness from each instance's /metrics, CPU of every process, PostgreSQL's counters;
2. SIGKILL of one instance (a subset of its providers fails at that moment): how long until each of its providers
   is probed again by a survivor (failover), and their alerts sent once;
3. the killed instance comes back (rebalancing: no provider probed twice in one interval);
4. SIGTERM of another instance: the clean hand-over, timed the same way; the failed subset recovers meanwhile.

Lease traffic per instance is counted statement by statement on a Cluster with the same fleet and three live
instances (SQLAlchemy events on its engine, in a schema of the same database), and shown beside the database's
own counters for the running cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from aiohttp import web

from bench.common import (
    POSTGRES_DSN,
    POSTGRES_TIMEOUT_S,
    REPO_ROOT,
    Table,
    Target,
    busy_note,
    percentile,
    raise_fd_limit,
    run_async,
    spread_text,
)

ORDER = 70
TITLE = "three instances on one PostgreSQL: once per interval, alerts once, failover"

INSTANCES = 3
PORTS_PER_SERVER = 2_500
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "vllm"
SPAWN_TIMEOUT_S = 120.0
DUPLICATE_SHARE = 0.5  # two probes of one provider closer than this share of the interval: probed twice
GAP_SHARE = 1.5  # no probe for longer than this share of the interval: an interval without a probe
CONTENDED = 0.10  # an instance runnable but waiting for a core this share of the time: a miss is not measured


@dataclass(frozen=True, slots=True)
class Plan:
    """One run's sizes and timings."""

    providers: int
    interval_s: float
    lease_s: float
    steady_intervals: int
    failing: int  # providers made to fail (and recover) in the steady window, and again at the SIGKILL
    start_timeout_s: float = 90.0  # for three instances to start and share the leases out (and one to restart)

    @property
    def names(self) -> list[str]:
        return [f"p{i:05d}" for i in range(self.providers)]


QUICK = Plan(providers=150, interval_s=2.0, lease_s=1.2, steady_intervals=3, failing=6, start_timeout_s=40.0)
# 10,000 providers do not fit a 2-core machine beside their doubles, PostgreSQL and three instances that each fold
# the whole fleet (README, "How far one PostgreSQL goes"). FULL runs the fleet that held on the shared development
# machine, then a larger one, reported as not holding if it does not.
FULL = (Plan(providers=1_000, interval_s=10.0, lease_s=6.0, steady_intervals=3, failing=30),
        Plan(providers=3_000, interval_s=10.0, lease_s=6.0, steady_intervals=3, failing=30))
TARGET_PROVIDERS = 10_000


# --- the simulated fleet ------------------------------------------------------------------------------------------


def _serve(conn: Connection, count: int) -> None:
    raise_fd_limit()
    run_async(_serve_async(conn, count))


async def _serve_async(conn: Connection, count: int) -> None:
    """`count` vLLM doubles on their own ports; `/health` answers 500 on the ports told to fail and logs every
    hit. Messages: ("fail" | "recover", ports) -> True, ("hits", None) -> {port: [unix times]}, ("stop", None)."""
    models = (FIXTURES / "models.json").read_bytes()
    version = (FIXTURES / "version.json").read_bytes()
    metrics = _idle((FIXTURES / "metrics.txt").read_bytes())
    failing: set[int] = set()
    hits: dict[int, list[float]] = defaultdict(list)

    async def health(request: web.Request) -> web.Response:
        port = _local_port(request)
        hits[port].append(time.time())
        return web.Response(status=500 if port in failing else 200)

    async def model_list(_request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def server_version(_request: web.Request) -> web.Response:
        return web.Response(body=version, content_type="application/json")

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(body=metrics, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", model_list)
    app.router.add_get("/version", server_version)
    app.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        ports = []
        for _ in range(count):
            sock = _listening_socket()
            await web.SockSite(runner, sock, backlog=256).start()
            ports.append(sock.getsockname()[1])
        conn.send(ports)
        while True:
            op, arg = await loop.run_in_executor(None, conn.recv)
            if op == "stop":
                break
            if op == "hits":
                conn.send(dict(hits))
            else:
                (failing.update if op == "fail" else failing.difference_update)(arg)
                conn.send(True)
    finally:
        await runner.cleanup()


def _idle(metrics: bytes) -> bytes:
    """The vLLM fixture's /metrics with no request running or waiting: these doubles never generate, and a
    server that says it runs requests while its token counters stand still is (rightly) called stalled."""
    lines = []
    for line in metrics.splitlines():
        if line.startswith((b"vllm:num_requests_running", b"vllm:num_requests_waiting")):
            line = line.rsplit(b" ", 1)[0] + b" 0.0"
        lines.append(line)
    return b"\n".join(lines) + b"\n"


def _listening_socket() -> socket.socket:
    """A socket bound to 127.0.0.1 on a port the OS chose (the site listens on it; we keep its port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _local_port(request: web.Request) -> int:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if sockname:
        return int(sockname[1])
    return int(request.host.rsplit(":", 1)[1])


class Fleet:
    """N doubles over server processes; `with Fleet(n) as fleet`; fail/recover/hits by port."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.ports: list[int] = []
        self._procs: list[tuple[SpawnProcess, Connection, list[int]]] = []

    def __enter__(self) -> Fleet:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        servers = math.ceil(self.count / PORTS_PER_SERVER)
        try:
            pending = []
            for index in range(servers):
                share = self.count // servers + (1 if index < self.count % servers else 0)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, share), name=f"bench-cluster-fleet-{index}",
                                   daemon=True)
                proc.start()
                pending.append((proc, parent))
            for proc, parent in pending:
                ports = _receive(proc, parent, SPAWN_TIMEOUT_S)
                self._procs.append((proc, parent, ports))
                self.ports += ports
        except BaseException:
            for proc, _parent in pending:
                proc.kill()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _, _ in self._procs if proc.pid is not None]

    def _tell(self, op: str, ports: Iterable[int]) -> None:
        wanted = set(ports)
        for proc, parent, mine in self._procs:
            parent.send((op, [p for p in mine if p in wanted]))
            _receive(proc, parent, 30)

    def fail(self, ports: Iterable[int]) -> None:
        self._tell("fail", ports)

    def recover(self, ports: Iterable[int]) -> None:
        self._tell("recover", ports)

    def hits(self) -> dict[int, list[float]]:
        merged: dict[int, list[float]] = {}
        for proc, parent, _ in self._procs:
            parent.send(("hits", None))
            merged.update(_receive(proc, parent, 60))
        return merged

    def __exit__(self, *_exc: object) -> None:
        for _proc, parent, _ in self._procs:
            with contextlib.suppress(OSError):
                parent.send(("stop", None))
        for proc, _, _ in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._procs.clear()


def _receive(proc: SpawnProcess, conn: Connection, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.2):
        if not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"{proc.name} exited with code {proc.exitcode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} answered nothing within {timeout_s:g} s")
    return conn.recv()


# --- the webhook receiver -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: str
    event: str
    provider: str | None
    at: float


class Receiver:
    """Answers 200 to every POST and keeps (event id, type, provider, time) of each."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        async def hook(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            provider = body.get("provider") if isinstance(body, dict) else None
            self.deliveries.append(Delivery(request.headers.get("X-Monitord-Delivery", ""),
                                            request.headers.get("X-Monitord-Event", ""),
                                            provider.get("name") if isinstance(provider, dict) else None,
                                            time.time()))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = _listening_socket()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def got(self, event: str, providers: Iterable[str]) -> bool:
        seen = {d.provider for d in self.deliveries if d.event == event}
        return set(providers) <= seen


# --- the instances ------------------------------------------------------------------------------------------------


def database_url(dsn: str, database: str) -> tuple[str, str]:
    """(the asyncpg DSN, monitord's SQLAlchemy URL) of `database` on the server `dsn` names."""
    parts = urlsplit(dsn)
    raw = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))
    return raw, urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", parts.query, ""))


def write_config(path: Path, plan: Plan, ports: Sequence[int], url: str, hook: str, instance_id: str) -> None:
    lines = ["providers:"]
    for name, port in zip(plan.names, ports, strict=True):
        lines += [f"  {name}:", "    type: vllm", f"    endpoint: http://127.0.0.1:{port}",
                  "    parameters: {max_retries: 0}"]
    timeout_s = min(2.0, plan.interval_s / 2)
    lines += ["monitor:", f"  interval: {plan.interval_s:g}s", f"  timeout: {timeout_s:g}s",
              "storage:", f"  url: {url}", "api:", "  listen: 127.0.0.1:0",
              "logging:", "  format: json", "cluster:", "  enabled: true", f"  instance_id: {instance_id}",
              f"  lease: {plan.lease_s:g}s", "alerts:", "  failure_threshold: 2", "  success_threshold: 1",
              "  webhooks:", f"    - {{name: bench, url: {hook}, timeout: 5s}}"]
    path.write_text("\n".join(lines) + "\n")


class Instance:
    """One `python -m monitord run` process, its JSON log in a file."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self._log_handle: Any = None

    async def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))  # this checkout's code
        self.close()
        self._log_handle = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitord", "run", "-c", str(self.config), cwd=REPO_ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=self._log_handle)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_bytes().splitlines():
            if line.startswith(b"{") and f'"{name}"'.encode() in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(line)
                    if event.get("event") == name:
                        found.append(event)
        return found

    @property
    def api_port(self) -> int | None:
        started = self.events("daemon.started")
        return int(started[-1]["api_port"]) if started else None

    async def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 30) -> int | None:
        if self.proc is None:
            return None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        """Close this process's log file (the process keeps its own descriptor)."""
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


async def until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> float:
    """Poll `predicate` (sync or async) until true; returns the time it took; raises after timeout_s."""
    started = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(poll_s)


def cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_s(pid: int) -> float:
    """Seconds the threads of process `pid` spent runnable but waiting for a core (/proc/<pid>/task/*/schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[1])
    return total / 1e9


def postgres_connections(pid: int, port: int) -> int:
    """TCP connections of process `pid` to `port` (its socket inodes matched against /proc/net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[3] == "01" and cols[9] in inodes:
                    count += 1
    return count


async def scrape_lateness(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """monitord_scheduler_lateness_seconds for the probe scheduler, by quantile, in ms."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        if line.startswith("monitord_scheduler_lateness_seconds{") and 'scheduler="probe"' in line:
            quantile = line.split('quantile="', 1)[1].split('"', 1)[0]
            found[quantile] = float(line.rsplit(" ", 1)[1]) * 1000
    return found


# --- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Marks:
    """Wall-clock times (time.time()) of the run's phases."""

    steady_from: float = 0.0
    steady_until: float = 0.0
    kill_at: float = 0.0
    rejoin_at: float = 0.0
    term_at: float = 0.0
    end_at: float = 0.0


@dataclass
class Outcome:
    plan: Plan
    marks: Marks
    hits: dict[str, list[float]]  # provider -> /health GET times
    steady_failing: list[str]
    kill_failing: list[str]
    killed_orphans: list[str]
    termed_orphans: list[str]
    deliveries: list[Delivery]
    lateness_ms: dict[str, dict[str, float]]  # instance -> quantile -> ms
    cpu: dict[str, float]  # process group -> cores used over the steady window
    connections: dict[str, int]
    db: dict[str, float]  # pg_stat_database deltas per second over the steady window
    rows_steady: int  # probe rows stored with ts in the steady window
    rows_per_provider: dict[str, int]
    codes: dict[str, int | None]
    takeover_s: dict[str, float] = field(default_factory=dict)  # signal -> every lease held elsewhere
    waited: dict[str, float] = field(default_factory=dict)  # instance -> share of the steady window waiting for a core
    waited_run: float = 0.0  # the same for c1 (never stopped) from the steady window to the end
    lease_beat: dict[str, float] = field(default_factory=dict)
    startup_s: float = 0.0
    load: float = 0.0


async def _pg(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn, timeout=POSTGRES_TIMEOUT_S)


async def db_counters(dsn: str, database: str) -> dict[str, float]:
    conn = await _pg(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned, tup_fetched "
            "FROM pg_stat_database WHERE datname = $1", database)
        return {key: float(value) for key, value in dict(row).items()} if row else {}
    finally:
        await conn.close()


async def holders(dsn: str) -> dict[str, str]:
    conn = await _pg(dsn)
    try:
        rows = await conn.fetch("SELECT name, holder FROM cluster_leases JOIN cluster_instances "
                                "ON instance_id = holder WHERE cluster_instances.expires_at > now() "
                                "AND name NOT LIKE 'role:%'")
    except Exception:  # not migrated yet
        return {}
    finally:
        await conn.close()
    return {row["name"]: row["holder"] for row in rows}


async def run_cluster(plan: Plan, progress: Any = print) -> Outcome:
    import asyncpg

    database = f"monitord_bench_cluster_{os.getpid()}"
    admin = await _pg(POSTGRES_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn, url = database_url(POSTGRES_DSN, database)
    pg_port = urlsplit(POSTGRES_DSN).port or 5432
    try:
        workdir = Path(tempfile.mkdtemp(prefix="monitord-bench-cluster-"))
        with Fleet(plan.providers) as fleet:
            async with Receiver() as receiver:
                return await _run(plan, fleet, receiver, workdir, dsn, url, database, pg_port, progress)
    finally:
        admin = await _pg(POSTGRES_DSN)
        try:
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


async def _run(plan: Plan, fleet: Fleet, receiver: Receiver, workdir: Path, dsn: str, url: str, database: str,
               pg_port: int, progress: Any) -> Outcome:
    interval = plan.interval_s
    names = plan.names
    port_of = dict(zip(names, fleet.ports, strict=True))
    instances = []
    for index in range(INSTANCES):
        name = f"c{index + 1}"
        config = workdir / f"{name}.yaml"
        write_config(config, plan, fleet.ports, url, receiver.url, name)
        instances.append(Instance(name, config, workdir / f"{name}.log"))
    marks = Marks()
    rng = random.Random(16)
    codes: dict[str, int | None] = {}
    session = aiohttp.ClientSession()
    try:
        started = time.monotonic()
        for instance in instances:  # one after the other: the first migrates, the others wait on its lock anyway
            await instance.start()
        await until(lambda: all(i.api_port for i in instances), plan.start_timeout_s, "all instances started")
        await until(_balanced(dsn, names, [i.name for i in instances]), plan.start_timeout_s, "leases shared out")
        startup_s = time.monotonic() - started
        progress(f"  {plan.providers:,} providers, {INSTANCES} instances up and balanced in {startup_s:.1f} s")
        await asyncio.sleep(interval)  # every provider probed once by its holder; connections open

        # 1. steady, with a subset failing and recovering
        steady_failing = sorted(rng.sample(names, plan.failing))
        cpu0 = _cpu(instances, fleet)
        wait0 = {i.name: waited_s(i.pid) for i in instances}
        db0 = await db_counters(POSTGRES_DSN, database)
        marks.steady_from = time.time()
        fleet.fail(port_of[n] for n in steady_failing)
        await asyncio.sleep(plan.steady_intervals * interval)
        marks.steady_until = time.time()
        cpu1 = _cpu(instances, fleet)
        wait1 = {i.name: waited_s(i.pid) for i in instances}
        db1 = await db_counters(POSTGRES_DSN, database)
        lateness = {i.name: await scrape_lateness(session, i.api_port or 0) for i in instances}
        connections = {i.name: postgres_connections(i.pid, pg_port) for i in instances}
        window = marks.steady_until - marks.steady_from
        cpu = {key: (cpu1[key] - cpu0[key]) / window for key in cpu0 if key in cpu1}
        db = {key: (db1[key] - db0.get(key, 0.0)) / window for key in db1}
        waited = {name: (wait1[name] - wait0[name]) / window for name in wait0}
        await until(lambda: receiver.got("provider.down", steady_failing), 4 * interval, "steady down alerts")
        fleet.recover(port_of[n] for n in steady_failing)
        await until(lambda: receiver.got("provider.up", steady_failing), 4 * interval, "steady up alerts")
        progress("  steady window measured; failing subset down and up again")

        # 2. SIGKILL one instance while some of its providers start failing
        victim = instances[2]
        held = await holders(dsn)
        killed_orphans = sorted(n for n, h in held.items() if h == victim.name)
        fresh = [n for n in killed_orphans if n not in steady_failing]  # one incident per provider in the run
        kill_failing = sorted(rng.sample(fresh, min(plan.failing, len(fresh))))
        fleet.fail(port_of[n] for n in kill_failing)
        marks.kill_at = time.time()
        await victim.signal(signal.SIGKILL)
        codes["c3 (SIGKILL)"] = await victim.wait()
        takeover_s = {"SIGKILL": time.time() - marks.kill_at + await until(
            _taken_over(dsn, names, victim.name), 6 * plan.lease_s + 2 * interval, "takeover after SIGKILL")}
        await asyncio.sleep(interval)
        await until(lambda: receiver.got("provider.down", kill_failing), 4 * interval, "down alerts after SIGKILL")
        progress("  SIGKILL taken over; its failing providers alerted")

        # 3. the killed instance comes back; leases rebalance
        marks.rejoin_at = time.time()
        await victim.start()
        await until(lambda: victim.api_port is not None, plan.start_timeout_s, "restarted instance")
        await until(_balanced(dsn, names, [i.name for i in instances]), 6 * plan.lease_s + 2 * interval,
                    "rebalanced after the rejoin")
        await asyncio.sleep(interval)

        # 4. SIGTERM another instance; the failing subset recovers meanwhile
        leaving = instances[1]
        held = await holders(dsn)
        termed_orphans = sorted(n for n, h in held.items() if h == leaving.name)
        fleet.recover(port_of[n] for n in kill_failing)
        marks.term_at = time.time()
        await leaving.signal(signal.SIGTERM)
        codes["c2 (SIGTERM)"] = await leaving.wait()
        stopped_s = time.time() - marks.term_at
        takeover_s["SIGTERM"] = stopped_s + await until(
            _taken_over(dsn, names, leaving.name), 6 * plan.lease_s + 2 * interval, "takeover after SIGTERM")
        await until(lambda: receiver.got("provider.up", kill_failing), 4 * interval, "up alerts after SIGTERM")
        await asyncio.sleep(1.5 * interval)  # a duplicate delivery, or a late probe, has time to show
        marks.end_at = time.time()
        waited_run = (waited_s(instances[0].pid) - wait0[instances[0].name]) / (marks.end_at - marks.steady_from)
        progress("  SIGTERM handed over; collecting")
    finally:
        await session.close()
        for instance in instances:
            if instance.proc is not None and instance.proc.returncode is None:
                await instance.signal(signal.SIGTERM)
        for instance in instances:
            if instance.proc is not None and instance.proc.returncode is None:
                code = await instance.wait()
                codes.setdefault(instance.name, code)
            instance.close()
    by_port = fleet.hits()
    hits = {name: sorted(by_port.get(port_of[name], [])) for name in names}
    rows_steady, per_provider = await _rows(dsn, marks.steady_from, marks.steady_until)
    return Outcome(plan, marks, hits, steady_failing, kill_failing, killed_orphans, termed_orphans,
                   list(receiver.deliveries), lateness, cpu, connections, db, rows_steady, per_provider, codes,
                   takeover_s=takeover_s, waited=waited, waited_run=waited_run, startup_s=startup_s,
                   load=os.getloadavg()[0])


def _cpu(instances: Sequence[Instance], fleet: Fleet) -> dict[str, float]:
    values = {i.name: cpu_s(i.pid) or 0.0 for i in instances}
    values["doubles"] = sum(cpu_s(pid) or 0.0 for pid in fleet.pids)
    values["benchmark"] = cpu_s(os.getpid()) or 0.0
    return values


def _balanced(dsn: str, names: Sequence[str], instance_names: Sequence[str]) -> Any:
    async def check() -> bool:
        held = await holders(dsn)
        counts = Counter(held.values())
        share = math.ceil(len(names) / len(instance_names))
        return len(held) == len(names) and all(0 < counts[i] <= share for i in instance_names)
    return check


def _taken_over(dsn: str, names: Sequence[str], gone: str) -> Any:
    async def check() -> bool:
        held = await holders(dsn)
        return len(held) == len(names) and gone not in held.values()
    return check


async def _rows(dsn: str, since: float, until_: float) -> tuple[int, dict[str, int]]:
    """Probe rows stored with ts in [since, until): total and per provider (None when the schema differs)."""
    from datetime import UTC, datetime

    conn = await _pg(dsn)
    try:
        rows = await conn.fetch("SELECT provider, count(*) AS n FROM probes WHERE ts >= $1 AND ts < $2 "
                                "GROUP BY provider", datetime.fromtimestamp(since, UTC),
                                datetime.fromtimestamp(until_, UTC))
    except Exception:  # the probes table changed shape: the doubles' log still counts
        return -1, {}
    finally:
        await conn.close()
    per = {row["provider"]: int(row["n"]) for row in rows}
    return sum(per.values()), per


# --- lease traffic, statement by statement ------------------------------------------------------------------------


async def lease_traffic(plan: Plan, url: str) -> dict[str, float]:
    """Statements and round trips of one steady heartbeat (and the peer poll that follows it) of one of three
    instances sharing `plan.providers` providers, counted with SQLAlchemy events on its own engine."""
    with _quiet_logs():
        return await _lease_traffic(plan, url)


@contextlib.contextmanager
def _quiet_logs() -> Any:
    """monitord's log lines (migrations, lease changes) kept out of the benchmark's output, then restored."""
    import structlog

    from monitord import logs

    saved = structlog.get_config()
    with open(os.devnull, "w") as devnull:
        logs.configure("warning", "json", stream=devnull)
        try:
            yield
        finally:
            structlog.configure(**saved)


async def _lease_traffic(plan: Plan, url: str) -> dict[str, float]:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event

    from monitord.cluster import Cluster
    from monitord.store import Store
    from monitord.store.migrate import upgrade

    await upgrade(url)
    stores = [await Store.open(url) for _ in range(INSTANCES)]
    try:
        clusters = [Cluster(store, f"i{n}", plan.lease_s, providers=plan.names) for n, store in enumerate(stores)]
        now = datetime.now(UTC)
        for step in range(4):  # register, take shares, settle
            for cluster in clusters:
                await cluster.heartbeat(now + timedelta(seconds=step * plan.lease_s / 3))
        counts = Counter[str]()
        engine = stores[0]._engine

        def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            counts["statements"] += 1
            counts["rows_sql_bytes"] += len(sql)

        def checkout(*_args: Any) -> None:
            counts["checkouts"] += 1

        event.listen(engine.sync_engine, "before_cursor_execute", statement)
        event.listen(engine.sync_engine.pool, "checkout", checkout)
        beats = 5
        started = time.perf_counter()
        for step in range(beats):
            beat_at = now + timedelta(seconds=(4 + step) * plan.lease_s / 3)
            await clusters[0].heartbeat(beat_at)
            await clusters[0].peer_results(beat_at - timedelta(seconds=plan.lease_s))
        elapsed = time.perf_counter() - started
        held = len(clusters[0].held)
    finally:
        for store in stores:
            await store.close()
    return {"statements_per_beat": counts["statements"] / beats, "checkouts_per_beat": counts["checkouts"] / beats,
            "sql_bytes_per_beat": counts["rows_sql_bytes"] / beats, "beat_ms": elapsed * 1000 / beats,
            "held": float(held)}


# --- figures ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spacing:
    probes: int
    duplicates: int  # consecutive probes closer than DUPLICATE_SHARE x interval
    gaps: int  # stretches longer than GAP_SHARE x interval without a probe (window edges included)
    providers: int
    per_interval: list[float]  # probes per interval of each provider


def spacing(hits: dict[str, list[float]], providers: Iterable[str], since: float, until_: float,
            interval_s: float) -> Spacing:
    probes = duplicates = gaps = count = 0
    rates = []
    for name in providers:
        times = [t for t in hits.get(name, []) if since <= t < until_]
        count += 1
        probes += len(times)
        rates.append(len(times) * interval_s / (until_ - since))
        edges = [since, *times, until_]
        for a, b in itertools.pairwise(edges):
            if b - a > GAP_SHARE * interval_s:
                gaps += 1
        for a, b in itertools.pairwise(times):
            if b - a < DUPLICATE_SHARE * interval_s:
                duplicates += 1
    return Spacing(probes, duplicates, gaps, count, rates)


def first_after(hits: dict[str, list[float]], providers: Iterable[str], at: float) -> list[float]:
    """For each provider, seconds from `at` to its first probe after it (inf when none)."""
    return [next((t - at for t in hits.get(name, []) if t > at), math.inf) for name in providers]


def longest_gap_around(hits: dict[str, list[float]], providers: Iterable[str], at: float) -> list[float]:
    """For each provider, the time between its last probe before `at` and its first after."""
    gaps = []
    for name in providers:
        times = hits.get(name, [])
        before = [t for t in times if t <= at]
        after = [t for t in times if t > at]
        gaps.append((after[0] - before[-1]) if before and after else math.inf)
    return gaps


def tables(outcome: Outcome, quick: bool) -> list[Table]:
    plan, marks, hits = outcome.plan, outcome.marks, outcome.hits
    interval = plan.interval_s
    failing = set(outcome.steady_failing) | set(outcome.kill_failing)
    healthy = [n for n in plan.names if n not in failing]
    steady = spacing(hits, healthy, marks.steady_from, marks.steady_until, interval)
    # after the steady window through the end: the SIGKILL orphans' one gap is the failover, counted apart
    whole = spacing(hits, [n for n in healthy if n not in outcome.killed_orphans], marks.steady_from, marks.end_at,
                    interval)
    orphans_whole = spacing(hits, [n for n in healthy if n in outcome.killed_orphans], marks.steady_from,
                            marks.end_at, interval)
    kill_first = first_after(hits, outcome.killed_orphans, marks.kill_at)
    kill_gap = longest_gap_around(hits, outcome.killed_orphans, marks.kill_at)
    term_first = first_after(hits, outcome.termed_orphans, marks.term_at)
    term_gap = longest_gap_around(hits, outcome.termed_orphans, marks.term_at)
    deliveries = Counter(d.event_id for d in outcome.deliveries)
    twice = {event_id: n for event_id, n in deliveries.items() if n > 1}
    alerts = Counter((d.event, d.provider) for d in outcome.deliveries if d.event.startswith("provider."))
    expected = {(kind, name) for name in failing for kind in ("provider.down", "provider.up")}
    lost = sorted(key for key in expected if alerts[key] == 0)
    extra = sorted(key for key, n in alerts.items() if key not in expected or n > 1)
    # a provider that failed in the steady window and again at the SIGKILL alerts twice, with two event ids
    per_incident = Counter((d.event, d.provider) for d in outcome.deliveries)
    late99 = [q["0.99"] for q in outcome.lateness_ms.values() if "0.99" in q]
    late50 = [q["0.5"] for q in outcome.lateness_ms.values() if "0.5" in q]
    window = marks.steady_until - marks.steady_from
    hits_steady = sum(len([t for t in hits.get(n, []) if marks.steady_from <= t < marks.steady_until])
                      for n in plan.names)
    busy = busy_note()
    loaded = f"load average {outcome.load:.1f} at the end on {os.cpu_count()} cores" + (f"; {busy}" if busy else "")

    main = Table(f"Cluster: {INSTANCES} instances, {plan.providers:,} providers every {interval:g} s "
                 f"(lease {plan.lease_s:g} s)", ("figure", "value"))
    main.add("start-up until leases shared out (3 processes, migrations)", f"{outcome.startup_s:.1f} s")
    main.add(f"steady window ({plan.steady_intervals} intervals), healthy providers",
             f"{steady.providers:,} providers, {steady.probes:,} probes")
    main.add("  probes per provider per interval (min / median / max)",
             spread_text(steady.per_interval, format_value=lambda v: f"{float(v):.2f}"))  # type: ignore[arg-type]
    main.add(f"  probed twice within {DUPLICATE_SHARE:g} interval (duplicates)", steady.duplicates)
    main.add(f"  no probe for > {GAP_SHARE:g} intervals (gaps)", steady.gaps)
    main.add("  probe rows stored in the window vs /health GETs the doubles saw",
             f"{outcome.rows_steady:,} vs {hits_steady:,}" if outcome.rows_steady >= 0 else "probes table unreadable")
    main.add("  scheduler lateness p50 / p99 by instance (/metrics)", "; ".join(
        f"{name} {q.get('0.5', math.nan):.0f} / {q.get('0.99', math.nan):.0f} ms"
        for name, q in outcome.lateness_ms.items()))
    main.add("  CPU (cores) by process", ", ".join(f"{k} {v:.2f}" for k, v in outcome.cpu.items()))
    main.add("  share of the window each instance waited for a core (runnable, another process had it)",
             ", ".join(f"{k} {v:.0%}" for k, v in outcome.waited.items()) + f"; c1 over the whole run "
             f"{outcome.waited_run:.0%}")
    main.add("  PostgreSQL connections by instance", ", ".join(f"{k} {v}" for k, v in outcome.connections.items()))
    db = outcome.db
    main.add("  PostgreSQL per second (whole cluster): commits, rows inserted, updated, deleted, returned",
             f"{db.get('xact_commit', 0):,.0f}, {db.get('tup_inserted', 0):,.0f}, {db.get('tup_updated', 0):,.0f}, "
             f"{db.get('tup_deleted', 0):,.0f}, {db.get('tup_returned', 0):,.0f}")
    main.add("whole run (steady, SIGKILL, rejoin, SIGTERM), healthy providers not orphaned by the SIGKILL",
             f"{whole.providers:,} providers, {whole.duplicates} duplicates, {whole.gaps} gaps")
    main.add("  the SIGKILLed instance's healthy providers (their failover gap excluded below)",
             f"{orphans_whole.providers:,} providers, {orphans_whole.duplicates} duplicates, "
             f"{orphans_whole.gaps} gaps (each failover > {GAP_SHARE:g} intervals counts one)")
    main.add(f"SIGKILL: {len(outcome.killed_orphans):,} providers orphaned; time to their first probe by a survivor",
             _seconds(kill_first))
    main.add("  longest stretch without a probe across the kill", _seconds(kill_gap))
    main.add("  until every lease was held by a survivor (polled every 0.25 s)",
             f"{outcome.takeover_s.get('SIGKILL', math.nan):.1f} s")
    main.add(f"SIGTERM: {len(outcome.termed_orphans):,} providers handed over; time to their first probe",
             _seconds(term_first))
    main.add("  longest stretch without a probe across the stop", _seconds(term_gap))
    main.add("  until every lease was held by a survivor (from the signal; the process exits first)",
             f"{outcome.takeover_s.get('SIGTERM', math.nan):.1f} s")
    main.add("alert deliveries (event ids) / delivered more than once",
             f"{len(deliveries):,} / {len(twice)}")
    main.add("provider.down / provider.up expected and not delivered", f"{len(lost)} of {len(expected)}")
    main.add("exit codes", ", ".join(f"{k} {v}" for k, v in outcome.codes.items()))
    lb = outcome.lease_beat
    if lb:
        beats_per_s = 3 / plan.lease_s
        main.add("lease traffic of one instance, one beat (heartbeat + peer poll): statements, pool checkouts",
                 f"{lb['statements_per_beat']:.1f}, {lb['checkouts_per_beat']:.1f} (each checkout pings first)")
        main.add("  queries/s per instance, and for the cluster (beats every lease/3)",
                 f"{(lb['statements_per_beat'] + lb['checkouts_per_beat']) * beats_per_s:.1f}, "
                 f"{(lb['statements_per_beat'] + lb['checkouts_per_beat']) * beats_per_s * INSTANCES:.1f}")
        main.add("  wall time of one beat", f"{lb['beat_ms']:.0f} ms")
    main.notes += [
        f"Figures taken on {loaded}. The doubles ({math.ceil(plan.providers / PORTS_PER_SERVER)} process(es)), "
        "PostgreSQL, the benchmark and the three instances share this machine's cores; the instances' CPU is "
        "their own (/proc), the doubles' is theirs.",
        f"Once per interval is read from the doubles' own log of /health GETs (one per probe; max_retries 0), "
        f"so it holds whatever the probes table looks like; providers made to fail are left out of it "
        f"({len(failing)}: a failing provider is re-probed sooner, by design).",
        "Failover: the longest stretch without a probe of each orphaned provider, across the signal (its last probe "
        "by the stopped instance to its first by a survivor), and the time to that first probe. After a SIGKILL "
        "the leases must run out (up to a lease) and a survivor beat (lease / 3), then an overdue provider is "
        "probed at once and the others at their usual time; after a SIGTERM the "
        "leases are handed back: the takers continue each provider's schedule from its last probe (committed "
        "before the hand-back), so the stretch without a probe across the stop stays about one interval.",
        "Alerts: a subset fails and recovers in the steady window, and another subset of the killed instance's "
        "providers fails at the kill and recovers at the SIGTERM, so the survivors raise those alerts. "
        f"Deliveries per (event, provider): {dict(sorted(Counter(per_incident.values()).items()))} "
        "(count: how many pairs).",
    ]
    if extra:
        main.notes.append(f"Unexpected or repeated provider alerts: {extra[:10]}")
    for event_id in list(twice)[:5]:  # when each copy came, against the signals: a send not recorded before a kill
        copies = [d for d in outcome.deliveries if d.event_id == event_id]
        main.notes.append(f"Delivered {len(copies)} times: {copies[0].event} {copies[0].provider} ({event_id}) at "
                          + ", ".join(f"{d.at - marks.kill_at:+.1f} s" for d in copies) + " from the SIGKILL ("
                          f"SIGTERM at {marks.term_at - marks.kill_at:+.1f} s). A first copy just before the kill and "
                          "a second a claim length later is a delivery its killed sender had not recorded as sent, "
                          "sent again (at least once; receivers de-duplicate by X-Monitord-Delivery).")
    if quick:
        main.notes.append("Quick mode: a small fleet at a 2 s interval; figures are not meaningful.")

    failover_goal = interval + plan.lease_s + plan.lease_s / 3 + 1.0
    kill_max = max(kill_gap) if kill_gap else None
    term_gap_max = max(term_gap) if term_gap else None
    note = "; ".join(x for x in (busy, "quick mode" if quick else "") if x)
    size = f"{INSTANCES} instances, {plan.providers:,} providers / {interval:g} s"
    steady_starved = max(outcome.waited.values(), default=0.0) >= CONTENDED
    run_starved = outcome.waited_run >= CONTENDED

    def judged(ok: bool, starved: bool) -> bool | None:
        """A miss while the instances waited for a core is not measured, not NOT met (a pass stands)."""
        return ok if ok or not starved else None

    waits = (f"instances waited {max(outcome.waited.values(), default=0.0):.0%} of the steady window for a core, "
             f"c1 {outcome.waited_run:.0%} of the whole run")
    note = "; ".join(x for x in (note, waits) if x)
    targets = [
        Target(f"duplicates (probed twice within {DUPLICATE_SHARE:g} interval), {size}, steady and through "
               "SIGKILL / rejoin / SIGTERM", "0", f"{steady.duplicates} steady, "
               f"{whole.duplicates + orphans_whole.duplicates} whole run",
               judged(steady.duplicates == 0 and whole.duplicates + orphans_whole.duplicates == 0, run_starved), note),
        Target(f"gaps (no probe for > {GAP_SHARE:g} intervals), {size}, steady", "0",
               f"{steady.gaps} in {steady.probes:,} probes", judged(steady.gaps == 0, steady_starved), note),
        Target(f"scheduler lateness p99 per instance, {size}", "< 250 ms",
               spread_text(late99, " ms") if late99 else "-",
               judged(bool(late99) and max(late99) < 250.0, steady_starved),
               "; ".join(x for x in (note, f"p50 {spread_text(late50, ' ms')}" if late50 else "") if x)),
        Target(f"alerts delivered once (per event id), {size}, failures across a SIGKILL", "0 duplicates, 0 lost",
               f"{len(twice)} duplicates, {len(lost)} lost of {len(expected)}", not twice and not lost, note),
        Target(f"failover after SIGKILL: longest stretch without a probe of an orphaned provider, "
               f"interval {interval:g} s, lease {plan.lease_s:g} s",
               f"<= interval + lease + lease/3 + 1 s = {failover_goal:g} s (its leases must run out)",
               _seconds(kill_gap) + f"; first probe after the kill {_seconds(kill_first)}",
               judged(kill_max is not None and kill_max <= failover_goal, run_starved), note),
        Target(f"hand-over after SIGTERM: longest stretch without a probe of a handed-over provider, "
               f"interval {interval:g} s", f"<= {GAP_SHARE:g} intervals = {GAP_SHARE * interval:g} s (no interval "
               "missed: the takers continue the schedule)", _seconds(term_gap),
               judged(term_gap_max is not None and term_gap_max <= GAP_SHARE * interval, run_starved), note),
    ]
    main.targets = targets
    main.figures["cluster"] = {
        "providers": plan.providers, "interval_s": interval, "lease_s": plan.lease_s, "window_s": window,
        "steady": {"probes": steady.probes, "duplicates": steady.duplicates, "gaps": steady.gaps},
        "kill_first_s": kill_first, "term_first_s": term_first, "kill_gap_s": kill_gap, "term_gap_s": term_gap,
        "takeover_s": outcome.takeover_s, "waited": outcome.waited, "waited_run": outcome.waited_run,
        "deliveries": len(deliveries),
        "twice": len(twice), "lost": len(lost), "lateness_ms": outcome.lateness_ms, "cpu": outcome.cpu,
        "connections": outcome.connections, "db": outcome.db, "lease_beat": outcome.lease_beat,
    }
    return [main]


def _seconds(values: Sequence[float]) -> str:
    if not values:
        return "-"
    finite = [v for v in values if math.isfinite(v)]
    missing = len(values) - len(finite)
    text = (f"p50 {percentile(finite, 0.5):.2f} s, max {max(finite):.2f} s" if finite else "none probed again")
    return text + (f" ({missing} never probed again)" if missing else "")


def unmeasured(reason: str) -> list[Table]:
    table = Table("Cluster: three instances on one PostgreSQL", ("figure", "value"))
    table.add("not measured", reason)
    table.targets = [Target("3 instances on one PostgreSQL: once per interval, alerts once, failover", "see README",
                            "-", None, reason)]
    return [table]


async def run(quick: bool) -> list[Table]:
    from bench.common import postgres_version

    if await postgres_version() is None:
        return unmeasured(f"no PostgreSQL at {POSTGRES_DSN}")
    produced: list[Table] = []
    for plan in (QUICK,) if quick else FULL:
        try:
            produced += await measure(plan, quick)
        except (TimeoutError, RuntimeError) as exc:  # the cluster never reached, or lost, its steady state
            produced.append(did_not_hold(plan, exc))
            break
    largest = max(plan.providers for plan in ((QUICK,) if quick else FULL))
    produced[-1].targets.append(Target(
        f"3 instances with {TARGET_PROVIDERS:,} providers / 10 s on this machine",
        "each provider once per interval, lateness p99 < 250 ms", f"not run; largest fleet tried: {largest:,}",
        None, "the doubles, PostgreSQL and three instances that each fold the whole fleet need more than this "
              "machine's 2 cores (README, \"How far one PostgreSQL goes\")"))
    return produced


def did_not_hold(plan: Plan, exc: BaseException) -> Table:
    """A larger fleet that did not reach or keep its steady state: said as such, with what did not happen."""
    table = Table(f"Cluster: {INSTANCES} instances, {plan.providers:,} providers every {plan.interval_s:g} s "
                  f"(lease {plan.lease_s:g} s)", ("figure", "value"))
    table.add("did not hold", f"{type(exc).__name__}: {exc}")
    busy = busy_note()
    table.notes.append(f"Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end. The instances' "
                       "logs (lease changes) are in the run's temporary directory.")
    table.targets = [Target(f"3 instances, {plan.providers:,} providers / {plan.interval_s:g} s: each provider once "
                            "per interval", "holds", "did not hold", False, "; ".join(
                                x for x in (busy, f"{type(exc).__name__}: {exc}") if x))]
    return table


async def measure(plan: Plan, quick: bool) -> list[Table]:
    """One fleet: the cluster run, then the lease traffic of one instance at the same size."""
    outcome = await run_cluster(plan)
    database = f"monitord_bench_cluster_traffic_{os.getpid()}"
    admin = await _pg(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    try:
        _dsn, url = database_url(POSTGRES_DSN, database)
        outcome.lease_beat = await lease_traffic(plan, url)
    finally:
        admin = await _pg(POSTGRES_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    return tables(outcome, quick)
