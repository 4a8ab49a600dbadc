"""Pure alert rules: status changes, model listings and the best provider become AlertEvents (flaps, silences).

No I/O and no clock: every call takes `now`. What the rules remember between calls (the status receivers were last
told, recent changes, the last model listing, the pending best provider) is an immutable value passed in and out;
AlertRules keeps those values for the daemon; the part receivers depend on (what they were told, the open
incident) is an AlertState the daemon stores with the probe rows. Event ids are derived from their content (a
status event from its provider and incident start), so evaluating again, after a restart or on another cluster
instance, gives the same id and the outbox stores it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from monitord.model import (
    AlertEvent,
    AlertProvider,
    AlertState,
    AlertType,
    ProviderSpec,
    ProviderState,
    Silence,
    Status,
    StatusChange,
)

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://monitord.invalid/alert-events")
_STATUS_EVENTS: Mapping[Status, AlertType] = {
    Status.DOWN: AlertType.PROVIDER_DOWN,
    Status.UP: AlertType.PROVIDER_UP,
    Status.DEGRADED: AlertType.PROVIDER_DEGRADED,
    Status.LOADING: AlertType.PROVIDER_LOADING,
    Status.STALLED: AlertType.PROVIDER_STALLED,
    Status.MISCONFIGURED: AlertType.PROVIDER_MISCONFIGURED,
}
_LISTED = frozenset({Status.UP, Status.DEGRADED})  # probe verdicts that come with a fresh model list


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds of the rules. Down/up hysteresis is health's (failure/success thresholds), not repeated here."""

    flap_threshold: int = 6  # status changes within flap_window_s that make a provider flapping (3 down/up cycles)
    flap_window_s: float = 1800.0
    flap_quiet_s: float = 900.0  # a flapping provider must hold one status this long before alerts resume
    best_hold_s: float = 60.0  # a new best provider must stay best this long before ranking.best_changed
    # model.added / model.removed at most once per provider this often; what changed meanwhile comes as one net
    # difference (a server inventing ids every probe sent two events per probe)
    model_events_every_s: float = 300.0
    # provider.down waits for this many failed probes in a row, also when a provider's first probe (which sets
    # its status at once, health's first-probe rule) found it down: one failed probe after a restart never pages.
    failure_threshold: int = 1
    alert_never_up: bool = False  # page for a provider that has not been up since monitord first saw it
    repeat_interval_s: float | None = None  # remind receivers this often while a provider stays down

    def __post_init__(self) -> None:
        if self.flap_threshold < 2:
            raise ValueError("flap_threshold must be at least 2")
        if self.flap_window_s <= 0 or self.flap_quiet_s < 0 or self.best_hold_s < 0:
            raise ValueError("flap_window_s must be positive; flap_quiet_s and best_hold_s not negative")
        if self.failure_threshold < 1 or (self.repeat_interval_s is not None and self.repeat_interval_s <= 0):
            raise ValueError("failure_threshold must be at least 1; repeat_interval_s positive when set")


@dataclass(frozen=True, slots=True)
class ProviderMemory:
    """What the rules remember of one provider: the stored part (AlertState) and what lives in memory only."""

    told: Status | None = None  # the status receivers know (UP also once first seen up, silently; None: never)
    incident_start: datetime | None = None  # first failed probe of the open incident
    reminders: int = 0  # reminders sent in the open incident
    changes: tuple[datetime, ...] = ()  # status changes inside the flap window, oldest first
    flapping_since: datetime | None = None  # set while flapping: status events are held back
    models: frozenset[str] | None = None  # the last listing told (None: no listing yet, so no model events)
    models_told_at: datetime | None = None  # when model events were last sent

    def stored(self, provider: str) -> AlertState:
        return AlertState(provider, self.told, self.incident_start, self.reminders)


@dataclass(frozen=True, slots=True)
class BestMemory:
    """What the rules remember of the default ranking's best provider."""

    known: bool = False  # False until the first ranking: the first best is a baseline, not a change
    told: str | None = None  # the best provider receivers know of
    candidate: str | None = None  # a different best, waiting out best_hold_s
    candidate_since: datetime | None = None


def alert_provider(spec: ProviderSpec) -> AlertProvider:
    """The provider as alerts show it: never the userinfo of its URL."""
    return AlertProvider(spec.name, spec.type, spec.redacted_endpoint)


