"""Async client of the monitord query API, for selection code: every call has a timeout, and when the daemon is
briefly unreachable the last good answer to the same question is returned, marked stale, instead of failing.

`attempts(choice)` wraps the caller's own request to each candidate: it measures it, reports the outcome
(POST /v1/report, in the background) and, after a failure, hands out the next fallback.

    async with MonitordClient("http://127.0.0.1:8765", token=os.environ.get("MONITORD_API_TOKEN")) as monitord:
        choice = await monitord.select(task_type="chat", strategy="weighted")
        async for call in monitord.attempts(choice):   # best first; the next one only after a failure
            async with call:                           # a timeout, refusal or HTTP error is reported, then absorbed
                async with http.post(call.chat_url, json={"model": call.model, "messages": messages}) as resp:
                    resp.raise_for_status()
                    call.first_token()
                    answer = await resp.json()
                call.completion_tokens = answer["usage"]["completion_tokens"]
        # AllCandidatesFailed when every candidate failed
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from monitord.model import Criteria, ErrorClass, Evidence, RankedProvider, Secret, SelectStrategy, Status

__all__ = [
    "AllCandidatesFailed",
    "ApiError",
    "Attempt",
    "ClientError",
    "DaemonUnavailable",
    "MonitordClient",
    "NoProviderError",
    "ProviderAnswer",
    "ProvidersAnswer",
    "RankingAnswer",
    "Selection",
    "ServerEvent",
    "classify_failure",
]

log = structlog.get_logger("monitord.client")

DEFAULT_URL = "http://127.0.0.1:8765"


class ClientError(Exception):
    """Base of the errors this client raises."""


class ApiError(ClientError):
    """The daemon answered with an error (the API's {"error": {...}} shape)."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details or {}


class NoProviderError(ApiError):
    """No provider matches the criteria now; `excluded` says why each one was left out."""

    @property
    def excluded(self) -> Mapping[str, list[str]]:
        excluded: Mapping[str, list[str]] = self.details.get("excluded", {})
        return excluded


class DaemonUnavailable(ClientError):
    """The daemon did not answer and no good answer recent enough (max_stale_s) is at hand."""


class AllCandidatesFailed(ClientError):
    """Every candidate of a selection failed; `attempts` holds each one with its error class and exception."""

    def __init__(self, attempts: tuple[Attempt, ...]) -> None:
        tried = ", ".join(f"{a.provider} ({a.error_class.value if a.error_class else 'failed'})" for a in attempts)
        super().__init__(f"every candidate failed: {tried}" if attempts else "the selection had no candidate")
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class Selection:
    """The provider to use and what to fall back to. `stale`: the daemon did not answer; this is the last good
    answer, received `age_s` seconds ago."""

    provider: RankedProvider
    fallbacks: tuple[RankedProvider, ...]
    criteria: Criteria
    generated_at: datetime
    stale: bool = False
    age_s: float = 0.0
    strategy: SelectStrategy = SelectStrategy.BEST

    @property
    def candidates(self) -> tuple[RankedProvider, ...]:
        return (self.provider, *self.fallbacks)


@dataclass(frozen=True, slots=True)
class RankingAnswer:
    generated_at: datetime
    criteria: Criteria
    entries: tuple[RankedProvider, ...]
    excluded: Mapping[str, tuple[str, ...]]
    stale: bool = False
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ProvidersAnswer:
    generated_at: datetime
    providers: tuple[Mapping[str, Any], ...]  # the documented Provider objects, by name
    stale: bool = False
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    provider: Mapping[str, Any]
    stale: bool = False
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerEvent:
    id: int | None
    kind: str  # provider.status_changed, ranking.best_changed, shutdown, lagged
    data: Mapping[str, Any]


_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


class _Unanswered(Exception):
    """Internal: the daemon gave no usable answer (transport failure, timeout, 5xx)."""


class MonitordClient:
    """Client of one monitord daemon. Use as an async context manager, or call `close()`.

    :param base_url: the API address, e.g. http://127.0.0.1:8765 (config `api.listen`)
    :param token: the bearer token (`api.token`), when the daemon requires one
    :param timeout_s: limit for each call, connection included
    :param max_stale_s: how old a last good answer may be to stand in for a missing one; 0 disables that
    :param session: an aiohttp session to share (not closed by this client)
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | Secret | None = None, timeout_s: float = 2.0,
                 max_stale_s: float = 300.0, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        secret = token.reveal() if isinstance(token, Secret) else token
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.timeout_s = timeout_s
        self.max_stale_s = max_stale_s
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._last_good: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._reports: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"MonitordClient({self.base_url!r}, token={'***' if self._headers else None})"

    async def __aenter__(self) -> MonitordClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.flush()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # --- the questions ---

    async def select(self, criteria: Criteria | Mapping[str, Any] | None = None, *, fallbacks: int = 3,
                     strategy: SelectStrategy | str | None = None, session_key: str | None = None,
                     **fields: Any) -> Selection:
        """The provider to use for the criteria and up to `fallbacks` next ones.

        Criteria come as a Criteria, a mapping, or keyword fields (task_type=..., required_capabilities=[...]).
        `strategy`: best (default), weighted, least_loaded or round_robin; `session_key`: the same key gets the
        same provider while it stays eligible.
        Raises NoProviderError when none matches, ApiError for a rejected request, DaemonUnavailable.
        """
        wanted = _criteria(criteria, fields)
        body: dict[str, Any] = {**_criteria_body(wanted), "fallbacks": fallbacks}
        if strategy is not None:
            body["strategy"] = SelectStrategy(strategy).value
        if session_key is not None:
            body["session_key"] = session_key
        key = ("select", orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode())
        raw, stale, age_s = await self._ask(key, "POST", "/v1/select", json=body)
        return Selection(
            provider=_entry(raw["provider"]),
            fallbacks=tuple(_entry(e) for e in raw["fallbacks"]),
            criteria=Criteria.from_mapping(_present(raw["criteria"])),
            generated_at=datetime.fromisoformat(raw["generated_at"]),
            stale=stale, age_s=age_s, strategy=SelectStrategy(raw.get("strategy", "best")),
        )

    async def ranking(self, criteria: Criteria | Mapping[str, Any] | None = None, *, limit: int | None = None,
                      **fields: Any) -> RankingAnswer:
        """Every matching provider best first, with score components, and why the others were left out."""
        wanted = _criteria(criteria, fields)
        params = _criteria_params(wanted)
        if limit is not None:
            params.append(("limit", str(limit)))
        raw, stale, age_s = await self._ask(("ranking", *(f"{k}={v}" for k, v in params)), "GET", "/v1/ranking",
                                            params=params)
        return RankingAnswer(
            generated_at=datetime.fromisoformat(raw["generated_at"]),
            criteria=Criteria.from_mapping(_present(raw["criteria"])),
            entries=tuple(_entry(e) for e in raw["ranking"]),
            excluded={name: tuple(reasons) for name, reasons in raw["excluded"].items()},
            stale=stale, age_s=age_s,
        )

    async def providers(self) -> ProvidersAnswer:
        raw, stale, age_s = await self._ask(("providers",), "GET", "/v1/providers")
        return ProvidersAnswer(datetime.fromisoformat(raw["generated_at"]), tuple(raw["providers"]), stale, age_s)

    async def provider(self, name: str) -> ProviderAnswer:
        """One provider's live state; ApiError with code provider_not_found for an unknown name."""
        raw, stale, age_s = await self._ask(("provider", name), "GET", f"/v1/providers/{_quote(name)}")
        return ProviderAnswer(raw, stale, age_s)

    async def events(self, providers: tuple[str, ...] = (), *, idle_timeout_s: float = 60.0,
                     last_event_id: int | None = None,
                     on_open: Callable[[], None] | None = None) -> AsyncIterator[ServerEvent]:
        """Follow GET /v1/events until the daemon closes the stream. No fallback: raises DaemonUnavailable.

        `on_open` is called once the daemon has accepted the stream (before any event arrives).
        """
        params = [("provider", name) for name in providers]
        headers = dict(self._headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=idle_timeout_s)
        try:
            async with self._http().get(f"{self.base_url}/v1/events", params=params, headers=headers,
                                        timeout=timeout) as response:
                if response.status != 200:
                    raise _api_error(response.status, await response.read())
                if on_open is not None:
                    on_open()
                async for event in _parse_stream(response.content):
                    yield event
        except _UNREACHABLE as exc:
            raise DaemonUnavailable(f"{self.base_url}: {_describe(exc)}") from exc

    async def report(self, provider: str, outcome: ErrorClass | str = "ok", *, model: str | None = None,
                     ttft_ms: float | None = None, completion_tokens: int | None = None,
                     duration_ms: float | None = None, client: str | None = None) -> Mapping[str, Any]:
        """Tell the daemon how one real request went (POST /v1/report): `ok` or the failure's error class.

        Raises ApiError (400 invalid_report, 404 provider_not_found) or DaemonUnavailable.
        """
        body: dict[str, Any] = {"provider": provider,
                                "outcome": outcome.value if isinstance(outcome, ErrorClass) else outcome}
        for key, value in (("model", model), ("ttft_ms", ttft_ms), ("completion_tokens", completion_tokens),
                           ("duration_ms", duration_ms), ("client", client)):
            if value is not None:
                body[key] = value
        try:
            answer: Mapping[str, Any] = await self._request("POST", "/v1/report", json=body)
        except _Unanswered as exc:
            raise DaemonUnavailable(f"{self.base_url}/v1/report: {exc}") from exc.__cause__
        return answer

    async def attempts(self, choice: Selection, *, client: str | None = None) -> AsyncIterator[Attempt]:
        """Each candidate of `choice` in turn, best first, until one succeeds; use `async with` on each.

        The `async with` block measures the caller's request and reports its outcome in the background; a failure
        the block raises (timeout, refused, connection, HTTP error: see classify_failure) is reported and absorbed,
        and the next candidate comes. Other exceptions are the caller's own: they propagate, unreported.
        Raises AllCandidatesFailed when every candidate failed.
        """
        failed: list[Attempt] = []
        for candidate in choice.candidates:
            attempt = Attempt(self, candidate, client=client, clock=self._clock)
            yield attempt
            if attempt.ok is None:
                raise RuntimeError("wrap the request to each candidate in `async with attempt:`")
            if attempt.ok:
                return
            failed.append(attempt)
        raise AllCandidatesFailed(tuple(failed))

    def _report_later(self, attempt: Attempt) -> None:
        task = asyncio.get_running_loop().create_task(self._send_report(attempt))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _send_report(self, attempt: Attempt) -> None:
        try:
            await self.report(attempt.provider, attempt.error_class or "ok", model=attempt.model,
                              ttft_ms=attempt.ttft_ms, completion_tokens=attempt.completion_tokens,
                              duration_ms=attempt.duration_ms, client=attempt.client)
        except ClientError as exc:  # reporting is best effort: the caller's request already went its way
            log.warning("client.report_failed", provider=attempt.provider, error=str(exc))

    async def flush(self) -> None:
        """Wait for the reports still being sent (close() does too)."""
        while self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)

    # --- plumbing ---

    async def _ask(self, key: tuple[str, ...], method: str, path: str, **request: Any) -> tuple[Any, bool, float]:
        try:
            raw = await self._request(method, path, **request)
        except _Unanswered as exc:
            remembered = self._last_good.get(key)
            if remembered is not None and self._clock() - remembered[0] <= self.max_stale_s:
                age_s = self._clock() - remembered[0]
                log.warning("client.stale_answer", url=self.base_url, path=path, age_s=round(age_s, 1),
                            error=str(exc))
                return remembered[1], True, age_s
            raise DaemonUnavailable(f"{self.base_url}{path}: {exc}") from exc.__cause__
        self._last_good[key] = (self._clock(), raw)
        return raw, False, 0.0

    async def _request(self, method: str, path: str, **request: Any) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self._http().request(method, f"{self.base_url}{path}", headers=self._headers,
                                            timeout=timeout, **request) as response:
                body = await response.read()
        except _UNREACHABLE as exc:
            raise _Unanswered(_describe(exc)) from exc
        if response.status >= 500:
            error = _api_error(response.status, body)
            if error.code == "no_provider":  # an answer, not an outage
                raise error
            raise _Unanswered(str(error))
        if response.status >= 400:
            raise _api_error(response.status, body)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Unanswered(f"not JSON: {exc}") from exc


