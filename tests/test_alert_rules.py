"""Alert rules, pure and table-driven: probe verdicts go through the real health fold, then the rules. No sleep.

A script is a string of probe verdicts one second apart: u = up, d = down (refused), l = loading, g = degraded.
Health's hysteresis is the default (3 failures to go down, 2 successes to come back) unless a case says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitord.alerts.rules import (
    AlertPolicy,
    AlertRules,
    BestMemory,
    alert_provider,
    evaluate_best,
    make_test_event,
    silenced_by,
)
from monitord.health import HealthPolicy, ProviderTracker, update
from monitord.model import (
    AlertEvent,
    AlertProvider,
    AlertState,
    AlertType,
    ErrorClass,
    ModelInfo,
    ProbeResult,
    ProviderSpec,
    Secret,
    Silence,
    Status,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
GPU = AlertProvider("gpu-box", "vllm", "http://10.0.0.5:8000")
VERDICTS = {
    "u": (Status.UP, None, None),
    "d": (Status.DOWN, ErrorClass.REFUSED, "connection refused"),
    "l": (Status.LOADING, ErrorClass.LOADING, "Loading model"),
    "g": (Status.DEGRADED, ErrorClass.EMPTY_MODELS, "no model listed"),
    "m": (Status.MISCONFIGURED, ErrorClass.WRONG_SERVER, "configured as vllm, but the server looks like llamacpp"),
}
QUICK = HealthPolicy(failure_threshold=1, success_threshold=1)  # every verdict is a status change


@dataclass
class Run:
    """Feeds probe verdicts through health and the rules, one second apart, collecting the events."""

    policy: dict[str, Any] = field(default_factory=dict)  # AlertPolicy fields; failure_threshold is health's
    health: HealthPolicy = field(default_factory=HealthPolicy)
    silences: tuple[Silence, ...] = ()
    rules: AlertRules = field(init=False)
    tracker: ProviderTracker = field(init=False)
    clock: datetime = T0
    events: list[AlertEvent] = field(default_factory=list)
    stored: list[AlertState] = field(default_factory=list)  # every AlertState the rules asked to store

    def __post_init__(self) -> None:
        self.rules = AlertRules(AlertPolicy(**{"failure_threshold": self.health.failure_threshold, **self.policy}))
        self.tracker = ProviderTracker(GPU.name, GPU.type, self.health)

    def probe(self, verdict: str, models: tuple[str, ...] = ("llama3",)) -> list[AlertEvent]:
        status, error_class, error = VERDICTS[verdict]
        listed = tuple(ModelInfo(m) for m in models) if status in (Status.UP, Status.DEGRADED) else ()
        if verdict == "g":
            listed = ()
        result = ProbeResult(provider=GPU.name, provider_type=GPU.type, started_at=self.clock, status=status,
                             total_ms=5.0, error_class=error_class, error=error, models=listed)
        state, changes = update(self.tracker, result, self.clock)
        decision = self.rules.on_probe(state, changes, GPU, self.silences, self.clock)
        events = decision.events
        self.events += events
        if decision.state is not None:
            self.stored.append(decision.state)
        self.clock += timedelta(seconds=1)
        return events

    def script(self, verdicts: str) -> list[AlertEvent]:
        for verdict in verdicts.replace(" ", ""):
            self.probe(verdict)
        return self.events

    def types(self, prefix: str = "") -> list[str]:
        return [event.type.value for event in self.events if event.type.value.startswith(prefix)]


# -- status transitions --------------------------------------------------------------------------------------

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("steady up says nothing", "uuuuu", {}, []),
    ("down then back up", "uu ddd uu", {}, ["provider.down", "provider.up"]),
    ("failures under the threshold are not an outage", "uu dd uu d u", {}, []),
    ("one alert for a long outage", "u dddddddddddd uu", {}, ["provider.down", "provider.up"]),
    ("recovery needs two good probes", "u ddd u", {}, ["provider.down"]),
    ("never up: no page by default", "ddd uu", {}, []),
    ("never up, paged when asked", "ddd uu", {"alert_never_up": True}, ["provider.down", "provider.up"]),
    ("a first probe's down still waits for the threshold", "dd", {"alert_never_up": True}, []),
    ("never up, then up, then down pages", "ddd uu ddd", {}, ["provider.down"]),
    ("loading is reported at once and so is its end", "u l u", {}, ["provider.loading", "provider.up"]),
    ("degraded then fine", "u g u", {}, ["provider.degraded", "provider.up"]),
    ("down, loading while it restarts, up", "u ddd l u", {},
     ["provider.down", "provider.loading", "provider.up"]),
    ("loading that ends in an outage", "u l dd uu", {}, ["provider.loading", "provider.down", "provider.up"]),
    ("another server on the port is told at once, and its end", "u m u", {},
     ["provider.misconfigured", "provider.up"]),
]


@pytest.mark.parametrize("verdicts, policy, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_status_transitions(verdicts: str, policy: dict[str, Any], expected: list[str]) -> None:
    run = Run(policy=policy)
    run.script(verdicts)
    assert run.types("provider.") == expected


def test_degraded_for_an_empty_listing_also_reports_the_models_it_lost() -> None:
    run = Run(policy={"model_events_every_s": 0})
    run.script("u g u")
    assert run.types() == ["provider.degraded", "model.removed", "provider.up", "model.added"]


def test_down_event_carries_the_facts() -> None:
    run = Run()
    [down] = [e for e in run.script("uu ddd") if e.type is AlertType.PROVIDER_DOWN]
    assert down.provider == GPU
    assert (down.previous_status, down.status) == (Status.UP, Status.DOWN)
    assert down.at == down.since == T0 + timedelta(seconds=4)  # the third failure in a row
    assert down.failures_in_a_row == 3
    assert (down.error_class, down.error) == (ErrorClass.REFUSED, "connection refused")
    assert down.silenced_by is None and down.down_for_s is None


def test_up_event_says_how_long_it_was_down() -> None:
    run = Run()
    run.script("u ddd l uu")  # down at t=3, loading at t=4, up at t=5 (from LOADING an UP result is immediate)
    up = run.events[-1]
    assert up.type is AlertType.PROVIDER_UP
    assert (up.previous_status, up.status) == (Status.LOADING, Status.UP)
    assert up.down_for_s == 4.0  # since the first failed probe (t=1), not since it was declared down (t=3)
    assert up.error_class is None and up.error is None and up.failures_in_a_row == 0


# -- flapping ------------------------------------------------------------------------------------------------

FLAP = {"flap_threshold": 4, "flap_window_s": 60.0, "flap_quiet_s": 10.0}
FLAP_CASES: list[tuple[str, str, list[str]]] = [
    ("a storm becomes one flapping alert", "u dudududududududu",
     ["provider.down", "provider.up", "provider.down", "provider.flapping"]),
    ("settles where receivers were last told: nothing more", "u dudu uuuuuuuuuuuu",
     ["provider.down", "provider.up", "provider.down", "provider.flapping"]),
    ("settles elsewhere: the settled status, once", "u dudud dddddddddddd",
     ["provider.down", "provider.up", "provider.down", "provider.flapping", "provider.down"]),
    ("after settling, alerts resume as usual", "u dudu uuuuuuuuuuuu d u",
     ["provider.down", "provider.up", "provider.down", "provider.flapping", "provider.down", "provider.up"]),
    ("changes spread wider than the window are not a flap", "u d" + "u" * 70 + "d" + "u" * 70 + "d",
     ["provider.down", "provider.up"] * 2 + ["provider.down"]),
]


@pytest.mark.parametrize("verdicts, expected", [c[1:] for c in FLAP_CASES], ids=[c[0] for c in FLAP_CASES])
def test_flapping(verdicts: str, expected: list[str]) -> None:
    run = Run(policy=FLAP, health=QUICK)
    run.script(verdicts)
    assert run.types() == expected


def test_flapping_event_counts_the_changes_and_the_settled_event_says_so() -> None:
    run = Run(policy=FLAP, health=QUICK)
    run.script("u dudud dddddddddddd")
    flapping, settled = run.events[3], run.events[4]
    assert flapping.details == {"transitions": 4, "window_s": 60.0}
    assert flapping.status is Status.UP
    assert settled.details == {"after_flapping": True}
    assert (settled.previous_status, settled.status) == (Status.UP, Status.DOWN)


def test_no_model_storm_while_flapping_between_up_and_empty() -> None:
    run = Run(policy=FLAP, health=QUICK)
    run.script("u gugugugugugu")
    assert run.types().count("provider.flapping") == 1
    assert run.types().count("model.removed") <= 2  # only before the flap was recognised


# -- models --------------------------------------------------------------------------------------------------


def test_model_listing_changes() -> None:
    run = Run(policy={"model_events_every_s": 0})
    assert run.probe("u", ("a", "b")) == []  # the first listing is the baseline
    assert run.probe("u", ("a", "b")) == []
    [added] = run.probe("u", ("a", "b", "c"))
    assert (added.type, added.models) == (AlertType.MODEL_ADDED, ("c",))
    added_removed = run.probe("u", ("c", "d"))
    assert [(e.type, e.models) for e in added_removed] == [
        (AlertType.MODEL_ADDED, ("d",)), (AlertType.MODEL_REMOVED, ("a", "b"))]
    assert run.probe("d", ()) == []  # a failed probe lists nothing: not a removal
    assert run.probe("u", ("c", "d")) == []


def test_model_events_are_rate_limited_and_carry_the_net_change() -> None:
    run = Run(policy={"model_events_every_s": 10})  # probes come one second apart
    assert run.probe("u", ("a",)) == []  # baseline
    [added] = run.probe("u", ("a", "b"))  # t=1: the first change is told at once
    assert added.models == ("b",)
    for listing in (("a", "c"), ("a", "d"), ("a", "e"), ("a", "b", "e")):  # t=2..5: churn, held back
        assert run.probe("u", listing) == []
    for _ in range(5):  # t=6..10: still within 10 s of the last model events
        assert run.probe("u", ("a", "b", "e")) == []
    told = run.probe("u", ("a", "b", "e"))  # t=11: the net difference since what was told
    assert [(e.type, e.models) for e in told] == [(AlertType.MODEL_ADDED, ("e",))]
    assert run.probe("u", ("a", "b", "e")) == []


# -- silences ------------------------------------------------------------------------------------------------


def silence(pattern: str, start_s: float | None, end_s: float, sid: str = "s1") -> Silence:
    start = T0 + timedelta(seconds=start_s) if start_s is not None else None
    return Silence(id=sid, provider=pattern, start=start, end=T0 + timedelta(seconds=end_s), reason="maintenance")


@pytest.mark.parametrize("silences, at_s, provider, expected", [
    ((), 5, "gpu-box", None),
    ((silence("gpu-box", 0, 10),), 5, "gpu-box", "s1"),
    ((silence("gpu-*", None, 10),), 5, "gpu-box", "s1"),
    ((silence("gpu-*", 0, 10),), 10, "gpu-box", None),  # end is exclusive
    ((silence("gpu-*", 6, 10),), 5, "gpu-box", None),  # not started yet
    ((silence("cpu-*", 0, 10),), 5, "gpu-box", None),
    ((silence("GPU-*", 0, 10),), 5, "gpu-box", None),  # names are case-sensitive
    ((silence("cpu-*", 0, 10, "a"), silence("*", 0, 10, "b")), 5, "gpu-box", "b"),
    ((silence("*", 0, 10),), 5, None, None),  # the test event is never silenced
])
def test_silenced_by(silences: tuple[Silence, ...], at_s: float, provider: str | None, expected: str | None) -> None:
    assert silenced_by(silences, provider, T0 + timedelta(seconds=at_s)) == expected


def test_silenced_events_are_still_made_and_remembered() -> None:
    run = Run(silences=(silence("gpu-*", 0, 5),))
    run.script("uu ddd uu")  # down at t=4 (silenced), up at t=6 (after the window)
    assert run.types() == ["provider.down", "provider.up"]
    assert [e.silenced_by for e in run.events] == ["s1", None]


# -- restart -------------------------------------------------------------------------------------------------


def restarted(before: Run, *, window_kept: bool) -> Run:
    """A new daemon after `before`: the rules restored from the AlertStates `before` stored; health rebuilt from the
    probes still in the window (the same tracker) or, after a stop longer than the window, from nothing."""
    after = Run(clock=before.clock + (timedelta(0) if window_kept else timedelta(hours=2)))
    after.rules.restore(before.stored[-1:])
    if window_kept:
        after.tracker = before.tracker
    return after


def test_recovery_after_a_restart_is_reported() -> None:
    before = Run()
    before.script("u ddd")
    assert before.types() == ["provider.down"]
    after = restarted(before, window_kept=True)
    after.script("dd uu")
    assert after.types() == ["provider.up"]
    assert after.events[0].down_for_s == 6.0  # from the first failed probe (t=1) to the recovery (t=7)
    assert after.events[0].id != before.events[0].id


@pytest.mark.parametrize("window_kept", [True, False], ids=["short stop", "stop longer than the window"])
def test_restart_with_no_change_says_nothing(window_kept: bool) -> None:
    for script, more in (("u ddd", "ddddd"), ("uu", "uuuu")):
        before = Run()
        before.script(script)
        after = restarted(before, window_kept=window_kept)
        assert after.script(more) == [], script


def test_restart_after_a_long_stop_reports_a_recovery_that_happened_meanwhile() -> None:
    before = Run()
    before.script("u ddd")
    after = restarted(before, window_kept=False)
    [up] = after.script("uuu")
    assert up.type is AlertType.PROVIDER_UP and up.previous_status is Status.DOWN
    assert up.down_for_s == (after.events[0].at - (T0 + timedelta(seconds=1))).total_seconds()


def test_a_provider_that_went_down_while_stopped_is_reported_once() -> None:
    before = Run()
    before.script("uu")
    after = restarted(before, window_kept=False)
    after.script("dddddd")  # the first probe sets DOWN at once; the alert still waits for three failures
    assert after.types() == ["provider.down"]
    assert after.events[0].failures_in_a_row == 3


def test_one_incident_has_one_id_whoever_raises_it() -> None:
    """Two instances (or a run and its successor) that see the same probes raise the same ids."""
    first, second = Run(), Run()
    first.script("u dddd uu")
    second.script("u ddd")
    second.clock += timedelta(seconds=30)  # evaluated later: the id does not depend on when
    second.script("d uu")
    assert first.types() == second.types() == ["provider.down", "provider.up"]
    assert first.events[0].id == second.events[0].id


def test_alert_state_is_stored_only_when_it_changes() -> None:
    run = Run()
    run.script("u u u ddd d d uu u")
    assert [(s.told, s.incident_start) for s in run.stored] == [
        (Status.UP, None), (Status.DOWN, T0 + timedelta(seconds=3)), (Status.UP, None)]


def test_reminders_while_down() -> None:
    run = Run(policy={"repeat_interval_s": 4.0})
    run.script("u ddd " + "d" * 9 + " uu")  # failing from t=1 (down at t=3); reminders at t=5, 9, 13
    assert run.types() == ["provider.down"] * 4 + ["provider.up"]
    reminders = run.events[1:4]
    assert [e.details["reminder"] for e in reminders] == [1, 2, 3]
    assert len({e.id for e in run.events}) == 5
    quiet = Run()  # default: no reminders
    quiet.script("u ddd" + "d" * 9)
    assert quiet.types() == ["provider.down"]


def test_a_fresh_start_finding_a_provider_up_says_nothing() -> None:
    assert Run().script("u") == []


# -- ranking -------------------------------------------------------------------------------------------------

CPU = AlertProvider("cpu-box", "ollama", "http://10.0.0.6:11434")
BEST_CASES: list[tuple[str, list[tuple[Any, ...]], list[tuple[float, str | None, str | None]]]] = [
    ("the first best is a baseline", [(0, GPU), (100, GPU)], []),
    ("a change that holds is reported once", [(0, GPU), (10, CPU), (40, CPU), (70, CPU), (200, CPU)],
     [(70, "cpu-box", "gpu-box")]),
    ("a change that does not hold is not", [(0, GPU), (10, CPU), (40, GPU), (100, GPU)], []),
    ("a swap back is a change too", [(0, GPU), (10, CPU), (70, CPU), (80, GPU), (140, GPU)],
     [(70, "cpu-box", "gpu-box"), (140, "gpu-box", "cpu-box")]),
    ("nobody eligible any more", [(0, GPU), (10, None), (70, None)], [(70, None, "gpu-box")]),
    ("a best whose last probe failed is never named", [(0, GPU), (10, CPU, True), (70, CPU, True), (200, CPU, True)],
     []),
    ("its hold starts once its probe succeeds", [(0, GPU), (10, CPU, True), (70, CPU), (100, CPU), (130, CPU)],
     [(130, "cpu-box", "gpu-box")]),
]


@pytest.mark.parametrize("steps, expected", [c[1:] for c in BEST_CASES], ids=[c[0] for c in BEST_CASES])
def test_best_provider_changes(steps: list[tuple[Any, ...]], expected: list[tuple[float, str | None, str | None]]
                               ) -> None:
    memory, got = BestMemory(), []
    for at_s, best, *failing in steps:
        events, memory = evaluate_best(memory, best, AlertPolicy(best_hold_s=60.0), (), T0 + timedelta(seconds=at_s),
                                       best_failing=bool(failing and failing[0]))
        got += [((e.at - T0).total_seconds(), e.provider.name if e.provider else None, e.details["previous_best"])
                for e in events if e.type is AlertType.RANKING_BEST_CHANGED]
    assert got == expected


# -- ids, endpoints, policy ----------------------------------------------------------------------------------


def test_event_ids_are_stable_and_distinct() -> None:
    first, second = Run(), Run()
    first.script("u ddd uu ddd uu")
    second.script("u ddd uu ddd uu")
    assert [e.id for e in first.events] == [e.id for e in second.events]  # re-evaluation: same ids
    assert len({e.id for e in first.events}) == 4


def test_make_test_event() -> None:
    event = make_test_event(T0)
    assert (event.type, event.provider, event.at) == (AlertType.TEST, None, T0)
    assert make_test_event(T0, "a").id != make_test_event(T0, "b").id


def test_alert_provider_redacts_credentials() -> None:
    spec = ProviderSpec(name="gpu", type="vllm", base_url="http://user:hunter2@10.0.0.5:8000",
                        api_key=Secret("sk-1"))
    assert alert_provider(spec) == AlertProvider("gpu", "vllm", "http://***@10.0.0.5:8000")


@pytest.mark.parametrize("bad", [{"flap_threshold": 1}, {"flap_window_s": 0}, {"flap_quiet_s": -1},
                                 {"best_hold_s": -1}, {"failure_threshold": 0}, {"repeat_interval_s": 0}])
def test_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AlertPolicy(**bad)


def test_a_model_list_that_cannot_be_read_announces_no_model_change() -> None:
    run = Run()
    run.probe("u")
    unknown = ProbeResult(provider=GPU.name, provider_type=GPU.type, started_at=run.clock, status=Status.UP,
                          total_ms=5.0, models_known=False, error="models unknown: /v1/models: HTTP 500")
    state, changes = update(run.tracker, unknown, run.clock)
    assert run.rules.on_probe(state, changes, GPU, run.silences, run.clock).events == []
    run.clock += timedelta(seconds=1)
    run.probe("u")
    assert run.types("model.") == []
