"""Prometheus exposition for GET /metrics, on a registry of the app's own (never the process-global one).

Probe counts and latencies are recorded as results arrive (`Metrics.observe`); live state, ranking and store
figures are read at scrape time, so a removed provider's gauges vanish with it.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitord.health import LiveState
from monitord.model import (
    Capacity,
    GenerationSample,
    OutcomeReport,
    ProbeResult,
    ProviderSpec,
    Ranking,
    Status,
    WebhookFigures,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
PROBE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_S_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
NO_ERROR = "none"


class ProbeDurations(Collector):
    """monitord_probe_duration_seconds, the histogram prometheus_client's Histogram exposes, kept compactly: one
    array of bucket counts and the sum per (provider, type), instead of a locked value object per bucket (2 KB a
    provider, 20 MB at 10,000) updated under a lock on every probe."""

    NAME = "monitord_probe_duration_seconds"
    HELP = "Time a probe took, retries included."

    def __init__(self, buckets_s: Sequence[float]) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets_s if b != float("inf")))
        self._les = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, str], array[float]] = {}  # counts per bucket (not cumulative), +Inf, sum
        self._created: dict[tuple[str, str], float] = {}

    def observe(self, provider: str, kind: str, seconds: float) -> None:
        key = (provider, kind)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = array("d", bytes(8 * (len(self._bounds) + 2)))
            self._created[key] = time.time()
        series[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound is >= it (le)
        series[-1] += seconds

    def remove(self, provider: str, kind: str) -> None:
        self._series.pop((provider, kind), None)
        self._created.pop((provider, kind), None)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.NAME, self.HELP, "histogram")
        for (provider, kind), series in list(self._series.items()):
            counts = series.tolist()
            cumulative = 0.0
            for le, count in zip(self._les, counts, strict=False):
                cumulative += count
                metric.add_sample(f"{self.NAME}_bucket", {"provider": provider, "type": kind, "le": le}, cumulative)
            labels = {"provider": provider, "type": kind}
            metric.add_sample(f"{self.NAME}_count", labels, cumulative)
            metric.add_sample(f"{self.NAME}_sum", labels, counts[-1])
            metric.add_sample(f"{self.NAME}_created", labels, self._created.get((provider, kind), 0.0))
        yield metric


class Metrics:
    """The app's registry: per-probe counters and histograms, process metrics, and scrape-time collectors."""

    def __init__(self, *, buckets_s: tuple[float, ...] = PROBE_BUCKETS_S) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.probe_duration = ProbeDurations(buckets_s)
        self.registry.register(self.probe_duration)
        self.probes = Counter(
            "monitord_probes", "Probes by result status and error class.",
            ["provider", "type", "status", "error_class"], registry=self.registry)
        self._labels: dict[str, set[tuple[str, ...]]] = {}  # provider -> probe counter label sets, to forget
        self._counts: dict[tuple[str, ...], Any] = {}  # probe counter label set -> its series
        labels = ["provider", "type", "model"]
        self.ttft = Histogram(
            "monitord_generation_ttft_seconds", "Generation canary: time to the first token (successful samples).",
            labels, registry=self.registry, buckets=TTFT_BUCKETS_S)
        self.tokens_per_s = Histogram(
            "monitord_generation_tokens_per_second", "Generation canary: decode rate after the first token.",
            labels, registry=self.registry, buckets=TOKENS_PER_S_BUCKETS)
        self.canary_tokens = Counter(
            "monitord_canary_tokens", "Tokens the generation canary spent (prompt + completion), by model.",
            labels, registry=self.registry)
        self.canary_samples = Counter(
            "monitord_canary_samples", "Generation canary samples by outcome (ok, failed, skipped) and error class.",
            [*labels, "outcome", "error_class"], registry=self.registry)
        self._sample_labels: dict[str, set[tuple[str, ...]]] = {}  # provider -> canary label sets, to forget
        self._sample_series: dict[tuple[Any, ...], Any] = {}  # (family, *canary label set) -> its series
        self.reports = Counter(
            "monitord_reports", "Outcomes of real requests reported with POST /v1/report, by outcome (ok or the "
            "error class); those over the per-provider rate budget are in the provider's reports_dropped.",
            ["provider", "outcome"], registry=self.registry)
        self._report_labels: dict[str, set[tuple[str, str]]] = {}
        self._report_counts: dict[tuple[str, str], Any] = {}  # report label set -> its series
        self.reload_success = Gauge(
            "monitord_config_last_reload_success", "1 when the last config reload (SIGHUP) applied, 0 when refused.",
            registry=self.registry)
        self.reload_success.set(1)
        self.reload_time = Gauge(
            "monitord_config_last_reload_success_timestamp_seconds", "When the config last loaded or reloaded.",
            registry=self.registry)
        self.reload_time.set_to_current_time()

    def reloaded(self, ok: bool) -> None:
        """Record a reload attempt: alert on monitord_config_last_reload_success == 0."""
        self.reload_success.set(1 if ok else 0)
        if ok:
            self.reload_time.set_to_current_time()

    def observe(self, result: ProbeResult) -> None:
        provider, kind = result.provider, result.provider_type
        self.probe_duration.observe(provider, kind, result.total_ms / 1000.0)
        # The counter series are kept per label set: prometheus_client's labels() costs more than the update
        labels = (provider, kind, result.status.value,
                  result.error_class.value if result.error_class else NO_ERROR)
        count = self._counts.get(labels)
        if count is None:
            count = self._counts[labels] = self.probes.labels(*labels)
            self._labels.setdefault(provider, set()).add(labels)
        count.inc()

    def observe_sample(self, sample: GenerationSample) -> None:
        """Count one generation canary sample; timings only for a successful one (series kept per label set, as
        the probe counters: prometheus_client's labels() costs more than the update)."""
        labels = (sample.provider, sample.provider_type, sample.model)
        outcome = "skipped" if sample.skipped else "ok" if sample.ok else "failed"
        error_class = sample.error_class.value if sample.error_class else NO_ERROR
        self._sample_series_of(self.canary_samples, (*labels, outcome, error_class)).inc()
        spent = (sample.prompt_tokens or 0) + (sample.completion_tokens or 0)
        counter = self._sample_series_of(self.canary_tokens, labels)
        if spent:
            counter.inc(spent)
        if sample.ok and not sample.skipped:
            if sample.ttft_ms is not None:
                self._sample_series_of(self.ttft, labels).observe(sample.ttft_ms / 1000.0)
            if sample.tokens_per_s is not None:
                self._sample_series_of(self.tokens_per_s, labels).observe(sample.tokens_per_s)

    def _sample_series_of(self, family: Any, labels: tuple[str, ...]) -> Any:
        key = (family, *labels)
        series = self._sample_series.get(key)
        if series is None:
            series = self._sample_series[key] = family.labels(*labels)
            if family is self.canary_samples:
                self._sample_labels.setdefault(labels[0], set()).add(labels)
        return series

    def observe_report(self, report: OutcomeReport) -> None:
        outcome = report.error_class.value if report.error_class is not None else "ok"
        labels = (report.provider, outcome)
        count = self._report_counts.get(labels)
        if count is None:
            count = self._report_counts[labels] = self.reports.labels(*labels)
            self._report_labels.setdefault(report.provider, set()).add(labels)
        count.inc()

    def forget(self, provider: str) -> None:
        """Drop a removed provider's probe, canary and report series."""
        for report_labels in self._report_labels.pop(provider, set()):
            self.reports.remove(*report_labels)
            self._report_counts.pop(report_labels, None)
        self._sample_series = {key: series for key, series in self._sample_series.items() if key[1] != provider}
        seen = self._labels.pop(provider, set())
        for labels in seen:
            self.probes.remove(*labels)
            self._counts.pop(labels, None)
        for provider_and_type in {labels[:2] for labels in seen}:
            self.probe_duration.remove(*provider_and_type)
        canary = self._sample_labels.pop(provider, set())
        for labels in canary:
            self.canary_samples.remove(*labels)
        for model_labels in {labels[:3] for labels in canary}:
            for family in (self.canary_tokens, self.ttft, self.tokens_per_s):
                with contextlib.suppress(KeyError):  # a model that never timed a sample has no histogram
                    family.remove(*model_labels)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreFigures(Protocol):
    @property
    def pending(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    @property
    def written_total(self) -> int: ...
    @property
    def healthy(self) -> bool: ...


class StateCollector:
    """Scrape-time view of live state, the default ranking, readiness, the store writer and event streams."""

    def __init__(self, live: LiveState, specs: Callable[[], Mapping[str, ProviderSpec]],
                 ranking: Callable[[], Ranking], store: StoreFigures, ready: Callable[[], bool],
                 subscribers: Callable[[], int], probe_ages: Callable[[], Mapping[str, float]] = dict,
                 stale_probes: Callable[[], Sequence[str]] = tuple) -> None:
        self.live = live
        self.specs = specs
        self.ranking = ranking
        self.store = store
        self.ready = ready
        self.subscribers = subscribers
        self.probe_ages = probe_ages
        self.stale_probes = stale_probes

    def collect(self) -> Iterator[Any]:
        yield from self._providers()
        yield from self._ranking()
        yield _gauge("monitord_ready", "1 once the first probe round is done.", float(self.ready()))
        yield _gauge("monitord_store_pending_rows", "Probe rows buffered and not yet written.",
                     float(self.store.pending))
        yield _counter("monitord_store_dropped", "Probe rows given up on (outage overflow, rejected, lost).",
                       float(self.store.dropped_total))
        yield _counter("monitord_store_written", "Probe rows written to the database.",
                       float(self.store.written_total))
        yield _gauge("monitord_store_healthy", "1 while the database answered the store's last write or ping; "
                     "0 while rows are buffered in memory instead.", float(self.store.healthy))
        yield _gauge("monitord_probes_stale", "Providers whose last probe is older than two intervals plus a "
                     "timeout: probing has stalled for them (/readyz is 503 meanwhile).",
                     float(len(self.stale_probes())))
        yield _gauge("monitord_event_subscribers", "Open GET /v1/events streams.", float(self.subscribers()))
        yield _gauge("monitord_models_served", "Distinct model ids listed by providers now.",
                     float(len(self.live.models_view())))

    def _providers(self) -> Iterator[Any]:
        labels = ["provider", "type"]
        up = GaugeMetricFamily("monitord_provider_up", "1 when the provider's live status is up.", labels=labels)
        status = GaugeMetricFamily("monitord_provider_status", "1 for the provider's live status, else 0.",
                                   labels=[*labels, "status"])
        availability = GaugeMetricFamily("monitord_provider_availability_ratio",
                                         "Share of successful probes in the window.", labels=labels)
        latency = GaugeMetricFamily("monitord_provider_latency_seconds",
                                    "Probe latency over the window (p50, p95, ewma).", labels=[*labels, "stat"])
        failures = GaugeMetricFamily("monitord_provider_failures_in_a_row", "Consecutive failed probes.",
                                     labels=labels)
        models = GaugeMetricFamily("monitord_provider_models", "Models the provider lists now.", labels=labels)
        age = GaugeMetricFamily("monitord_provider_probe_age_seconds",
                                "Seconds since the provider's last probe ended (monotonic clock).", labels=labels)
        ages = self.probe_ages()
        capacity = _CapacityGauges(labels)
        specs = self.specs()
        states = self.live.all()
        for name in sorted(specs):
            state = states.get(name)
            if state is None:
                continue
            key = [name, specs[name].type]
            current = state.status if specs[name].enabled else Status.DISABLED
            up.add_metric(key, float(current is Status.UP))
            for value in Status:
                status.add_metric([*key, value.value], float(current is value))
            if state.availability is not None:
                availability.add_metric(key, state.availability)
            for stat, ms in (("p50", state.latency_p50_ms), ("p95", state.latency_p95_ms),
                             ("ewma", state.latency_ewma_ms)):
                if ms is not None:
                    latency.add_metric([*key, stat], ms / 1000.0)
            failures.add_metric(key, float(state.failures_in_a_row))
            models.add_metric(key, float(len(state.models)))
            if name in ages:
                age.add_metric(key, ages[name])
            if state.capacity is not None:
                capacity.add(key, state.capacity)
        yield from (up, status, availability, latency, failures, models, age, *capacity.families())

    def _ranking(self) -> Iterator[Any]:
        labels = ["provider", "type"]
        rank = GaugeMetricFamily("monitord_provider_rank", "Place in the default ranking (1 is best).",
                                 labels=labels)
        score = GaugeMetricFamily("monitord_provider_score", "Score in the default ranking.", labels=labels)
        for place, entry in enumerate(self.ranking().entries, start=1):
            rank.add_metric([entry.provider, entry.type], float(place))
            score.add_metric([entry.provider, entry.type], entry.score)
        yield rank
        yield score


class _CapacityGauges:
    """The load each provider published at its last probe; a series exists only while the server says it."""

    def __init__(self, labels: list[str]) -> None:
        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"monitord_provider_{name}", documentation, labels=labels)

        self.saturated = gauge("saturated", "1 when no slot is idle or requests wait (last probe).")
        self.slots = gauge("slots", "Parallel slots the server has (llama.cpp /slots or /props, KoboldCpp 1).")
        self.slots_busy = gauge("slots_busy", "Slots serving a request now.")
        self.queue = gauge("queue_depth", "Requests waiting for a slot.")
        self.kv_cache = gauge("kv_cache_usage_ratio", "KV-cache in use, 0..1 (vLLM, SGLang, llama.cpp).")
        self.running = gauge("requests_running", "Requests being generated now.")
        self.resident = gauge("resident_models", "Models in memory now (Ollama /api/ps, LM Studio).")
        self.tokens = CounterMetricFamily("monitord_provider_generation_tokens",
                                          "The server's own generated-token counter, as last read.", labels=labels)

    def add(self, key: list[str], load: Capacity) -> None:
        self.saturated.add_metric(key, float(load.saturated))
        for family, value in ((self.slots, load.slots_total), (self.slots_busy, load.slots_busy),
                              (self.queue, load.queue_depth), (self.kv_cache, load.kv_cache_usage),
                              (self.running, load.requests_running)):
            if value is not None:
                family.add_metric(key, float(value))
        if load.resident_models is not None:
            self.resident.add_metric(key, float(len(load.resident_models)))
        if load.generation_tokens_total is not None:
            self.tokens.add_metric(key, load.generation_tokens_total)

    def families(self) -> tuple[Any, ...]:
        return (self.saturated, self.slots, self.slots_busy, self.queue, self.kv_cache, self.running, self.resident,
                self.tokens)


