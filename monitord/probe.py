"""Run one adapter against one provider and turn every outcome into a ProbeResult.

The one place that applies timeouts, retries with backoff, the body cap, auth headers and timings, and the one
place that classifies failures. `probe_provider` never raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
import yarl

from monitord.model import ErrorClass, HttpCall, Identity, ProbeResult, ProviderSpec, Status
from monitord.providers.base import Adapter, HttpResponse, Observation, ProbeError, optional_get
from monitord.providers.identity import (
    ACCEPTS_ANY,
    AFTER_FAILURE_PATHS,
    Sighting,
    detect,
    identify,
    mismatch,
    sight,
)

log = structlog.get_logger("monitord.probe")

# Retrying these can help within the budget: a stale keep-alive socket, a restarting server, a brief 5xx.
RETRYABLE = frozenset({ErrorClass.REFUSED, ErrorClass.CONNECTION, ErrorClass.TIMEOUT, ErrorClass.HTTP_5XX})
# Failures another server on the port would cause (a route it lacks, a body of another shape): after one of these,
# ask what answered before calling the provider down. Not after 401/403: a wrong key is far likelier than a wrong
# server, and one that wants a key has mostly named itself in the answers already read (they are always checked).
IDENTIFY_AFTER = frozenset({ErrorClass.HTTP_4XX, ErrorClass.BAD_PAYLOAD})
_CHUNK = 64 * 1024
_ANSWERED = frozenset({Status.UP, Status.DEGRADED})
MAX_REDIRECTS = 5  # requests per call, the first included
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_session(*, limit: int = 100) -> aiohttp.ClientSession:
    """The daemon's one client session; its connector measures connect time (see _TimedConnector)."""
    connector = _TimedConnector(limit=limit, limit_per_host=4, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=True,
        # Providers are reached by IP or local names; never send cookies one server set to another.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "monitord"},
    )


# The _Timing of the request the current task is making. A contextvar, not an aiohttp trace config: a trace config
# makes aiohttp build trace objects and send eight signals on every request, a fifth of a probe's own CPU, to learn
# one figure that only new connections have.
_TIMING: contextvars.ContextVar[_Timing | None] = contextvars.ContextVar("monitord_probe_timing", default=None)


class _TimedConnector(aiohttp.TCPConnector):
    """Adds the time spent opening a connection (DNS, TCP, TLS) to the current request's _Timing."""

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - aiohttp's
        timing = _TIMING.get()
        if timing is None:
            return await super()._create_connection(req, traces, timeout)
        started = time.perf_counter()
        try:
            return await super()._create_connection(req, traces, timeout)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            timing.connect_ms = elapsed if timing.connect_ms is None else timing.connect_ms + elapsed


@dataclass(slots=True)
class _Timing:
    connect_ms: float | None = None


@dataclass(slots=True)
class _Attempt:
    """What the requests of one attempt recorded."""

    calls: list[HttpCall] = field(default_factory=list)
    responses: list[HttpResponse] = field(default_factory=list)  # what answered, for identifying the server
    connect_ms: float | None = None
    ttfb_ms: float | None = None
    backoff_s: float = 0.0  # slept between the attempts before this one (inside total_ms, outside its latency)
    started: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class AiohttpProbeHttp:
    """ProbeHttp over the shared session for one attempt: auth, headers, deadline, body cap, timings."""

    def __init__(self, session: aiohttp.ClientSession, spec: ProviderSpec, deadline: float,
                 ssl_context: ssl.SSLContext | bool, attempt: _Attempt) -> None:
        self._session = session
        self._spec = spec
        self._deadline = deadline
        self._ssl = ssl_context
        self._attempt = attempt

    async def get(self, path: str, *, authenticated: bool = True) -> HttpResponse:
        return await self._request("GET", path, None, authenticated)

    async def post(self, path: str, payload: Any, *, authenticated: bool = True) -> HttpResponse:
        return await self._request("POST", path, payload, authenticated)

    def _headers(self, authenticated: bool) -> dict[str, str]:
        return request_headers(self._spec, authenticated=authenticated)

    async def _request(self, method: str, path: str, payload: Any, authenticated: bool) -> HttpResponse:
        remaining = self._deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        timing = _Timing()
        started = time.perf_counter()
        status: int | None = None
        url = yarl.URL(self._spec.base_url + path, encoded=True)
        origin = url.origin()
        headers = self._headers(authenticated)
        token = _TIMING.set(timing)
        try:
            for _request in range(MAX_REDIRECTS):
                async with self._session.request(
                    method, url, json=payload, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=max(self._deadline - time.perf_counter(), 0.001)),
                    ssl=self._ssl,
                ) as resp:
                    status = resp.status
                    if self._attempt.ttfb_ms is None:
                        self._attempt.ttfb_ms = (time.perf_counter() - started) * 1000
                    location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
                    if location is None:
                        body = await _read_capped(resp, self._spec.max_body_bytes, path)
                        response = HttpResponse(status=resp.status, headers=dict(resp.headers), body=body,
                                                path=path)
                        self._attempt.responses.append(response)
                        return response
                url = resp.url.join(yarl.URL(location))
                if url.origin() != origin:
                    # Another origin gets none of the configured headers and no key: only what any client sends.
                    headers = {}
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, payload = "GET", None
            raise ProbeError(ErrorClass.REDIRECT, f"{path}: too many redirects", status)
        finally:
            _TIMING.reset(token)
            self._attempt.calls.append(HttpCall(method, path, status, (time.perf_counter() - started) * 1000))
            if timing.connect_ms is not None:
                self._attempt.connect_ms = (self._attempt.connect_ms or 0.0) + timing.connect_ms


