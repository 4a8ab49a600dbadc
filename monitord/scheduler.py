"""When to probe: one APScheduler interval job per provider, spread start, per-run jitter, no overlap, a cap.

Knows nothing of HTTP or SQL: it calls `run_probe(spec)` and tracks the task so shutdown can cancel it.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitord.model import ProviderSpec

log = structlog.get_logger("monitord.scheduler")

RunProbe = Callable[[ProviderSpec], Awaitable[None]]


class ProbeScheduler:
    """Owns the APScheduler instance and every probe task it starts."""

    def __init__(self, run_probe: RunProbe, *, concurrency: int, jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self._run_probe = run_probe
        self._jitter_s = jitter_s
        self._rng = rng or random.Random()
        self._limit = asyncio.Semaphore(concurrency)
        self._specs: dict[str, ProviderSpec] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        self.lateness_ms: deque[float] = deque(maxlen=10_000)  # submit time minus scheduled time
        self.skipped_total = 0  # runs dropped because the previous probe of that provider was still running

    @property
    def specs(self) -> dict[str, ProviderSpec]:
        return dict(self._specs)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def overdue_s(self) -> float:
        """How far the most overdue job is past its run time: grows without bound if scheduling stalls."""
        now = datetime.now(UTC)
        due = [job.next_run_time for job in self._scheduler.get_jobs() if job.next_run_time is not None]
        return max((max(0.0, (now - t).total_seconds()) for t in due), default=0.0)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        """Start scheduling; needs a running event loop."""
        self._scheduler.start()

    def schedule(self, spec: ProviderSpec, *, first_delay_s: float | None = None) -> None:
        """Add or replace the job of `spec`. The first run is spread over one interval unless told otherwise."""
        delay = self._rng.uniform(0, spec.probe_interval_s) if first_delay_s is None else first_delay_s
        self._specs[spec.name] = spec
        first_run = datetime.now(UTC) + timedelta(seconds=delay)
        self._scheduler.add_job(
            self._job,
            IntervalTrigger(seconds=spec.probe_interval_s, start_date=first_run, timezone=UTC),
            next_run_time=first_run,  # else a start_date already past by a few µs waits a whole interval
            args=(spec.name,),
            id=spec.name,
            name=f"probe {spec.name}",
            replace_existing=True,
            max_instances=1,  # no overlapping runs of the same provider
            coalesce=True,  # after a stall, run once, not once per missed interval
            misfire_grace_time=max(1, int(spec.probe_interval_s)),
        )

    def unschedule(self, name: str) -> None:
        self._specs.pop(name, None)
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def sync(self, specs: Iterable[ProviderSpec]) -> tuple[list[str], list[str], list[str]]:
        """Make the jobs match `specs` (enabled ones only). Returns (added, removed, changed) names."""
        wanted = {s.name: s for s in specs if s.enabled}
        added = [n for n in wanted if n not in self._specs]
        removed = [n for n in self._specs if n not in wanted]
        changed = [n for n in wanted if n in self._specs and self._specs[n] != wanted[n]]
        for name in removed:
            self.unschedule(name)
        for name in added:
            self.schedule(wanted[name])
        for name in changed:
            interval_changed = self._specs[name].probe_interval_s != wanted[name].probe_interval_s
            if interval_changed:
                self.schedule(wanted[name])
            else:
                self._specs[name] = wanted[name]  # same cadence: the next run just uses the new spec
        return added, removed, changed

    async def shutdown(self) -> None:
        """Stop scheduling and cancel in-flight probes (their results are not recorded)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _job(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._jitter_s > 0:
                await asyncio.sleep(self._rng.uniform(0, self._jitter_s))
            spec = self._specs.get(name)
            if spec is None:  # removed while waiting
                return
            async with self._limit:
                await self._run_probe(spec)
        except asyncio.CancelledError:
            # Only shutdown cancels probe tasks; ending quietly keeps APScheduler from logging it as a crash.
            log.debug("probe.cancelled", provider=name)
        except Exception:
            # run_probe must not raise; if it does, the job must keep its schedule anyway.
            log.exception("probe.job_failed", provider=name)
        finally:
            self._tasks.discard(task)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        scheduled = event.scheduled_run_times[-1]
        self.lateness_ms.append((datetime.now(UTC) - scheduled).total_seconds() * 1000)

    def _on_skipped(self, event: JobSubmissionEvent) -> None:
        self.skipped_total += 1
        log.warning("probe.skipped_overlap", provider=event.job_id)
