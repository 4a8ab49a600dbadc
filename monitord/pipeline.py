"""The result pipeline: the one entry every observation goes through, and the only place results fan out.

`ResultPipeline.record(observation)` folds the observation into the live state (the kind's `fold`, which says
which statuses changed) and then hands one `Recorded` to every sink subscribed to that kind, in the order they
subscribed: the store writer, the ranking service, the API (metrics, SSE), the alert rules, the cluster, the log.

Adding a kind of observation (a canary's `GenerationSample`, a client's `OutcomeReport`) is `register(kind,
fold=...)` plus a `subscribe(kind, sink)` for each part that cares, in `wire()` below (or by the part itself);
the daemon and the scheduler do not change. A sink must not block (it runs in the caller's task) and should not
raise: one that does is logged (`pipeline.sink_failed`) and the others still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from monitord.logs import debug_enabled
from monitord.model import GenerationSample, OutcomeReport, ProbeResult, Status, StatusChange

if TYPE_CHECKING:  # the parts `wire` connects; this module itself only dispatches
    from monitord.alerts.service import AlertsService
    from monitord.api import ApiContext
    from monitord.cluster import Cluster
    from monitord.health import LiveState
    from monitord.ranking_service import RankingService
    from monitord.store import Store

log = structlog.get_logger("monitord.pipeline")

ObsT = TypeVar("ObsT")


@dataclass(frozen=True, slots=True)
class Recorded(Generic[ObsT]):
    """One observation after the live state folded it: what every sink receives."""

    observation: ObsT
    changes: tuple[StatusChange, ...]  # status changes the fold caused (empty for most results)
    at: datetime  # when it was folded (the daemon's clock)
    local: bool  # observed by this instance; False for a cluster peer's result (folded, not stored, not alerted)


Fold = Callable[[ObsT, datetime], Sequence[StatusChange]]
Sink = Callable[[Recorded[ObsT]], None]


@dataclass(slots=True)
class _Kind:
    fold: Callable[[Any, datetime], Sequence[StatusChange]] | None
    sinks: list[tuple[str, Callable[[Recorded[Any]], None], bool]]  # (name, sink, local_only)


class ResultPipeline:
    """Observation kinds, each with an optional live-state fold and its sinks. Pure dispatch: no I/ObsT of its own."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._kinds: dict[type[Any], _Kind] = {}
        self.recorded_total = 0

    def register(self, kind: type[ObsT], *, fold: Fold[ObsT] | None = None) -> None:
        """Declare an observation kind (once) and how it changes the live state."""
        if kind in self._kinds:
            raise ValueError(f"{kind.__name__} is already registered")
        self._kinds[kind] = _Kind(fold, [])

    def subscribe(self, kind: type[ObsT], sink: Sink[ObsT], *, name: str, local_only: bool = False) -> None:
        """Call `sink` with every recorded observation of `kind`; local_only: not for cluster peers' results."""
        self._kind(kind).sinks.append((name, sink, local_only))

    def kinds(self) -> tuple[type[Any], ...]:
        return tuple(self._kinds)

    def sinks(self, kind: type[Any]) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self._kind(kind).sinks)

    def record(self, observation: ObsT, *, local: bool = True) -> tuple[StatusChange, ...]:
        """Fold `observation` into the live state and hand it to every sink; returns the status changes."""
        kind = self._kind(type(observation))
        now = self.clock()
        changes = tuple(kind.fold(observation, now)) if kind.fold is not None else ()
        recorded = Recorded(observation, changes, now, local)
        self.recorded_total += 1
        for name, sink, local_only in kind.sinks:
            if local_only and not local:
                continue
            try:
                sink(recorded)
            except Exception:  # a bug in one part must not stop the others or the probing
                log.exception("pipeline.sink_failed", sink=name, kind=type(observation).__name__)
        return changes

    def _kind(self, kind: type[Any]) -> _Kind:
        try:
            return self._kinds[kind]
        except KeyError:
            raise TypeError(f"no pipeline kind registered for {kind.__name__}") from None