class Attempt:
    """One request to one candidate, as an async context manager: measures it and reports how it went.

    Inside the block: `first_token()` when the first token arrives (TTFT), `completion_tokens = n`, and
    `fail(error_class)` for a failure seen without an exception (e.g. a 503 read as a value).
    """

    def __init__(self, monitord: MonitordClient, candidate: RankedProvider, *, client: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.candidate = candidate
        self.client = client
        self.ok: bool | None = None  # None until the block ends
        self.error_class: ErrorClass | None = None
        self.exception: BaseException | None = None
        self.completion_tokens: int | None = None
        self.ttft_ms: float | None = None
        self.duration_ms: float | None = None
        self._monitord = monitord
        self._clock = clock
        self._started = 0.0
        self._failed: ErrorClass | None = None

    def __repr__(self) -> str:
        return f"Attempt({self.provider!r}, ok={self.ok})"

    @property
    def provider(self) -> str:
        return self.candidate.provider

    @property
    def api_base(self) -> str | None:
        return self.candidate.api_base

    @property
    def chat_url(self) -> str | None:
        return self.candidate.chat_url

    @property
    def model(self) -> str | None:
        return self.candidate.model

    def first_token(self) -> None:
        """Mark the first token's arrival (only the first call counts)."""
        if self.ttft_ms is None:
            self.ttft_ms = (self._clock() - self._started) * 1000.0

    def fail(self, error_class: ErrorClass | str) -> None:
        """Count this attempt as failed without raising (the next candidate comes after the block)."""
        self._failed = ErrorClass(error_class)

    async def __aenter__(self) -> Attempt:
        self._started = self._clock()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        self.duration_ms = (self._clock() - self._started) * 1000.0
        if exc is not None:
            error_class = classify_failure(exc)
            if error_class is None:  # the caller's own bug, or a cancellation: not the provider's doing
                self.ok, self.exception = False, exc
                return False
            self._failed, self.exception = error_class, exc
        self.ok = self._failed is None
        self.error_class = self._failed
        self._monitord._report_later(self)
        return exc is not None


_STATUS_CLASSES = {401: ErrorClass.AUTH, 403: ErrorClass.AUTH, 429: ErrorClass.RATE_LIMITED}


def _status_class(status: int) -> ErrorClass:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    return ErrorClass.HTTP_5XX if status >= 500 else ErrorClass.HTTP_4XX


def classify_failure(exc: BaseException) -> ErrorClass | None:
    """The error class of a failed request to a provider; None when the exception is not the provider's doing.

    aiohttp's and the standard library's errors by type; other HTTP clients (httpx, openai) by their status code
    attribute or their class names (…Timeout…, …Connect…).
    """
    if not isinstance(exc, Exception):
        return None  # CancelledError, KeyboardInterrupt
    if isinstance(exc, TimeoutError):
        return ErrorClass.TIMEOUT
    if isinstance(exc, aiohttp.ClientResponseError):
        return _status_class(exc.status)
    if isinstance(exc, aiohttp.ClientSSLError):
        return ErrorClass.TLS
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorClass.REFUSED if exc.os_error.errno == errno.ECONNREFUSED else ErrorClass.CONNECTION
    if isinstance(exc, ConnectionRefusedError):
        return ErrorClass.REFUSED
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError | ConnectionError):
        return ErrorClass.CONNECTION
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return _status_class(status)
    names = " ".join(kind.__name__ for kind in type(exc).__mro__)
    if "Timeout" in names:
        return ErrorClass.TIMEOUT
    if "Connect" in names or "RemoteProtocol" in names:
        return ErrorClass.CONNECTION
    return None


