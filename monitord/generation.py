"""Pure: fold generation canary samples into live per-(provider, model) statistics over a rolling window.

No I/O and no clock reads: every call takes `now`. Sample times are the canaries' own start times, so a replay
from the store gives the same statistics as the live run did. A skipped sample (busy, not loaded, budget spent,
no cheap probe) is counted as skipped: it is neither a success nor a failure and carries no timing.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple, Protocol

from monitord.health import percentile
from monitord.model import MS_DIGITS, RATE_DIGITS, ErrorClass, GenerationSample, GenerationStats, SampleKind

_EMPTY: Mapping[str, GenerationStats] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GenerationPolicy:
    window_s: float = 3600.0  # canaries run every few minutes: an hour holds a dozen samples at the default
    max_samples: int = 512  # per model, whatever the interval: bounds memory and the percentile work

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.max_samples < 1:
            raise ValueError("window_s must be positive and max_samples at least 1")


class SampleRecord(Protocol):
    """The part of a sample a fold needs: GenerationSample and the store's stored rows both fit it."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def ok(self) -> bool: ...
    @property
    def kind(self) -> SampleKind: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def error_class(self) -> ErrorClass | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def total_ms(self) -> float | None: ...
    @property
    def tokens_per_s(self) -> float | None: ...
    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...


def tokens_spent(sample: SampleRecord) -> int:
    """Prompt plus completion tokens a canary cost (0 where the server did not say)."""
    return (sample.prompt_tokens or 0) + (sample.completion_tokens or 0)


class _Sorted:
    """A sorted multiset of floats with removal, for windowed percentiles."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float | None) -> None:
        if value is not None:
            bisect.insort(self.values, value)

    def remove(self, value: float | None) -> None:
        if value is not None:
            del self.values[bisect.bisect_left(self.values, value)]


class _Entry(NamedTuple):
    ts_s: float
    outcome: int  # _OK, _FAILED or _SKIPPED
    ttft_ms: float | None
    tokens_per_s: float | None
    total_ms: float | None
    tokens: int


_OK, _FAILED, _SKIPPED = 0, 1, 2


class ModelTracker:
    """Mutable bookkeeping behind one model's immutable GenerationStats snapshots."""

    __slots__ = ("_counts", "_entries", "_tokens", "_total", "_tps", "_ttft", "policy", "stats")

    def __init__(self, provider: str, model: str, policy: GenerationPolicy) -> None:
        self.policy = policy
        self.stats = GenerationStats(provider=provider, model=model)
        self._entries: deque[_Entry] = deque()
        self._counts = [0, 0, 0]
        self._tokens = 0
        self._ttft, self._tps, self._total = _Sorted(), _Sorted(), _Sorted()

    def fold(self, sample: SampleRecord, now: datetime) -> GenerationStats:
        """Take one sample; returns the new snapshot (built once, not copied and replaced: a canary's path)."""
        outcome = _SKIPPED if sample.skipped else _OK if sample.ok else _FAILED
        ok = outcome == _OK
        at = sample.started_at
        entry = _Entry(at.timestamp(), outcome, sample.ttft_ms if ok else None, sample.tokens_per_s if ok else None,
                       sample.total_ms if ok else None, tokens_spent(sample))
        self._entries.append(entry)
        self._counts[outcome] += 1
        self._tokens += entry.tokens
        if ok:
            self._ttft.add(entry.ttft_ms)
            self._tps.add(entry.tokens_per_s)
            self._total.add(entry.total_ms)
        old = self.stats
        newest = old.last_sample_at is None or at >= old.last_sample_at
        self._expire(now.timestamp())
        error_class, error, error_at = old.last_error_class, old.last_error, old.last_error_at
        if outcome == _FAILED and (error_at is None or at >= error_at):
            error_class, error, error_at = sample.error_class or ErrorClass.INTERNAL, sample.error, at
        skip_class, skip_at = old.last_skip_class, old.last_skip_at
        if outcome == _SKIPPED and (skip_at is None or at >= skip_at):
            skip_class, skip_at = sample.error_class, at
        self.stats = GenerationStats(
            provider=old.provider, model=old.model, kind=sample.kind if newest else old.kind,
            last_sample_at=at if newest else old.last_sample_at,
            last_ok_at=at if ok and (old.last_ok_at is None or at >= old.last_ok_at) else old.last_ok_at,
            last_error_class=error_class, last_error=error, last_error_at=error_at,
            last_skip_class=skip_class, last_skip_at=skip_at, **self._window(),  # type: ignore[arg-type]
        )
        return self.stats

    def expire(self, now: datetime) -> GenerationStats:
        """Drop samples that left the window by `now` and publish the refreshed snapshot."""
        if self._expire(now.timestamp()):
            self.stats = replace(self.stats, **self._window())  # type: ignore[arg-type]
        return self.stats

    def _expire(self, now_s: float) -> bool:
        cutoff_s = now_s - self.policy.window_s
        entries = self._entries
        changed = False
        while entries and (entries[0].ts_s < cutoff_s or len(entries) > self.policy.max_samples):
            entry = entries.popleft()
            changed = True
            self._counts[entry.outcome] -= 1
            self._tokens -= entry.tokens
            self._ttft.remove(entry.ttft_ms)
            self._tps.remove(entry.tokens_per_s)
            self._total.remove(entry.total_ms)
        return changed

    def _window(self) -> dict[str, object]:
        ok, failed, skipped = self._counts
        ttft = self._ttft.values
        return {
            "samples": ok + failed,
            "samples_ok": ok,
            "skipped": skipped,
            "ttft_p50_ms": _rounded(percentile(ttft, 0.5), MS_DIGITS),
            "ttft_p95_ms": _rounded(percentile(ttft, 0.95), MS_DIGITS),
            "tokens_per_s_p50": _rounded(percentile(self._tps.values, 0.5), RATE_DIGITS),
            "total_p50_ms": _rounded(percentile(self._total.values, 0.5), MS_DIGITS),
            "tokens_spent": self._tokens,
        }