def request_headers(spec: ProviderSpec, *, authenticated: bool = True) -> dict[str, str]:
    """The configured headers plus the api key; what every request to a provider carries."""
    headers = {name: value.reveal() for name, value in spec.headers}
    if authenticated and spec.api_key:
        # Every server in the reference accepts a Bearer token (TabbyAPI, LocalAI and llama.cpp also
        # take X-Api-Key); a user-set Authorization header wins.
        headers.setdefault("Authorization", f"Bearer {spec.api_key.reveal()}")
    return headers


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, path: str) -> bytes:
    """Read the body but never more than `cap` bytes: a bigger one is TOO_LARGE, not a memory spike."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        resp.close()
        raise ProbeError(ErrorClass.TOO_LARGE, f"{path}: body of {declared} bytes exceeds the {cap}-byte cap",
                         resp.status)
    if declared is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # exactly the declared bytes, within the cap: no need to count chunks
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > cap:
            resp.close()
            raise ProbeError(ErrorClass.TOO_LARGE, f"{path}: body exceeds the {cap}-byte cap", resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def ssl_context_for(spec: ProviderSpec) -> ssl.SSLContext | bool:
    """True: default verification; False: `insecure`; a context when a CA file is configured.

    Raises OSError / ssl.SSLError when the CA file cannot be read.
    """
    if not spec.base_url.startswith("https"):
        return True
    if not spec.verify_tls:
        return False
    if spec.ca_file:
        return _ca_context(spec.ca_file, os.stat(spec.ca_file).st_mtime_ns)
    return True


@functools.lru_cache(maxsize=64)
def _ca_context(ca_file: str, _mtime_ns: int) -> ssl.SSLContext:
    """One context per CA file version: aiohttp pools connections per context, so a new one each probe would
    cost a full TLS handshake every time (and leave an idle connection behind)."""
    return ssl.create_default_context(cafile=ca_file)


def classify(exc: BaseException) -> tuple[ErrorClass, str]:
    """The one place an exception becomes a failure class and a short message."""
    if isinstance(exc, ProbeError):
        return exc.error_class, exc.message
    if isinstance(exc, TimeoutError):
        return ErrorClass.TIMEOUT, "timed out"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return ErrorClass.REDIRECT, "too many redirects"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _classify_connect(exc)  # before its base ClientSSLError: names the failed certificate check
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return ErrorClass.TLS, f"TLS handshake failed: {_short(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _classify_connect(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ErrorClass.CONNECTION, "server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorClass.CONNECTION, "response body cut short"
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser errors span lines and quote the server's bytes: keep one short line
        return ErrorClass.CONNECTION, f"malformed HTTP response: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ErrorClass.CONNECTION, _short(exc)
    return ErrorClass.INTERNAL, f"{type(exc).__name__}: {_short(exc)}"


def _classify_connect(exc: aiohttp.ClientConnectorError) -> tuple[ErrorClass, str]:
    where = f"{exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ErrorClass.DNS, f"name did not resolve: {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ErrorClass.TLS, f"certificate rejected by {where}: {exc.certificate_error}"
    if exc.os_error.errno == errno.ECONNREFUSED or isinstance(exc.os_error, ConnectionRefusedError):
        return ErrorClass.REFUSED, f"connection refused ({where})"
    return ErrorClass.CONNECTION, f"cannot connect to {where}: {exc.os_error.strerror or _short(exc)}"


def _short(exc: BaseException) -> str:
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _scrub(message: str, spec: ProviderSpec) -> str:
    """Errors can echo request data; make sure no configured secret survives into the record."""
    secrets = [spec.api_key.reveal()] if spec.api_key else []
    secrets += [value.reveal() for _, value in spec.headers]
    for secret in secrets:
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def scrub(message: str, spec: ProviderSpec) -> str:
    """`message` with every configured secret of `spec` replaced by ***."""
    return _scrub(message, spec)


def judge(observation: Observation, spec: ProviderSpec) -> tuple[Status, ErrorClass | None, str | None]:
    """Checks every type shares, on top of what the adapter saw: no models, configured models missing."""
    status, error_class, message = observation.status, observation.error_class, observation.message
    if status is not Status.UP or not observation.models_authoritative:
        return status, error_class, message
    served = {m.id for m in observation.models}
    if not served:
        return Status.DEGRADED, ErrorClass.EMPTY_MODELS, "serves no model"
    missing = [m for m in spec.models if m not in served]
    if missing:
        return Status.DEGRADED, ErrorClass.MODEL_MISSING, f"configured model(s) not served: {', '.join(missing)}"
    return status, error_class, message


async def probe_provider(spec: ProviderSpec, adapter: Adapter, session: aiohttp.ClientSession, *,
                         now: Callable[[], datetime] = utcnow) -> ProbeResult:
    """Probe once (with retries inside `spec.timeout_s`). Never raises, except on cancellation."""
    started_at = now()
    started = time.perf_counter()
    deadline = started + spec.timeout_s
    calls: list[HttpCall] = []
    try:
        ssl_context = ssl_context_for(spec)
    except (OSError, ssl.SSLError) as exc:
        return _result(spec, started_at, started, Status.DOWN, ErrorClass.TLS,
                       f"cannot use ca_file {spec.ca_file}: {_short(exc)}", calls, _Attempt(), 0)
    attempts = 0
    slept_s = 0.0
    while True:
        attempts += 1
        attempt = _Attempt(backoff_s=slept_s)
        http = AiohttpProbeHttp(session, spec, deadline, ssl_context, attempt)
        try:
            remaining = max(deadline - time.perf_counter(), 0.0)
            observation = await asyncio.wait_for(adapter.observe(http, spec), remaining)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure below us is classified here, once
            calls += attempt.calls
            error_class, message = classify(exc)
            if error_class is ErrorClass.INTERNAL:
                log.exception("probe.internal_error", provider=spec.name, type=spec.type)
            backoff = spec.retry_backoff_s * 2 ** (attempts - 1)
            if (error_class in RETRYABLE and attempts <= spec.max_retries
                    and time.perf_counter() + backoff < deadline):
                await asyncio.sleep(backoff)
                slept_s += backoff
                continue
            status = Status.LOADING if error_class is ErrorClass.LOADING else Status.DOWN
            http_status = calls[-1].status if calls and calls[-1].status is not None else getattr(
                exc, "http_status", None)
            sighting = identify(attempt.responses)
            if error_class in IDENTIFY_AFTER and spec.type not in ACCEPTS_ANY:  # those accept any server anyway
                asked = len(attempt.calls)
                sighting = await detect(http, spec, list(attempt.responses), AFTER_FAILURE_PATHS)
                calls += attempt.calls[asked:]
            hint = mismatch(spec.type, sighting)
            identity = sighting.identity if sighting else None
            if hint is not None:
                return _result(spec, started_at, started, Status.MISCONFIGURED, ErrorClass.WRONG_SERVER,
                               f"{hint}; the probe failed with: {_scrub(message, spec)}", calls, attempt, attempts,
                               http_status=http_status, identity=identity)
            return _result(spec, started_at, started, status, error_class, _scrub(message, spec), calls,
                           attempt, attempts, http_status=http_status, identity=identity)
        sighting = identify(attempt.responses)
        if observation.identity is not None:
            sighting = Sighting(observation.identity, strong=True)
        elif sighting is None and spec.type not in ACCEPTS_ANY and observation.status in _ANSWERED:
            # it answered as this type would, but nothing in it told who answered: `/` names several servers
            root = await optional_get(http, "/", spec)
            sighting = sight(root) if root is not None else None
        calls += attempt.calls
        hint = mismatch(spec.type, sighting)
        if hint is not None:
            return _result(spec, started_at, started, Status.MISCONFIGURED, ErrorClass.WRONG_SERVER, hint, calls,
                           attempt, attempts, identity=sighting.identity if sighting else None)
        status, judged_class, judged_message = judge(observation, spec)
        return _result(spec, started_at, started, status, judged_class,
                       _scrub(judged_message, spec) if judged_message else None, calls, attempt, attempts,
                       observation=observation, identity=sighting.identity if sighting else None)


def _result(spec: ProviderSpec, started_at: datetime, started: float, status: Status,
            error_class: ErrorClass | None, message: str | None, calls: list[HttpCall], last: _Attempt,
            attempts: int, *, http_status: int | None = None,
            observation: Observation | None = None, identity: Identity | None = None) -> ProbeResult:
    last_status = calls[-1].status if calls else None
    if http_status is not None:  # the failing request's, not that of a later identifying request
        last_status = http_status
    elif observation is not None:  # an answer: the last good request's (optional routes may have said 404)
        last_status = next((c.status for c in reversed(calls) if c.status is not None and 200 <= c.status < 300),
                           last_status)
    return ProbeResult(
        provider=spec.name,
        provider_type=spec.type,
        started_at=started_at,
        status=status,
        total_ms=(time.perf_counter() - started) * 1000,
        error_class=error_class,
        error=message,
        connect_ms=last.connect_ms,
        ttfb_ms=last.ttfb_ms,
        http_status=last_status if last_status is not None else http_status,
        calls=tuple(calls),
        models=observation.models[: spec.max_models] if observation else (),
        server_version=(observation.server_version if observation else None) or (
            identity.version if identity else None),
        attempts=attempts,
        backoff_ms=last.backoff_s * 1000,
        last_attempt_ms=last.elapsed_ms(),
        capacity=observation.capacity if observation else None,
        models_known=observation.models_known if observation else True,
        identity=identity,
    )
