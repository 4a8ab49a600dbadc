"""ApiContext: everything the views read, handed in by the daemon (nothing here is global)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiohttp import web

from monitord.api.cache import RankingCache
from monitord.api.events import EventHub
from monitord.api.metrics import Metrics, StateCollector
from monitord.health import LiveState
from monitord.model import ProbeResult, ProviderSpec, RankedProvider, Ranking, Secret, Silence, StatusChange
from monitord.ranking import Ranker
from monitord.store import Store

log = structlog.get_logger("monitord.api")

FALLBACKS_IN_EVENTS = 3


class AlertsBackend(Protocol):
    """What the alert routes need from the daemon."""

    async def recent_alerts(self, *, limit: int, since: datetime | None, provider: str | None,
                            event_type: str | None) -> list[dict[str, Any]]: ...

    def silences(self) -> Sequence[Silence]: ...

    async def add_silence(self, silence: Silence) -> None: ...

    async def remove_silence(self, silence_id: str) -> bool: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class ApiContext:
    """What the views read, handed in by the daemon."""

    live: LiveState
    specs: Callable[[], Mapping[str, ProviderSpec]]  # the same Mapping object until a reload changes it
    store: Store
    ready: Callable[[], bool]  # first probe round done
    token: Secret | None = None  # bearer token every route but /healthz requires when set
    alerts: AlertsBackend | None = None  # /v1/alerts and /v1/silences; the daemon implements it
    clock: Callable[[], datetime] = _utcnow
    # seconds since each provider's last probe ended (the scheduler's monotonic clock) and those past their bound
    probe_ages: Callable[[], Mapping[str, float]] = dict
    stale_probes: Callable[[], Sequence[str]] = tuple
    ranker: Ranker = field(default_factory=Ranker)
    metrics: Metrics = field(default_factory=Metrics)
    events: EventHub = field(default_factory=EventHub)
    best_check_interval_s: float = 0.25  # coalesces bursts of results into one best-provider check
    ranking: RankingCache = field(init=False)
    _state_changed: asyncio.Event = field(init=False, repr=False)
    _models: dict[str, tuple[str, ...]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ranking = RankingCache(self.live, self.specs, self.ranker, self.clock)
        self._state_changed = asyncio.Event()
        self._models = {name: state.model_ids for name, state in self.live.all().items()}
        self.metrics.register(StateCollector(self.live, self.specs, self.ranking.ranking, self.store, self.ready,
                                             lambda: self.events.subscribers, self.probe_ages, self.stale_probes))

    def on_result(self, result: ProbeResult, changes: Sequence[StatusChange] = ()) -> None:
        """Call once per probe result, after LiveState.fold: metrics, status events, ranking refresh.

        Status and model-list changes reach rankings and selections at once; other results within refresh_s.
        """
        self.metrics.observe(result)
        for change in changes:
            self.events.status_changed(change)
        state = self.live.get(result.provider)
        models = state.model_ids if state is not None else ()
        if changes or self._models.get(result.provider, ()) != models:
            self._models[result.provider] = models
            self.ranking.invalidate()
        self._state_changed.set()

    def on_reload(self, removed: Iterable[str] = ()) -> None:
        """Call after a reload applied: forgets removed providers' series and re-ranks."""
        for name in removed:
            self.metrics.forget(name)
            self._models.pop(name, None)
        self.ranking.invalidate()
        self._state_changed.set()

    async def watch_best(self) -> None:
        """Publish a best-provider change whenever the default ranking's top entry changes. Runs until cancelled."""
        best = self._best()
        while True:
            await self._state_changed.wait()
            self._state_changed.clear()
            ranking = self._ranking_or_none()
            if ranking is not None:
                if _name(ranking.best) != _name(best):
                    fallbacks = tuple(entry.provider for entry in ranking.entries[1:1 + FALLBACKS_IN_EVENTS])
                    self.events.best_changed(best, ranking.best, ranking.generated_at, fallbacks)
                    log.info("ranking.best_changed", previous=_name(best), current=_name(ranking.best))
                best = ranking.best
            await asyncio.sleep(self.best_check_interval_s)
            if self.ranking.pending:  # a change the cached generation does not show yet: look again
                self._state_changed.set()

    def top(self) -> Ranking:
        """The head of the default ranking (best and the fallbacks events name), once per cache generation.

        Watchers ask every second; scoring only the head (no entry built for every provider) is what keeps
        that cheap with thousands of providers. GET /v1/ranking still computes the whole ranking on demand.
        """
        return self.ranking.ranking(limit=1 + FALLBACKS_IN_EVENTS)

    def _best(self) -> RankedProvider | None:
        ranking = self._ranking_or_none()
        return ranking.best if ranking is not None else None

    def _ranking_or_none(self) -> Ranking | None:
        try:
            return self.top()
        except Exception:  # a bug must not end the watcher: the next result tries again
            log.exception("api.best_check_failed")
            return None


def _name(entry: RankedProvider | None) -> str | None:
    return entry.provider if entry is not None else None


CONTEXT = web.AppKey("monitord.api.context", ApiContext)
