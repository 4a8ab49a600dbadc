"""Domain values to table rows: the one place that decides what is stored, how compactly, and that secrets are not."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from monitord.model import ErrorClass, GenerationSample, ProbeResult, ProviderSpec, SampleKind, Status

ERROR_MAX_CHARS = 2000  # a probe error is a short message; cap it so one odd body cannot bloat the table


# provider_models.last_seen is rewritten at most this often per model unless the model changes (writer.py), so a
# reader matching probes to the models they listed allows that much slack (queries.py).
MODEL_REFRESH_S = 60.0

# --- the compact encodings of revision 0008 (fixed forever: stored rows hold these numbers) ---------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
INT32_MAX = 2**31 - 1  # latencies past 35 minutes are stored as this (no probe or canary waits that long)
SMALLINT_MAX = 2**15 - 1
# error_texts.last_used_s is rewritten when a batch cites a text this much later than last written; the retention
# job deletes a text once the raw rows it could still be cited by are gone (store.retention).
ERROR_REFRESH_S = 3600

# names.kind
NAME_PROVIDER = 1
NAME_MODEL = 2
_ERROR_TEXT = 0  # error_texts ids are digests of kind 0

# Status and error class codes. UP is 1: SQLite stores the integers 0 and 1 in no bytes at all.
STATUS_CODES: dict[Status, int] = {
    Status.UNKNOWN: 0, Status.UP: 1, Status.DEGRADED: 2, Status.LOADING: 3, Status.DOWN: 4, Status.STALLED: 5,
    Status.MISCONFIGURED: 6, Status.DISABLED: 7,
}
ERROR_CLASS_CODES: dict[ErrorClass, int] = {
    ErrorClass.REFUSED: 1, ErrorClass.DNS: 2, ErrorClass.TIMEOUT: 3, ErrorClass.TLS: 4, ErrorClass.CONNECTION: 5,
    ErrorClass.REDIRECT: 6, ErrorClass.AUTH: 7, ErrorClass.RATE_LIMITED: 8, ErrorClass.HTTP_4XX: 9,
    ErrorClass.HTTP_5XX: 10, ErrorClass.BAD_PAYLOAD: 11, ErrorClass.TOO_LARGE: 12, ErrorClass.LOADING: 13,
    ErrorClass.EMPTY_MODELS: 14, ErrorClass.MODEL_MISSING: 15, ErrorClass.INTERNAL: 16,
    ErrorClass.GENERATION_TIMEOUT: 17, ErrorClass.STREAM_STALLED: 18, ErrorClass.STREAM_BROKEN: 19,
    ErrorClass.EMPTY_GENERATION: 20, ErrorClass.BUSY: 21, ErrorClass.NOT_LOADED: 22, ErrorClass.BUDGET_EXHAUSTED: 23,
    ErrorClass.WRONG_SERVER: 24,
}
KIND_CODES: dict[SampleKind, int] = {SampleKind.GENERATION: 1, SampleKind.EMBEDDING: 2}
_STATUS, _CLASS = STATUS_CODES, ERROR_CLASS_CODES
STATUS_BY_CODE = {code: status for status, code in STATUS_CODES.items()}
ERROR_CLASS_BY_CODE = {code: error_class for error_class, code in ERROR_CLASS_CODES.items()}
KIND_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}

# The probes columns in the order probe_record gives them (the writer's INSERT and COPY name them so).
PROBE_COLUMNS = ("provider_id", "ts", "status", "error_class", "error_id", "connect_us", "ttfb_us", "total_us",
                 "http_status", "model_count", "attempts", "slots_total", "slots_busy", "queue_depth",
                 "requests_running", "kv_cache_ppm")
SAMPLE_COLUMNS = ("provider_id", "model_id", "ts", "kind", "ok", "skipped", "error_class", "error_id", "ttft_us",
                  "total_us", "tokens_per_s", "prompt_tokens", "completion_tokens", "finish_reason", "streamed",
                  "stream_complete")


def epoch_us(at: datetime) -> int:
    """Unix microseconds of `at`, exactly (a naive time is taken as UTC, as UtcDateTime did)."""
    try:
        return (at - EPOCH) // ONE_US
    except TypeError:  # naive
        return (at.replace(tzinfo=UTC) - EPOCH) // ONE_US


def from_epoch_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def to_us(ms: float | None) -> int | None:
    """Milliseconds as integer microseconds (the API's precision), capped to the column's range."""
    if ms is None:
        return None
    value = round(ms * 1000)
    return value if value <= INT32_MAX else INT32_MAX


def from_us(us: int | None) -> float | None:
    return None if us is None else us / 1000


def to_ppm(ratio: float | None) -> int | None:
    return None if ratio is None else round(ratio * 1_000_000)


def from_ppm(ppm: int | None) -> float | None:
    return None if ppm is None else ppm / 1_000_000


def digest(kind: int, text: str) -> int:
    """A signed 64-bit key for a name or an error text: what `names.digest` and `error_texts.id` hold."""
    raw = hashlib.blake2b(f"{kind}\0{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def error_id(error: str) -> int:
    return digest(_ERROR_TEXT, error)


def short(error: str | None) -> str | None:
    """An error as stored: capped, so one odd body cannot bloat the table."""
    if error is not None and len(error) > ERROR_MAX_CHARS:
        return error[: ERROR_MAX_CHARS - 1] + "…"
    return error


def probe_record(result: ProbeResult, provider_id: int, ts: int, error_id: int | None) -> tuple[Any, ...]:
    """One probes row, in PROBE_COLUMNS order (`error_id` of short(result.error), None without one).

    The writer's per-row hot path: written out flat (no helper calls; connect and TTFB never exceed the total, so
    only the total is capped)."""
    load = result.capacity
    error_class = result.error_class
    connect_ms, ttfb_ms = result.connect_ms, result.ttfb_ms
    total_us = round(result.total_ms * 1000)
    models = len(result.models)
    if load is None:
        return (provider_id, ts, _STATUS[result.status], None if error_class is None else _CLASS[error_class],
                error_id, None if connect_ms is None else round(connect_ms * 1000),
                None if ttfb_ms is None else round(ttfb_ms * 1000), total_us if total_us <= INT32_MAX else INT32_MAX,
                result.http_status, models if models <= SMALLINT_MAX else SMALLINT_MAX, result.attempts,
                None, None, None, None, None)
    kv_cache = load.kv_cache_usage
    slots, busy, queue, running = load.slots_total, load.slots_busy, load.queue_depth, load.requests_running
    return (provider_id, ts, _STATUS[result.status], None if error_class is None else _CLASS[error_class],
            error_id, None if connect_ms is None else round(connect_ms * 1000),
            None if ttfb_ms is None else round(ttfb_ms * 1000), total_us if total_us <= INT32_MAX else INT32_MAX,
            result.http_status, models if models <= SMALLINT_MAX else SMALLINT_MAX, result.attempts,
            slots if slots is None or -SMALLINT_MAX <= slots <= SMALLINT_MAX else _small(slots),
            busy if busy is None or -SMALLINT_MAX <= busy <= SMALLINT_MAX else _small(busy),
            queue if queue is None or -SMALLINT_MAX <= queue <= SMALLINT_MAX else _small(queue),
            running if running is None or -SMALLINT_MAX <= running <= SMALLINT_MAX else _small(running),
            None if kv_cache is None else round(kv_cache * 1_000_000))


def _small(count: int | None) -> int | None:
    """A capacity count within SMALLINT (revision 0009): no server publishes more, but one could say anything."""
    if count is None or -SMALLINT_MAX <= count <= SMALLINT_MAX:
        return count
    return SMALLINT_MAX if count > 0 else -SMALLINT_MAX


def sample_record(sample: GenerationSample, provider_id: int, model_id: int, ts: int,
                  error_id: int | None) -> tuple[Any, ...]:
    """One generation_samples row, in SAMPLE_COLUMNS order."""
    error_class = sample.error_class
    return (provider_id, model_id, ts, KIND_CODES[sample.kind], sample.ok, sample.skipped,
            None if error_class is None else ERROR_CLASS_CODES[error_class], error_id, to_us(sample.ttft_ms),
            to_us(sample.total_ms), sample.tokens_per_s, sample.prompt_tokens, sample.completion_tokens,
            short(sample.finish_reason), sample.streamed, sample.stream_complete)


def model_rows(results: Iterable[ProbeResult]) -> list[dict[str, Any]]:
    """One row per (provider, model) seen in `results`, merged so a batch never names a key twice.

    A repeated key in one upsert statement is an error on some databases, and the merge keeps
    the earliest first_seen and the latest sighting's details.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        seen_at = result.started_at
        for model in result.models:
            key = (result.provider, model.id)
            row = merged.get(key)
            if row is None:
                merged[key] = {
                    "provider": result.provider,
                    "model_id": model.id,
                    "details": model.to_dict(),
                    "first_seen": seen_at,
                    "last_seen": seen_at,
                }
                continue
            row["first_seen"] = min(row["first_seen"], seen_at)
            if seen_at >= row["last_seen"]:
                row["last_seen"] = seen_at
                row["details"] = model.to_dict()
    return list(merged.values())