def silenced_by(silences: Iterable[Silence], provider: str | None, now: datetime) -> str | None:
    """The id of the first silence that covers `provider` at `now`, if any."""
    if provider is None:
        return None
    for silence in silences:
        started = silence.start is None or silence.start <= now
        if started and now < silence.end and fnmatchcase(provider, silence.provider):
            return silence.id
    return None


def event_id(kind: AlertType, subject: str, at: datetime, extra: str = "") -> str:
    """A UUID that depends only on what the event is about, so re-evaluating never makes a second event."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{kind.value}|{subject}|{at.isoformat()}|{extra}"))


def make_test_event(now: datetime, nonce: str = "") -> AlertEvent:
    """The `test` event of `monitord alert test`; `nonce` tells two tests within one clock tick apart."""
    return AlertEvent(id=event_id(AlertType.TEST, "", now, nonce), type=AlertType.TEST, at=now)


def _provider_event(kind: AlertType, provider: AlertProvider, state: ProviderState, at: datetime,
                    silences: Sequence[Silence], now: datetime, *, event_key: tuple[datetime, str] | None = None,
                    change: StatusChange | None = None, previous_status: Status | None = None,
                    **fields: Any) -> AlertEvent:
    failing = state.status is not Status.UP
    error_class = change.error_class if change is not None and change.error_class else state.last_error_class
    error = change.error if change is not None and change.error else state.last_error
    key_at, extra = event_key or (at, ",".join(fields.get("models", ())))
    return AlertEvent(
        id=event_id(kind, provider.name, key_at, extra),
        type=kind,
        at=at,
        provider=provider,
        previous_status=previous_status if previous_status is not None or change is None else change.previous,
        status=state.status,
        since=state.since,
        failures_in_a_row=state.failures_in_a_row,
        error_class=error_class if failing else None,
        error=error if failing else None,
        silenced_by=silenced_by(silences, provider.name, now),
        **fields,
    )


def evaluate_provider(memory: ProviderMemory, state: ProviderState, changes: Sequence[StatusChange],
                      provider: AlertProvider, policy: AlertPolicy, silences: Sequence[Silence],
                      now: datetime) -> tuple[list[AlertEvent], ProviderMemory]:
    """Events for one probe result of one provider. Call after every probe: the end of a flap, a threshold met
    after a first probe and a reminder need no status change.

    `state` is the provider's state after the probe and `changes` what health reported for that probe. Status
    events compare the state with what receivers were told, so a restart (memory restored from AlertState)
    neither repeats an alert nor misses a recovery that happened while monitord was stopped.
    """
    events: list[AlertEvent] = []
    memory = _age(memory, now, policy)
    change = changes[-1] if changes else None
    if change is not None:
        memory = _note_change(memory, change)
        if memory.flapping_since is None and len(memory.changes) >= policy.flap_threshold:
            events.append(_provider_event(
                AlertType.PROVIDER_FLAPPING, provider, state, change.at, silences, now, change=change,
                details={"transitions": len(memory.changes), "window_s": policy.flap_window_s}))
            memory = _told_by_flapping(replace(memory, flapping_since=change.at), state, change)
    settled = False
    if memory.flapping_since is not None and _stable(memory, state, policy, now):
        # Counting starts over: it takes a whole new run of changes to call it flapping again.
        memory, settled = replace(memory, flapping_since=None, changes=()), True
    if memory.flapping_since is None:
        status_events, memory = _status_events(memory, state, change, provider, policy, silences, now,
                                               settled=settled)
        events += status_events
    model_events, memory = _model_events(memory, state, provider, silences, now, policy.model_events_every_s)
    return events + model_events, memory


def _told_by_flapping(memory: ProviderMemory, state: ProviderState, change: StatusChange) -> ProviderMemory:
    """provider.flapping carries the status of the moment: receivers now know that one."""
    if state.status is Status.UP:
        return replace(memory, told=Status.UP, incident_start=None, reminders=0)
    if state.status not in _STATUS_EVENTS:
        return memory
    start = memory.incident_start if memory.told not in (None, Status.UP) else None
    return replace(memory, told=state.status, incident_start=start or state.failing_since or change.at)


def _age(memory: ProviderMemory, now: datetime, policy: AlertPolicy) -> ProviderMemory:
    recent = tuple(at for at in memory.changes if (now - at).total_seconds() <= policy.flap_window_s)
    return memory if recent == memory.changes else replace(memory, changes=recent)


def _note_change(memory: ProviderMemory, change: StatusChange) -> ProviderMemory:
    # The first status of a provider is a discovery, not a change: it does not count towards flapping.
    if change.previous is Status.UNKNOWN:
        return memory
    return replace(memory, changes=(*memory.changes, change.at))


def _status_events(memory: ProviderMemory, state: ProviderState, change: StatusChange | None,
                   provider: AlertProvider, policy: AlertPolicy, silences: Sequence[Silence], now: datetime, *,
                   settled: bool) -> tuple[list[AlertEvent], ProviderMemory]:
    """The event (if any) that brings receivers from `memory.told` to the provider's status now."""
    status = state.status
    kind = _STATUS_EVENTS.get(status)
    if kind is None:  # unknown, disabled, or a status without an event of its own
        return [], memory
    at = change.at if change is not None and change.current is status else (state.last_probe_at or now)
    details: dict[str, Any] = {"after_flapping": True} if settled else {}
    if status is Status.UP:
        if memory.told in (None, Status.UP):
            return [], replace(memory, told=Status.UP)  # nothing bad was said, so there is nothing to take back
        start = memory.incident_start or (state.since if change is None else None)
        down_for_s = (at - start).total_seconds() if start else (change.since_previous_s if change else None)
        event = _provider_event(kind, provider, state, at, silences, now, change=change,
                                previous_status=memory.told, event_key=(start or at, ""), down_for_s=down_for_s,
                                **({"details": details} if details else {}))
        return [event], replace(memory, told=Status.UP, incident_start=None, reminders=0)
    if status is memory.told:
        return _reminder(memory, state, kind, provider, policy, silences, now)
    if status is Status.DOWN and state.failures_in_a_row < policy.failure_threshold:
        return [], memory  # a first probe set the status at once: the threshold still has to be met
    if memory.told is None and not policy.alert_never_up:
        return [], memory  # never seen up: a server that was never there does not page (alerts.alert_never_up)
    in_incident = memory.told is not None and memory.told is not Status.UP and memory.incident_start is not None
    start = memory.incident_start if in_incident else (state.failing_since or state.since or at)
    assert start is not None
    # The event that opens an incident is keyed by its start alone: whoever raises it, it is one delivery.
    key = (start, at.isoformat() if in_incident else "")
    event = _provider_event(kind, provider, state, at, silences, now, change=change,
                            previous_status=memory.told, event_key=key, **({"details": details} if details else {}))
    return [event], replace(memory, told=status, incident_start=start, reminders=0 if not in_incident
                            else memory.reminders)