class AlertCollector:
    """Scrape-time view of alert delivery: outcomes per webhook, what waits in the outbox and for how long.

    The outbox figures are the dispatcher's, refreshed every few seconds (a scrape never queries the database).
    """

    def __init__(self, figures: Callable[[], Sequence[WebhookFigures]], unsaved: Callable[[], int],
                 clock: Callable[[], datetime]) -> None:
        self.figures = figures
        self.unsaved = unsaved
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        results = CounterMetricFamily("monitord_alert_deliveries", "Delivery attempts by webhook and outcome "
                                      "(delivered, retry, failed); a grouped message counts each event in it.",
                                      labels=["webhook", "result"])
        pending = GaugeMetricFamily("monitord_alert_outbox_pending", "Deliveries stored and not yet delivered "
                                    "or failed, by webhook.", labels=["webhook"])
        oldest = GaugeMetricFamily("monitord_alert_outbox_oldest_pending_seconds", "Age of the oldest pending "
                                   "delivery, by webhook (0 when none is pending).", labels=["webhook"])
        now = self.clock()
        for figures in self.figures():
            for result in ("delivered", "retry", "failed"):
                results.add_metric([figures.webhook, result], float(figures.results.get(result, 0)))
            pending.add_metric([figures.webhook], float(figures.pending))
            age_s = (now - figures.oldest_pending).total_seconds() if figures.oldest_pending else 0.0
            oldest.add_metric([figures.webhook], max(age_s, 0.0))
        yield from (results, pending, oldest)
        yield _gauge("monitord_alert_unsaved", "Alert events raised and not yet stored (they commit with the "
                     "probe rows behind them; they pile up while the database is away).", float(self.unsaved()))


