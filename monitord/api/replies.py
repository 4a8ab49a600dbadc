"""What every view shares: JSON replies and strict parsing of query parameters into 400s that say why."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Collection, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from monitord.api.cache import RankingCache
from monitord.api.errors import JSON, ApiError
from monitord.model import Criteria

# Short query-parameter names for criteria fields; the field names themselves are accepted too.
QUERY_ALIASES: Mapping[str, str] = {
    "capability": "required_capabilities",
    "provider": "providers",
    "quality": "quality_preference",
}
_CRITERIA_FIELDS = frozenset({"task_type", "required_capabilities", "max_tokens", "quality_preference", "model",
                              "providers", "max_queue"})
_LIST_FIELDS = frozenset({"required_capabilities", "providers"})
MAX_TOKENS = 2**31 - 1  # far past any context length; bigger ints would not fit the reply's 64-bit JSON ints
COMPRESS_MIN_BYTES = 8 * 1024
GZIP_LEVEL = 6
VARY = {"Vary": "Accept-Encoding"}
_VARY = VARY
GZIPPED = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
_GZIP = GZIPPED


def accepts_gzip(request: web.Request) -> bool:
    """The client lists gzip in Accept-Encoding (and not with q=0)."""
    for item in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def cached_reply(request: web.Request, cache: RankingCache, key: Hashable, render: Callable[[], bytes]) -> web.Response:
    """A JSON body rendered once per cache generation; large ones also gzipped once, for clients that take it.

    The ranking of 1,000 providers is ~250 KB: serving it is bound by the bytes written, not by the work, so
    compressing once per generation makes every response ~10x cheaper to send.
    """
    body = cache.rendered(key, render)
    if len(body) < COMPRESS_MIN_BYTES or not accepts_gzip(request):
        return web.Response(body=body, content_type=JSON, headers=_VARY if len(body) >= COMPRESS_MIN_BYTES else None)
    packed = cache.rendered(("gzip", key), lambda: gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0),
                            checked=True)
    return web.Response(body=packed, content_type=JSON, headers=_GZIP)


def json_reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=JSON)


def bytes_reply(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


def check_params(query: MultiMapping[str], allowed: Collection[str]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown query parameter(s): {', '.join(unknown)}; "
                                                 f"expected any of {', '.join(sorted(allowed))}")


def single(query: MultiMapping[str], key: str) -> str | None:
    values = query.getall(key, [])
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"{key}: given {len(values)} times, expected once")
    return values[0] if values else None


def int_param(query: MultiMapping[str], key: str, default: int, low: int, high: int) -> int:
    text = single(query, key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{key}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{key}: must be between {low} and {high}, got {value}")
    return value


def time_param(query: MultiMapping[str], key: str) -> datetime | None:
    """An ISO 8601 time; one without a UTC offset is taken as UTC."""
    text = single(query, key)
    if text is None:
        return None
    candidates = [text]
    if " " in text:  # an unencoded '+' in a query string arrives as a space: "...T10:00:00 01:00"
        head, _, tail = text.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            value = datetime.fromisoformat(candidate.strip())
        except ValueError:
            continue
        value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            value.astimezone(UTC)  # the store compares in UTC: 0001-01-01T00:00+05:00 has no UTC time
        except OverflowError:
            raise ApiError(400, "invalid_parameter", f"{key}: {text!r} is out of range in UTC") from None
        return value
    raise ApiError(400, "invalid_parameter",
                   f"{key}: expected an ISO 8601 time such as 2025-01-31T22:00:00Z, got {text!r}")


def criteria_from_query(query: MultiMapping[str], others: Collection[str] = ()) -> Criteria:
    """Criteria from query parameters: `capability` and `provider` repeat or take comma-separated lists."""
    check_params(query, _CRITERIA_FIELDS | QUERY_ALIASES.keys() | set(others))
    raw: dict[str, Any] = {}
    for key in dict.fromkeys(query):  # each key once, in order
        if key in others:
            continue
        field = QUERY_ALIASES.get(key, key)
        if field in _LIST_FIELDS:
            raw.setdefault(field, []).extend(part for value in query.getall(key) for part in value.split(","))
            continue
        if field in raw:
            raise ApiError(400, "invalid_parameter", f"{field}: given more than once")
        raw[field] = single(query, key)
    return parse_criteria(raw)


def parse_criteria(raw: Mapping[str, Any]) -> Criteria:
    try:
        criteria = Criteria.from_mapping(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_criteria", str(exc)) from None
    for name, value in (("max_tokens", criteria.max_tokens), ("max_queue", criteria.max_queue)):
        if value is not None and value > MAX_TOKENS:  # replies carry it as a JSON int
            raise ApiError(400, "invalid_criteria", f"{name}: must be at most {MAX_TOKENS}, got {value}")
    return criteria


def iso(value: datetime) -> str:
    return value.isoformat()
