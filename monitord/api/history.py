"""GET /v1/providers/{name}/history: stored probe samples, or per-step aggregates, newest first and bounded."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from aiohttp import web

from monitord.api.context import CONTEXT
from monitord.api.errors import ApiError
from monitord.api.replies import check_params, int_param, json_reply, single, time_param
from monitord.model import MS_DIGITS, RATIO_DIGITS, Capacity
from monitord.store import Bucket, ProbeSample

log = structlog.get_logger("monitord.api")

DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000
STEPS_S = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
PARAMS = ("since", "until", "limit", "step")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    """The part of a history query every history route shares: which provider, which span, how many, what step."""

    provider: str
    since: datetime | None
    until: datetime | None
    limit: int
    step: str | None


def history_window(request: web.Request, params: tuple[str, ...]) -> Window:
    """Read and check the shared history parameters (unknown ones, a provider not configured, a reversed span)."""
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    query = request.query
    check_params(query, params)
    if name not in ctx.specs():
        raise ApiError(404, "provider_not_found", f"no provider is named {name!r}")
    since, until = time_param(query, "since"), time_param(query, "until")
    limit = int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "invalid_parameter", "since must be before until")
    return Window(name, since, until, limit, single(query, "step"))


async def provider_history(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = history_window(request, PARAMS)
    name, since, until, limit, step = window.provider, window.since, window.until, window.limit, window.step
    if step is None:
        samples = await read_store(ctx.store.history(name, since=since, until=until, limit=limit))
        return json_reply({
            "provider": name,
            "since": _iso(since),
            "until": _iso(until),
            "limit": limit,
            "samples": [_sample(s) for s in samples],
        })
    step_s = STEPS_S.get(step)
    if step_s is None:
        raise ApiError(400, "invalid_parameter", f"step: expected one of {', '.join(STEPS_S)}, got {step!r}")
    until = until or ctx.clock()
    # At most `limit` buckets, the newest: a far-away `since` is moved up rather than scanned for nothing.
    try:
        earliest = until - timedelta(seconds=step_s * limit)
    except OverflowError:  # `until` within `limit` steps of year 1
        earliest = datetime.min.replace(tzinfo=UTC)
    since = earliest if since is None or since < earliest else since
    buckets = await read_store(ctx.store.aggregate(name, step_s=step_s, since=since, until=until))
    return json_reply({
        "provider": name,
        "step": step,
        "step_s": step_s,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "buckets": [_bucket(b) for b in reversed(buckets)][:limit],
    })


async def read_store(query: Awaitable[T]) -> T:
    """Await a store read; a database that does not answer is a 503 store_unavailable."""
    try:
        return await query
    except Exception as exc:  # whatever the driver raised, the database did not answer this read
        log.warning("api.store_unavailable", error=type(exc).__name__)
        raise ApiError(503, "store_unavailable", "the database did not answer; try again shortly") from None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sample(sample: ProbeSample) -> dict[str, Any]:
    return {
        "ts": sample.ts.isoformat(),
        "status": sample.status.value,
        "error_class": sample.error_class.value if sample.error_class else None,
        "error": sample.error,
        "connect_ms": _round(sample.connect_ms, MS_DIGITS),
        "ttfb_ms": _round(sample.ttfb_ms, MS_DIGITS),
        "total_ms": _round(sample.total_ms, MS_DIGITS),
        "http_status": sample.http_status,
        "model_count": sample.model_count,
        "attempts": sample.attempts,
        "capacity": _capacity(sample.capacity),
    }


def _capacity(load: Capacity | None) -> dict[str, Any] | None:
    """The stored load figures (resident models are live state only, not history)."""
    if load is None:
        return None
    return {"saturated": load.saturated, "slots_total": load.slots_total, "slots_busy": load.slots_busy,
            "queue_depth": load.queue_depth, "requests_running": load.requests_running,
            "kv_cache_usage": load.kv_cache_usage}


def _bucket(bucket: Bucket) -> dict[str, Any]:
    return {
        "start": bucket.start.isoformat(),
        "count": bucket.count,
        "ok_count": bucket.ok_count,
        "availability": _round(bucket.availability, RATIO_DIGITS),
        "latency_avg_ms": _round(bucket.latency_avg_ms, MS_DIGITS),
        "latency_p95_ms": _round(bucket.latency_p95_ms, MS_DIGITS),
    }