def _describe(exc: BaseException) -> str:
    return f"timed out ({type(exc).__name__})" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"


def _quote(name: str) -> str:
    return quote(name, safe="")


def _api_error(status: int, body: bytes) -> ApiError:
    try:
        error = orjson.loads(body)["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code, message, details = f"http_{status}", body[:200].decode("utf-8", "replace"), None
    kind = NoProviderError if code == "no_provider" else ApiError
    return kind(status, code, message, details)


def _criteria(criteria: Criteria | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> Criteria:
    if isinstance(criteria, Criteria):
        if fields:
            raise TypeError("pass criteria either as a Criteria or as keyword fields, not both")
        return criteria
    return Criteria.from_mapping({**(criteria or {}), **fields})


def _present(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a criteria dict that say something (empty lists and None mean 'not given')."""
    return {key: value for key, value in raw.items() if value is not None and value != []}


def _criteria_body(criteria: Criteria) -> dict[str, Any]:
    return _present(criteria.to_dict())


def _criteria_params(criteria: Criteria) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for key, value in _criteria_body(criteria).items():
        if isinstance(value, list):
            name = "capability" if key == "required_capabilities" else "provider"
            params.extend((name, item) for item in value)
        else:
            params.append((key, str(value)))
    return params


def _entry(raw: Mapping[str, Any]) -> RankedProvider:
    return RankedProvider(
        provider=raw["provider"], type=raw["type"], score=float(raw["score"]), status=Status(raw["status"]),
        components={key: float(value) for key, value in raw["components"].items()},
        models=tuple(raw["models"]),
        endpoint=str(raw.get("endpoint") or ""), api_base=raw.get("api_base"), chat_url=raw.get("chat_url"),
        model=raw.get("model"),
        evidence={key: Evidence(int(value["samples"]), value.get("age_s"), str(value["source"]), value.get("model"))
                  for key, value in (raw.get("evidence") or {}).items()},
        suspect=bool(raw.get("suspect", False)), saturated=bool(raw.get("saturated", False)),
    )


async def _parse_stream(content: aiohttp.StreamReader) -> AsyncIterator[ServerEvent]:
    """Server-Sent Events framing: fields until a blank line; comments (':') are keep-alives."""
    event_id: int | None = None
    kind = "message"
    data: list[str] = []
    async for raw_line in content:
        line = raw_line.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield ServerEvent(event_id, kind, orjson.loads("\n".join(data)))
                if kind in ("shutdown", "lagged"):
                    return
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = int(value) if value.isdigit() else None
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)
    # the stream ended without a shutdown event: the connection was cut
    raise aiohttp.ClientPayloadError("event stream ended unexpectedly")
