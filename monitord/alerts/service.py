"""The alerts service: the rules' memory, the silences and the outbox dispatcher behind one object.

The result pipeline hands it every probe result (`on_probe`), the ranking service every look at the best provider
(`on_best`); the API's alert and silence routes talk to it (it is the API's AlertsBackend); a reload swaps its
webhooks and config silences. Events raised here go to the dispatcher, which stores them before any send.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import structlog

from monitord.alerts.outbox import Dispatcher
from monitord.alerts.rules import AlertPolicy, AlertRules, alert_provider
from monitord.config import AlertsConfig, SilenceConfig, WebhookConfig
from monitord.health import LiveState
from monitord.model import (
    AlertEvent,
    AlertState,
    DeliveryState,
    GenerationSample,
    ProbeResult,
    ProviderSpec,
    Silence,
    Status,
    WebhookFigures,
)
from monitord.pipeline import Recorded
from monitord.ranking_service import BestUpdate
from monitord.store import Store

log = structlog.get_logger("monitord.alerts")


def alert_policy(alerts: AlertsConfig) -> AlertPolicy:
    """The rules' policy from the `alerts` section (health's failure_threshold also holds back a first probe)."""
    return AlertPolicy(failure_threshold=alerts.failure_threshold, alert_never_up=alerts.alert_never_up,
                       repeat_interval_s=alerts.repeat_interval_s)


def config_silences(silences: Sequence[SilenceConfig]) -> list[Silence]:
    return [Silence(id=f"config-{i}", provider=s.provider, start=s.start, end=s.end, reason=s.reason)
            for i, s in enumerate(silences)]


class AlertsService:
    """Rules, silences and the dispatcher. `start`/`stop` pair with the daemon's."""

    def __init__(self, store: Store, session: aiohttp.ClientSession, live: LiveState,
                 specs: Callable[[], Mapping[str, ProviderSpec]], webhooks: Sequence[WebhookConfig],
                 silences: Sequence[SilenceConfig], *, clock: Callable[[], datetime],
                 leader: Callable[[], bool] = lambda: True, policy: AlertPolicy | None = None,
                 group_wait_s: float = 0.0) -> None:
        self.store = store
        self.session = session
        self.live = live
        self.specs = specs
        self.clock = clock
        self.leader = leader  # whether this instance sends the cluster-wide events (best provider)
        self.rules = AlertRules(policy or AlertPolicy())
        self._silences: list[Silence] = config_silences(silences)  # API-made ones are added
        self.group_wait_s = group_wait_s
        self.dispatcher = Dispatcher(store, session, webhooks, group_wait_s=group_wait_s)
        self._results_before: Counter[tuple[str, str]] = Counter()  # of dispatchers a reload replaced

    async def start(self) -> None:
        await self.load_alert_state()
        await self.load_stored_silences(self.clock())
        await self.dispatcher.start()

    async def load_alert_state(self, providers: Collection[str] | None = None) -> None:
        """What receivers were told, as stored: a restart, or a cluster instance taking providers over, continues
        it (an open incident is neither announced again nor its recovery missed)."""
        try:
            self.rules.restore(await self.store.outbox.states(providers))
        except Exception as exc:  # the database is away: the rules start from scratch (never-up rule applies)
            log.warning("alerts.state_load_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        await self.dispatcher.stop()

    # -- what raises events ------------------------------------------------------------------------------------

    def on_probe(self, recorded: Recorded[ProbeResult]) -> None:
        """Pipeline sink. Every instance of a cluster folds every result, so all keep the same alert memory (a
        takeover neither repeats nor misses an alert); only the instance that probed emits, since a few events
        carry the evaluation time in their id. The events and the provider's new AlertState go to the store's
        writer after the probe row (the pipeline's store sink runs first), so they commit together."""
        name = recorded.observation.provider
        state, spec = self.live.get(name), self.specs().get(name)
        if state is None or spec is None:
            return
        decision = self.rules.on_probe(state, recorded.changes, alert_provider(spec), self._silences, recorded.at)
        if recorded.local:
            self.emit(decision.events, [decision.state] if decision.state is not None else [])

    def on_sample(self, recorded: Recorded[GenerationSample]) -> None:
        """Pipeline sink: a canary's verdict (stalled, recovered) is told like a probe's."""
        name = recorded.observation.provider
        state, spec = self.live.get(name), self.specs().get(name)
        if state is None or spec is None or not recorded.changes:
            return
        decision = self.rules.on_probe(state, recorded.changes, alert_provider(spec), self._silences, recorded.at)
        if recorded.local:
            self.emit(decision.events, [decision.state] if decision.state is not None else [])

    def on_best(self, update: BestUpdate) -> None:
        """Ranking-service listener: the rules see every look (they wait for a new best to hold)."""
        spec = self.specs().get(update.current.provider) if update.current is not None else None
        state = self.live.get(update.current.provider) if update.current is not None else None
        # The window may still favour a provider whose last probe failed: never announce that one.
        failing = state is not None and state.last_result_status not in (Status.UP, Status.DEGRADED)
        events = self.rules.on_ranking(alert_provider(spec) if spec else None, self._silences, self.clock(),
                                       best_failing=failing)
        if self.leader():  # these ids carry the time: one instance sends
            self.emit(events)

    def emit(self, events: Sequence[AlertEvent], states: Sequence[AlertState] = ()) -> None:
        for event in events:
            name = event.provider.name if event.provider else None
            log.info("alert.raised", type=event.type.value, provider=name, silenced=bool(event.silenced_by),
                     event_id=event.id)
        if events or states:
            self.dispatcher.emit(events, states)

    def forget(self, provider: str) -> None:
        self.rules.forget(provider)

    # -- reload ------------------------------------------------------------------------------------------------

    def replace_config_silences(self, silences: Sequence[SilenceConfig]) -> None:
        api_made = [s for s in self._silences if s.created_by != "config"]
        self._silences = config_silences(silences) + api_made

    async def replace_webhooks(self, webhooks: Sequence[WebhookConfig], group_wait_s: float | None = None) -> None:
        """A new dispatcher for new webhooks. Nothing is lost: events not stored yet wait in the store's writer,
        not in the dispatcher, and the old one gives back its claims."""
        if group_wait_s is not None:
            self.group_wait_s = group_wait_s
        await self.dispatcher.stop()
        self._results_before += self.dispatcher.results
        self.dispatcher = Dispatcher(self.store, self.session, webhooks, group_wait_s=self.group_wait_s)
        await self.dispatcher.replan()
        await self.dispatcher.start()

    # -- the API's AlertsBackend -------------------------------------------------------------------------------

    def webhook_figures(self) -> list[WebhookFigures]:
        """/metrics: each configured webhook's delivery outcomes since start and its part of the outbox."""
        results = self._results_before + self.dispatcher.results
        stored = {figures.webhook: figures for figures in self.dispatcher.figures}
        out = []
        for name in self.dispatcher.outbox.webhooks:
            mine = {result: n for (webhook, result), n in results.items() if webhook == name}
            figures = stored.get(name)
            pending = figures.counts.get(DeliveryState.PENDING.value, 0) if figures else 0
            out.append(WebhookFigures(name, mine, pending, figures.oldest_pending if figures else None))
        return out

    def unsaved_alerts(self) -> int:
        return self.store.alerts_unsaved

    async def recent_alerts(self, *, limit: int, since: datetime | None, provider: str | None,
                            event_type: str | None) -> list[dict[str, Any]]:
        records = await self.dispatcher.outbox.recent(limit=limit, since=since, provider=provider,
                                                      event_type=event_type)
        return [record.to_dict() for record in records]

    def silences(self) -> Sequence[Silence]:
        return tuple(self._silences)

    async def load_stored_silences(self, now: datetime) -> None:
        """API-made silences live in the database: a restart, and every instance of a cluster, honour them."""
        try:
            stored = await self.store.silences.active(now)
        except Exception as exc:  # the database is away: config silences still apply
            log.warning("silences.load_failed", error=type(exc).__name__)
            return
        self._silences = [s for s in self._silences if s.created_by == "config"] + stored

    async def add_silence(self, silence: Silence) -> None:
        now = self.clock()
        await self.store.silences.put(silence, now)
        # ended API-made silences go, so a long-running daemon does not keep every one it ever had
        self._silences = [s for s in self._silences if s.created_by == "config" or s.end > now] + [silence]
        log.info("silence.added", id=silence.id, provider=silence.provider, end=silence.end.isoformat(),
                 reason=silence.reason)

    async def remove_silence(self, silence_id: str) -> bool:
        await self.store.silences.delete(silence_id)
        kept = [s for s in self._silences if s.id != silence_id]
        removed = len(kept) != len(self._silences)
        self._silences = kept
        if removed:
            log.info("silence.removed", id=silence_id)
        return removed
