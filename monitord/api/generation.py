"""GET /v1/providers/{name}/generation: stored canary samples, or per-model aggregates by step, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from monitord.api.context import CONTEXT
from monitord.api.errors import ApiError
from monitord.api.history import STEPS_S, history_window, read_store
from monitord.api.replies import json_reply, single
from monitord.model import MS_DIGITS, RATE_DIGITS
from monitord.store import GenerationBucket, StoredSample

PARAMS = ("since", "until", "limit", "step", "model")


async def provider_generation(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = history_window(request, PARAMS)
    name, since, until, limit, step = window.provider, window.since, window.until, window.limit, window.step
    model = single(request.query, "model")
    if model is not None and not model.strip():
        raise ApiError(400, "invalid_parameter", "model: must not be empty")
    if step is None:
        samples = await read_store(ctx.store.generation_history(name, since=since, until=until, model=model,
                                                                 limit=limit))
        return json_reply({"provider": name, "model": model, "since": _iso(since), "until": _iso(until),
                           "limit": limit, "samples": [_sample(s) for s in samples]})
    step_s = STEPS_S.get(step)
    if step_s is None:
        raise ApiError(400, "invalid_parameter", f"step: expected one of {', '.join(STEPS_S)}, got {step!r}")
    until = until or ctx.clock()
    try:  # at most `limit` steps back, as for probe history: a far-away `since` is moved up
        earliest = until - timedelta(seconds=step_s * limit)
    except OverflowError:
        earliest = datetime.min.replace(tzinfo=UTC)
    since = earliest if since is None or since < earliest else since
    buckets = await read_store(ctx.store.generation_aggregate(name, step_s=step_s, since=since, until=until,
                                                              model=model))
    by_model: dict[str, list[dict[str, Any]]] = {}
    for bucket in reversed(buckets):  # newest first within each model
        by_model.setdefault(bucket.model, []).append(_bucket(bucket))
    return json_reply({"provider": name, "model": model, "step": step, "step_s": step_s,
                       "since": since.isoformat(), "until": until.isoformat(),
                       "models": [{"model": key, "buckets": by_model[key][:limit]} for key in sorted(by_model)]})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sample(sample: StoredSample) -> dict[str, Any]:
    return {
        "ts": sample.started_at.isoformat(),
        "model": sample.model,
        "kind": sample.kind.value,
        "ok": sample.ok,
        "skipped": sample.skipped,
        "error_class": sample.error_class.value if sample.error_class else None,
        "error": sample.error,
        "ttft_ms": _round(sample.ttft_ms, MS_DIGITS),
        "total_ms": _round(sample.total_ms, MS_DIGITS),
        "tokens_per_s": _round(sample.tokens_per_s, RATE_DIGITS),
        "prompt_tokens": sample.prompt_tokens,
        "completion_tokens": sample.completion_tokens,
        "finish_reason": sample.finish_reason,
        "streamed": sample.streamed,
        "stream_complete": sample.stream_complete,
    }


def _bucket(bucket: GenerationBucket) -> dict[str, Any]:
    return {
        "start": bucket.start.isoformat(),
        "count": bucket.count,
        "ok_count": bucket.ok_count,
        "failed_count": bucket.failed_count,
        "skipped_count": bucket.skipped_count,
        "ttft_p50_ms": _round(bucket.ttft_p50_ms, MS_DIGITS),
        "ttft_p95_ms": _round(bucket.ttft_p95_ms, MS_DIGITS),
        "tokens_per_s_p50": _round(bucket.tokens_per_s_p50, RATE_DIGITS),
        "tokens_spent": bucket.tokens_spent,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
