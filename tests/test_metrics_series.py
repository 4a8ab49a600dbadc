"""The canary and report series the metrics keep per label set: counted once each, forgotten with the provider."""

from __future__ import annotations

from datetime import UTC, datetime

from monitord.api.metrics import Metrics
from monitord.model import ErrorClass, GenerationSample, OutcomeReport

AT = datetime(2026, 3, 1, tzinfo=UTC)


def sample(provider: str, ok: bool = True) -> GenerationSample:
    return GenerationSample(provider=provider, provider_type="vllm", model="m", started_at=AT, ok=ok,
                            error_class=None if ok else ErrorClass.STREAM_STALLED, ttft_ms=120.0 if ok else None,
                            tokens_per_s=50.0 if ok else None, prompt_tokens=10, completion_tokens=8)


def report(provider: str) -> OutcomeReport:
    return OutcomeReport(provider=provider, received_at=AT, ok=True, ttft_ms=90.0)


def test_samples_and_reports_count_per_label_set_and_go_with_their_provider() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_sample(sample("a"))
        metrics.observe_report(report("a"))
    metrics.observe_sample(sample("a", ok=False))
    metrics.observe_sample(sample("b"))
    text = metrics.render().decode()
    a = 'model="m",provider="a",type="vllm"'
    assert ('monitord_canary_samples_total{error_class="none",model="m",outcome="ok",provider="a",type="vllm"} 3.0'
            in text)
    assert ('monitord_canary_samples_total{error_class="stream_stalled",model="m",outcome="failed",provider="a",'
            'type="vllm"} 1.0' in text)
    assert f"monitord_canary_tokens_total{{{a}}} 72.0" in text  # 4 samples of 18 tokens
    assert f"monitord_generation_ttft_seconds_count{{{a}}} 3.0" in text  # the failed one has no timing
    assert 'monitord_reports_total{outcome="ok",provider="a"} 3.0' in text

    metrics.forget("a")
    text = metrics.render().decode()
    assert 'provider="a"' not in text and 'provider="b"' in text

    metrics.observe_sample(sample("a"))  # a provider added back starts over, not from its old series
    metrics.observe_report(report("a"))
    text = metrics.render().decode()
    assert f"monitord_canary_tokens_total{{{a}}} 18.0" in text
    assert f"monitord_generation_ttft_seconds_count{{{a}}} 1.0" in text
    assert 'monitord_reports_total{outcome="ok",provider="a"} 1.0' in text