class GenerationState:
    """Every (provider, model)'s live generation statistics.

    `for_provider(name)` returns an immutable mapping (model -> stats) that is replaced, never mutated, when one
    of the provider's models changes, so readers (the ranking) can tell a change by identity. `version` grows on
    every change, for caches.
    """

    def __init__(self, policy: GenerationPolicy | None = None) -> None:
        self.policy = policy or GenerationPolicy()
        self.version = 0
        self._trackers: dict[str, dict[str, ModelTracker]] = {}
        self._views: dict[str, Mapping[str, GenerationStats]] = {}

    def fold(self, sample: GenerationSample | SampleRecord, now: datetime) -> GenerationStats:
        models = self._trackers.setdefault(sample.provider, {})
        tracker = models.get(sample.model)
        if tracker is None:
            tracker = models[sample.model] = ModelTracker(sample.provider, sample.model, self.policy)
        stats = tracker.fold(sample, now)
        self._publish(sample.provider)
        return stats

    def for_provider(self, provider: str) -> Mapping[str, GenerationStats]:
        """model -> stats of one provider (empty when no canary has reported)."""
        return self._views.get(provider, _EMPTY)

    def get(self, provider: str, model: str) -> GenerationStats | None:
        return self.for_provider(provider).get(model)

    def all(self) -> Mapping[str, Mapping[str, GenerationStats]]:
        """provider -> model -> stats; a read-only live view."""
        return MappingProxyType(self._views)

    def remove(self, provider: str) -> bool:
        """Forget a provider (removed from the config). Returns whether it had statistics."""
        if self._trackers.pop(provider, None) is None:
            return False
        self._views.pop(provider, None)
        self.version += 1
        return True

    def retain(self, providers: Iterable[str]) -> None:
        """Forget every provider not in `providers` (after a reload)."""
        keep = set(providers)
        for name in [name for name in self._trackers if name not in keep]:
            self.remove(name)

    def expire(self, now: datetime) -> None:
        """Age every window to `now`, for models whose canary has not reported lately."""
        for provider, models in self._trackers.items():
            before = [tracker.stats for tracker in models.values()]
            after = [tracker.expire(now) for tracker in models.values()]
            if any(old is not new for old, new in zip(before, after, strict=True)):
                self._publish(provider)

    def rebuild(self, records: Iterable[SampleRecord], now: datetime, providers: Iterable[str]) -> None:
        """Start over from stored samples, oldest first (each folded at its own time), then age to `now`.

        Only providers in `providers` (the configured ones) are kept.
        """
        keep = set(providers)
        self._trackers, self._views = {}, {}
        for record in records:
            if record.provider in keep:
                self.fold(record, record.started_at)
        self.expire(now)
        self.version += 1

    def _publish(self, provider: str) -> None:
        models = self._trackers[provider]
        self._views[provider] = MappingProxyType({model: models[model].stats for model in sorted(models)})
        self.version += 1


def _rounded(value: float | None, digits: int) -> float | None:
    """As the API shows it (README: milliseconds to 3 decimals)."""
    return None if value is None else round(value, digits)
