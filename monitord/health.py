"""Pure: fold probe results into live per-provider state (status with hysteresis, rolling windows, models).

No I/O and no clock reads: every call takes `now`. Event times (since, last_*_at, StatusChange.at) are the
probes' own start times, so a replay from the store gives the same state as the live run did.

Status rules (one probe result at a time):
- a result counts as a success when it is UP or DEGRADED (the server answered and listed what it serves) and as a
  failure when it is DOWN or LOADING (it cannot serve a request now);
- the first result of a provider (status UNKNOWN) sets the status directly, so a fresh daemon says up or down at once;
- LOADING, DEGRADED and MISCONFIGURED results are reported immediately, from any status (a wrong server on the
  port is a fact of one answer, not a failure that needs confirming);
- DOWN needs `failure_threshold` failures in a row (a LOADING result counts towards it);
- from DOWN, UP needs `success_threshold` successes in a row; from LOADING or DEGRADED an UP result is immediate.
Stalled (the server answers but cannot generate), from generation samples and the probes' Capacity:
- a canary that got no first token by its deadline, or no token for a deadline mid-stream, while the server did not
  report itself saturated, makes an UP or DEGRADED provider STALLED at once; only a canary that succeeds ends it;
- passively, a server reporting requests running while its generated-token counter does not move for
  `stall_window_s` is STALLED until the counter moves or nothing runs. Zero running requests never end a canary's
  verdict: a hung engine can publish frozen zero gauges;
- probes keep their say: DOWN still needs `failure_threshold` failures; an UP or DEGRADED result of a stalled
  provider keeps it STALLED. Skipped samples (busy, not loaded, budget) say nothing.
Latency statistics use successful results only; the EWMA is forgotten once no latency sample is left in the window.

`suspect` follows the latest evidence at once, without hysteresis: a failed probe or a failed reported request
(POST /v1/report) makes a provider suspect, a successful one clears it. Routing reacts to it; alerts wait for the
status. Reports keep their own window (report_window_s) and at most `report_rate_per_s` of them per provider and
second count there; failures beyond that still make the provider suspect.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from monitord.model import (
    Capacity,
    ErrorClass,
    GenerationSample,
    Identity,
    ModelInfo,
    ModelServer,
    OutcomeReport,
    ProbeResult,
    ProviderState,
    ServedModel,
    Status,
    StatusChange,
)

_OK = frozenset({Status.UP, Status.DEGRADED})
# The shared stand-in for a tracker's status-change and report deques until it has one (never appended to): the
# flap and report windows of most providers stay empty.
_NOTHING_YET: deque[Any] = deque(maxlen=0)
_STALL_CLASSES = frozenset({ErrorClass.GENERATION_TIMEOUT, ErrorClass.STREAM_STALLED})


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    failure_threshold: int = 3  # failures in a row before an UP/DEGRADED/LOADING provider is DOWN
    success_threshold: int = 2  # successes in a row before a DOWN provider is UP again
    window_s: float = 900.0  # availability and latency window
    ewma_alpha: float = 0.3  # weight of the newest latency in the EWMA
    flap_window_s: float = 3600.0  # status changes counted in `transitions_recent`
    stall_window_s: float = 60.0  # requests running with no generated token for this long: stalled (passive)
    report_window_s: float = 300.0  # outcomes of real requests counted in reports / reports_ok / report_ttft
    report_rate_per_s: int = 20  # reports per provider and second that count in that window

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("failure_threshold and success_threshold must be at least 1")
        if min(self.window_s, self.flap_window_s, self.stall_window_s, self.report_window_s) <= 0:
            raise ValueError("window_s, flap_window_s, stall_window_s and report_window_s must be positive")
        if self.report_rate_per_s < 1:
            raise ValueError("report_rate_per_s must be at least 1")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError("ewma_alpha must be in (0, 1]")


class ProbeRecord(Protocol):
    """The part of a stored probe row a rebuild needs; the store's ProbeSample fits it as it is."""

    @property
    def ts(self) -> datetime: ...
    @property
    def provider(self) -> str: ...
    @property
    def status(self) -> Status | str: ...
    @property
    def error_class(self) -> ErrorClass | str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def total_ms(self) -> float | None: ...


