"""Stalled providers: canary samples and the probes' Capacity folded into the live status; what selection and
alerts make of it. Pure tables, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitord.alerts.rules import AlertPolicy, AlertRules
from monitord.health import HealthPolicy, LiveState
from monitord.model import (
    AlertProvider,
    AlertType,
    Capacity,
    Criteria,
    ErrorClass,
    GenerationSample,
    ProbeResult,
    ProviderSpec,
    Status,
)
from monitord.ranking import rank

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def probe(t_s: float, status: Status = Status.UP, capacity: Capacity | None = None) -> ProbeResult:
    error = None if status is Status.UP else ErrorClass.REFUSED
    return ProbeResult(provider="p", provider_type="vllm", started_at=at(t_s), status=status, total_ms=5.0,
                       error_class=error, error="refused" if error else None, capacity=capacity)


SAMPLES = {
    "ok": dict(ok=True),
    "timeout": dict(ok=False, error_class=ErrorClass.GENERATION_TIMEOUT, error="no first token within 10s",
                    server_busy=False),
    "stalled": dict(ok=False, error_class=ErrorClass.STREAM_STALLED, error="no token for 10s after 3 chunk(s)"),
    "busy_timeout": dict(ok=False, error_class=ErrorClass.GENERATION_TIMEOUT, error="no first token within 10s",
                         server_busy=True),
    "busy": dict(ok=False, skipped=True, error_class=ErrorClass.BUSY, error="no idle slot"),
    "not_loaded": dict(ok=False, skipped=True, error_class=ErrorClass.NOT_LOADED, error="model not loaded"),
    "broken": dict(ok=False, error_class=ErrorClass.STREAM_BROKEN, error="stream ended without [DONE]"),
    "http": dict(ok=False, error_class=ErrorClass.HTTP_5XX, error="/v1/chat/completions: HTTP 500"),
}


def sample(kind: str, t_s: float) -> GenerationSample:
    return GenerationSample(provider="p", provider_type="vllm", model="m", started_at=at(t_s), **SAMPLES[kind])


def run(steps: list[str], policy: HealthPolicy | None = None) -> tuple[list[Status], LiveState, list]:
    """Steps: 'U' / 'D' a probe result, anything else a sample kind; one step every 10 s."""
    live = LiveState(policy or HealthPolicy(failure_threshold=2, success_threshold=2))
    live.track("p", "vllm")  # the daemon tracks every configured provider from the start
    statuses, changes = [], []
    for index, step in enumerate(steps):
        t_s = index * 10.0
        if step in ("U", "D"):
            changes += live.fold(probe(t_s, Status.UP if step == "U" else Status.DOWN), at(t_s))
        else:
            changes += live.fold_sample(sample(step, t_s), at(t_s))
        state = live.get("p")
        assert state is not None
        statuses.append(state.status)
    return statuses, live, changes


S, U, D = Status.STALLED, Status.UP, Status.DOWN


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["U", "timeout"], [U, S]),  # one missed deadline while not busy: stalled at once
        (["U", "stalled"], [U, S]),  # a stall mid-stream too
        (["U", "timeout", "U", "U"], [U, S, S, S]),  # health probes answering do not end it
        (["U", "timeout", "ok"], [U, S, U]),  # a canary that succeeds does
        (["U", "busy_timeout"], [U, U]),  # the server said it was saturated: a queue, not a stall
        (["U", "busy", "not_loaded"], [U, U, U]),  # skipped canaries say nothing
        (["U", "broken", "http"], [U, U, U]),  # broken or refused canaries are recorded, not a stall
        (["U", "timeout", "D", "D"], [U, S, S, D]),  # down still needs failure_threshold failures
        (["U", "timeout", "D", "D", "U", "U"], [U, S, S, D, D, S]),  # back up, still cannot generate
        (["D", "timeout", "ok", "U", "U"], [D, D, D, D, U]),
        (["timeout", "U"], [Status.UNKNOWN, S]),  # the first probe meets a remembered stall
    ],
)
def test_canary_samples_make_a_provider_stalled_and_well_again(steps: list[str], expected: list[Status]) -> None:
    statuses, _, _ = run(steps)

    assert statuses == expected


def test_the_stall_is_a_status_change_with_its_reason() -> None:
    _, live, changes = run(["U", "timeout", "ok"])

    stalled, recovered = changes[1], changes[2]
    assert (stalled.previous, stalled.current, stalled.error_class) == (U, S, ErrorClass.GENERATION_TIMEOUT)
    assert stalled.error == "m: no first token within 10s" and stalled.at == at(10)
    assert (recovered.previous, recovered.current, recovered.since_previous_s) == (S, U, 10.0)
    state = live.get("p")
    assert state is not None and state.last_error_class is ErrorClass.GENERATION_TIMEOUT
    assert state.transitions_recent == 2


def test_samples_for_a_provider_no_longer_tracked_are_ignored() -> None:
    live = LiveState()
    assert live.fold_sample(sample("timeout", 0), at(0)) == []
    assert live.get("p") is None


def capacity(running: int | None, tokens: float | None) -> Capacity:
    return Capacity(requests_running=running, generation_tokens_total=tokens)


@pytest.mark.parametrize(
    ("gauges", "expected"),
    [
        # (requests_running, generation_tokens_total) per probe, 30 s apart; stall_window 60 s
        ([(2, 100), (2, 180), (2, 260), (2, 300)], [U, U, U, U]),  # tokens flow
        ([(2, 100), (2, 100), (2, 100), (2, 100)], [U, U, S, S]),  # running, counter still for 60 s
        ([(2, 100), (2, 100), (2, 100), (2, 140)], [U, U, S, U]),  # the counter moves again
        ([(2, 100), (2, 100), (2, 100), (0, 100)], [U, U, S, U]),  # nothing runs any more
        ([(0, 100), (0, 100), (0, 100), (0, 100)], [U, U, U, U]),  # idle is not a stall
        ([(None, 100), (None, 100), (None, 100)], [U, U, U]),  # the server does not say
        ([(3, None), (3, None), (3, None)], [U, U, U]),
    ],
)
def test_passive_stall_from_the_servers_own_counters(gauges: list[tuple[int | None, float | None]],
                                                     expected: list[Status]) -> None:
    live = LiveState(HealthPolicy(stall_window_s=60.0))
    statuses = []
    for index, (running, tokens) in enumerate(gauges):
        live.fold(probe(index * 30.0, capacity=capacity(running, tokens)), at(index * 30.0))
        state = live.get("p")
        assert state is not None
        statuses.append(state.status)

    assert statuses == expected


def test_frozen_zero_gauges_do_not_end_a_canarys_verdict() -> None:
    """vLLM with a frozen engine publishes num_requests_running 0: read alone, a hung server looks idle."""
    live = LiveState()
    live.fold(probe(0, capacity=capacity(0, 500)), at(0))
    live.fold_sample(sample("timeout", 5), at(5))
    for t_s in (10, 20, 30):
        live.fold(probe(t_s, capacity=capacity(0, 500)), at(t_s))

    state = live.get("p")
    assert state is not None and state.status is S and state.last_error_class is ErrorClass.GENERATION_TIMEOUT


def test_passive_stall_reason_names_the_metrics() -> None:
    live = LiveState(HealthPolicy(stall_window_s=60.0))
    changes = []
    for t_s in (0, 30, 60):
        changes += live.fold(probe(t_s, capacity=capacity(4, 1000)), at(t_s))

    assert changes[-1].current is S and changes[-1].error_class is ErrorClass.STREAM_STALLED
    assert changes[-1].error == "4 request(s) running and no token generated for 60s (server metrics)"


# -- what a stalled provider means to selection and alerts ------------------------------------------------------


def test_a_stalled_provider_is_never_selected_and_says_why() -> None:
    _, live, _ = run(["U", "timeout"])
    live.track("q", "vllm")
    live.fold(ProbeResult(provider="q", provider_type="vllm", started_at=at(5), status=Status.UP, total_ms=900.0),
              at(20))
    specs = {name: ProviderSpec(name=name, type="vllm", base_url="http://127.0.0.1:1") for name in ("p", "q")}

    ranking = rank(live.all(), specs, Criteria(), at(20))

    assert [e.provider for e in ranking.entries] == ["q"]  # slower, but it can generate
    assert ranking.excluded["p"] == (
        f"status stalled since {at(10).isoformat()} (generation_timeout: m: no first token within 10s)",)


def test_stalled_alerts_and_its_recovery() -> None:
    rules = AlertRules(AlertPolicy())
    provider = AlertProvider("p", "vllm", "http://127.0.0.1:1")
    live = LiveState()
    live.track("p", "vllm")
    events = []
    for index, step in enumerate(["U", "timeout", "U", "ok"]):
        t_s = index * 10.0
        changes = live.fold(probe(t_s), at(t_s)) if step == "U" else live.fold_sample(sample(step, t_s), at(t_s))
        state = live.get("p")
        assert state is not None
        events += rules.on_probe(state, changes, provider, (), at(t_s)).events

    assert [e.type for e in events] == [AlertType.PROVIDER_STALLED, AlertType.PROVIDER_UP]
    stalled, recovered = events
    assert (stalled.status, stalled.error_class, stalled.error) == (
        Status.STALLED, ErrorClass.GENERATION_TIMEOUT, "m: no first token within 10s")
    assert (recovered.previous_status, recovered.down_for_s) == (Status.STALLED, 20.0)