def log_probe(recorded: Recorded[ProbeResult]) -> None:
    """The log sink for probe results: one debug line per probe, one line per status change."""
    result = recorded.observation
    if debug_enabled():
        log.debug("probe.done", provider=result.provider, status=result.status.value,
                  error_class=result.error_class, total_ms=round(result.total_ms, 1))
    for change in recorded.changes:
        level = log.warning if change.current is Status.DOWN else log.info
        level("provider.status_changed", provider=change.provider, previous=change.previous.value,
              current=change.current.value, error_class=result.error_class, error=result.error)


def log_sample(recorded: Recorded[GenerationSample]) -> None:
    """The log sink for canary samples: one debug line per canary, one line per status change it caused."""
    sample = recorded.observation
    if debug_enabled():
        log.debug("canary.done", provider=sample.provider, model=sample.model, ok=sample.ok, skipped=sample.skipped,
                  error_class=sample.error_class, ttft_ms=sample.ttft_ms, tokens_per_s=sample.tokens_per_s)
    for change in recorded.changes:
        level = log.warning if change.current is Status.STALLED else log.info
        level("provider.status_changed", provider=change.provider, previous=change.previous.value,
              current=change.current.value, error_class=change.error_class, error=change.error)


def log_report(recorded: Recorded[OutcomeReport]) -> None:
    """The log sink for reported outcomes: one debug line each."""
    report = recorded.observation
    if debug_enabled():
        log.debug("report.received", provider=report.provider, ok=report.ok, error_class=report.error_class,
                  ttft_ms=report.ttft_ms, client=report.client)


@dataclass(frozen=True, slots=True)
class Parts:
    """What observations fan out to; the daemon builds them, `wire` connects them."""

    live: LiveState
    store: Store
    rankings: RankingService
    alerts: AlertsService
    probed: set[str]  # providers with at least one result since start (readiness)
    api: ApiContext | None = None
    cluster: Cluster | None = None


def wire(pipeline: ResultPipeline, parts: Parts) -> None:
    """Every observation kind and its sinks, in order. A new kind is one `register` and its `subscribe`s here."""
    pipeline.register(ProbeResult, fold=parts.live.fold)
    pipeline.subscribe(ProbeResult, lambda r: parts.probed.add(r.observation.provider), name="readiness")
    pipeline.subscribe(ProbeResult, lambda r: parts.store.enqueue(r.observation), name="store", local_only=True)
    if parts.cluster is not None:
        cluster = parts.cluster
        pipeline.subscribe(ProbeResult, lambda r: cluster.observed(r.observation), name="cluster", local_only=True)
    pipeline.subscribe(ProbeResult, parts.rankings.on_probe, name="ranking")
    if parts.api is not None:
        pipeline.subscribe(ProbeResult, parts.api.on_probe, name="api")
    pipeline.subscribe(ProbeResult, parts.alerts.on_probe, name="alerts")
    pipeline.subscribe(ProbeResult, log_probe, name="log")

    # generation canaries: the health fold may call a provider stalled (or well again)
    pipeline.register(GenerationSample, fold=parts.live.fold_sample)
    generation = parts.rankings.generation

    def fold_generation(recorded: Recorded[GenerationSample]) -> None:  # TTFT, tokens/s: the sinks below read them
        if parts.live.get(recorded.observation.provider) is not None:  # not a canary that outlived its provider
            generation.fold(recorded.observation, recorded.at)

    pipeline.subscribe(GenerationSample, fold_generation, name="generation")
    pipeline.subscribe(GenerationSample, lambda r: parts.store.enqueue(r.observation), name="store",
                       local_only=True)
    pipeline.subscribe(GenerationSample, parts.rankings.on_sample, name="ranking")
    if parts.api is not None:
        pipeline.subscribe(GenerationSample, parts.api.on_sample, name="api")
    pipeline.subscribe(GenerationSample, parts.alerts.on_sample, name="alerts")
    pipeline.subscribe(GenerationSample, log_sample, name="log")

    # An application's outcome of a real request (POST /v1/report): live state only (suspect, reported_*); no
    # status change, so no alert; kept in memory, not stored.
    pipeline.register(OutcomeReport, fold=parts.live.fold_report)
    pipeline.subscribe(OutcomeReport, parts.rankings.on_report, name="ranking")
    if parts.api is not None:
        pipeline.subscribe(OutcomeReport, parts.api.on_report, name="api")
    pipeline.subscribe(OutcomeReport, log_report, name="log")
