"""Live state: hysteresis, windows, latency statistics, models, rebuild. Pure tables, no sleep, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from monitord.health import HealthPolicy, LiveState, ProviderTracker, next_status, percentile, update
from monitord.model import Capacity, ErrorClass, HttpCall, Identity, ModelInfo, OutcomeReport, ProbeResult, Status

T0 = datetime(2025, 1, 1, tzinfo=UTC)
LETTERS = {"U": Status.UP, "D": Status.DOWN, "L": Status.LOADING, "G": Status.DEGRADED}
ERRORS = {Status.DOWN: ErrorClass.REFUSED, Status.LOADING: ErrorClass.LOADING, Status.DEGRADED:
          ErrorClass.EMPTY_MODELS}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def result(status: Status, t_s: float = 0.0, total_ms: float = 10.0, provider: str = "p", *,
           models: tuple[ModelInfo, ...] = (), version: str | None = None, error: str | None = None) -> ProbeResult:
    return ProbeResult(
        provider=provider, provider_type="vllm", started_at=at(t_s), status=status, total_ms=total_ms,
        error_class=ERRORS.get(status), error=error if error is not None else ERRORS.get(status) and "boom",
        models=models, server_version=version,
    )


def fold_letters(letters: str, policy: HealthPolicy | None = None, step_s: float = 10.0) -> tuple[LiveState, list]:
    live = LiveState(policy)
    changes = []
    for i, letter in enumerate(letters):
        changes += live.fold(result(LETTERS[letter], i * step_s), at(i * step_s))
    return live, changes


@pytest.mark.parametrize(("letters", "expected", "policy"), [
    ("U", "U", None),  # the first result sets the status at once
    ("D", "D", None),
    ("L", "L", None),
    ("G", "G", None),
    ("UDD", "UUU", None),  # two failures are a blip
    ("UDDD", "UUUD", None),  # the third one is down
    ("UDDUDD", "UUUUUU", None),  # a success resets the count
    ("DUU", "DDU", None),  # recovery needs two successes
    ("DUDUU", "DDDDU", None),
    ("UL", "UL", None),  # loading is reported immediately
    ("ULU", "ULU", None),  # and up after loading is immediate
    ("ULDD", "ULLD", None),  # loading counts as a failure towards down
    ("DL", "DL", None),  # a down server that answers "loading" is loading
    ("UG", "UG", None),  # degraded is reported immediately
    ("DG", "DG", None),
    ("DGU", "DGU", None),  # up after degraded is immediate
    ("UDDGD", "UUUGG", None),  # degraded counts as a success: the failure count starts over
    ("GDDD", "GGGD", None),
    ("UDU", "UDU", HealthPolicy(failure_threshold=1, success_threshold=1)),
    ("UDDDDDUUUU", "UUUUUDDDDU", HealthPolicy(failure_threshold=5, success_threshold=4)),
])
def test_status_hysteresis(letters: str, expected: str, policy: HealthPolicy | None) -> None:
    live = LiveState(policy)
    seen = ""
    for i, letter in enumerate(letters):
        live.fold(result(LETTERS[letter], i * 10.0), at(i * 10.0))
        state = live.get("p")
        assert state is not None
        seen += {v: k for k, v in LETTERS.items()}[state.status]
    assert seen == expected


@pytest.mark.parametrize(("letters", "failures", "successes"), [
    ("", 0, 0),
    ("UUU", 0, 3),
    ("UUD", 1, 0),
    ("UDL", 2, 0),
    ("DDG", 0, 1),
    ("LLLU", 0, 1),
])
def test_counters(letters: str, failures: int, successes: int) -> None:
    live, _ = fold_letters(letters)
    state = live.get("p") or live.track("p", "vllm")
    assert (state.failures_in_a_row, state.successes_in_a_row) == (failures, successes)


@pytest.mark.parametrize(("current", "result_status", "failures", "successes", "expected"), [
    (Status.UNKNOWN, Status.DOWN, 1, 0, Status.DOWN),
    (Status.UP, Status.DOWN, 2, 0, Status.UP),
    (Status.LOADING, Status.DOWN, 3, 0, Status.DOWN),
    (Status.DEGRADED, Status.DOWN, 1, 0, Status.DEGRADED),
    (Status.DOWN, Status.UP, 0, 1, Status.DOWN),
    (Status.DOWN, Status.UP, 0, 2, Status.UP),
    (Status.LOADING, Status.UP, 0, 1, Status.UP),
    (Status.UP, Status.UNKNOWN, 1, 0, Status.UP),  # a result never says unknown; if one did, it is a failure
])
def test_next_status(current: Status, result_status: Status, failures: int, successes: int,
                     expected: Status) -> None:
    assert next_status(current, result_status, failures, successes, HealthPolicy()) is expected


def test_status_changes_carry_durations_and_the_cause() -> None:
    _, changes = fold_letters("UDDDUU")
    assert [(c.previous, c.current, c.at, c.since_previous_s) for c in changes] == [
        (Status.UNKNOWN, Status.UP, at(0), None),
        (Status.UP, Status.DOWN, at(30), 30.0),
        (Status.DOWN, Status.UP, at(50), 20.0),
    ]
    assert (changes[1].error_class, changes[1].error) == (ErrorClass.REFUSED, "boom")
    assert changes[2].error_class is None
    assert changes[1].provider == "p" and changes[1].provider_type == "vllm"


def test_since_is_the_time_of_the_last_change() -> None:
    live, _ = fold_letters("UUUDDDD")
    state = live.get("p")
    assert state is not None and state.since == at(50) and state.status is Status.DOWN


# (ts_s, status) samples, fold time of the last one, window_s -> availability, samples, samples_ok
@pytest.mark.parametrize(("samples", "now_s", "window_s", "availability", "count", "ok"), [
    ([(0, "U")], 0, 900, 1.0, 1, 1),
    ([(0, "U"), (10, "D")], 10, 900, 0.5, 2, 1),
    ([(0, "U"), (10, "G"), (20, "L"), (30, "D")], 30, 900, 0.5, 4, 2),  # degraded is available, loading is not
    ([(0, "D"), (100, "U")], 100, 60, 1.0, 1, 1),  # the failure left the window
    ([(0, "D"), (60, "U")], 60, 60, 0.5, 2, 1),  # exactly window_s old: still inside
    ([(0, "D"), (61, "U")], 61, 60, 1.0, 1, 1),
    ([(0, "U"), (1000, "D"), (1001, "D")], 1001, 900, 0.0, 2, 0),
])
def test_availability_window(samples: list[tuple[float, str]], now_s: float, window_s: float,
                             availability: float, count: int, ok: int) -> None:
    live = LiveState(HealthPolicy(window_s=window_s))
    for ts_s, letter in samples:
        live.fold(result(LETTERS[letter], ts_s), at(ts_s))
    live.expire(at(now_s))
    state = live.get("p")
    assert state is not None
    assert (state.availability, state.samples, state.samples_ok) == (availability, count, ok)


def test_expire_ages_a_provider_nobody_probes() -> None:
    live = LiveState(HealthPolicy(window_s=60))
    live.fold(result(Status.UP, 0, total_ms=50), at(0))
    version = live.version
    live.expire(at(30))
    assert live.version == version  # nothing left the window: same snapshot
    live.expire(at(61))
    state = live.get("p")
    assert state is not None and live.version == version + 1
    assert (state.samples, state.availability, state.latency_p50_ms, state.latency_ewma_ms) == (0, None, None, None)
    assert state.status is Status.UP  # the window ages; the status only changes on evidence


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None),
    ([10.0], 0.5, 10.0),
    ([10.0], 0.95, 10.0),
    ([10.0, 20.0], 0.5, 15.0),
    ([10.0, 20.0, 30.0], 0.5, 20.0),
    ([float(v) for v in range(1, 101)], 0.95, 95.05),
    ([float(v) for v in range(1, 101)], 0.0, 1.0),
    ([float(v) for v in range(1, 101)], 1.0, 100.0),
])
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    got = percentile(values, q)
    assert got == (pytest.approx(expected) if expected is not None else None)


# latencies of UP results in fold order (None: a DOWN result) -> p50, p95, ewma (alpha 0.3)
@pytest.mark.parametrize(("latencies", "p50", "p95", "ewma"), [
    ([100.0], 100.0, 100.0, 100.0),
    ([100.0, 200.0], 150.0, 195.0, 130.0),
    ([100.0, 200.0, 100.0], 100.0, 190.0, 121.0),
    ([100.0, None, 200.0], 150.0, 195.0, 130.0),  # failures carry no latency
    ([300.0, 100.0, 200.0], 200.0, 290.0, 228.0),  # percentiles sort, the EWMA follows the order
    ([None], None, None, None),
])
def test_latency_statistics(latencies: list[float | None], p50: float | None, p95: float | None,
                            ewma: float | None) -> None:
    live = LiveState(HealthPolicy(failure_threshold=10))
    for i, latency in enumerate(latencies):
        status = Status.DOWN if latency is None else Status.UP
        live.fold(result(status, i, total_ms=latency or 5000.0), at(i))
    state = live.get("p")
    assert state is not None
    assert state.latency_p50_ms == (pytest.approx(p50) if p50 is not None else None)
    assert state.latency_p95_ms == (pytest.approx(p95) if p95 is not None else None)
    assert state.latency_ewma_ms == (pytest.approx(ewma) if ewma is not None else None)


def test_latency_window_drops_old_values_and_restarts_the_ewma() -> None:
    live = LiveState(HealthPolicy(window_s=60))
    live.fold(result(Status.UP, 0, total_ms=1000), at(0))
    live.fold(result(Status.UP, 30, total_ms=10), at(30))
    state = live.get("p")
    assert state is not None and state.latency_p50_ms == pytest.approx(505.0)
    live.fold(result(Status.UP, 70, total_ms=20), at(70))  # the 1000 ms sample left the window
    state = live.get("p")
    assert state is not None and (state.latency_p50_ms, state.latency_p95_ms) == (15.0, pytest.approx(19.5))
    live.fold(result(Status.DOWN, 200), at(200))  # every latency sample gone: no EWMA to carry on
    live.fold(result(Status.UP, 210, total_ms=40), at(210))
    state = live.get("p")
    assert state is not None and state.latency_ewma_ms == 40.0


def test_last_error_success_failure() -> None:
    live = LiveState()
    live.fold(result(Status.UP, 0), at(0))
    live.fold(result(Status.DOWN, 10, error="connection refused"), at(10))
    live.fold(result(Status.UP, 20), at(20))
    state = live.get("p")
    assert state is not None
    assert (state.last_error_class, state.last_error, state.last_error_at) == (
        ErrorClass.REFUSED, "connection refused", at(10))
    assert (state.last_success_at, state.last_failure_at, state.last_probe_at) == (at(20), at(10), at(20))
    assert state.last_result_status is Status.UP


def test_degraded_records_its_error_but_is_no_failure() -> None:
    live, _ = fold_letters("UG")
    state = live.get("p")
    assert state is not None
    assert (state.last_error_class, state.last_failure_at, state.last_success_at) == (
        ErrorClass.EMPTY_MODELS, None, at(10))


def test_models_first_and_last_seen() -> None:
    a, b, c = ModelInfo("a"), ModelInfo("b", context_length=4096), ModelInfo("c")
    live = LiveState()
    live.fold(result(Status.UP, 0, models=(a, b)), at(0))
    live.fold(result(Status.UP, 10, models=(b, c, c)), at(10))  # a listed twice counts once
    state = live.get("p")
    assert state is not None
    assert [(m.id, m.first_seen, m.last_seen) for m in state.models] == [("b", at(0), at(10)), ("c", at(10), at(10))]
    assert state.models[0].info.context_length == 4096 and state.model_ids == ("b", "c")
    live.fold(result(Status.DOWN, 20), at(20))  # no answer: the last known models stay
    live.fold(result(Status.LOADING, 30), at(30))
    state = live.get("p")
    assert state is not None and state.model_ids == ("b", "c") and state.models[0].last_seen == at(10)
    live.fold(result(Status.DEGRADED, 40), at(40))  # the server answered with an empty list
    state = live.get("p")
    assert state is not None and state.models == ()


def test_server_version_is_kept_until_a_new_one_is_seen() -> None:
    live = LiveState()
    live.fold(result(Status.UP, 0, version="0.6.1"), at(0))
    live.fold(result(Status.DOWN, 10), at(10))
    assert (live.get("p") or live.track("p", "vllm")).server_version == "0.6.1"
    live.fold(result(Status.UP, 20, version="0.6.2"), at(20))
    assert (live.get("p") or live.track("p", "vllm")).server_version == "0.6.2"


# letters at 60 s steps, thresholds 1/1, flap window -> transitions counted at the last fold
@pytest.mark.parametrize(("letters", "flap_window_s", "expected"), [
    ("U", 3600, 0),  # the first status is no transition
    ("UD", 3600, 1),
    ("UDUDUD", 3600, 5),
    ("UDUDUD", 150, 3),  # only the last 150 s: changes at 180, 240 and 300 s
    ("UUUUU", 3600, 0),
])
def test_transitions_recent(letters: str, flap_window_s: float, expected: int) -> None:
    policy = HealthPolicy(failure_threshold=1, success_threshold=1, flap_window_s=flap_window_s)
    live, _ = fold_letters(letters, policy, step_s=60)
    state = live.get("p")
    assert state is not None and state.transitions_recent == expected


@dataclass(frozen=True)
class StoredProbe:
    """Shaped like the store's ProbeSample: every field it has, in its order."""

    ts: datetime
    provider: str
    status: Status | str
    error_class: ErrorClass | str | None
    error: str | None
    connect_ms: float | None
    ttfb_ms: float | None
    total_ms: float
    http_status: int | None
    model_count: int
    attempts: int


