"""ApiContext: everything the views read, handed in by the daemon (nothing here is global)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiohttp import web

from monitord.api.events import EventHub
from monitord.api.metrics import AlertCollector, Metrics, StateCollector
from monitord.generation import GenerationState
from monitord.health import LiveState
from monitord.model import (
    GenerationSample,
    OutcomeReport,
    ProbeResult,
    ProviderSpec,
    Ranking,
    Secret,
    Silence,
    StatusChange,
    WebhookFigures,
)
from monitord.pipeline import Recorded
from monitord.ranking import Ranker
from monitord.ranking_service import BestUpdate, RankingCache, RankingService
from monitord.spread import Spreader
from monitord.store import Store

log = structlog.get_logger("monitord.api")


class AlertsBackend(Protocol):
    """What the alert routes need: the alerts service (monitord.alerts.service) implements it."""

    async def recent_alerts(self, *, limit: int, since: datetime | None, provider: str | None,
                            event_type: str | None) -> list[dict[str, Any]]: ...

    def silences(self) -> Sequence[Silence]: ...

    async def add_silence(self, silence: Silence) -> None: ...

    async def remove_silence(self, silence_id: str) -> bool: ...

    def webhook_figures(self) -> Sequence[WebhookFigures]: ...

    def unsaved_alerts(self) -> int: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class ApiContext:
    """What the views read, handed in by the daemon."""

    live: LiveState
    specs: Callable[[], Mapping[str, ProviderSpec]]  # the same Mapping object until a reload changes it
    store: Store
    ready: Callable[[], bool]  # first probe round done
    token: Callable[[], Secret | None] | Secret | None = None  # bearer token every route but /healthz requires
    alerts: AlertsBackend | None = None  # /v1/alerts and /v1/silences; the alerts service implements it
    clock: Callable[[], datetime] = _utcnow
    # seconds since each provider's last probe ended (the scheduler's monotonic clock) and those past their bound
    probe_ages: Callable[[], Mapping[str, float]] = dict
    stale_probes: Callable[[], Sequence[str]] = tuple
    rankings: RankingService | None = None  # the daemon's; a context made without one runs its own watch
    ranker: Ranker | None = None  # for a context that makes its own ranking service
    metrics: Metrics = field(default_factory=Metrics)
    events: EventHub = field(default_factory=EventHub)
    best_check_interval_s: float = 0.25  # for a context that makes its own ranking service
    spreader: Spreader = field(default_factory=Spreader)  # strategies and sessions of POST /v1/select
    # Where POST /v1/report outcomes go: the daemon's pipeline (whose sinks include on_report); None: folded here.
    report_sink: Callable[[OutcomeReport], object] | None = None
    ranking: RankingCache = field(init=False)
    owns_rankings: bool = field(init=False, default=False)  # make_app runs the watch then

    def __post_init__(self) -> None:
        if self.rankings is None:
            self.rankings = RankingService(self.live, self.specs, clock=self.clock, ranker=self.ranker,
                                           check_interval_s=self.best_check_interval_s)
            self.owns_rankings = True
        self.ranking = self.rankings.cache
        self.rankings.subscribe(self._on_best)
        self.metrics.register(StateCollector(self.live, self.specs, self.ranking.ranking, self.store, self.ready,
                                             lambda: self.events.subscribers, self.probe_ages, self.stale_probes))
        if self.alerts is not None:
            self.metrics.register(AlertCollector(self.alerts.webhook_figures, self.alerts.unsaved_alerts,
                                                 self.clock))

    @property
    def ranking_service(self) -> RankingService:
        assert self.rankings is not None
        return self.rankings

    def current_token(self) -> Secret | None:
        """The token in force now (a reload may rotate it: the auth middleware asks on every request)."""
        return self.token() if callable(self.token) else self.token

    def on_probe(self, recorded: Recorded[ProbeResult]) -> None:
        """Pipeline sink: metrics and status events for each probe result."""
        self.on_result(recorded.observation, recorded.changes)

    def on_result(self, result: ProbeResult, changes: Sequence[StatusChange] = ()) -> None:
        """Metrics and status events for one probe result (after LiveState.fold). Rankings learn it from the
        pipeline; a context that owns its ranking service (no daemon) tells it here."""
        self.metrics.observe(result)
        for change in changes:
            self.events.status_changed(change)
        if self.owns_rankings:
            self.ranking_service.observed(result.provider, bool(changes))

    def on_sample(self, recorded: Recorded[GenerationSample]) -> None:
        """Pipeline sink (after the statistics folded the sample): canary metrics, the status events a canary
        caused (stalled, recovered), and the model's new statistics as a generation.updated event."""
        sample = recorded.observation
        self.metrics.observe_sample(sample)
        for change in recorded.changes:
            self.events.status_changed(change)
        stats = self.generation_stats.get(sample.provider, sample.model)
        if stats is not None:
            self.events.generation_updated(stats, recorded.at)
        if self.owns_rankings:
            self.ranking_service.observed(sample.provider, bool(recorded.changes))

    @property
    def generation_stats(self) -> GenerationState:
        """Live canary statistics per provider and model (the ranking service's: one object for all readers)."""
        return self.ranking_service.generation

    def report(self, outcome: OutcomeReport) -> bool:
        """Take an application's outcome of a configured provider; whether it counted (the rate budget)."""
        state = self.live.get(outcome.provider)
        dropped = state.reports_dropped if state is not None else 0
        if self.report_sink is not None:
            self.report_sink(outcome)
        else:
            spec = self.specs()[outcome.provider]
            self.live.track(spec.name, spec.type)
            self.live.fold_report(outcome, self.clock())
            self.metrics.observe_report(outcome)
            if self.owns_rankings:
                self.ranking_service.observed(outcome.provider, False)
        state = self.live.get(outcome.provider)
        return state is None or state.reports_dropped == dropped

    def on_report(self, recorded: Recorded[OutcomeReport]) -> None:
        """Pipeline sink: count each reported outcome."""
        self.metrics.observe_report(recorded.observation)

    def on_reload(self, removed: Iterable[str] = ()) -> None:
        """Call after a reload applied: forgets removed providers' series (and re-ranks, if it owns the ranking)."""
        for name in removed:
            self.metrics.forget(name)
        if self.owns_rankings:
            self.ranking_service.reconfigured(removed)

    def _on_best(self, update: BestUpdate) -> None:
        if update.changed:
            self.events.best_changed(update.previous, update.current, update.at, update.fallbacks)

    def top(self) -> Ranking:
        """The head of the default ranking (best and the fallbacks events name), once per cache generation."""
        return self.ranking_service.top()


CONTEXT = web.AppKey("monitord.api.context", ApiContext)
