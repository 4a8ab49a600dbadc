"""Domain values to table rows: the one place that decides what is stored, and that secrets are not."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from monitord.model import GenerationSample, ProbeResult, ProviderSpec

ERROR_MAX_CHARS = 2000  # a probe error is a short message; cap it so one odd body cannot bloat the table


# provider_models.last_seen is rewritten at most this often per model unless the model changes (writer.py), so a
# reader matching probes to the models they listed allows that much slack (queries.py).
MODEL_REFRESH_S = 60.0

def _short(error: str | None) -> str | None:
    if error is not None and len(error) > ERROR_MAX_CHARS:
        return error[: ERROR_MAX_CHARS - 1] + "…"
    return error


def probe_row(result: ProbeResult) -> dict[str, Any]:
    load = result.capacity
    error = _short(result.error)
    return {
        "ts": result.started_at,
        "provider": result.provider,
        "status": result.status.value,
        "error_class": result.error_class.value if result.error_class is not None else None,
        "error": error,
        "connect_ms": result.connect_ms,
        "ttfb_ms": result.ttfb_ms,
        "total_ms": result.total_ms,
        "http_status": result.http_status,
        "model_count": len(result.models),
        "attempts": result.attempts,
        "slots_total": load.slots_total if load else None,
        "slots_busy": load.slots_busy if load else None,
        "queue_depth": load.queue_depth if load else None,
        "requests_running": load.requests_running if load else None,
        "kv_cache_usage": load.kv_cache_usage if load else None,
    }


def generation_row(sample: GenerationSample) -> dict[str, Any]:
    return {
        "ts": sample.started_at,
        "provider": sample.provider,
        "model": sample.model,
        "kind": sample.kind.value,
        "ok": sample.ok,
        "skipped": sample.skipped,
        "error_class": sample.error_class.value if sample.error_class is not None else None,
        "error": _short(sample.error),
        "ttft_ms": sample.ttft_ms,
        "total_ms": sample.total_ms,
        "tokens_per_s": sample.tokens_per_s,
        "prompt_tokens": sample.prompt_tokens,
        "completion_tokens": sample.completion_tokens,
        "finish_reason": _short(sample.finish_reason),
        "streamed": sample.streamed,
        "stream_complete": sample.stream_complete,
    }


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