def stored(letter: str, ts_s: float, provider: str = "p", total_ms: float = 10.0, *, as_text: bool = False
           ) -> StoredProbe:
    status = LETTERS[letter]
    error_class = ERRORS.get(status)
    return StoredProbe(
        ts=at(ts_s), provider=provider, status=status.value if as_text else status,
        error_class=(error_class.value if as_text and error_class else error_class),
        error="boom" if error_class else None, connect_ms=None, ttfb_ms=None, total_ms=total_ms,
        http_status=None, model_count=0, attempts=1,
    )


@pytest.mark.parametrize("letters", ["U", "UDDD", "UDDDU", "DDDUU", "ULGD", "UUDDUDDD"])
def test_rebuild_matches_the_live_run(letters: str) -> None:
    live, _ = fold_letters(letters)
    live.expire(at(1000))
    rebuilt = LiveState()
    rebuilt.rebuild([stored(letter, i * 10.0) for i, letter in enumerate(letters)], at(1000), {"p": "vllm"})
    assert rebuilt.get("p") == live.get("p")


def test_restart_remembers_down() -> None:
    live = LiveState()
    records = [stored("U", 0), stored("D", 10, as_text=True), stored("D", 20), stored("D", 30),
               stored("U", 5, provider="removed"), stored("U", 0, provider="q")]
    live.rebuild(records, at(40), {"p": "vllm", "q": "ollama", "never": "tgi"})
    assert {name: state.status for name, state in live.all().items()} == {
        "p": Status.DOWN, "q": Status.UP, "never": Status.UNKNOWN}
    p = live.get("p")
    assert p is not None and p.since == at(30) and p.last_error_class is ErrorClass.REFUSED and p.type == "vllm"
    assert live.fold(result(Status.UP, 50), at(50)) == []  # one success is not yet a recovery
    changes = live.fold(result(Status.UP, 60), at(60))
    assert [(c.previous, c.current, c.since_previous_s) for c in changes] == [(Status.DOWN, Status.UP, 30.0)]


