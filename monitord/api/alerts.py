"""Alert routes: recent events with their delivery state per webhook, and silences (maintenance windows).

The views read and change alert state only through `AlertsBackend`, which the daemon implements (it owns the
outbox and the rules' silences); the API never sends a webhook itself.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web

from monitord.api.context import CONTEXT, AlertsBackend, ApiContext
from monitord.api.errors import ApiError
from monitord.api.replies import check_params, int_param, json_reply, single, time_param
from monitord.model import AlertType, Silence

log = structlog.get_logger("monitord.api")

MAX_SILENCE = timedelta(days=366)
MAX_ACTIVE_SILENCES = 1000  # made through the API and not yet ended: enough for any fleet, bounded for memory
MAX_PATTERN_CHARS = 256
MAX_REASON_CHARS = 1024
_SILENCE_KEYS = frozenset({"provider", "start", "end", "duration_s", "reason"})


def add_alert_routes(app: web.Application) -> None:
    app.router.add_routes([
        web.get("/v1/alerts", alerts),
        web.get("/v1/silences", list_silences),
        web.post("/v1/silences", create_silence),
        web.delete("/v1/silences/{id}", delete_silence),
    ])


def _backend(ctx: ApiContext) -> AlertsBackend:
    if ctx.alerts is None:
        raise ApiError(503, "alerts_unavailable", "alerts are not wired into this server")
    return ctx.alerts


async def alerts(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    query = request.query
    check_params(query, ("limit", "since", "provider", "type"))
    event_type = single(query, "type")
    if event_type is not None and event_type not in {t.value for t in AlertType}:
        raise ApiError(400, "invalid_parameter", f"type: unknown event type {event_type!r}; expected one of "
                                                 f"{', '.join(t.value for t in AlertType)}")
    try:
        records = await _backend(ctx).recent_alerts(limit=int_param(query, "limit", 100, 1, 1000),
                                                    since=time_param(query, "since"),
                                                    provider=single(query, "provider"), event_type=event_type)
    except ApiError:
        raise
    except Exception as exc:  # whatever the driver raised, the database did not answer this read
        log.warning("api.store_unavailable", route="alerts", error=type(exc).__name__)
        raise ApiError(503, "store_unavailable", "the database did not answer; try again shortly") from None
    return json_reply({"generated_at": ctx.clock().isoformat(), "alerts": records})


def silence_dict(silence: Silence, now: datetime) -> dict[str, Any]:
    return {**silence.to_dict(), "active": (silence.start is None or silence.start <= now) and now < silence.end}


async def list_silences(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())
    now = ctx.clock()
    return json_reply({"silences": [silence_dict(s, now) for s in _backend(ctx).silences()]})


async def create_silence(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())
    backend = _backend(ctx)
    now = ctx.clock()
    silence = parse_silence(await _json_body(request), now)
    active = sum(1 for s in backend.silences() if s.created_by != "config" and s.end > now)
    if active >= MAX_ACTIVE_SILENCES:
        raise ApiError(409, "too_many_silences", f"{active} silences made through the API are active, the most "
                                                 f"allowed; end some first (DELETE /v1/silences/ID)")
    try:
        await backend.add_silence(silence)
    except Exception:
        raise ApiError(503, "store_unavailable", "the database did not answer; the silence was not saved") from None
    return json_reply(silence_dict(silence, ctx.clock()), status=201)


async def delete_silence(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    check_params(request.query, ())
    silence_id = request.match_info["id"]
    found = next((s for s in _backend(ctx).silences() if s.id == silence_id), None)
    if found is None:
        raise ApiError(404, "silence_not_found", f"no silence has id {silence_id!r}")
    if found.created_by == "config":
        raise ApiError(409, "silence_in_config", "this silence comes from the config file; remove it there and "
                                                 "reload (SIGHUP)")
    try:
        await _backend(ctx).remove_silence(silence_id)
    except Exception:
        raise ApiError(503, "store_unavailable", "the database did not answer; the silence still holds") from None
    return web.Response(status=204)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())  # depth-limited, unlike json.loads (RecursionError)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_silence", "expected a JSON object")
    return body


def _text(raw: dict[str, Any], key: str, limit: int) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "invalid_silence", f"{key}: expected a string")
    if value is not None and len(value) > limit:
        raise ApiError(400, "invalid_silence", f"{key}: at most {limit} characters")
    return value


def parse_silence(raw: dict[str, Any], now: datetime) -> Silence:
    """A silence from a POST body: provider (name or glob), end or duration_s, optional start and reason."""
    unknown = sorted(set(raw) - _SILENCE_KEYS)
    if unknown:
        raise ApiError(400, "invalid_silence", f"unknown field(s): {', '.join(unknown)}; expected any of "
                                               f"{', '.join(sorted(_SILENCE_KEYS))}")
    provider = _text(raw, "provider", MAX_PATTERN_CHARS)
    if provider is None or not provider.strip():
        raise ApiError(400, "invalid_silence", "provider: a provider name or glob is required")
    reason = _text(raw, "reason", MAX_REASON_CHARS)
    start = _time(raw, "start")
    end = _time(raw, "end")
    duration = raw.get("duration_s")
    if (end is None) == (duration is None):
        raise ApiError(400, "invalid_silence", "give exactly one of end (ISO 8601) and duration_s (seconds)")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not 0 < duration < math.inf:
            raise ApiError(400, "invalid_silence", "duration_s: expected a positive number of seconds")
        if duration > MAX_SILENCE.total_seconds():
            raise ApiError(400, "invalid_silence", "a silence may last at most 366 days")
        try:
            end = (start or now) + timedelta(seconds=duration)
        except OverflowError:
            raise ApiError(400, "invalid_silence", "start + duration_s: past the year 9999") from None
    assert end is not None
    if end <= (start or now):
        raise ApiError(400, "invalid_silence", "end: must be after start (or after now)")
    if end - (start or now) > MAX_SILENCE:
        raise ApiError(400, "invalid_silence", "a silence may last at most 366 days")
    return Silence(id=f"api-{uuid.uuid4().hex[:12]}", provider=provider.strip(), start=start, end=end,
                   reason=reason, created_by="api")


def _time(raw: dict[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_silence", f"{key}: expected an ISO 8601 time with an offset")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_silence", f"{key}: expected an ISO 8601 time such as 2025-01-31T22:00:00Z, "
                                               f"got {value!r}") from None
    if parsed.tzinfo is None:
        raise ApiError(400, "invalid_silence", f"{key}: needs a UTC offset, e.g. 2025-01-31T22:00:00Z")
    try:
        parsed.astimezone(UTC)  # stored and compared in UTC
    except OverflowError:
        raise ApiError(400, "invalid_silence", f"{key}: {value!r} is out of range in UTC") from None
    return parsed
