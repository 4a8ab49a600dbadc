"""Pure alert rules: status changes, model listings and the best provider become AlertEvents (flaps, silences).

No I/O and no clock: every call takes `now`. What the rules remember between calls (the status receivers were last
told, recent changes, the last model listing, the pending best provider) is an immutable value passed in and out;
AlertRules keeps those values for the daemon. Event ids are derived from their content, so evaluating the same
probe again gives the same id and the outbox stores it once.
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
    alert_first_status: bool = True  # a provider found down, loading or degraded by its first probe is alerted
    # model.added / model.removed at most once per provider this often; what changed meanwhile comes as one net
    # difference (a server inventing ids every probe sent two events per probe)
    model_events_every_s: float = 300.0

    def __post_init__(self) -> None:
        if self.flap_threshold < 2:
            raise ValueError("flap_threshold must be at least 2")
        if self.flap_window_s <= 0 or self.flap_quiet_s < 0 or self.best_hold_s < 0:
            raise ValueError("flap_window_s must be positive; flap_quiet_s and best_hold_s not negative")


@dataclass(frozen=True, slots=True)
class ProviderMemory:
    """What the rules remember of one provider."""

    told: Status | None = None  # the status the last event reported (None: nothing said yet)
    not_up_since: datetime | None = None  # when it last left UP (or was first seen not UP)
    changes: tuple[datetime, ...] = ()  # status changes inside the flap window, oldest first
    flapping_since: datetime | None = None  # set while flapping: status events are held back
    models: frozenset[str] | None = None  # the last listing told (None: no listing yet, so no model events)
    models_told_at: datetime | None = None  # when model events were last sent


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
                    silences: Sequence[Silence], now: datetime, *, change: StatusChange | None = None,
                    previous_status: Status | None = None, **fields: Any) -> AlertEvent:
    failing = state.status is not Status.UP
    error_class = change.error_class if change is not None and change.error_class else state.last_error_class
    error = change.error if change is not None and change.error else state.last_error
    return AlertEvent(
        id=event_id(kind, provider.name, at, ",".join(fields.get("models", ()))),
        type=kind,
        at=at,
        provider=provider,
        previous_status=change.previous if change is not None else previous_status,
        status=state.status,
        since=state.since,
        failures_in_a_row=state.failures_in_a_row,
        error_class=error_class if failing else None,
        error=error if failing else None,
        silenced_by=silenced_by(silences, provider.name, now),
        **fields,
    )


def first_memory(state: ProviderState, changes: Sequence[StatusChange]) -> ProviderMemory:
    """Memory for a provider the rules meet for the first time.

    After a restart health rebuilds the state from the store while the rules start empty: the status the provider
    had before this probe is taken as already told (the previous run alerted on it), so its recovery is reported.
    """
    before = changes[0].previous if changes else state.status
    if before is Status.UNKNOWN:
        return ProviderMemory()
    return ProviderMemory(told=before, not_up_since=state.since if before is not Status.UP and not changes else None)


def evaluate_provider(memory: ProviderMemory, state: ProviderState, changes: Sequence[StatusChange],
                      provider: AlertProvider, policy: AlertPolicy, silences: Sequence[Silence],
                      now: datetime) -> tuple[list[AlertEvent], ProviderMemory]:
    """Events for one probe result of one provider. Call after every probe: the end of a flap needs no change.

    `state` is the provider's state after the probe and `changes` what health reported for that probe.
    """
    events: list[AlertEvent] = []
    memory = _age(memory, now, policy)
    change = changes[-1] if changes else None
    if change is not None:
        was_not_up_since = memory.not_up_since
        memory = _note_change(memory, change)
        if memory.flapping_since is None and len(memory.changes) >= policy.flap_threshold:
            events.append(_provider_event(
                AlertType.PROVIDER_FLAPPING, provider, state, change.at, silences, now, change=change,
                details={"transitions": len(memory.changes), "window_s": policy.flap_window_s}))
            memory = replace(memory, flapping_since=change.at, told=state.status)
        elif memory.flapping_since is None:
            event = _status_event(memory, state, change, provider, was_not_up_since, policy, silences, now)
            if event is not None:
                events.append(event)
                memory = replace(memory, told=change.current)
    if memory.flapping_since is not None and _stable(memory, state, policy, now):
        events += _settled_event(memory, state, provider, silences, now)
        # Counting starts over: it takes a whole new run of changes to call it flapping again.
        memory = replace(memory, flapping_since=None, told=state.status, changes=())
    model_events, memory = _model_events(memory, state, provider, silences, now, policy.model_events_every_s)
    return events + model_events, memory


def _age(memory: ProviderMemory, now: datetime, policy: AlertPolicy) -> ProviderMemory:
    recent = tuple(at for at in memory.changes if (now - at).total_seconds() <= policy.flap_window_s)
    return memory if recent == memory.changes else replace(memory, changes=recent)


def _note_change(memory: ProviderMemory, change: StatusChange) -> ProviderMemory:
    not_up_since = None if change.current is Status.UP else memory.not_up_since or change.at
    # The first status of a provider is a discovery, not a change: it does not count towards flapping.
    changes = memory.changes if change.previous is Status.UNKNOWN else (*memory.changes, change.at)
    return replace(memory, not_up_since=not_up_since, changes=changes)


def _status_event(memory: ProviderMemory, state: ProviderState, change: StatusChange, provider: AlertProvider,
                  was_not_up_since: datetime | None, policy: AlertPolicy, silences: Sequence[Silence],
                  now: datetime) -> AlertEvent | None:
    kind = _STATUS_EVENTS.get(change.current)
    if kind is None:
        return None
    if change.current is Status.UP:
        if memory.told in (None, Status.UP):
            return None  # nothing bad was said, so there is nothing to take back
        down_for_s = (change.at - was_not_up_since).total_seconds() if was_not_up_since else change.since_previous_s
        return _provider_event(kind, provider, state, change.at, silences, now, change=change, down_for_s=down_for_s)
    if change.previous is Status.UNKNOWN and not policy.alert_first_status:
        return None
    return _provider_event(kind, provider, state, change.at, silences, now, change=change)


def _stable(memory: ProviderMemory, state: ProviderState, policy: AlertPolicy, now: datetime) -> bool:
    last_change = memory.changes[-1] if memory.changes else state.since
    return last_change is None or (now - last_change).total_seconds() >= policy.flap_quiet_s


def _settled_event(memory: ProviderMemory, state: ProviderState, provider: AlertProvider,
                   silences: Sequence[Silence], now: datetime) -> list[AlertEvent]:
    """The status a flapping provider settled on, when it is not what receivers were last told."""
    kind = _STATUS_EVENTS.get(state.status)
    if kind is None or state.status is memory.told:
        return []
    return [_provider_event(kind, provider, state, now, silences, now, previous_status=memory.told,
                            details={"after_flapping": True})]


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
                  silences: Sequence[Silence], now: datetime) -> tuple[list[AlertEvent], BestMemory]:
    """ranking.best_changed once a new best provider of the default ranking has held for best_hold_s.

    Call after every ranking; `best` is its first entry (None: no provider is eligible).
    """
    name = best.name if best is not None else None
    if not memory.known:
        return [], BestMemory(known=True, told=name)
    if name == memory.told:
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


@dataclass
class AlertRules:
    """The daemon's handle on the rules: keeps each provider's memory between probes. No I/O, no clock."""

    policy: AlertPolicy = field(default_factory=AlertPolicy)
    _providers: dict[str, ProviderMemory] = field(default_factory=dict, init=False)
    _best: BestMemory = field(default_factory=BestMemory, init=False)

    def on_probe(self, state: ProviderState, changes: Sequence[StatusChange], provider: AlertProvider,
                 silences: Sequence[Silence], now: datetime) -> list[AlertEvent]:
        memory = self._providers.get(state.name) or first_memory(state, changes)
        events, self._providers[state.name] = evaluate_provider(memory, state, changes, provider, self.policy,
                                                                silences, now)
        return events

    def on_ranking(self, best: AlertProvider | None, silences: Sequence[Silence], now: datetime) -> list[AlertEvent]:
        events, self._best = evaluate_best(self._best, best, self.policy, silences, now)
        return events

    def forget(self, provider: str) -> None:
        """A provider left the config: a new one of that name starts afresh."""
        self._providers.pop(provider, None)