def test_rebuild_tolerates_unknown_error_class_text() -> None:
    live = LiveState()
    record = StoredProbe(at(0), "p", "down", "from_the_future", "x", None, None, 5.0, None, 0, 1)
    live.rebuild([record], at(1), {"p": "vllm"})
    state = live.get("p")
    assert state is not None and state.last_error_class is ErrorClass.INTERNAL


def test_models_view() -> None:
    llama, qwen = ModelInfo("llama3:8b"), ModelInfo("qwen2.5:7b", context_length=32768)
    live = LiveState()
    live.fold(result(Status.UP, 0, provider="b", models=(llama, qwen)), at(0))
    live.fold(result(Status.UP, 0, provider="a", models=(llama,)), at(0))
    live.fold(result(Status.DOWN, 0, provider="c"), at(0))
    view = live.models_view()
    assert {model: [(s.provider, s.status) for s in servers] for model, servers in view.items()} == {
        "llama3:8b": [("a", Status.UP), ("b", Status.UP)], "qwen2.5:7b": [("b", Status.UP)]}
    assert view["qwen2.5:7b"][0].info.context_length == 32768
    assert live.models_view() is view  # cached until something changes
    for i in (10, 20, 30):
        live.fold(result(Status.DOWN, i, provider="b"), at(i))
    assert [(s.provider, s.status) for s in live.models_view()["llama3:8b"]] == [("a", Status.UP),
                                                                                  ("b", Status.DOWN)]
    live.remove("a")
    assert [s.provider for s in live.models_view()["llama3:8b"]] == ["b"]


