"""Providers per core: the largest fleet one pinned core probes every 10 s with the achieved rate >= 0.99 of the
configured one and lateness p99 < 250 ms (issue 16's goal: 20,000).

monitord is the real daemon as bench/probes.py runs it (Daemon.run: SQLite store, API, alert rules, best-provider
watch, canaries and capacity on), in a fresh process pinned to one core with os.sched_setaffinity. The fleet runs
in processes pinned to the other core(s) and answers with canned bytes from a minimal HTTP/1.1 responder (the
aiohttp server of bench/probes.py costs several times more per request: at 20,000 providers, 8,000 GETs a second,
one core of those could not keep up, and the figure would be the fleet's, not monitord's). The fleet's CPU is
measured too: a fleet near a full core means the figure is the fleet's limit, and the target says so.

The fd limit (20,000 here) cannot hold a listening port per provider plus the daemon's connection to each, so the
providers share PORTS server ports round-robin (each provider keeps its own name, state, rows and schedule; the
client pool's 4 connections per host:port are shared by the providers of a port).

Fleet sizes climb LADDER until one misses; GOAL_N is then run REPEATS times for min / median / max.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.common import Table, Target, busy_note, spread_text
from bench.probes import MONITORD, Fleet, Outcome, Plan, measure

ORDER = 25
TITLE = "providers per core: the largest fleet one pinned core probes every 10 s"

INTERVAL_S = 10.0
GOAL_N = 20_000
LADDER = (2_500, 5_000, 10_000, 15_000, 20_000, 25_000)
QUICK_LADDER = (200,)
REPEATS = 3  # at GOAL_N (the ladder's run there is the first)
PORTS = 1_000
RATE_MIN = 0.99
LATENESS_P99_MAX_MS = 250.0
WARMUP_S = INTERVAL_S  # every provider probed once, its connection open and its state built
MEASURE_S, QUICK_MEASURE_S = 20.0, 2.0
# monitor.concurrency: its default. More in flight does not help on one core: at 512 the pool opens more
# connections per host and the rate fell (5,000 providers: 0.27 of configured against 0.67 at 64, both on a busy core).
CONCURRENCY = 64
FLEET_SATURATED = 0.9  # the fleet's processes using this share of their cores: the limit may be theirs
CONTENDED = 0.1  # the daemon waited for its core this share of the window: other processes shared it


@dataclass(frozen=True, slots=True)
class Run:
    n: int
    interval_s: float
    outcome: Outcome
    fleet_cpu_share: float  # CPU of the fleet's processes over the run / (wall x their cores)

    @property
    def rate_share(self) -> float:
        return self.outcome.rate_per_s / (self.n / self.interval_s)

    @property
    def core_share(self) -> float:
        """The daemon's CPU over the window / the window: how full its one core was."""
        return self.outcome.cpu_s / self.outcome.wall_s if self.outcome.wall_s else 0.0

    @property
    def waited_share(self) -> float:
        """The share of the window the daemon was ready to run but waited for its core (others ran on it)."""
        return self.outcome.waited_s / self.outcome.wall_s if self.outcome.wall_s else 0.0

    @property
    def contended(self) -> bool:
        return self.waited_share >= CONTENDED

    @property
    def lateness_p99_ms(self) -> float:
        return self.outcome.lateness_p99_ms if self.outcome.lateness_p99_ms is not None else float("inf")

    @property
    def meets(self) -> bool:
        return self.rate_share >= RATE_MIN and self.lateness_p99_ms < LATENESS_P99_MAX_MS


