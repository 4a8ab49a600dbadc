"""GET /v1/ranking and POST /v1/select: the explained ranking, and the one provider to use with its fallbacks.

The default ranking is the ranking service's Standing: its bytes are spliced from per-entry fragments when
something changed and then served as they are (gzipped once per body in a worker thread, with an ETag, so a
poller that sends If-None-Match gets a 304). A query repeated within a generation is served from the cache as
bytes (see RankingCache); anything else is ranked on request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from monitord.api.context import CONTEXT
from monitord.api.errors import JSON, ApiError
from monitord.api.replies import (
    COMPRESS_MIN_BYTES,
    GZIP_LEVEL,
    GZIPPED,
    VARY,
    accepts_gzip,
    cached_reply,
    criteria_from_query,
    int_param,
    parse_criteria,
)
from monitord.model import Criteria, RankedProvider, Ranking, SelectStrategy
from monitord.ranking import entry_json
from monitord.spread import DEFAULT_MARGIN

DEFAULT_FALLBACKS = 3
MAX_FALLBACKS = 100
MAX_LIMIT = 10_000
POOL_LIMIT = 64  # spreading strategies choose among at most this many of the best
MAX_SESSION_KEY = 256

T = TypeVar("T")


class ParsedRequests:
    """Criteria parsed from request bodies and query strings, by their exact text.

    Selection code sends the same few requests over and over; parsing one costs more than serving its cached
    answer. Only successful parses of short texts are kept (a bad request raises every time), at most
    max_entries of them, so the memory they take stays small whatever clients send.
    """

    def __init__(self, max_entries: int = 512, max_text_bytes: int = 1024) -> None:
        self.max_entries = max_entries
        self.max_text_bytes = max_text_bytes
        self._parsed: OrderedDict[tuple[str, str | bytes], Any] = OrderedDict()

    def get(self, kind: str, text: str | bytes, parse: Callable[[], T]) -> T:
        if len(text) > self.max_text_bytes:
            return parse()
        key = (kind, text)
        found = self._parsed.get(key)
        if found is None:
            found = self._parsed[key] = parse()
            if len(self._parsed) > self.max_entries:
                self._parsed.popitem(last=False)
        parsed: T = found
        return parsed


PARSED = web.AppKey("monitord.api.parsed_requests", ParsedRequests)


def ranking_body(result: Ranking) -> bytes:
    """The JSON of a ranking: each entry as entry_json renders it (RankedProvider.to_dict), spliced."""
    return b"".join((
        b'{"generated_at":', orjson.dumps(result.generated_at.isoformat()), b',"criteria":',
        orjson.dumps(result.criteria.to_dict()), b',"ranking":[', b",".join([entry_json(e) for e in result.entries]),
        b'],"excluded":', orjson.dumps(dict(sorted(result.excluded.items()))), b"}"))


async def ranking(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    cache = ctx.ranking
    if not request.query_string:  # the common case: the default ranking, already spliced
        body, tag = cache.default_body()
        headers = VARY
        if len(body) >= COMPRESS_MIN_BYTES and accepts_gzip(request):
            body, tag = await cache.default_gzip(body, tag, GZIP_LEVEL)  # may be the one before, for a few ms
            headers = GZIPPED
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag, **VARY})
        return web.Response(body=body, content_type=JSON, headers={"ETag": tag, **headers})
    query = request.query

    def parse() -> tuple[Criteria, int | None]:
        return criteria_from_query(query, others=("limit",)), int_param(query, "limit", 0, 1, MAX_LIMIT) or None

    criteria, limit = request.app[PARSED].get("query", request.query_string, parse)
    return cached_reply(request, cache, ("ranking", criteria, limit),
                        lambda: ranking_body(cache.ranking(criteria, limit=limit)))


@dataclass(frozen=True, slots=True)
class SelectRequest:
    """A parsed POST /v1/select body: the criteria and how to choose among the providers that meet them."""

    criteria: Criteria
    fallbacks: int = DEFAULT_FALLBACKS
    strategy: SelectStrategy = SelectStrategy.BEST
    session_key: str | None = None
    margin: float = DEFAULT_MARGIN


async def _select_request(request: web.Request) -> SelectRequest:
    body = await request.read()
    return request.app[PARSED].get("body", body, lambda: _parse_select(body))


def _parse_select(body: bytes) -> SelectRequest:
    raw: Any = {}
    if body.strip():
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_json", f"expected a JSON object of criteria, got {type(raw).__name__}")
    fallbacks = raw.pop("fallbacks", DEFAULT_FALLBACKS)
    if isinstance(fallbacks, bool) or not isinstance(fallbacks, int) or not 0 <= fallbacks <= MAX_FALLBACKS:
        raise ApiError(400, "invalid_criteria", f"fallbacks: expected a whole number from 0 to {MAX_FALLBACKS}, "
                                                f"got {fallbacks!r}")
    strategy_text = raw.pop("strategy", None)
    strategy = SelectStrategy.BEST
    if strategy_text is not None:
        try:
            strategy = SelectStrategy(strategy_text)
        except ValueError:
            allowed = ", ".join(member.value for member in SelectStrategy)
            raise ApiError(400, "invalid_criteria", f"strategy: {strategy_text!r} is not one of {allowed}") \
                from None
    session_key = raw.pop("session_key", None)
    if session_key is not None and (not isinstance(session_key, str) or not session_key.strip()
                                    or len(session_key) > MAX_SESSION_KEY):
        raise ApiError(400, "invalid_criteria", f"session_key: expected a non-empty string of at most "
                                                f"{MAX_SESSION_KEY} characters")
    margin = raw.pop("margin", DEFAULT_MARGIN)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin <= 1.0:
        raise ApiError(400, "invalid_criteria", f"margin: expected a number from 0 to 1, got {margin!r}")
    return SelectRequest(parse_criteria(raw), fallbacks, strategy, session_key, float(margin))


async def select(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    wanted = await _select_request(request)
    criteria, fallbacks, strategy = wanted.criteria, wanted.fallbacks, wanted.strategy
    cache = ctx.ranking
    spreads = strategy is not SelectStrategy.BEST or wanted.session_key is not None
    result = cache.ranking(criteria, limit=max(fallbacks + 1, POOL_LIMIT) if spreads else fallbacks + 1)
    entries = result.entries
    if not entries:
        raise ApiError(503, "no_provider", _no_provider_message(result), details={
            "criteria": criteria.to_dict(),
            "excluded": {name: list(reasons) for name, reasons in sorted(result.excluded.items())},
        })
    index = ctx.spreader.choose(entries, strategy, key=criteria, session_key=wanted.session_key,
                                margin=wanted.margin) if spreads else 0
    chosen = entries[index]

    def render() -> bytes:
        # spliced from the entries' JSON (kept per generation): what orjson.dumps of the whole object gives
        others: tuple[RankedProvider, ...] = (*entries[:index], *entries[index + 1:])
        fragment = cache.fragment
        return b"".join((
            b'{"generated_at":', orjson.dumps(result.generated_at.isoformat()), b',"provider":', fragment(chosen),
            b',"fallbacks":[', b",".join([fragment(entry) for entry in others[:fallbacks]]), b'],"criteria":',
            orjson.dumps(criteria.to_dict()), b',"strategy":', orjson.dumps(strategy.value), b"}"))

    # one rendering per chosen provider and generation, whichever request chose it
    return cached_reply(request, cache, ("select", criteria, fallbacks, strategy, chosen.provider), render)


def _no_provider_message(result: Ranking) -> str:
    if not result.excluded:
        return "no provider is configured for these criteria"
    return f"no provider matches the criteria ({len(result.excluded)} excluded; see details.excluded)"