def test_live_state_track_remove_and_versions() -> None:
    live = LiveState()
    state = live.track("p", "vllm")
    assert state.status is Status.UNKNOWN and state.availability is None and live.version == 1
    assert live.track("p", "vllm") is state and live.version == 1
    live.fold(result(Status.UP), at(0))
    assert live.version == 2 and set(live.all()) == {"p"}
    with pytest.raises(TypeError):
        live.all()["x"] = state  # type: ignore[index]
    assert live.track("p", "ollama").status is Status.UNKNOWN  # another server type starts over
    assert live.remove("p") and not live.remove("p") and live.get("p") is None and dict(live.all()) == {}


def test_fold_tracks_an_unknown_provider() -> None:
    live = LiveState()
    assert [c.current for c in live.fold(result(Status.DOWN, provider="new"), at(0))] == [Status.DOWN]
    assert (live.get("new") or live.track("new", "x")).type == "vllm"


def test_update_is_the_functional_face_of_fold() -> None:
    tracker = ProviderTracker("p", "vllm", HealthPolicy())
    state, changes = update(tracker, result(Status.UP), at(0))
    assert state is tracker.state and state.status is Status.UP and len(changes) == 1
    state, changes = update(tracker, result(Status.UP, 10), at(10))
    assert changes == [] and state.successes_in_a_row == 2


