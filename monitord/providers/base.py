"""The adapter contract and the pure helpers every adapter shares.

An adapter knows *what* to ask a server and *how* to read its answers. It never owns an HTTP session,
never sleeps, never retries and never stores: `probe.py` does all of that around `observe`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from monitord.model import Capacity, ErrorClass, Identity, ModelInfo, ProviderSpec, Status

# Share of a probe's budget an optional route (capacity, identity) may use: a slow metrics route must never eat the
# time the health and model routes need, nor turn a healthy server's probe into a timeout.
OPTIONAL_BUDGET_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class TypeDefaults:
    """What a provider type looks like when the config says nothing more."""

    port: int
    models_path: str = "/v1/models"
    health_path: str | None = None  # None: the server has no health route
    chat_path: str = "/v1/chat/completions"
    api_base_path: str | None = "/v1"  # the OpenAI-compatible API under the base URL; None: the server has none
    capabilities: frozenset[str] = frozenset({"chat", "completion", "streaming"})
    streaming: bool = True
    scheme: str = "http"
    summary: str = ""  # one line for the docs


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read (size-capped) response."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    path: str
    # the parsed body, once someone asked (the adapter, then the identity check): parsed once per answer
    _parsed: Any = field(default=None, compare=False, repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """Parsed JSON body; a body that is not JSON (HTML, text, truncated) raises BAD_PAYLOAD. Callers share
        the parsed value: read it, never change it."""
        parsed = self.json_or_none()
        if parsed is None and self._parsed is _NOT_JSON:
            kind = "HTML" if self.body.lstrip()[:1] == b"<" else "non-JSON"
            raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{self.path}: {kind} body where JSON was expected",
                             self.status)
        return parsed

    def json_or_none(self) -> Any:
        """The parsed JSON body, None when it is not JSON (or is JSON null)."""
        parsed = self._parsed
        if parsed is None:
            try:
                parsed = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                parsed = _NOT_JSON
            object.__setattr__(self, "_parsed", _JSON_NULL if parsed is None else parsed)
        elif parsed is _JSON_NULL:
            return None
        return None if parsed is _NOT_JSON else parsed


_NOT_JSON = object()  # HttpResponse._parsed of a body that is not JSON
_JSON_NULL = object()  # ... of a body that is JSON null


class ProbeHttp(Protocol):
    """HTTP as an adapter sees it: relative paths, auth and caps already applied by probe.py.

    Transport failures (refused, timeout, TLS, too large) raise; any HTTP status is returned.
    """

    async def get(self, path: str, *, authenticated: bool = True) -> HttpResponse: ...

    async def post(self, path: str, payload: Any, *, authenticated: bool = True) -> HttpResponse: ...


class ProbeError(Exception):
    """A classified failure an adapter or the HTTP layer found; probe.py turns it into a ProbeResult."""

    def __init__(self, error_class: ErrorClass, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class Observation:
    """What an adapter learned from a server that answered."""

    status: Status = Status.UP
    models: tuple[ModelInfo, ...] = ()
    server_version: str | None = None
    error_class: ErrorClass | None = None  # why status is not UP (LOADING, EMPTY_MODELS, ...)
    message: str | None = None
    # False where the server's list can legitimately miss the serving model (mlx-lm, LM Studio JIT):
    # probe.py then does not call an empty list or a missing configured model "degraded".
    models_authoritative: bool = True
    models_known: bool = True  # False: the list could not be read (models_or_unknown); the last known one stands
    capacity: Capacity | None = None  # None: the server publishes no load signal, or its route failed
    identity: Identity | None = None  # what the adapter's own answers say the server is


class Adapter(Protocol):
    """One API family. `observe` may raise ProbeError or transport errors; probe.py classifies them."""

    @property
    def defaults(self) -> TypeDefaults: ...

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation: ...


async def check_health(http: ProbeHttp, spec: ProviderSpec, defaults: TypeDefaults, *,
                       authenticated: bool = True) -> None:
    """GET the health route (configured, else the type's) when there is one; anything but 2xx raises."""
    path = spec.health_endpoint or defaults.health_path
    if path:
        expect_ok(await http.get(path, authenticated=authenticated))


async def optional_get(http: ProbeHttp, path: str, spec: ProviderSpec, *,
                       authenticated: bool = True) -> HttpResponse | None:
    """GET a route whose answer only enriches the result (capacity, identity); None when it cannot be read.

    Any failure here (transport, timeout, body cap) means "unknown", never a failed probe, and the request may use
    only OPTIONAL_BUDGET_SHARE of the probe budget. The caller still checks the status and the body.
    """
    try:
        return await asyncio.wait_for(http.get(path, authenticated=authenticated),
                                      spec.timeout_s * OPTIONAL_BUDGET_SHARE)
    except (ProbeError, TimeoutError, OSError, aiohttp.ClientError):
        return None


# Failures of a metadata route that say nothing about serving: a broken body, a server error on that one route.
METADATA_FAILURES = frozenset({ErrorClass.HTTP_5XX, ErrorClass.BAD_PAYLOAD, ErrorClass.TOO_LARGE})


def models_or_unknown(exc: ProbeError, health: HttpResponse) -> Observation:
    """For servers whose own health route already said "ready" (`health`): a model list that cannot be read leaves
    the models unknown (the provider stays up, unjudged) instead of failing the probe. Re-raises anything else
    (auth, 4xx), and when the "health" answer was an HTML page: a web page is no server's health answer."""
    if exc.error_class not in METADATA_FAILURES or health.body.lstrip()[:1] == b"<":
        raise exc
    return Observation(models_authoritative=False, models_known=False, message=f"models unknown: {exc.message}")


def models_path(spec: ProviderSpec, defaults: TypeDefaults) -> str:
    """The model-list route: configured, else the type's."""
    return spec.model_endpoint or defaults.models_path


def error_for_status(response: HttpResponse) -> ProbeError:
    """The ProbeError an unexpected HTTP status means, with the server's own message when it has one."""
    status = response.status
    if status in (401, 403):
        error_class = ErrorClass.AUTH
    elif status == 429:
        error_class = ErrorClass.RATE_LIMITED
    elif status >= 500:
        error_class = ErrorClass.HTTP_5XX
    else:
        error_class = ErrorClass.HTTP_4XX
    detail = server_message(response)
    message = f"{response.path}: HTTP {status}" + (f" {detail}" if detail else "")
    return ProbeError(error_class, message, status)


def expect_ok(response: HttpResponse) -> HttpResponse:
    """Return the response when it is 2xx, else raise its classified ProbeError."""
    if 200 <= response.status < 300:
        return response
    raise error_for_status(response)


def server_message(response: HttpResponse, limit: int = 160) -> str:
    """Best-effort error text from any of the servers' error shapes (see the provider reference)."""
    try:
        body = orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        detail = body.get("detail")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        elif isinstance(detail, dict):
            inner = detail.get("error")
            message = detail.get("msg") or (inner.get("message") if isinstance(inner, dict) else inner)
        elif detail is not None:
            message = detail
        else:
            message = body.get("message")
    elif isinstance(body, str):
        message = body
    elif body is None and response.body and response.content_type.startswith("text/plain"):
        message = response.text()
    text = " ".join(str(message).split()) if message else ""
    return text[:limit]


def openai_model_cards(body: Any, path: str) -> list[Mapping[str, Any]]:
    """The `data[]` cards of an OpenAI-style model list. `data: null` (Ollama) is an empty list."""
    if not isinstance(body, dict) or "data" not in body:
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{path}: expected an object with 'data'")
    data = body["data"]
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in data):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{path}: 'data' is not a list of model cards with ids")
    return data
