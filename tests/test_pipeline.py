"""The result pipeline: one entry for every observation kind, sinks in order, a peer's result folded but not
stored, a failing sink logged while the others still run, and a new kind plugged in without the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from monitord.health import LiveState
from monitord.model import ProbeResult, Status, StatusChange
from monitord.pipeline import Recorded, ResultPipeline

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def result(provider: str, status: Status = Status.UP, *, at: datetime = NOW) -> ProbeResult:
    return ProbeResult(provider=provider, provider_type="vllm", started_at=at, status=status, total_ms=5.0)


@dataclass(frozen=True, slots=True)
class Sample:
    """Stands for a kind another part adds (a canary's GenerationSample): the pipeline knows nothing of it."""

    provider: str
    tokens_per_s: float


def test_a_probe_result_is_folded_then_handed_to_every_sink_in_order() -> None:
    live = LiveState()
    live.track("a", "vllm")
    pipeline = ResultPipeline(clock=lambda: NOW)
    pipeline.register(ProbeResult, fold=live.fold)
    seen: list[tuple[str, Recorded[ProbeResult]]] = []
    for name in ("store", "ranking", "alerts"):
        pipeline.subscribe(ProbeResult, lambda r, name=name: seen.append((name, r)), name=name)

    changes = pipeline.record(result("a"))

    assert [name for name, _ in seen] == ["store", "ranking", "alerts"] == list(pipeline.sinks(ProbeResult))
    recorded = seen[0][1]
    assert recorded.observation.provider == "a" and recorded.at == NOW and recorded.local
    assert changes == recorded.changes
    assert [(c.provider, c.previous, c.current) for c in changes] == [("a", Status.UNKNOWN, Status.UP)]
    assert live.get("a").status is Status.UP  # type: ignore[union-attr]


def test_a_peer_result_skips_local_only_sinks() -> None:
    pipeline = ResultPipeline(clock=lambda: NOW)
    pipeline.register(ProbeResult)
    stored: list[str] = []
    alerted: list[bool] = []
    pipeline.subscribe(ProbeResult, lambda r: stored.append(r.observation.provider), name="store", local_only=True)
    pipeline.subscribe(ProbeResult, lambda r: alerted.append(r.local), name="alerts")

    pipeline.record(result("mine"))
    pipeline.record(result("theirs"), local=False)

    assert stored == ["mine"]
    assert alerted == [True, False]


def test_a_failing_sink_is_logged_and_the_others_still_run() -> None:
    pipeline = ResultPipeline(clock=lambda: NOW)
    pipeline.register(ProbeResult)
    after: list[str] = []

    def broken(_: Recorded[ProbeResult]) -> None:
        raise RuntimeError("bug")

    pipeline.subscribe(ProbeResult, broken, name="broken")
    pipeline.subscribe(ProbeResult, lambda r: after.append(r.observation.provider), name="after")
    with capture_logs() as logs:
        pipeline.record(result("a"))

    assert after == ["a"]
    failed = [e for e in logs if e["event"] == "pipeline.sink_failed"]
    assert [(e["sink"], e["kind"]) for e in failed] == [("broken", "ProbeResult")]


def test_a_new_kind_plugs_in_with_its_own_fold_and_sinks() -> None:
    clock = [NOW]
    pipeline = ResultPipeline(clock=lambda: clock[0])
    pipeline.register(ProbeResult)
    folded: list[float] = []
    samples: list[Sample] = []

    def fold(sample: Sample, now: datetime) -> list[StatusChange]:
        folded.append(sample.tokens_per_s)
        slow = StatusChange(sample.provider, "vllm", Status.UP, Status.DEGRADED, now, None)
        return [slow] if sample.tokens_per_s < 1 else []

    pipeline.register(Sample, fold=fold)
    pipeline.subscribe(Sample, lambda r: samples.append(r.observation), name="store")
    probes: list[str] = []
    pipeline.subscribe(ProbeResult, lambda r: probes.append(r.observation.provider), name="store")

    assert pipeline.record(Sample("a", 40.0)) == ()
    clock[0] = NOW + timedelta(seconds=1)
    assert [c.current for c in pipeline.record(Sample("a", 0.5))] == [Status.DEGRADED]
    assert folded == [40.0, 0.5] and [s.tokens_per_s for s in samples] == [40.0, 0.5]
    assert probes == []  # kinds do not leak into each other's sinks
    assert set(pipeline.kinds()) == {ProbeResult, Sample}


def test_an_unregistered_kind_is_a_programming_error() -> None:
    pipeline = ResultPipeline(clock=lambda: NOW)
    with pytest.raises(TypeError, match="no pipeline kind registered for Sample"):
        pipeline.record(Sample("a", 1.0))
    pipeline.register(Sample)
    with pytest.raises(ValueError, match="already registered"):
        pipeline.register(Sample)
