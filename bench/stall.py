"""Stall detection: an engine stops generating while its API keeps answering -> `stalled`, never selected.

The real daemon (in-process: scheduler, probes, canary jobs, pipeline, live state, ranking) against vLLM doubles
on loopback whose `/health`, `/v1/models` and `/metrics` keep answering at once while every chat completion hangs
(the frozen-engine failure of vLLM issue 39863). All engines freeze at the same moment, so each trial meets its
canary timer at an independent phase; a trial ends when the provider is `stalled` and `/v1/select` restricted to
it answers 503 `no_provider`. Target (issue 10): within two canary intervals at `canary.interval: 10s`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import Table, Target, busy_note
from monitord import logs
from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import Status
from tests.doubles import DOUBLES
from tests.doubles.base import DoubleControl, ProviderDouble

ORDER = 45
TITLE = "stall detection: engine hangs, API answers -> stalled and not selected (canary interval 10 s)"

INTERVAL_S = 10.0
DEADLINE_S = 2.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(quick: bool) -> list[Table]:
    if not quick:  # a full run prints only its table; quick runs inside pytest must leave logging alone
        logs.configure("warning", "console")
    trials, interval_s = (2, 1.0) if quick else (12, INTERVAL_S)
    doubles = [await ProviderDouble("vllm", DOUBLES["vllm"], DoubleControl()).start() for _ in range(trials)]
    providers = "".join(
        f'  gpu{i}: {{type: vllm, endpoint: "{double.url}", parameters: {{probe_interval: 2s, timeout: 1s, '
        f"max_retries: 0, canary: {{interval: {interval_s:g}s, deadline: {DEADLINE_S:g}s, timeout: 5s}}}}}}\n"
        for i, double in enumerate(doubles))
    detected: dict[str, float] = {}
    unselected: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        text = f"""
providers:
{providers}monitor: {{canary: {{concurrency: {trials}}}}}
storage: {{url: "sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"}}
api: {{listen: "127.0.0.1:0"}}
"""
        daemon = Daemon(parse_config(text), install_signal_handlers=False)
        await daemon.start()
        names = [f"gpu{i}" for i in range(trials)]
        try:
            async with aiohttp.ClientSession() as http:
                select_url = f"http://127.0.0.1:{daemon.api_port}/v1/select"
                steady = time.monotonic() + 30
                while not all(_status(daemon, n) is Status.UP for n in names):
                    assert time.monotonic() < steady, "the providers never came up"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(interval_s)  # every canary has run once: each timer has its own phase now
                frozen = time.monotonic()
                for double in doubles:
                    await double.set("up", generation="hang")
                give_up = frozen + 2 * interval_s + DEADLINE_S + 30
                while len(unselected) < trials and time.monotonic() < give_up:
                    now = time.monotonic()
                    for name in names:
                        if name not in detected and _status(daemon, name) is Status.STALLED:
                            detected[name] = now - frozen
                    for name in [n for n in detected if n not in unselected]:
                        async with http.post(select_url, json={"providers": [name]}) as resp:
                            if resp.status == 503:  # no_provider: the only candidate is excluded
                                unselected[name] = time.monotonic() - frozen
                    await asyncio.sleep(0.02)
        finally:
            await daemon.stop()
            for double in doubles:
                await double.stop()
    found = list(detected.values())
    gone = list(unselected.values())
    bound_s = 2 * interval_s
    table = Table(f"Stall detection ({trials} engines frozen at once)",
                  ("event", "detected", "p50 s", "p99 s", "max s", "target", "result"))
    if found:
        p99 = _percentile(found, 0.99)
        table.add("stalled", f"{len(found)}/{trials}", statistics.median(found), p99, max(found),
                  f"p99 <= {bound_s:g} s", "met" if p99 <= bound_s and len(found) == trials else "NOT met")
    if gone:
        table.add("not selected", f"{len(gone)}/{trials}", statistics.median(gone), _percentile(gone, 0.99),
                  max(gone), "at the stall", "-")
    table.notes.append(f"canary interval {interval_s:g} s, deadline {DEADLINE_S:g} s, canary concurrency {trials} "
                       "(one per engine: with the default cap of 2, k engines freezing together queue their "
                       f"canaries and the last waits about k/2 x {DEADLINE_S:g} s longer); from the freeze to the "
                       "live status; the next canary after the freeze comes 0-1 interval later, then waits the "
                       "deadline, hence interval + deadline at worst.")
    table.figures = {"stalled_s": found, "unselected_s": gone}
    found_p99 = _percentile(found, 0.99) if found else None
    table.targets.append(Target(f"stall detection p99, {trials} engines frozen at once", f"<= {bound_s:g} s, all found",
                                f"{found_p99:.2f} s, {len(found)}/{trials} found" if found_p99 is not None
                                else f"0/{trials} found", found_p99 is not None and found_p99 <= bound_s
                                and len(found) == trials, busy_note()))
    return [table]


def _status(daemon: Daemon, name: str) -> Status | None:
    state = daemon.live.get(name)
    return state.status if state is not None else None