def next_status(current: Status, result: Status, failures_in_a_row: int, successes_in_a_row: int,
                policy: HealthPolicy) -> Status:
    """The status after one result; the counters already include that result."""
    if current is Status.UNKNOWN or result in (Status.LOADING, Status.DEGRADED, Status.MISCONFIGURED):
        return result
    if result is Status.UP:
        if current is Status.DOWN and successes_in_a_row < policy.success_threshold:
            return Status.DOWN
        return Status.UP
    # DOWN (or a result that should never be UNKNOWN: treated the same way)
    return Status.DOWN if failures_in_a_row >= policy.failure_threshold else current


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 1]."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def _status(value: Status | str) -> Status:
    return value if isinstance(value, Status) else Status(value)


def _error_class(value: ErrorClass | str | None) -> ErrorClass | None:
    if value is None or isinstance(value, ErrorClass):
        return value
    try:
        return ErrorClass(value)
    except ValueError:  # a class a newer monitord wrote; keep the fact that it failed
        return ErrorClass.INTERNAL


class ProviderTracker:
    """Mutable bookkeeping behind one provider's immutable ProviderState snapshots."""

    __slots__ = ("_canary_stall", "_changes", "_ewma_ms", "_latencies", "_models", "_ok", "_passive_stall",
                 "_progress", "_report_second", "_report_ttfts", "_reports", "_reports_in_second", "_reports_ok",
                 "_request_count", "_request_ewma_ms", "_samples", "name", "policy", "provider_type", "state")

    def __init__(self, name: str, provider_type: str, policy: HealthPolicy) -> None:
        self.name = name
        self.provider_type = provider_type
        self.policy = policy
        self.state = ProviderState(name=name, type=provider_type)
        # (ts_s, ok, latency_ms, request_ms), oldest first. A list, not a deque: an empty deque costs 600 bytes a
        # provider, and a window holds tens of samples, so dropping the oldest few at once is as cheap
        self._samples: list[tuple[float, bool, float | None, float | None]] = []  # ts_s, ok, latency_ms,
        # and the mean time of one HTTP request of that probe (request_ms): types make one to three requests a probe
        self._request_ewma_ms: float | None = None
        self._request_count = 0
        self._ok = 0
        self._latencies: list[float] = []  # latencies in the window, kept sorted
        self._ewma_ms: float | None = None
        self._changes: deque[float] = _NOTHING_YET  # ts_s of status changes in the flap window (own deque once one)
        self._models: tuple[ServedModel, ...] = ()
        self._canary_stall: _Stall | None = None  # the failed canary that said "cannot generate"
        self._passive_stall: _Stall | None = None  # the server's own counters say it stopped generating
        self._progress: tuple[float, float] | None = None  # (since ts_s, token counter) while requests run
        self._reports: deque[tuple[float, bool, float | None]] = _NOTHING_YET  # (ts_s, ok, ttft_ms); own deque
        # once a report comes: most providers never get one, and an empty deque costs 600 bytes
        self._reports_ok = 0
        self._report_ttfts: list[float] = []  # kept sorted
        self._report_second = -1  # the second the rate budget counts in
        self._reports_in_second = 0

    def fold(self, result: ProbeResult, now: datetime) -> StatusChange | None:
        """Take one probe result; returns the status change it caused, if any."""
        self._take_models(result)
        self._take_capacity(result.started_at, result.capacity)
        # capacity is the last probe's (None after a failure: unknown); identity the last one the server told
        return self._fold(result.started_at, result.status, result.error_class, result.error,
                          result.total_ms, result.server_version, now, result.capacity,
                          result.identity or self.state.identity, request_ms(result))

    def fold_sample(self, sample: GenerationSample, now: datetime) -> StatusChange | None:
        """Take one generation canary sample; returns the status change it caused, if any."""
        if sample.skipped:
            return None
        if sample.ok:
            self._canary_stall = None
        elif sample.error_class in _STALL_CLASSES and sample.server_busy is not True:
            message = f"{sample.model}: {sample.error}" if sample.error else sample.model
            self._canary_stall = _Stall(sample.started_at, sample.error_class, message)
        else:
            return None  # a refused or broken canary is recorded with the sample; it does not change the status
        return self._restate(sample.started_at)

    def _take_capacity(self, at: datetime, capacity: Capacity | None) -> None:
        """Passive stall detection: requests running and the generated-token counter standing still."""
        running = capacity.requests_running if capacity is not None else None
        tokens = capacity.generation_tokens_total if capacity is not None else None
        if running is None or tokens is None or running <= 0:
            self._progress, self._passive_stall = None, None
            return
        ts_s = at.timestamp()
        if self._progress is None or tokens != self._progress[1]:
            self._progress, self._passive_stall = (ts_s, tokens), None
            return
        still_s = ts_s - self._progress[0]
        if still_s >= self.policy.stall_window_s:
            self._passive_stall = _Stall(at, ErrorClass.STREAM_STALLED,
                                         f"{running} request(s) running and no token generated for {still_s:.0f}s "
                                         "(server metrics)")

    @property
    def _stall(self) -> _Stall | None:
        return self._canary_stall or self._passive_stall

    def _restate(self, at: datetime) -> StatusChange | None:
        """Apply a change of stall verdict to the current status."""
        old = self.state
        stall = self._stall
        if stall is not None and old.status in _OK:
            status = Status.STALLED
        elif stall is None and old.status is Status.STALLED:
            status = old.last_result_status if old.last_result_status in _OK else Status.UP
        else:
            return None
        assert status is not None
        change = StatusChange(
            provider=self.name, provider_type=self.provider_type, previous=old.status, current=status, at=at,
            since_previous_s=(at - old.since).total_seconds() if old.since is not None else None,
            error_class=stall.error_class if stall else None, error=stall.message if stall else None)
        self._changed(at.timestamp())
        updates: dict[str, Any] = {"status": status, "since": at, "transitions_recent": len(self._changes)}
        if stall is not None:
            updates.update(last_error_class=stall.error_class, last_error=stall.message, last_error_at=at)
        self.state = replace(old, **updates)
        return change

    def fold_record(self, record: ProbeRecord, now: datetime) -> StatusChange | None:
        """Take one stored probe row (no model list: models come back with the next live probe)."""
        return self._fold(record.ts, _status(record.status), _error_class(record.error_class), record.error,
                          record.total_ms, None, now, self.state.capacity, self.state.identity)

    def fold_report(self, report: OutcomeReport, now: datetime) -> bool:
        """Take one outcome of a real request; returns whether it counted in the report window (rate budget).

        Never changes the status (alerts wait for probes); `suspect` follows the report at once.
        """
        now_s = now.timestamp()
        second = int(report.received_at.timestamp())
        if second != self._report_second:
            self._report_second, self._reports_in_second = second, 0
        counted = self._reports_in_second < self.policy.report_rate_per_s
        old = self.state
        dropped = old.reports_dropped + (not counted)
        if counted:
            self._reports_in_second += 1
            speed_ms = report.ttft_ms if report.ttft_ms is not None else report.duration_ms
            speed_ms = speed_ms if report.ok else None
            if self._reports is _NOTHING_YET:
                self._reports = deque()
            self._reports.append((report.received_at.timestamp(), report.ok, speed_ms))
            if report.ok:
                self._reports_ok += 1
            if speed_ms is not None:
                bisect.insort(self._report_ttfts, speed_ms)
        elif report.ok:  # over budget, and says nothing new
            self.state = replace(old, reports_dropped=dropped)
            return False
        self._expire(now_s)
        self.state = replace(
            old, suspect=not report.ok, last_report_at=report.received_at, last_report_ok=report.ok,
            last_report_error_class=None if report.ok else report.error_class, reports_dropped=dropped,
            **self._window(),
        )
        return counted

    def expire(self, now: datetime) -> ProviderState:
        """Drop samples that left the windows by `now` and publish the refreshed snapshot."""
        if self._expire(now.timestamp()):
            self.state = replace(self.state, **self._window())
        return self.state

    def _take_models(self, result: ProbeResult) -> None:
        # A DOWN or LOADING answer without a list says nothing about models, nor does an up server whose list
        # could not be read: keep the last known ones.
        if not result.models_known or (not result.models and result.status not in _OK):
            return
        previous = {m.id: m for m in self._models}
        at = result.started_at
        self._models = tuple(
            ServedModel(info.id, info, previous[info.id].first_seen if info.id in previous else at, at)
            for info in _unique(result.models)
        )

    def _fold(self, at: datetime, result: Status, error_class: ErrorClass | None, error: str | None,
              total_ms: float | None, server_version: str | None, now: datetime, capacity: Capacity | None,
              identity: Identity | None, per_request_ms: float | None = None) -> StatusChange | None:
        old = self.state
        ok = result in _OK
        ts_s = at.timestamp()
        latency_ms = total_ms if ok else None
        per_request_ms = per_request_ms if ok else None
        self._samples.append((ts_s, ok, latency_ms, per_request_ms))
        if per_request_ms is not None:
            self._request_count += 1
            alpha = self.policy.ewma_alpha
            self._request_ewma_ms = per_request_ms if self._request_ewma_ms is None \
                else alpha * per_request_ms + (1 - alpha) * self._request_ewma_ms
        if ok:
            self._ok += 1
        if latency_ms is not None:
            bisect.insort(self._latencies, latency_ms)
            alpha = self.policy.ewma_alpha
            self._ewma_ms = latency_ms if self._ewma_ms is None else alpha * latency_ms + (1 - alpha) * self._ewma_ms
        failures = 0 if ok else old.failures_in_a_row + 1
        successes = old.successes_in_a_row + 1 if ok else 0
        status = next_status(old.status, result, failures, successes, self.policy)
        stall = self._stall
        if stall is not None and status in _OK:
            status = Status.STALLED  # it answers its health routes, but cannot generate
            error_class, error = stall.error_class, stall.message
        change = None
        since = old.since
        if status is not old.status:
            since = at
            if old.status is not Status.UNKNOWN:
                self._changed(ts_s)
            change = StatusChange(
                provider=self.name, provider_type=self.provider_type, previous=old.status, current=status, at=at,
                since_previous_s=(at - old.since).total_seconds() if old.since is not None else None,
                error_class=error_class, error=error,
            )
        failed = error_class is not None or not ok
        self._expire(now.timestamp())
        self.state = ProviderState(
            name=self.name,
            type=self.provider_type,
            status=status,
            since=since,
            failures_in_a_row=failures,
            successes_in_a_row=successes,
            last_probe_at=at,
            last_result_status=result,
            last_error_class=error_class if failed else old.last_error_class,
            last_error=error if failed else old.last_error,
            last_error_at=at if failed else old.last_error_at,
            last_success_at=at if ok else old.last_success_at,
            last_failure_at=old.last_failure_at if ok else at,
            failing_since=None if ok else (old.failing_since if old.failures_in_a_row else at),
            server_version=server_version or old.server_version,
            models=self._models,
            capacity=capacity,
            identity=identity,
            suspect=not ok,
            last_report_at=old.last_report_at,
            last_report_ok=old.last_report_ok,
            last_report_error_class=old.last_report_error_class,
            reports_dropped=old.reports_dropped,
            **self._window(),
        )
        return change

    def _changed(self, ts_s: float) -> None:
        if self._changes is _NOTHING_YET:
            self._changes = deque()
        self._changes.append(ts_s)

    def _expire_samples(self, cutoff_s: float) -> bool:
        """Drop the probe samples older than `cutoff_s` from the window; whether any went."""
        samples = self._samples
        gone = 0
        for ts_s, ok, latency_ms, per_request_ms in samples:
            if ts_s >= cutoff_s:
                break
            gone += 1
            if per_request_ms is not None:
                self._request_count -= 1
            if ok:
                self._ok -= 1
            if latency_ms is not None:
                del self._latencies[bisect.bisect_left(self._latencies, latency_ms)]
        if gone:
            del samples[:gone]
        return gone > 0

    def _expire(self, now_s: float) -> bool:
        changed = self._expire_samples(now_s - self.policy.window_s)
        if not self._latencies:
            self._ewma_ms = None
        if not self._request_count:
            self._request_ewma_ms = None
        flap_cutoff_s = now_s - self.policy.flap_window_s
        while self._changes and self._changes[0] < flap_cutoff_s:
            self._changes.popleft()
            changed = True
        report_cutoff_s = now_s - self.policy.report_window_s
        reports = self._reports
        while reports and reports[0][0] < report_cutoff_s:
            _, ok, speed_ms = reports.popleft()
            changed = True
            if ok:
                self._reports_ok -= 1
            if speed_ms is not None:
                del self._report_ttfts[bisect.bisect_left(self._report_ttfts, speed_ms)]
        return changed

    def _window(self) -> dict[str, Any]:
        """The window statistics of the snapshot (the window must already be aged)."""
        count = len(self._samples)
        latencies = self._latencies
        return {
            "availability": self._ok / count if count else None,
            "samples": count,
            "samples_ok": self._ok,
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            "latency_ewma_ms": self._ewma_ms,
            "request_latency_ms": self._request_ewma_ms,
            "request_samples": self._request_count,
            "transitions_recent": len(self._changes),
            "reports": len(self._reports),
            "reports_ok": self._reports_ok,
            "report_ttft_p50_ms": percentile(self._report_ttfts, 0.5),
        }


