"""POST /v1/report: an application says how a real request to a provider went.

The outcome folds into the provider's live state at once (its own window, a rate budget per provider and second):
a failure makes the provider `suspect`, so the next selection already avoids it, before its next probe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from monitord.api.context import CONTEXT
from monitord.api.errors import ApiError
from monitord.api.replies import json_reply
from monitord.model import ErrorClass, OutcomeReport

REPORT_FIELDS = ("provider", "model", "outcome", "ttft_ms", "completion_tokens", "duration_ms", "client")
OK = "ok"
MAX_MS = 86_400_000.0  # a day: anything longer is a mistake, not a request
MAX_TOKENS = 10_000_000
MAX_TEXT = 256


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_report", message)


def _text(raw: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise _invalid(f"{key}: required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise _invalid(f"{key}: expected a non-empty string of at most {MAX_TEXT} characters")
    return value.strip()


def _milliseconds(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= MAX_MS:
        raise _invalid(f"{key}: expected milliseconds from 0 to {MAX_MS:.0f}, got {value!r}")
    return float(value)


def parse_report(raw: Any, received_at: Any) -> OutcomeReport:
    """The OutcomeReport a JSON body describes; ApiError 400 `invalid_report` naming the field otherwise."""
    if not isinstance(raw, dict):
        raise _invalid(f"expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(REPORT_FIELDS))
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)}; expected any of {', '.join(REPORT_FIELDS)}")
    provider = _text(raw, "provider", required=True)
    assert provider is not None
    outcome = raw.get("outcome")
    if not isinstance(outcome, str):
        raise _invalid(f"outcome: required, 'ok' or an error class ({', '.join(e.value for e in ErrorClass)})")
    error_class = None
    if outcome != OK:
        try:
            error_class = ErrorClass(outcome)
        except ValueError:
            raise _invalid(f"outcome: {outcome!r} is neither 'ok' nor an error class "
                           f"({', '.join(e.value for e in ErrorClass)})") from None
    tokens = raw.get("completion_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or not 0 <= tokens <= MAX_TOKENS):
        raise _invalid(f"completion_tokens: expected a whole number from 0 to {MAX_TOKENS}, got {tokens!r}")
    return OutcomeReport(
        provider=provider, received_at=received_at, ok=error_class is None, model=_text(raw, "model"),
        error_class=error_class, ttft_ms=_milliseconds(raw, "ttft_ms"), completion_tokens=tokens,
        duration_ms=_milliseconds(raw, "duration_ms"), client=_text(raw, "client"),
    )


async def report(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await request.read()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    outcome = parse_report(raw, ctx.clock())
    if outcome.provider not in ctx.specs():
        raise ApiError(404, "provider_not_found", f"no provider is named {outcome.provider!r}")
    counted = ctx.report(outcome)
    state = ctx.live.get(outcome.provider)
    return json_reply({"provider": outcome.provider, "counted": counted,
                       "suspect": state.suspect if state is not None else False}, status=202)