class SchedulerFigures(Protocol):
    """What a scheduler keeps about its own pace (monitord.scheduler.ProbeScheduler)."""

    @property
    def lateness_ms(self) -> Sequence[float]: ...  # run time minus due time, the most recent runs

    @property
    def skipped_total(self) -> int: ...  # runs dropped because the job's previous run was still going


class SchedulerCollector:
    """Scrape-time view of each scheduler's pace: lateness quantiles over its recent runs and skipped runs.

    Lateness is what a probe's due time slipped (a busy loop, the concurrency cap); skipped runs mean a provider's
    previous probe outlived its interval. Both say that probing no longer keeps the configured pace.
    """

    QUANTILES = (0.5, 0.99)

    def __init__(self, schedulers: Callable[[], Mapping[str, SchedulerFigures | None]]) -> None:
        self.schedulers = schedulers

    def collect(self) -> Iterator[Any]:
        lateness = GaugeMetricFamily("monitord_scheduler_lateness_seconds", "How late runs started against their "
                                     "due time, by scheduler (probe, canary), over its last 10,000 runs.",
                                     labels=["scheduler", "quantile"])
        skipped = CounterMetricFamily("monitord_scheduler_skipped_runs", "Runs skipped because the same job's "
                                      "previous run was still going, by scheduler.", labels=["scheduler"])
        for name, scheduler in self.schedulers().items():
            if scheduler is None:
                continue
            recent = sorted(scheduler.lateness_ms)
            for quantile in self.QUANTILES:
                value = recent[min(int(quantile * len(recent)), len(recent) - 1)] / 1000 if recent else 0.0
                lateness.add_metric([name, str(quantile)], max(value, 0.0))
            skipped.add_metric([name], float(scheduler.skipped_total))
        yield from (lateness, skipped)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