def request_ms(result: ProbeResult) -> float | None:
    """The mean time of one answered HTTP request of a probe: what makes types that ask one route and types that
    ask three comparable. None when the probe recorded no answered request."""
    answered = [call.elapsed_ms for call in result.calls if call.status is not None]
    return sum(answered) / len(answered) if answered else None


@dataclass(frozen=True, slots=True)
class _Stall:
    at: datetime
    error_class: ErrorClass
    message: str


def _unique(models: Iterable[ModelInfo]) -> list[ModelInfo]:
    """First listing of each id wins: a server that lists a model twice serves it once."""
    seen: dict[str, ModelInfo] = {}
    for info in models:
        seen.setdefault(info.id, info)
    return list(seen.values())


def update(tracker: ProviderTracker, result: ProbeResult, now: datetime) -> tuple[ProviderState, list[StatusChange]]:
    """Functional face of ProviderTracker.fold: the new snapshot and the changes (zero or one)."""
    change = tracker.fold(result, now)
    return tracker.state, [change] if change is not None else []


class LiveState:
    """Every provider's live state: a mutable container of immutable ProviderState snapshots.

    `version` grows on every change so readers (API, ranking) can cache what they derive from it.
    """

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self.version = 0
        self._trackers: dict[str, ProviderTracker] = {}
        self._states: dict[str, ProviderState] = {}
        self._models_view: tuple[int, Mapping[str, tuple[ModelServer, ...]]] | None = None

    def set_policy(self, policy: HealthPolicy, now: datetime) -> None:
        """A reload: new thresholds and windows for every provider, existing ones included; the next result is
        judged by them, and the windows are aged to the new length at once."""
        self.policy = policy
        for tracker in self._trackers.values():
            tracker.policy = policy
        self.expire(now)
        self.version += 1

    def track(self, name: str, provider_type: str) -> ProviderState:
        """Make a configured provider known (UNKNOWN until its first probe); a no-op when already tracked."""
        tracker = self._trackers.get(name)
        if tracker is None or tracker.provider_type != provider_type:
            tracker = self._trackers[name] = ProviderTracker(name, provider_type, self.policy)
            self._states[name] = tracker.state
            self.version += 1
        return tracker.state

    def fold(self, result: ProbeResult, now: datetime) -> list[StatusChange]:
        tracker = self._trackers.get(result.provider)
        if tracker is None:
            self.track(result.provider, result.provider_type)
            tracker = self._trackers[result.provider]
        change = tracker.fold(result, now)
        self._states[result.provider] = tracker.state
        self.version += 1
        return [change] if change is not None else []

    def fold_sample(self, sample: GenerationSample, now: datetime) -> list[StatusChange]:
        """A generation canary's sample; a provider not tracked (removed meanwhile) is ignored."""
        tracker = self._trackers.get(sample.provider)
        if tracker is None:
            return []
        change = tracker.fold_sample(sample, now)
        if change is None:
            return []
        self._states[sample.provider] = tracker.state
        self.version += 1
        return [change]

    def fold_report(self, report: OutcomeReport, now: datetime) -> list[StatusChange]:
        """Take one reported outcome (see ProviderTracker.fold_report); never a status change, so alerts wait for
        probes. A provider not tracked (removed meanwhile) is ignored."""
        tracker = self._trackers.get(report.provider)
        if tracker is None:
            return []
        before = tracker.state
        tracker.fold_report(report, now)
        if tracker.state is not before:
            self._states[report.provider] = tracker.state
            self.version += 1
        return []

    def get(self, name: str) -> ProviderState | None:
        return self._states.get(name)

    def policy_of(self, name: str) -> HealthPolicy | None:
        """The policy a provider's next result is judged by (None if not tracked)."""
        tracker = self._trackers.get(name)
        return tracker.policy if tracker is not None else None

    def all(self) -> Mapping[str, ProviderState]:
        """A read-only live view (not a copy): name -> state."""
        return MappingProxyType(self._states)

    def remove(self, name: str) -> bool:
        """Forget a provider (removed from the config). Returns whether it was tracked."""
        if self._trackers.pop(name, None) is None:
            return False
        del self._states[name]
        self.version += 1
        return True

    def expire(self, now: datetime) -> None:
        """Age every window to `now`, for providers that have not been probed lately."""
        for name, tracker in self._trackers.items():
            before = tracker.state
            if tracker.expire(now) is not before:
                self._states[name] = tracker.state
                self.version += 1

    def rebuild(self, records: Iterable[ProbeRecord], now: datetime, provider_types: Mapping[str, str]) -> None:
        """Start over from stored probes, oldest first, so a restart remembers who was down.

        Only providers in `provider_types` (name -> type, i.e. the configured ones) are kept; their records are
        replayed as they happened (each with its own time as `now`) and the windows then aged to `now`.
        No StatusChange is reported: those were alerted on by the run that saw them.
        """
        self._trackers = {name: ProviderTracker(name, kind, self.policy) for name, kind in provider_types.items()}
        for record in records:
            tracker = self._trackers.get(record.provider)
            if tracker is not None:
                tracker.fold_record(record, record.ts)
        for tracker in self._trackers.values():
            tracker.expire(now)
        self._states = {name: tracker.state for name, tracker in self._trackers.items()}
        self.version += 1

    def models_view(self) -> Mapping[str, tuple[ModelServer, ...]]:
        """model id -> the providers listing it now (by provider name), with their live status."""
        if self._models_view is not None and self._models_view[0] == self.version:
            return self._models_view[1]
        servers: dict[str, list[ModelServer]] = {}
        for name in sorted(self._states):
            state = self._states[name]
            for served in state.models:
                servers.setdefault(served.id, []).append(ModelServer(
                    provider=name, provider_type=state.type, status=state.status, info=served.info,
                    first_seen=served.first_seen, last_seen=served.last_seen,
                ))
        view: Mapping[str, tuple[ModelServer, ...]] = MappingProxyType(
            {model_id: tuple(servers[model_id]) for model_id in sorted(servers)}
        )
        self._models_view = (self.version, view)
        return view
