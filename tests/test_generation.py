"""Generation statistics (pure): windowed TTFT and tokens/s percentiles per (provider, model), skips apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitord.generation import GenerationPolicy, GenerationState, tokens_spent
from monitord.model import ErrorClass, GenerationSample, SampleKind

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def sample(at: datetime, *, provider: str = "vllm", model: str = "m", ok: bool = True,
           **fields: Any) -> GenerationSample:
    if ok and not fields.get("skipped"):
        fields.setdefault("ttft_ms", 100.0)
        fields.setdefault("tokens_per_s", 50.0)
        fields.setdefault("total_ms", 260.0)
        fields.setdefault("prompt_tokens", 12)
        fields.setdefault("completion_tokens", 8)
    return GenerationSample(provider=provider, provider_type="vllm", model=model, started_at=at, ok=ok, **fields)


def test_percentiles_over_ok_samples_only() -> None:
    state = GenerationState()
    for i, ttft in enumerate([100.0, 200.0, 300.0, 400.0, 500.0]):
        state.fold(sample(T0 + timedelta(minutes=i), ttft_ms=ttft, tokens_per_s=10.0 * (i + 1)), T0)
    state.fold(sample(T0 + timedelta(minutes=5), ok=False, error_class=ErrorClass.GENERATION_TIMEOUT,
                      error="no first token within 10s", ttft_ms=None, total_ms=10_000.0), T0)
    stats = state.get("vllm", "m")
    assert stats is not None
    assert (stats.samples, stats.samples_ok, stats.skipped) == (6, 5, 0)
    assert stats.ttft_p50_ms == 300.0
    assert stats.ttft_p95_ms == pytest.approx(480.0)
    assert stats.tokens_per_s_p50 == 30.0
    assert stats.total_p50_ms == 260.0  # the failed sample's 10 s is its deadline, not a timing
    assert stats.last_error_class is ErrorClass.GENERATION_TIMEOUT
    assert stats.last_error == "no first token within 10s"
    assert stats.last_error_at == T0 + timedelta(minutes=5)
    assert stats.last_ok_at == T0 + timedelta(minutes=4)
    assert stats.tokens_spent == 5 * 20


@pytest.mark.parametrize("skip", [ErrorClass.BUSY, ErrorClass.NOT_LOADED, ErrorClass.BUDGET_EXHAUSTED])
def test_a_skipped_sample_is_counted_apart_and_is_no_failure(skip: ErrorClass) -> None:
    state = GenerationState()
    state.fold(sample(T0), T0)
    stats = state.fold(sample(T0 + timedelta(minutes=1), ok=False, skipped=True, error_class=skip,
                              error=f"skipped: {skip.value}"), T0 + timedelta(minutes=1))
    assert (stats.samples, stats.samples_ok, stats.skipped) == (1, 1, 1)
    assert stats.last_error_class is None and stats.last_error is None
    assert stats.last_skip_class is skip
    assert stats.last_skip_at == stats.last_sample_at == T0 + timedelta(minutes=1)
    assert stats.ttft_p50_ms == 100.0


def test_the_window_forgets_old_samples_and_expire_publishes_it() -> None:
    state = GenerationState(GenerationPolicy(window_s=600))
    state.fold(sample(T0, ttft_ms=900.0), T0)
    state.fold(sample(T0 + timedelta(minutes=8), ttft_ms=100.0), T0 + timedelta(minutes=8))
    before = state.for_provider("vllm")
    version = state.version
    state.expire(T0 + timedelta(minutes=11))
    stats = state.get("vllm", "m")
    assert stats is not None and stats.samples == 1 and stats.ttft_p50_ms == 100.0
    assert state.for_provider("vllm") is not before and state.version > version
    state.expire(T0 + timedelta(minutes=30))
    emptied = state.get("vllm", "m")
    assert emptied is not None
    assert (emptied.samples, emptied.ttft_p50_ms, emptied.tokens_spent) == (0, None, 0)
    assert emptied.last_sample_at == T0 + timedelta(minutes=8)  # the age keeps growing: nothing newer came
    assert emptied.age_s(T0 + timedelta(minutes=30)) == 22 * 60
    unchanged = state.for_provider("vllm")
    state.expire(T0 + timedelta(minutes=31))
    assert state.for_provider("vllm") is unchanged  # nothing left the window: same object, ranking cache holds


def test_max_samples_bounds_each_model() -> None:
    state = GenerationState(GenerationPolicy(max_samples=3))
    for i in range(5):
        state.fold(sample(T0 + timedelta(seconds=i), ttft_ms=float(i)), T0 + timedelta(seconds=i))
    stats = state.get("vllm", "m")
    assert stats is not None and stats.samples == 3 and stats.ttft_p50_ms == 3.0


def test_models_and_providers_are_kept_apart_and_views_are_immutable_snapshots() -> None:
    state = GenerationState()
    state.fold(sample(T0, model="a", ttft_ms=10.0), T0)
    view = state.for_provider("vllm")
    state.fold(sample(T0, model="b", ttft_ms=20.0), T0)
    state.fold(sample(T0, provider="ollama", model="a", ttft_ms=30.0), T0)
    assert list(view) == ["a"]  # the old snapshot did not change under its reader
    assert list(state.for_provider("vllm")) == ["a", "b"]
    assert {p: {m: s.ttft_p50_ms for m, s in models.items()} for p, models in state.all().items()} == {
        "vllm": {"a": 10.0, "b": 20.0}, "ollama": {"a": 30.0}}
    with pytest.raises(TypeError):
        state.for_provider("vllm")["c"] = view["a"]  # type: ignore[index]
    assert state.remove("ollama") and not state.remove("ollama")
    state.retain(["nobody"])
    assert state.all() == {}
    assert state.for_provider("vllm") == {}


def test_an_embedding_sample_has_a_total_time_and_no_ttft() -> None:
    state = GenerationState()
    stats = state.fold(sample(T0, model="nomic-embed", kind=SampleKind.EMBEDDING, ttft_ms=None, tokens_per_s=None,
                              total_ms=42.0, completion_tokens=None), T0)
    assert stats.kind is SampleKind.EMBEDDING
    assert (stats.ttft_p50_ms, stats.tokens_per_s_p50, stats.total_p50_ms) == (None, None, 42.0)
    assert stats.tokens_spent == 12


def test_a_late_sample_does_not_move_the_last_times_back() -> None:
    state = GenerationState()
    state.fold(sample(T0 + timedelta(minutes=2)), T0 + timedelta(minutes=2))
    stats = state.fold(sample(T0, ok=False, error_class=ErrorClass.STREAM_BROKEN), T0 + timedelta(minutes=2))
    assert stats.last_sample_at == T0 + timedelta(minutes=2)
    assert stats.last_error_class is ErrorClass.STREAM_BROKEN  # the first failure seen is still the last one
    later = state.fold(sample(T0 - timedelta(minutes=1), ok=False, error_class=ErrorClass.EMPTY_GENERATION),
                       T0 + timedelta(minutes=2))
    assert later.last_error_class is ErrorClass.STREAM_BROKEN


def test_rebuild_replays_stored_samples_as_they_happened() -> None:
    records = [sample(T0 + timedelta(minutes=i), ttft_ms=100.0 + i) for i in range(4)]
    records.append(sample(T0, provider="gone", ttft_ms=1.0))
    live = GenerationState()
    for record in records[:4]:
        live.fold(record, record.started_at)
    rebuilt = GenerationState()
    rebuilt.rebuild(records, T0 + timedelta(minutes=3), ["vllm"])
    assert rebuilt.get("vllm", "m") == live.get("vllm", "m")
    assert rebuilt.get("gone", "m") is None


def test_to_dict_reports_the_age_at_now() -> None:
    state = GenerationState()
    stats = state.fold(sample(T0), T0)
    body = stats.to_dict(T0 + timedelta(seconds=90))
    assert body["last_sample_age_s"] == 90.0
    assert body["ttft_p50_ms"] == 100.0 and body["kind"] == "generation" and body["model"] == "m"
    assert body["last_error_class"] is None
    assert tokens_spent(sample(T0, prompt_tokens=None, completion_tokens=3)) == 3


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="window_s"):
        GenerationPolicy(window_s=0)