def test_state_to_dict_is_json_ready() -> None:
    live, _ = fold_letters("UD")
    body = (live.get("p") or live.track("p", "vllm")).to_dict()
    assert body["status"] == "up" and body["last_result_status"] == "down"
    assert body["last_error_class"] == "refused" and body["since"] == "2025-01-01T00:00:00+00:00"


@pytest.mark.parametrize("kwargs", [
    {"failure_threshold": 0}, {"success_threshold": 0}, {"window_s": 0}, {"flap_window_s": -1},
    {"ewma_alpha": 0}, {"ewma_alpha": 1.5},
])
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]


def test_request_latency_is_per_http_request_so_types_compare_on_equal_work() -> None:
    """A type that asks three routes a probe is not three times slower than one that asks one."""
    one_route = (HttpCall("GET", "/health", 200, 12.0),)
    three_routes = (HttpCall("GET", "/health", 200, 10.0), HttpCall("GET", "/v1/models", 200, 14.0),
                    HttpCall("GET", "/props", 200, 12.0))
    live = LiveState(HealthPolicy(window_s=60))
    for provider, calls in (("llamacpp", three_routes), ("ollama", one_route)):
        total = sum(call.elapsed_ms for call in calls)
        live.fold(ProbeResult(provider=provider, provider_type=provider, started_at=at(0), status=Status.UP,
                              total_ms=total, calls=calls), at(0))
    llamacpp, ollama = live.get("llamacpp"), live.get("ollama")
    assert llamacpp is not None and ollama is not None
    assert (llamacpp.latency_ewma_ms, ollama.latency_ewma_ms) == (36.0, 12.0)
    assert (llamacpp.request_latency_ms, ollama.request_latency_ms) == (12.0, 12.0)
    assert llamacpp.request_samples == ollama.request_samples == 1
    # A refused call has no time worth comparing; a failed probe none at all; the window forgets the rest.
    live.fold(ProbeResult(provider="ollama", provider_type="ollama", started_at=at(10), status=Status.UP,
                          total_ms=30.0, calls=(HttpCall("GET", "/", None, 1.0), HttpCall("GET", "/", 200, 22.0))),
              at(10))
    live.fold(ProbeResult(provider="ollama", provider_type="ollama", started_at=at(20), status=Status.DOWN,
                          total_ms=5.0, error_class=ErrorClass.REFUSED, calls=(HttpCall("GET", "/", None, 5.0),)),
              at(20))
    ollama = live.get("ollama")
    assert ollama is not None and ollama.request_samples == 2
    assert ollama.request_latency_ms == pytest.approx(0.3 * 22.0 + 0.7 * 12.0)
    live.expire(at(100))
    ollama = live.get("ollama")
    assert ollama is not None and (ollama.request_latency_ms, ollama.request_samples) == (None, 0)


# -- capacity, identity and misconfigured ---------------------------------------------------------------------------

def test_misconfigured_is_reported_at_once_and_never_counts_as_up() -> None:
    tracker = ProviderTracker("p", "vllm", HealthPolicy(failure_threshold=3))
    tracker.fold(result(Status.UP, 0), at(0))
    wrong = replace(result(Status.MISCONFIGURED, 10), error_class=ErrorClass.WRONG_SERVER,
                    identity=Identity("llamacpp", None, "Server: llama.cpp header"))
    change = tracker.fold(wrong, at(10))
    assert change is not None and (change.previous, change.current) == (Status.UP, Status.MISCONFIGURED)
    state = tracker.state
    assert (state.samples_ok, state.failures_in_a_row, state.identity) == (1, 1, wrong.identity)
    back = tracker.fold(result(Status.UP, 20), at(20))
    assert back is not None and back.current is Status.UP
    assert tracker.state.identity == wrong.identity  # the last identity the server told is kept