def server_versions(results: Iterable[ProbeResult]) -> dict[str, str]:
    """The latest server version each provider reported in `results` (providers that said none are absent)."""
    latest: dict[str, tuple[datetime, str]] = {}
    for result in results:
        if result.server_version is None:
            continue
        known = latest.get(result.provider)
        if known is None or result.started_at >= known[0]:
            latest[result.provider] = (result.started_at, result.server_version)
    return {provider: version for provider, (_, version) in latest.items()}


def provider_row(spec: ProviderSpec, now: datetime) -> dict[str, Any]:
    """The config snapshot of one provider. Settings are listed field by field, so a secret added
    to ProviderSpec later stays out until someone decides to store it."""
    settings: dict[str, Any] = {
        "models": list(spec.models),
        "timeout_s": spec.timeout_s,
        "max_retries": spec.max_retries,
        "retry_backoff_s": spec.retry_backoff_s,
        "streaming_support": spec.streaming_support,
        "model_endpoint": spec.model_endpoint,
        "chat_endpoint": spec.chat_endpoint,
        "health_endpoint": spec.health_endpoint,
        "probe_interval_s": spec.probe_interval_s,
        "retry_interval_s": spec.retry_interval_s,
        "capabilities": sorted(spec.capabilities),
        "priority": spec.priority,
        "weight": spec.weight,
        "max_body_bytes": spec.max_body_bytes,
        "verify_tls": spec.verify_tls,
        "ca_file": spec.ca_file,
        "has_api_key": bool(spec.api_key),
        "header_names": sorted(name for name, _ in spec.headers),
    }
    return {
        "name": spec.name,
        "type": spec.type,
        "endpoint": spec.redacted_endpoint,
        "enabled": spec.enabled,
        "settings": settings,
        "first_seen": now,
        "updated_at": now,
    }