def _reminder(memory: ProviderMemory, state: ProviderState, kind: AlertType, provider: AlertProvider,
              policy: AlertPolicy, silences: Sequence[Silence], now: datetime) -> tuple[list[AlertEvent],
                                                                                    ProviderMemory]:
    """Another event for the status receivers already know, every repeat_interval_s of the incident."""
    start, every_s = memory.incident_start, policy.repeat_interval_s
    if start is None or every_s is None:
        return [], memory
    due = int((now - start).total_seconds() // every_s)
    if due <= memory.reminders:
        return [], memory
    event = _provider_event(kind, provider, state, now, silences, now, previous_status=memory.told,
                            event_key=(start, f"reminder-{due}"), details={"reminder": due})
    return [event], replace(memory, reminders=due)


def _stable(memory: ProviderMemory, state: ProviderState, policy: AlertPolicy, now: datetime) -> bool:
    last_change = memory.changes[-1] if memory.changes else state.since
    return last_change is None or (now - last_change).total_seconds() >= policy.flap_quiet_s


def _model_events(memory: ProviderMemory, state: ProviderState, provider: AlertProvider,
                  silences: Sequence[Silence], now: datetime,
                  every_s: float) -> tuple[list[AlertEvent], ProviderMemory]:
    if state.last_result_status not in _LISTED:
        return [], memory  # a failed probe lists nothing: the last listing still stands
    listed = frozenset(state.model_ids)
    previous = memory.models
    told_at = memory.models_told_at
    if previous is not None and previous != listed and told_at is not None \
            and (now - told_at).total_seconds() < every_s:
        return [], memory  # too soon after the last model events: the listing told stays, the net change waits
    memory = replace(memory, models=listed)
    if previous is None or previous == listed or memory.flapping_since is not None:
        return [], memory
    memory = replace(memory, models_told_at=now)
    at = state.last_probe_at or now
    events = [
        _provider_event(kind, provider, state, at, silences, now, models=tuple(sorted(ids)))
        for kind, ids in ((AlertType.MODEL_ADDED, listed - previous), (AlertType.MODEL_REMOVED, previous - listed))
        if ids
    ]
    return events, memory


def evaluate_best(memory: BestMemory, best: AlertProvider | None, policy: AlertPolicy,
                  silences: Sequence[Silence], now: datetime, *, best_failing: bool = False
                  ) -> tuple[list[AlertEvent], BestMemory]:
    """ranking.best_changed once a new best provider of the default ranking has held for best_hold_s.

    Call after every ranking; `best` is its first entry (None: no provider is eligible). `best_failing`: the
    best's last probe failed (the ranking's window still favours it): it is never announced, and its hold restarts.
    """
    name = best.name if best is not None else None
    if not memory.known:
        return [], BestMemory(known=True, told=name)
    if name == memory.told:
        return [], replace(memory, candidate=None, candidate_since=None)
    if best_failing:
        return [], replace(memory, candidate=None, candidate_since=None)
    if name != memory.candidate or memory.candidate_since is None:
        memory = replace(memory, candidate=name, candidate_since=now)
    assert memory.candidate_since is not None
    if (now - memory.candidate_since).total_seconds() < policy.best_hold_s:
        return [], memory
    event = AlertEvent(
        id=event_id(AlertType.RANKING_BEST_CHANGED, name or "", now, memory.told or ""),
        type=AlertType.RANKING_BEST_CHANGED,
        at=now,
        provider=best,
        details={"previous_best": memory.told},
        silenced_by=silenced_by(silences, name, now),
    )
    return [event], BestMemory(known=True, told=name)


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """What one probe means for alerting: events to store, and the provider's AlertState when it changed.

    Both go to the store in the same transaction as the probe row, so an event is never lost nor repeated.
    """

    events: list[AlertEvent]
    state: AlertState | None = None


@dataclass
class AlertRules:
    """The daemon's handle on the rules: keeps each provider's memory between probes. No I/O, no clock."""

    policy: AlertPolicy = field(default_factory=AlertPolicy)
    _providers: dict[str, ProviderMemory] = field(default_factory=dict, init=False)
    _best: BestMemory = field(default_factory=BestMemory, init=False)

    def restore(self, states: Iterable[AlertState]) -> None:
        """Continue from stored states (start-up, or providers a cluster instance just took over)."""
        for stored in states:
            memory = self._providers.get(stored.provider) or ProviderMemory()
            self._providers[stored.provider] = replace(memory, told=stored.told,
                                                       incident_start=stored.incident_start,
                                                       reminders=stored.reminders)

    def state(self, provider: str) -> AlertState | None:
        memory = self._providers.get(provider)
        return memory.stored(provider) if memory is not None else None

    def on_probe(self, state: ProviderState, changes: Sequence[StatusChange], provider: AlertProvider,
                 silences: Sequence[Silence], now: datetime) -> AlertDecision:
        before = self._providers.get(state.name) or ProviderMemory()
        events, after = evaluate_provider(before, state, changes, provider, self.policy, silences, now)
        self._providers[state.name] = after
        changed = (after.told, after.incident_start, after.reminders) != (before.told, before.incident_start,
                                                                          before.reminders)
        return AlertDecision(events, after.stored(state.name) if changed else None)

    def on_ranking(self, best: AlertProvider | None, silences: Sequence[Silence], now: datetime, *,
                   best_failing: bool = False) -> list[AlertEvent]:
        events, self._best = evaluate_best(self._best, best, self.policy, silences, now, best_failing=best_failing)
        return events

    def forget(self, provider: str) -> None:
        """A provider left the config: a new one of that name starts afresh."""
        self._providers.pop(provider, None)
