"""When to probe: one due time per provider on the event loop's monotonic clock, spread start, per-run jitter, no
overlap, a cap. A step of the wall clock (NTP, a suspended VM, an operator) neither stops nor bunches probes.

Knows nothing of HTTP or SQL: it calls `run_probe(spec)` and tracks the task so shutdown can cancel it. It also
says how long ago each provider's last probe ended, so readiness and /metrics can tell stale probing apart.
The same scheduler runs the generation canaries: one job per (provider, model), keyed by the job's `name`. When
`run_probe` answers a delay (a provider failing but not yet down: its retry_interval), the next run comes after it
instead of a whole interval, so a failure is confirmed (or cleared) in seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

import structlog

from monitord.model import ProviderSpec

log = structlog.get_logger("monitord.scheduler")

class Schedulable(Protocol):
    """What the scheduler needs of a job: a ProviderSpec (health probes) or a canary job."""

    @property
    def name(self) -> str: ...
    @property
    def probe_interval_s(self) -> float: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def enabled(self) -> bool: ...


JobT = TypeVar("JobT", bound=Schedulable)
RunProbe = Callable[[ProviderSpec], Awaitable[float | None]]  # a delay: run again that soon (a failing provider)

_EARLY_S = 0.001  # a run this close to due is started now: the loop may call back a hair early
STALE_SLACK_S = 2.0  # on top of two intervals and a timeout: a loaded loop is late, not stale


def stale_after_s(spec: Schedulable) -> float:
    """How old a provider's last probe may get before probing counts as stalled: a missed run is tolerated."""
    return 2 * spec.probe_interval_s + spec.timeout_s + STALE_SLACK_S


