"""Plain value types that cross module borders.

Leaf module: imports nothing of ours and carries no behaviour beyond trivial properties.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Status(enum.StrEnum):
    """What a provider is, as one probe (or the live state) sees it."""

    UP = "up"
    DEGRADED = "degraded"  # answers, but something is wrong (no models, a configured model missing)
    LOADING = "loading"  # alive, model not ready yet (e.g. llama.cpp 503 "Loading model")
    DOWN = "down"
    UNKNOWN = "unknown"  # never probed


class ErrorClass(enum.StrEnum):
    """Closed set of failure classes; everything downstream switches on these, never on messages."""

    REFUSED = "refused"  # TCP connection refused
    DNS = "dns"  # name did not resolve
    TIMEOUT = "timeout"  # connect, headers or body not done within the probe timeout
    TLS = "tls"  # handshake or certificate failure
    CONNECTION = "connection"  # reset, closed mid-body, malformed HTTP
    REDIRECT = "redirect"  # redirect loop or too many redirects
    AUTH = "auth"  # 401 / 403
    RATE_LIMITED = "rate_limited"  # 429
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    BAD_PAYLOAD = "bad_payload"  # not JSON, HTML instead of JSON, wrong shape
    TOO_LARGE = "too_large"  # body over the cap
    LOADING = "loading"  # server says the model is loading
    EMPTY_MODELS = "empty_models"  # answers, serves no model
    MODEL_MISSING = "model_missing"  # a model named in the config is not served
    INTERNAL = "internal"  # a bug in monitord while probing: recorded, never raised


class Capability(enum.StrEnum):
    """Capabilities the selection criteria may require. Config may add others as plain strings."""

    CHAT = "chat"
    COMPLETION = "completion"
    CODE_GENERATION = "code_generation"
    CODE_ANALYSIS = "code_analysis"
    STREAMING = "streaming"
    VISION = "vision"
    TOOLS = "tools"
    EMBEDDINGS = "embeddings"
    RERANK = "rerank"
    AUDIO = "audio"
    REASONING = "reasoning"


class ModelKind(enum.StrEnum):
    LLM = "llm"
    EMBEDDING = "embedding"
    VISION = "vision"  # an LLM that also takes images
    RERANK = "rerank"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string that never shows itself in repr, str, logs or JSON by accident."""

    value: str = field(repr=False)

    def reveal(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret('***')"

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One configured provider, fully resolved (per-type defaults applied). Built by config."""

    name: str
    type: str
    base_url: str  # scheme://host:port[/prefix], no trailing slash, no trailing /v1
    api_key: Secret | None = None
    models: tuple[str, ...] = ()  # models the user expects this provider to serve
    enabled: bool = True
    timeout_s: float = 10.0  # whole probe budget, retries included
    max_retries: int = 2
    retry_backoff_s: float = 0.25
    streaming_support: bool = True
    headers: tuple[tuple[str, Secret], ...] = ()  # header values may carry tokens: all kept secret
    model_endpoint: str | None = None  # path override for the model list
    chat_endpoint: str | None = None  # path override for chat completions
    health_endpoint: str | None = None  # path override for the health check
    probe_interval_s: float = 30.0
    capabilities: frozenset[str] = frozenset()  # type defaults plus configured ones
    priority: int = 0  # higher ranks first among equals
    weight: float = 1.0  # multiplies the ranking score
    max_body_bytes: int = 1 << 20
    verify_tls: bool = True
    ca_file: str | None = None

    @property
    def redacted_endpoint(self) -> str:
        """base_url with any userinfo replaced, safe for logs, API output and alerts."""
        scheme, sep, rest = self.base_url.partition("://")
        if not sep or "@" not in rest.split("/", 1)[0]:
            return self.base_url
        host_and_path = rest.split("@", 1)[1]
        return f"{scheme}://***@{host_and_path}"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as a server describes it; every field but id is optional because servers differ."""

    id: str
    kind: ModelKind | None = None
    context_length: int | None = None
    loaded: bool | None = None  # None: the server does not say
    size_bytes: int | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    capabilities: frozenset[str] = frozenset()
    owned_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        for key in ("context_length", "loaded", "size_bytes", "family", "parameter_size", "quantization",
                    "owned_by"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.kind is not None:
            out["kind"] = self.kind.value
        if self.capabilities:
            out["capabilities"] = sorted(self.capabilities)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelInfo:
        kind = raw.get("kind")
        return cls(
            id=str(raw["id"]),
            kind=ModelKind(kind) if kind else None,
            context_length=raw.get("context_length"),
            loaded=raw.get("loaded"),
            size_bytes=raw.get("size_bytes"),
            family=raw.get("family"),
            parameter_size=raw.get("parameter_size"),
            quantization=raw.get("quantization"),
            capabilities=frozenset(raw.get("capabilities") or ()),
            owned_by=raw.get("owned_by"),
        )


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP request a probe made, for the record."""

    method: str
    path: str
    status: int | None  # None: no response (refused, timeout, ...)
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe of one provider. Every probe ends as one of these; none raises."""

    provider: str
    provider_type: str
    started_at: datetime  # timezone-aware UTC
    status: Status
    total_ms: float
    error_class: ErrorClass | None = None
    error: str | None = None  # short human message, secrets already scrubbed
    connect_ms: float | None = None  # only when a new connection was made
    ttfb_ms: float | None = None  # first request: start to response headers
    http_status: int | None = None  # status of the last request made
    calls: tuple[HttpCall, ...] = ()
    models: tuple[ModelInfo, ...] = ()
    server_version: str | None = None
    attempts: int = 1

    @property
    def reachable(self) -> bool:
        """The server answered (even if not ready): anything but DOWN."""
        return self.status is not Status.DOWN

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)