def _cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes so far (seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def measure_n(n: int, quick: bool, daemon_cpus: tuple[int, ...], fleet_cpus: tuple[int, ...],
              progress: Callable[[str], None]) -> Run:
    """One daemon process, pinned, against a fleet of n providers over min(n, PORTS) canned-answer ports."""
    ports_wanted = min(n, PORTS)
    with Fleet(ports_wanted, fast=True, cpus=fleet_cpus, servers=max(1, len(fleet_cpus))) as fleet:
        ports = tuple(fleet.ports[i % len(fleet.ports)] for i in range(n))
        measure_s = QUICK_MEASURE_S if quick else MEASURE_S
        plan = Plan(ports=ports, interval_s=INTERVAL_S if not quick else 2.0, warmup_s=WARMUP_S if not quick else 1.0,
                    measure_s=measure_s, concurrency=CONCURRENCY, cpus=daemon_cpus)
        progress(f"  {n:,} providers on {len(fleet.ports):,} ports, daemon on core(s) {daemon_cpus}, "
                 f"fleet on {fleet_cpus}")
        fleet_before, started = _cpu_s(fleet.pids), time.monotonic()
        outcome = measure(MONITORD, plan)[0]
        fleet_cpu = _cpu_s(fleet.pids) - fleet_before
        wall = time.monotonic() - started  # the fleet's share over the whole run (start-up included): a floor
    share = fleet_cpu / (wall * max(1, len(fleet_cpus))) if wall > 0 else 0.0
    run = Run(n, plan.interval_s, replace(outcome, variant="monitord (pinned)"), share)
    progress(f"    rate {run.rate_share:.3f} of configured, lateness p99 {run.lateness_p99_ms:.0f} ms, daemon core "
             f"{run.core_share:.0%}, fleet {share:.0%}, {outcome.failed} failed, {outcome.skipped} skipped, "
             f"{outcome.cpu_us_per_probe or 0:,.0f} µs/probe, waited for the core {run.waited_share:.0%} -> "
             f"{'meets' if run.meets else 'misses'}")
    return run


def cores() -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(the daemon's core, the fleet's cores), or None on a one-core machine."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    return (available[0],), tuple(available[1:])


def ladder(quick: bool, progress: Callable[[str], None] = print) -> list[Run]:
    """Climb the sizes until one misses; then GOAL_N again until REPEATS runs of it exist (when it was reached)."""
    split = cores()
    if split is None:
        return []
    runs: list[Run] = []
    for n in QUICK_LADDER if quick else LADDER:
        runs.append(measure_n(n, quick, *split, progress))
        if not runs[-1].meets:
            break
    if not quick:
        while 0 < sum(r.n == GOAL_N for r in runs) < REPEATS:
            runs.append(measure_n(GOAL_N, quick, *split, progress))
    return runs


async def run(quick: bool) -> list[Table]:
    runs = await asyncio.to_thread(ladder, quick)
    return [table(runs, quick)]


def table(runs: list[Run], quick: bool) -> Table:
    result = Table(TITLE[0].upper() + TITLE[1:],
                   ("providers", "ports", "interval s", "achieved / configured rate", "lateness p50 ms",
                    "lateness p99 ms", "daemon core busy", "waited for its core", "fleet cores busy", "CPU µs/probe",
                    "peak RSS MB", "meets"))
    for r in runs:
        result.add(r.n, min(r.n, PORTS), r.interval_s, r.rate_share, r.outcome.lateness_p50_ms,
                   r.outcome.lateness_p99_ms, f"{r.core_share:.0%}", f"{r.waited_share:.0%}",
                   f"{r.fleet_cpu_share:.0%}",
                   r.outcome.cpu_us_per_probe, r.outcome.peak_rss_mb, r.meets)
    noisy = busy_note()
    if not runs:
        result.add(*(["-"] * (len(result.columns) - 1)), "one core only: not measurable")
        result.targets.append(Target(f"providers per core at a {INTERVAL_S:g} s interval", f">= {GOAL_N:,}",
                                     "-", None, "this machine has one core: the fleet would share the daemon's"))
        return result
    met = [r.n for r in runs if r.meets]
    at_goal = [r for r in runs if r.n == GOAL_N]
    fleet_bound = any(r.fleet_cpu_share >= FLEET_SATURATED for r in runs if not r.meets)
    contended = any(r.contended for r in runs if not r.meets)
    notes = [noisy] if noisy else []
    if contended:
        notes.append("in a missed run the daemon waited for its core " + ", ".join(
            f"{r.waited_share:.0%}" for r in runs if not r.meets and r.contended) + " of the window (other processes "
            "ran on it): what it missed is the machine's load, not a measure of monitord")
    if fleet_bound:
        notes.append("the fleet's core was saturated in a missed run: the limit may be the fleet's, not monitord's")
    if quick:
        notes.append("quick mode: a tiny fleet on a 2 s interval; not meaningful")
    note = "; ".join(notes)
    largest = max(met) if met else 0
    result.targets.append(Target(
        f"providers per core at a {INTERVAL_S:g} s interval (rate >= {RATE_MIN:g}, lateness p99 < "
        f"{LATENESS_P99_MAX_MS:g} ms, one pinned core)", f">= {GOAL_N:,}",
        f"{largest:,} (largest size of {', '.join(f'{n:,}' for n in (QUICK_LADDER if quick else LADDER))} "
        "that met both)" if met else "none of the sizes met both",
        None if quick or ((fleet_bound or contended) and largest < GOAL_N) else largest >= GOAL_N, note))
    if at_goal:
        result.targets.append(Target(
            f"achieved rate at {GOAL_N:,} providers every {INTERVAL_S:g} s on one pinned core", f">= {RATE_MIN:g}",
            spread_text([r.rate_share for r in at_goal]),
            None if quick or any(r.contended for r in at_goal) else min(r.rate_share for r in at_goal) >= RATE_MIN,
            note))
        result.targets.append(Target(
            f"lateness p99 at {GOAL_N:,} providers every {INTERVAL_S:g} s on one pinned core",
            f"< {LATENESS_P99_MAX_MS:g} ms", spread_text([r.lateness_p99_ms for r in at_goal], " ms"),
            None if quick or any(r.contended for r in at_goal)
            else max(r.lateness_p99_ms for r in at_goal) < LATENESS_P99_MAX_MS, note))
    result.notes += [
        f"The daemon (canaries every {10 * INTERVAL_S:g} s and capacity on, as in bench/probes.py) runs pinned to one "
        f"core, with monitor.concurrency {CONCURRENCY} (the default); the fleet (canned answers from a minimal "
        "HTTP/1.1 responder) runs pinned to the other core(s). "
        f"Each size: a fresh daemon process, {WARMUP_S:g} s of warm-up after start-up, then {MEASURE_S:g} s measured.",
        f"Providers share {PORTS:,} server ports round-robin (the fd limit cannot hold a port and a connection for "
        "each of 20,000); each keeps its own name, state, rows and schedule.",
        "\"daemon core busy\": the daemon's CPU over the window divided by the window (its one core); \"fleet cores "
        "busy\": the fleet's CPU over the whole run divided by its cores' time; \"waited for its core\": time the "
        "daemon's threads were runnable but another process had the core (/proc schedstat), over the window. A miss "
        f"while it waited {CONTENDED:.0%} or more is reported as not measured.",
        f"Sizes climb {', '.join(f'{n:,}' for n in LADDER)} until one misses; {GOAL_N:,} is then repeated to "
        f"{REPEATS} runs when it was reached.",
    ]
    result.figures["per_core"] = [{"n": r.n, "rate_share": r.rate_share, "lateness_p99_ms": r.outcome.lateness_p99_ms,
                                   "core_share": r.core_share, "fleet_cpu_share": r.fleet_cpu_share,
                                   "cpu_us_per_probe": r.outcome.cpu_us_per_probe, "waited_share": r.waited_share,
                                   "peak_rss_mb": r.outcome.peak_rss_mb} for r in runs]
    return result