def test_capacity_is_the_last_probes_and_unknown_after_a_failure() -> None:
    tracker = ProviderTracker("p", "llamacpp", HealthPolicy())
    full = Capacity(slots_total=2, slots_busy=2)
    tracker.fold(replace(result(Status.UP, 0), capacity=full), at(0))
    assert tracker.state.capacity == full and tracker.state.saturated is True
    assert tracker.state.to_dict()["capacity"]["saturated"] is True and tracker.state.to_dict()["saturated"] is True
    tracker.fold(replace(result(Status.UP, 10), capacity=Capacity(slots_total=2, slots_busy=0)), at(10))
    assert tracker.state.saturated is False
    tracker.fold(result(Status.DOWN, 20), at(20))
    assert (tracker.state.capacity, tracker.state.saturated, tracker.state.to_dict()["capacity"]) == (None, None, None)
# --- suspect and reported outcomes ---


def report(ok: bool, t_s: float, *, ttft_ms: float | None = 200.0, provider: str = "p",
           duration_ms: float | None = None) -> OutcomeReport:
    return OutcomeReport(provider=provider, received_at=at(t_s), ok=ok, ttft_ms=ttft_ms if ok else None,
                         duration_ms=duration_ms, error_class=None if ok else ErrorClass.TIMEOUT)


def test_suspect_follows_the_latest_evidence_while_the_status_waits() -> None:
    live, changes = fold_letters("UUD")
    state = live.get("p")
    assert state is not None and state.status is Status.UP and state.suspect and not changes[1:]
    live.fold(result(Status.UP, 30), at(30))
    assert not live.get("p").suspect  # type: ignore[union-attr]
    version = live.version
    live.fold_report(report(False, 31), at(31))
    state = live.get("p")
    assert state is not None and state.suspect and state.status is Status.UP and live.version > version
    assert state.last_report_ok is False and state.last_report_error_class is ErrorClass.TIMEOUT
    live.fold_report(report(True, 32), at(32))
    assert not live.get("p").suspect  # type: ignore[union-attr]
    live.fold_report(report(False, 33), at(33))
    live.fold(result(Status.UP, 40), at(40))  # a probe that answers clears a failed report too
    assert not live.get("p").suspect  # type: ignore[union-attr]


def test_reports_have_their_own_window_and_rate_budget() -> None:
    live = LiveState(HealthPolicy(report_window_s=60.0, report_rate_per_s=3))
    live.track("p", "vllm")
    for i in range(5):
        assert live.fold_report(report(True, 0.1 * i, ttft_ms=100.0 * (i + 1)), at(0.1 * i)) == []  # no status
    state = live.get("p")
    assert state is not None and (state.reports, state.reports_ok, state.report_ttft_p50_ms) == (3, 3, 200.0)
    assert state.reports_dropped == 2  # three per provider and second count
    assert state.samples == 0  # probes' window untouched
    live.fold_report(report(False, 0.9), at(0.9))  # over budget, yet a failure still says suspect
    state = live.get("p")
    assert state is not None and state.suspect and state.reports_dropped == 3
    live.fold_report(report(True, 2, ttft_ms=None, duration_ms=900.0), at(2))  # no TTFT: the duration stands in
    live.fold_report(report(False, 3), at(3))
    state = live.get("p")
    assert state is not None and (state.reports, state.reports_ok) == (5, 4)
    live.expire(at(61.5))  # the first second's reports left the window
    state = live.get("p")
    assert state is not None and (state.reports, state.reports_ok, state.report_ttft_p50_ms) == (2, 1, 900.0)
    assert live.fold_report(report(True, 4, provider="nobody"), at(4)) == [] and live.get("nobody") is None


def test_an_unreadable_model_list_keeps_the_last_known_models() -> None:
    tracker = ProviderTracker("p", "llamacpp", HealthPolicy())
    tracker.fold(result(Status.UP, 0, models=(ModelInfo("m1"),)), at(0))
    unknown = replace(result(Status.UP, 10), models_known=False, error="models unknown: /v1/models: HTTP 500")
    assert tracker.fold(unknown, at(10)) is None
    assert tracker.state.status is Status.UP and tracker.state.model_ids == ("m1",)
    assert tracker.state.models[0].last_seen == at(0)  # not seen again, only not contradicted