class Limit:
    """A counting limit whose capacity can change while tasks hold it (a reload of monitor.concurrency): a
    lower capacity lets running holders finish and admits no one until the count is under it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._wake()

    async def __aenter__(self) -> None:
        while self.held >= self.capacity:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.held += 1

    async def __aexit__(self, *_: object) -> None:
        self.held -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.capacity - self.held
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class ProbeScheduler(Generic[JobT]):
    """Every provider's (or canary job's) next run in one heap, one loop callback armed at the earliest, and the
    probe tasks it starts. No task, event or timer per provider: at 20,000 providers those cost more CPU per run
    than the run's own bookkeeping, and kilobytes of memory each."""

    def __init__(self, run_probe: Callable[[JobT], Awaitable[float | None]], *, concurrency: int,
                 jitter_s: float = 0.0,
                 rng: random.Random | None = None, wanted: Callable[[JobT], bool] | None = None) -> None:
        self._run_probe = run_probe
        # Runs this instance should make now (a cluster member: the providers it holds a lease on). The others
        # keep their place in the heap but start no task and take no concurrency slot: in a cluster of three, two
        # thirds of all due runs; run_probe checks again, since a lease can change hands while a run waits.
        self._wanted = wanted
        self._jitter_s = jitter_s
        self._rng = rng or random.Random()
        self._limit = Limit(concurrency)
        self._specs: dict[str, JobT] = {}
        self._current: dict[str, asyncio.Task[None]] = {}  # per provider: its probe task, while it runs
        self._tasks: set[asyncio.Task[None]] = set()
        self._due: dict[str, float] = {}  # next run per provider, in loop time
        self._token: dict[str, int] = {}  # the heap entry of each provider that counts (older ones are stale)
        self._heap: list[tuple[float, int, str]] = []  # (due, token, name); stale entries are skipped when popped
        self._pending: dict[str, float] = {}  # first delays of providers scheduled before start()
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | None = None  # the loop callback, at the earliest due time
        self._armed_at = math.inf
        self._last_done: dict[str, float] = {}  # when each provider's last probe ended (or it was scheduled)
        self._started = False
        self._stopped = False
        self.lateness_ms: deque[float] = deque(maxlen=10_000)  # run time minus due time
        self.skipped_total = 0  # runs dropped because the previous probe of that provider was still running
        self.retries_total = 0  # runs brought forward because the provider was failing

    @property
    def specs(self) -> dict[str, JobT]:
        return dict(self._specs)

    @property
    def concurrency(self) -> int:
        return self._limit.capacity

    @property
    def jitter_s(self) -> float:
        return self._jitter_s

    def reconfigure(self, *, concurrency: int, jitter_s: float) -> None:
        """A reload: the cap applies to the next probe to start (running ones finish), the jitter to the next run."""
        self._limit.resize(concurrency)
        self._jitter_s = jitter_s

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def overdue_s(self) -> float:
        """How far the most overdue timer is past its run time: grows without bound if scheduling stalls."""
        now = _now()
        return max((max(0.0, now - due) for due in self._due.values()), default=0.0)

    def next_run_in_s(self, name: str) -> float | None:
        """Seconds until `name`'s next run (negative: overdue); None when it is not scheduled."""
        due = self._due.get(name)
        return due - _now() if due is not None else None

    def probe_ages_s(self) -> Mapping[str, float]:
        """Seconds since each scheduled provider's last probe ended (since it was scheduled, before its first)."""
        now = _now()
        return {name: max(0.0, now - self._last_done.get(name, now)) for name in self._specs}

    def stale(self) -> list[str]:
        """Providers whose last probe is older than stale_after_s allows: probing has stalled for them."""
        ages = self.probe_ages_s()
        return sorted(name for name, spec in self._specs.items() if ages.get(name, 0.0) > stale_after_s(spec))

    @property
    def in_flight(self) -> int:
        """Probe tasks started, including those waiting for a place under the concurrency cap."""
        return len(self._tasks)

    @property
    def probing(self) -> int:
        """Probes running now (holding a place under the cap)."""
        return self._limit.held

    def start(self) -> None:
        """Start the timers; needs a running event loop. First delays count from here."""
        if self._started:
            return
        self._started = True
        now = _now()
        for name, delay in self._pending.items():
            self._set_due(name, now + delay)
        self._pending.clear()

    def schedule(self, spec: JobT, *, first_delay_s: float | None = None) -> None:
        """Add or replace the timer of `spec`. The first run is spread over one interval unless told otherwise."""
        delay = self._rng.uniform(0, spec.probe_interval_s) if first_delay_s is None else first_delay_s
        self._specs[spec.name] = spec
        self._last_done.setdefault(spec.name, _now())
        if self._stopped:
            return
        if self._started:
            self._set_due(spec.name, _now() + delay)
        else:
            self._pending[spec.name] = delay

    def unschedule(self, name: str) -> None:
        self._specs.pop(name, None)
        self._due.pop(name, None)
        self._token.pop(name, None)  # its heap entries are stale now
        self._pending.pop(name, None)
        self._last_done.pop(name, None)

    def sync(self, specs: Iterable[JobT]) -> tuple[list[str], list[str], list[str]]:
        """Make the timers match `specs` (enabled ones only). Returns (added, removed, changed) names."""
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
        self._stopped = True
        if self._armed is not None:
            self._armed.cancel()
            self._armed, self._armed_at = None, math.inf
        self._heap.clear()
        self._token.clear()
        self._due.clear()
        self._pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_due(self, name: str, due: float) -> None:
        """Make `due` the provider's next run (any earlier entry of it goes stale) and arm the loop for it."""
        token = next(self._seq)
        self._due[name] = due
        self._token[name] = token
        heapq.heappush(self._heap, (due, token, name))
        if due < self._armed_at:
            self._arm(due)

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed = asyncio.get_running_loop().call_at(when, self._tick)
        self._armed_at = when

    def _tick(self) -> None:
        """Start every run that is due (the loop may call a little early or late), then re-arm at the next."""
        self._armed, self._armed_at = None, math.inf
        if self._stopped:
            return
        heap, tokens = self._heap, self._token
        now = _now()
        horizon = now + _EARLY_S
        while heap and heap[0][0] <= horizon:
            due, token, name = heapq.heappop(heap)
            if tokens.get(name) != token:
                continue  # unscheduled, rescheduled or brought forward since
            self._run(name, due, now, horizon)
        # stale entries at the top would only arm a useless wake-up
        while heap and tokens.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def _run(self, name: str, due: float, now: float, horizon: float) -> None:
        if self._wanted is None or self._wanted(self._specs[name]):  # another instance's keeps its place only
            self._start(name, due, now)
        interval_s = self._specs[name].probe_interval_s
        due += interval_s
        if due <= horizon:  # after a stall, run once, not once per missed interval
            due = now + max(interval_s, 2 * _EARLY_S)
        token = next(self._seq)
        self._due[name] = due
        self._token[name] = token
        heapq.heappush(self._heap, (due, token, name))  # _tick re-arms once every due run has started

    def _start(self, name: str, due: float, now: float) -> None:
        self.lateness_ms.append(max(0.0, now - due) * 1000)
        current = self._current.get(name)
        if current is not None and not current.done():
            self.skipped_total += 1  # no overlapping runs of one provider
            log.warning("probe.skipped_overlap", provider=name)
            return
        task = asyncio.create_task(self._job(name), name=f"monitord.probe.{name}")
        self._current[name] = task
        self._tasks.add(task)

    async def _job(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if self._jitter_s > 0:
                await asyncio.sleep(self._rng.uniform(0, self._jitter_s))
            spec = self._specs.get(name)
            if spec is None:  # removed while waiting
                return
            async with self._limit:
                retry_in_s = await self._run_probe(spec)
            if retry_in_s is not None:
                self._retry_soon(name, retry_in_s)
        except asyncio.CancelledError:
            # Only shutdown cancels probe tasks; ending quietly keeps the log for real failures.
            log.debug("probe.cancelled", provider=name)
        except Exception:
            # run_probe must not raise; if it does, the provider must keep its schedule anyway.
            log.exception("probe.job_failed", provider=name)
        finally:
            self._tasks.discard(task)
            if self._current.get(name) is task:
                del self._current[name]
            if name in self._specs:
                self._last_done[name] = _now()


    def _retry_soon(self, name: str, delay_s: float) -> None:
        """Bring the next run forward to `delay_s` from now (never later than it was due anyway)."""
        due = self._due.get(name)
        soon = _now() + max(0.0, delay_s)
        if due is not None and not self._stopped and soon < due:
            self._set_due(name, soon)
            self.retries_total += 1


def _now() -> float:
    """The event loop's clock: monotonic, so wall clock steps do not move it."""
    return asyncio.get_running_loop().time()
