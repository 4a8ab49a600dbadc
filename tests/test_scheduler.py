"""scheduler.py: interval, spread start, no overlap, concurrency cap, sync on reload, cancel on shutdown."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import replace
from itertools import pairwise

from monitord.model import ProviderSpec
from monitord.scheduler import ProbeScheduler
from tests.tools.polling import eventually


def spec(name: str, interval_s: float = 0.2) -> ProviderSpec:
    return ProviderSpec(name=name, type="vllm", base_url="http://127.0.0.1:1", probe_interval_s=interval_s)


async def test_each_provider_runs_at_its_interval() -> None:
    runs: dict[str, list[float]] = defaultdict(list)

    async def run(s: ProviderSpec) -> None:
        runs[s.name].append(time.monotonic())

    sched = ProbeScheduler(run, concurrency=10, rng=random.Random(1))
    sched.start()
    sched.schedule(spec("a", 0.2), first_delay_s=0)
    sched.schedule(spec("b", 0.4), first_delay_s=0)
    await asyncio.sleep(1.25)
    await sched.shutdown()
    assert 4 <= len(runs["a"]) <= 7, runs["a"]
    assert 3 <= len(runs["b"]) <= 4, runs["b"]
    gaps = [b - a for a, b in zip(runs["a"], runs["a"][1:], strict=False)]
    # Each gap is the interval (0.2 s) give or take the lateness of two runs on a loaded 2-core machine.
    assert 0.19 < sum(gaps) / len(gaps) < 0.26 and all(0.1 < g < 0.35 for g in gaps), gaps
    assert max(sched.lateness_ms) < 150


async def test_start_is_spread_over_the_interval() -> None:
    first: dict[str, float] = {}
    t0 = time.monotonic()

    async def run(s: ProviderSpec) -> None:
        first.setdefault(s.name, time.monotonic() - t0)

    sched = ProbeScheduler(run, concurrency=50, rng=random.Random(7))
    sched.start()
    for i in range(40):
        sched.schedule(spec(f"p{i}", 1.0))
    await asyncio.sleep(1.1)
    await sched.shutdown()
    assert len(first) == 40
    # No thundering herd: the first probes land across the whole interval, not all at t=0.
    early = sum(1 for t in first.values() if t < 0.25)
    assert early < 20 and max(first.values()) > 0.6


async def test_no_overlapping_runs_of_one_provider() -> None:
    active = 0
    peak = 0
    started = 0

    async def slow(s: ProviderSpec) -> None:
        nonlocal active, peak, started
        started += 1
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.5)
        active -= 1

    sched = ProbeScheduler(slow, concurrency=10)
    sched.start()
    sched.schedule(spec("a", 0.1), first_delay_s=0)
    await asyncio.sleep(1.2)
    await sched.shutdown()
    assert peak == 1 and started <= 3
    assert sched.skipped_total >= 3


async def test_global_concurrency_cap() -> None:
    active = 0
    peak = 0

    async def slow(s: ProviderSpec) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.2)
        active -= 1

    sched = ProbeScheduler(slow, concurrency=3)
    sched.start()
    for i in range(12):
        sched.schedule(spec(f"p{i}", 5.0), first_delay_s=0)
    await asyncio.sleep(0.9)
    await sched.shutdown()
    assert peak == 3


async def test_sync_adds_removes_and_reschedules() -> None:
    seen: list[tuple[str, float]] = []

    async def run(s: ProviderSpec) -> None:
        seen.append((s.name, s.timeout_s))

    sched = ProbeScheduler(run, concurrency=5)
    sched.start()
    sched.sync([spec("a", 5), spec("b", 5)])
    added, removed, changed = sched.sync([replace(spec("a", 5), timeout_s=3.0), spec("c", 5),
                                          replace(spec("d", 5), enabled=False)])
    assert (added, removed, changed) == (["c"], ["b"], ["a"])
    assert set(sched.specs) == {"a", "c"} and sched.specs["a"].timeout_s == 3.0
    await sched.shutdown()


async def test_shutdown_cancels_in_flight_probes() -> None:
    cancelled = asyncio.Event()

    async def hang(s: ProviderSpec) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sched = ProbeScheduler(hang, concurrency=5)
    sched.start()
    sched.schedule(spec("a", 10), first_delay_s=0)
    await asyncio.sleep(0.2)
    assert sched.in_flight == 1
    await sched.shutdown()
    assert cancelled.is_set() and sched.in_flight == 0


async def test_a_raising_probe_keeps_its_schedule() -> None:
    calls = 0

    async def boom(s: ProviderSpec) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    sched = ProbeScheduler(boom, concurrency=5)
    sched.start()
    sched.schedule(spec("a", 0.1), first_delay_s=0)
    for _ in range(100):  # three runs, however loaded the machine is
        if calls >= 3:
            break
        await asyncio.sleep(0.05)
    await sched.shutdown()
    assert calls >= 3


async def test_overdue_grows_when_the_loop_is_blocked() -> None:
    async def run(s: ProviderSpec) -> None:
        pass

    sched = ProbeScheduler(run, concurrency=5)
    sched.start()
    sched.schedule(spec("a", 0.1), first_delay_s=0)
    await asyncio.sleep(0.3)
    assert sched.running and sched.overdue_s() < 0.1
    time.sleep(0.5)  # noqa: ASYNC251 - deliberately block the loop, as a stuck one would
    assert sched.overdue_s() > 0.3
    await sched.shutdown()


async def test_a_failing_provider_is_probed_again_after_the_retry_interval() -> None:
    runs: list[float] = []
    done = asyncio.Event()

    async def run(s: ProviderSpec) -> float | None:
        runs.append(time.monotonic())
        if len(runs) == 4:
            done.set()
        return s.retry_interval_s if len(runs) < 4 else None  # failing for three runs, then fine: the interval

    sched = ProbeScheduler(run, concurrency=5)
    sched.start()
    failing = replace(spec("a", 30.0), retry_interval_s=0.05)
    sched.schedule(failing, first_delay_s=0)
    async with asyncio.timeout(10):  # three retries, not three 30 s intervals
        await done.wait()
    next_run_s = sched.next_run_in_s("a")
    assert sched.retries_total == 3 and next_run_s is not None and next_run_s > 25  # the interval again
    await sched.shutdown()
    assert all(0.03 < b - a < 5 for a, b in pairwise(runs)), runs


async def test_runs_another_instance_holds_keep_their_place_but_start_nothing() -> None:
    """A cluster member schedules every provider but starts runs only for those it holds: the others take no
    concurrency slot and count no lateness, and a provider it comes to hold runs at its next due time."""
    runs: dict[str, int] = defaultdict(int)
    held = {"mine"}

    async def run(s: ProviderSpec) -> None:
        runs[s.name] += 1

    sched = ProbeScheduler(run, concurrency=1, wanted=lambda s: s.name in held)
    sched.start()
    sched.schedule(spec("mine", 0.1), first_delay_s=0)
    sched.schedule(spec("theirs", 0.1), first_delay_s=0)
    await eventually(lambda: runs["mine"] >= 3, 10.0, "three runs of the held provider")
    assert runs["theirs"] == 0 and runs["mine"] <= len(sched.lateness_ms) <= runs["mine"] + 1  # one may be starting
    held.add("theirs")  # taken over
    await eventually(lambda: runs["theirs"] >= 2, 10.0, "the taken-over provider running on its schedule")
    await sched.shutdown()
