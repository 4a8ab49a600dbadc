"""A small fixed-bucket latency histogram: what rollup rows store so they can be merged and a p95 estimated.

Log-spaced buckets, 16 per decade from 0.1 ms to 100 s (each 1.155x wider than the last, as in DDSketch or
HdrHistogram), so any quantile is known within one bucket: about ±7 % of the value. Pure; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BUCKETS_PER_DECADE = 16
FLOOR_MS = 0.1  # bucket 0 holds everything below; bucket i >= 1 starts at FLOOR_MS * 10 ** ((i - 1) / 16)
DECADES = 6  # up to 100 s; the last bucket holds everything above
LAST_INDEX = 1 + DECADES * BUCKETS_PER_DECADE

Histogram = dict[int, int]  # bucket index -> count (a plain dict: rollups make many of them)


def bucket_index(latency_ms: float) -> int:
    if latency_ms < FLOOR_MS:
        return 0
    index = 1 + math.floor(BUCKETS_PER_DECADE * math.log10(latency_ms / FLOOR_MS))
    return min(index, LAST_INDEX)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[lower, upper) of bucket `index` in ms; the last bucket's upper bound is infinite."""
    if index <= 0:
        return 0.0, FLOOR_MS
    lower = FLOOR_MS * 10 ** ((index - 1) / BUCKETS_PER_DECADE)
    upper = math.inf if index >= LAST_INDEX else FLOOR_MS * 10 ** (index / BUCKETS_PER_DECADE)
    return lower, upper


def histogram(latencies_ms: Iterable[float]) -> Histogram:
    hist: Histogram = {}
    for value in latencies_ms:
        add(hist, bucket_index(value))
    return hist


def add(hist: Histogram, index: int, count: int = 1) -> None:
    hist[index] = hist.get(index, 0) + count


def merge_into(total: Histogram, other: Mapping[int, int]) -> None:
    for index, count in other.items():
        total[index] = total.get(index, 0) + count


def merge(histograms: Iterable[Mapping[int, int]]) -> Histogram:
    total: Histogram = {}
    for one in histograms:
        merge_into(total, one)
    return total


def encode(hist: Mapping[int, int]) -> str:
    """Sparse text, "index:count" pairs by index: "41:2,43:1" (a minute row usually holds one or two pairs)."""
    return ",".join(f"{index}:{count}" for index, count in sorted(hist.items()) if count)


def decode(text: str) -> Histogram:
    hist: Histogram = {}
    for pair in filter(None, text.split(",")):
        index, _, count = pair.partition(":")
        add(hist, int(index), int(count))
    return hist


def quantile(hist: Mapping[int, int], fraction: float, *, min_ms: float | None = None,
             max_ms: float | None = None) -> float | None:
    """Estimate of the `fraction` quantile (0..1), read like SQL's percentile_cont: position fraction * (n - 1).

    Interpolates geometrically inside the bucket holding that position and clamps to the exact min and max when
    known, so a histogram of one value returns that value.
    """
    total = sum(hist.values())
    if total <= 0:
        return None
    position = fraction * (total - 1)
    seen = 0
    estimate = 0.0
    for index in sorted(hist):
        count = hist[index]
        if count <= 0:
            continue
        if position < seen + count:
            lower, upper = bucket_bounds(index)
            within = (position - seen + 0.5) / count  # the middle of its share of the bucket
            if index == 0:
                estimate = upper * within
            elif math.isinf(upper):
                estimate = lower
            else:
                estimate = lower * (upper / lower) ** within
            break
        seen += count
    if min_ms is not None:
        estimate = max(estimate, min_ms)
    if max_ms is not None:
        estimate = min(estimate, max_ms)
    return estimate
