"""Plain value types that cross module borders.

Leaf module: imports nothing of ours but the leaf `text` (one URL redaction), and carries no behaviour beyond
trivial properties.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitord.text import redact_url


class Status(enum.StrEnum):
    """What a provider is, as one probe (or the live state) sees it."""

    UP = "up"
    DEGRADED = "degraded"  # answers, but something is wrong (no models, a configured model missing)
    LOADING = "loading"  # alive, model not ready yet (e.g. llama.cpp 503 "Loading model")
    DOWN = "down"
    UNKNOWN = "unknown"  # never probed
    STALLED = "stalled"  # answers its health routes but cannot generate (canary missed its deadline, stalled)
    MISCONFIGURED = "misconfigured"  # the server on the port is not the configured type
    DISABLED = "disabled"  # `enabled: false` in the config: never probed on purpose


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
    # generation canary (a real completion or embedding request)
    GENERATION_TIMEOUT = "generation_timeout"  # no first token by the canary's deadline
    STREAM_STALLED = "stream_stalled"  # a gap between chunks longer than the deadline
    STREAM_BROKEN = "stream_broken"  # malformed chunk, no terminal marker, connection cut mid-stream
    EMPTY_GENERATION = "empty_generation"  # finished without a token
    BUSY = "busy"  # no idle slot: the canary did not queue behind real work
    NOT_LOADED = "not_loaded"  # the model is not resident and the canary may not load it
    BUDGET_EXHAUSTED = "budget_exhausted"  # the model's daily canary token budget is spent
    # server identity
    WRONG_SERVER = "wrong_server"  # the server on the port is another type than configured


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


DEFAULT_CANARY_PROMPT = "Reply with one word: ok"


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """A provider's generation canary, resolved (monitor.canary defaults applied). Built by config."""

    enabled: bool = False
    interval_s: float = 300.0
    models: tuple[str, ...] = ()  # empty: the provider's `models:`, else the first chat model it lists
    max_tokens: int = 8  # reasoning tokens count too
    deadline_s: float = 10.0  # time to the first token, and the longest gap between two chunks
    timeout_s: float = 30.0  # the whole request
    prompt: str = DEFAULT_CANARY_PROMPT
    stream: bool = True  # resolved: the provider's streaming_support unless set
    max_tokens_per_day: int = 5000  # per model; generated tokens (input tokens for embedding models)
    load: bool = False  # may send a canary to a model the server does not hold in memory (it will load it)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One configured provider, fully resolved (per-type defaults applied). Built by config."""

    name: str
    type: str
    base_url: str = field(repr=False)  # scheme://host:port[/prefix], no trailing slash, no trailing /v1
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
    retry_interval_s: float = 5.0  # while failing, not yet down: probe again after min(this, probe_interval_s)
    capabilities: frozenset[str] = frozenset()  # type defaults plus configured ones
    priority: int = 0  # higher ranks first among equals
    weight: float = 1.0  # multiplies the ranking score
    max_body_bytes: int = 1 << 20
    max_models: int = 1000  # most models kept from one listing (a server inventing ids every probe is cut here)
    verify_tls: bool = True
    ca_file: str | None = None
    canary: CanarySpec = CanarySpec()

    @property
    def redacted_endpoint(self) -> str:
        """base_url with any userinfo replaced, safe for logs, API output and alerts (see text.redact_url)."""
        return redact_url(self.base_url)


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
class ResidentModel:
    """A model a server holds in memory now (Ollama /api/ps, LM Studio `state: loaded`, ...)."""

    id: str
    expires_at: datetime | None = None  # when the server will unload it, where it says
    size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "expires_at": _iso(self.expires_at), "size_bytes": self.size_bytes}


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a server publishes about its load; every field optional because servers differ.

    Filled by pure readers per server (llama.cpp /slots and /props, vLLM/TGI/SGLang /metrics, KoboldCpp
    /api/extra/perf, Ollama /api/ps, LM Studio model state). None means the server did not say.
    """

    slots_total: int | None = None
    slots_busy: int | None = None
    queue_depth: int | None = None  # requests waiting for a slot
    kv_cache_usage: float | None = None  # 0..1
    resident_models: tuple[ResidentModel, ...] | None = None
    requests_running: int | None = None
    generation_tokens_total: float | None = None  # monotonic counter, for passive stall detection

    @property
    def saturated(self) -> bool:
        """No idle slot, or requests waiting."""
        if self.queue_depth is not None and self.queue_depth > 0:
            return True
        return self.slots_total is not None and self.slots_busy is not None and self.slots_busy >= self.slots_total

    @property
    def slots_idle(self) -> int | None:
        if self.slots_total is None or self.slots_busy is None:
            return None
        return max(0, self.slots_total - self.slots_busy)

    def resident(self, model_id: str) -> bool | None:
        """Whether `model_id` is in memory now; None when the server does not say what is resident."""
        if self.resident_models is None:
            return None
        return any(m.id == model_id for m in self.resident_models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "saturated": self.saturated,
            "slots_total": self.slots_total,
            "slots_busy": self.slots_busy,
            "queue_depth": self.queue_depth,
            "kv_cache_usage": self.kv_cache_usage,
            "requests_running": self.requests_running,
            "generation_tokens_total": self.generation_tokens_total,
            "resident_models": [m.to_dict() for m in self.resident_models]
            if self.resident_models is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Identity:
    """What the server on the port looks like, from the signals it gives (health body, headers, routes)."""

    looks_like: str | None = None  # a provider type name, or None when the signals do not tell
    version: str | None = None
    evidence: str | None = None  # the signal that told, for the hint shown to the user

    def to_dict(self) -> dict[str, Any]:
        return {"looks_like": self.looks_like, "version": self.version, "evidence": self.evidence}


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
    http_status: int | None = None  # status of the last request made (of an answer: its last 2xx request)
    calls: tuple[HttpCall, ...] = ()
    models: tuple[ModelInfo, ...] = ()
    server_version: str | None = None
    attempts: int = 1
    backoff_ms: float = 0.0  # slept between attempts; inside total_ms, never part of an attempt's latency
    last_attempt_ms: float | None = None  # the last attempt alone: what the final answer (or refusal) took
    capacity: Capacity | None = None  # None: the type publishes nothing, or it was not read
    identity: Identity | None = None
    models_known: bool = True  # False: the server is up but its model list could not be read (keep the last one)

    @property
    def reachable(self) -> bool:
        """The server answered (even if not ready): anything but DOWN."""
        return self.status is not Status.DOWN

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)


class SampleKind(enum.StrEnum):
    GENERATION = "generation"  # a chat/completion/generate request
    EMBEDDING = "embedding"  # an embeddings request (embedding models never generate)


@dataclass(frozen=True, slots=True)
class GenerationSample:
    """The outcome of one generation canary against one model. Every canary ends as one of these.

    `ok` false with `error_class` set on failure; `skipped` true (BUSY, NOT_LOADED, BUDGET_EXHAUSTED, a model
    kind with no cheap probe) means nothing was measured and says nothing about health.
    """

    provider: str
    provider_type: str
    model: str
    started_at: datetime  # timezone-aware UTC
    ok: bool
    kind: SampleKind = SampleKind.GENERATION
    skipped: bool = False
    error_class: ErrorClass | None = None
    error: str | None = None  # short, secrets scrubbed
    ttft_ms: float | None = None  # request start to first content (or reasoning) token
    total_ms: float | None = None
    tokens_per_s: float | None = None  # decode rate after the first token
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    streamed: bool = False
    stream_complete: bool | None = None  # every chunk parsed and the terminal marker seen (streamed only)
    server_busy: bool | None = None  # the server reported work in progress when the canary failed


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What the canaries measured of one model on one provider over the window (generation.py folds them).

    Timings come from successful samples only; a skipped sample (busy, not loaded, budget spent) is counted in
    `skipped` and is neither a success nor a failure. `tokens_spent` is prompt + completion tokens of the window.
    """

    provider: str
    model: str
    kind: SampleKind = SampleKind.GENERATION
    samples: int = 0  # measured samples in the window: ok + failed, skipped ones excluded
    samples_ok: int = 0
    skipped: int = 0
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tokens_per_s_p50: float | None = None
    total_p50_ms: float | None = None  # whole request (the only timing of an embedding)
    tokens_spent: int = 0
    last_sample_at: datetime | None = None  # newest sample of any outcome (skipped included)
    last_ok_at: datetime | None = None
    last_error_class: ErrorClass | None = None  # newest failure; skips never land here
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_skip_class: ErrorClass | None = None
    last_skip_at: datetime | None = None

    def age_s(self, now: datetime) -> float | None:
        """Seconds since the newest sample (None: none yet)."""
        return max(0.0, (now - self.last_sample_at).total_seconds()) if self.last_sample_at else None

    def to_dict(self, now: datetime) -> dict[str, Any]:
        age = self.age_s(now)
        return {
            "model": self.model,
            "kind": self.kind.value,
            "samples": self.samples,
            "samples_ok": self.samples_ok,
            "skipped": self.skipped,
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p95_ms": self.ttft_p95_ms,
            "tokens_per_s_p50": self.tokens_per_s_p50,
            "total_p50_ms": self.total_p50_ms,
            "tokens_spent": self.tokens_spent,
            "last_sample_at": _iso(self.last_sample_at),
            "last_sample_age_s": round(age, 3) if age is not None else None,
            "last_ok_at": _iso(self.last_ok_at),
            "last_error_class": self.last_error_class.value if self.last_error_class else None,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "last_skip_class": self.last_skip_class.value if self.last_skip_class else None,
            "last_skip_at": _iso(self.last_skip_at),
        }


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """How one real request went, as the application that sent it says (POST /v1/report)."""

    provider: str
    received_at: datetime  # timezone-aware UTC, monitord's clock
    ok: bool
    model: str | None = None
    error_class: ErrorClass | None = None  # set when not ok
    ttft_ms: float | None = None
    completion_tokens: int | None = None
    duration_ms: float | None = None
    client: str | None = None  # an optional client label, for the record


# --- live state and ranking ---

# Spellings servers use for a capability, mapped to the one name the criteria and the ranking speak.
CAPABILITY_ALIASES: Mapping[str, str] = {
    "embedding": "embeddings",
    "multimodal": "vision",
    "thinking": "reasoning",
    "function_calling": "tools",
    "tool_use": "tools",
}


MS_DIGITS = 3  # the API's milliseconds: to the microsecond
RATIO_DIGITS = 6  # the API's ratios and scores (as RankedProvider rounds its score)
RATE_DIGITS = 3  # the API's tokens per second


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a provider currently lists, with when this run of listings first and last showed it."""

    id: str
    info: ModelInfo
    first_seen: datetime
    last_seen: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen)}


@dataclass(frozen=True, slots=True)
class ProviderState:
    """The live picture of one provider, rebuilt by health.py after every probe result (never mutated)."""

    name: str
    type: str
    status: Status = Status.UNKNOWN
    since: datetime | None = None  # when `status` last changed
    failures_in_a_row: int = 0  # consecutive DOWN / LOADING results
    successes_in_a_row: int = 0  # consecutive UP / DEGRADED results
    last_probe_at: datetime | None = None
    last_result_status: Status | None = None  # the last probe's own verdict (status lags it by hysteresis)
    last_error_class: ErrorClass | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    failing_since: datetime | None = None  # start of the first probe of the current run of failures
    availability: float | None = None  # share of successful probes in the window; None: no sample
    samples: int = 0  # probes in the window
    samples_ok: int = 0  # successful probes in the window
    latency_p50_ms: float | None = None  # over successful probes in the window (total_ms)
    latency_p95_ms: float | None = None
    latency_ewma_ms: float | None = None
    request_latency_ms: float | None = None  # EWMA of one HTTP request's time (ProbeResult.calls), ok probes
    request_samples: int = 0  # ok probes in the window that timed their requests (0 after a restart's rebuild)
    models: tuple[ServedModel, ...] = ()
    server_version: str | None = None
    transitions_recent: int = 0  # status changes in the flap window
    capacity: Capacity | None = None  # from the last probe; None: unknown (not published, not read, or down)
    identity: Identity | None = None  # what the server on the port looked like, last time it told
    suspect: bool = False  # the latest evidence (a probe or a reported request) failed; status may still be up
    # outcomes of real requests the applications reported (POST /v1/report), over their own window
    reports: int = 0
    reports_ok: int = 0
    report_ttft_p50_ms: float | None = None  # time to first token (the duration when none was given)
    last_report_at: datetime | None = None
    last_report_ok: bool | None = None
    last_report_error_class: ErrorClass | None = None
    reports_dropped: int = 0  # reports over the rate budget since start (not counted in the window)

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    @property
    def saturated(self) -> bool | None:
        """No idle slot or a queue, by the last probe; None when capacity is unknown."""
        return self.capacity.saturated if self.capacity is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "status": self.status.value,
            "since": _iso(self.since),
            "failures_in_a_row": self.failures_in_a_row,
            "successes_in_a_row": self.successes_in_a_row,
            "last_probe_at": _iso(self.last_probe_at),
            "last_result_status": self.last_result_status.value if self.last_result_status else None,
            "last_error_class": self.last_error_class.value if self.last_error_class else None,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "last_success_at": _iso(self.last_success_at),
            "last_failure_at": _iso(self.last_failure_at),
            "availability": _rounded(self.availability, RATIO_DIGITS),
            "samples": self.samples,
            "samples_ok": self.samples_ok,
            "latency_p50_ms": _rounded(self.latency_p50_ms, MS_DIGITS),
            "latency_p95_ms": _rounded(self.latency_p95_ms, MS_DIGITS),
            "latency_ewma_ms": _rounded(self.latency_ewma_ms, MS_DIGITS),
            "request_latency_ms": _rounded(self.request_latency_ms, MS_DIGITS),
            "request_samples": self.request_samples,
            "models": [m.to_dict() for m in self.models],
            "server_version": self.server_version,
            "transitions_recent": self.transitions_recent,
            "saturated": self.saturated,
            "capacity": self.capacity.to_dict() if self.capacity is not None else None,
            "identity": self.identity.to_dict() if self.identity is not None else None,
            "suspect": self.suspect,
            "reports": self.reports,
            "reports_ok": self.reports_ok,
            "report_ttft_p50_ms": self.report_ttft_p50_ms,
            "last_report_at": _iso(self.last_report_at),
            "last_report_ok": self.last_report_ok,
            "last_report_error_class": self.last_report_error_class.value if self.last_report_error_class else None,
            "reports_dropped": self.reports_dropped,
        }


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A provider's live status changed; what alert rules and logs consume."""

    provider: str
    provider_type: str
    previous: Status
    current: Status
    at: datetime  # start of the probe that caused the change
    since_previous_s: float | None  # how long `previous` had lasted; None when it was UNKNOWN
    error_class: ErrorClass | None = None  # from the probe that caused the change
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "provider_type": self.provider_type,
            "previous": self.previous.value,
            "current": self.current.value,
            "at": _iso(self.at),
            "since_previous_s": self.since_previous_s,
            "error_class": self.error_class.value if self.error_class else None,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ModelServer:
    """One provider serving one model, for the per-model view."""

    provider: str
    provider_type: str
    status: Status
    info: ModelInfo
    first_seen: datetime
    last_seen: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "provider_type": self.provider_type,
            "status": self.status.value,
            "model": self.info.to_dict(),
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
        }


class TaskType(enum.StrEnum):
    """What a caller wants to do; ranking.py maps each to the capabilities it implies."""

    CHAT = "chat"
    COMPLETION = "completion"
    CODE_GENERATION = "code_generation"
    CODE_ANALYSIS = "code_analysis"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    VISION = "vision"
    TOOLS = "tools"
    REASONING = "reasoning"


class SelectStrategy(enum.StrEnum):
    """How POST /v1/select picks among providers as good as the best (spread.py)."""

    BEST = "best"  # always the top of the ranking
    WEIGHTED = "weighted"  # random, in proportion to score, among those within a margin of the best
    LEAST_LOADED = "least_loaded"  # most headroom (capacity) first, then score
    ROUND_ROBIN = "round_robin"  # each in turn, in score order


class QualityPreference(enum.StrEnum):
    FAST = "fast"  # speed (canary TTFT and tokens/s, else request latency) weighs most
    BALANCED = "balanced"
    QUALITY = "quality"  # availability and model size / context weigh most


_CRITERIA_KEYS = ("task_type", "required_capabilities", "max_tokens", "quality_preference", "model", "providers",
                  "max_queue")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _choice(key: str, value: Any, kind: type[enum.StrEnum]) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    try:
        return kind(value.strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ValueError(f"{key}: {value!r} is not one of {allowed}") from None


def _names(key: str, value: Any) -> list[str]:
    """A list given as a comma-separated string (query parameter) or as a sequence of strings."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise ValueError(f"{key}: expected a list of strings or a comma-separated string")
    names = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{key}: every entry must be a non-empty string, got {item!r}")
        names.append(item.strip())
    if not names:
        raise ValueError(f"{key}: must name at least one entry")
    return names


def _capability(key: str, value: str) -> str:
    name = value.lower()
    if not set(name) <= _NAME_CHARS:
        raise ValueError(f"{key}: {value!r} is not a capability name (letters, digits, _ . -)")
    return CAPABILITY_ALIASES.get(name, name)


def _positive_int(key: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{key}: expected {kind}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Criteria:
    """What a caller needs from a provider; the default (all empty) ranks every healthy provider."""

    task_type: TaskType | None = None
    required_capabilities: frozenset[str] = frozenset()
    max_tokens: int | None = None  # excludes providers whose KNOWN context is smaller
    quality_preference: QualityPreference = QualityPreference.BALANCED
    model: str | None = None  # exact id or glob (* ? [...]), case-insensitive
    providers: frozenset[str] | None = None  # allow-list of provider names
    max_queue: int | None = None  # excludes providers whose KNOWN queue of waiting requests is longer

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Criteria:
        """Parse a JSON body or query parameters; raises ValueError naming the offending key.

        Lists may be sequences or comma-separated strings; None means "not given"; empty strings are errors.
        """
        unknown = sorted(set(raw) - set(_CRITERIA_KEYS))
        if unknown:
            raise ValueError(f"unknown criteria field(s): {', '.join(unknown)}; "
                             f"expected any of {', '.join(_CRITERIA_KEYS)}")
        values: dict[str, Any] = {}
        for key in _CRITERIA_KEYS:
            value = raw.get(key)
            if value is None:
                continue
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"{key}: must not be empty")
            if key == "task_type":
                values[key] = _choice(key, value, TaskType)
            elif key == "quality_preference":
                values[key] = _choice(key, value, QualityPreference)
            elif key == "required_capabilities":
                values[key] = frozenset(_capability(key, name) for name in _names(key, value))
            elif key == "providers":
                values[key] = frozenset(_names(key, value))
            elif key == "max_tokens":
                values[key] = _positive_int(key, value)
            elif key == "max_queue":
                values[key] = _positive_int(key, value, minimum=0)
            else:  # model
                if not isinstance(value, str):
                    raise ValueError(f"model: expected a string, got {type(value).__name__}")
                values[key] = value.strip()
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type.value if self.task_type else None,
            "required_capabilities": sorted(self.required_capabilities),
            "max_tokens": self.max_tokens,
            "quality_preference": self.quality_preference.value,
            "model": self.model,
            "providers": sorted(self.providers) if self.providers is not None else None,
            "max_queue": self.max_queue,
        }


@dataclass(frozen=True, slots=True)
class ProviderUrls:
    """Where a caller sends requests to a provider: never a key, a header or userinfo."""

    endpoint: str  # the configured base URL with any userinfo removed
    api_base: str | None = None  # the OpenAI-compatible base (ends in /v1) where the server has one
    chat_url: str | None = None  # chat completions: api_base + /chat/completions, or the configured path


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one ranking component rests on: how many samples, how old the newest is, and where they came from."""

    samples: int  # 0 for parts that come from the config or the model list
    age_s: float | None  # seconds since the newest sample the part uses; None: no sample
    source: str  # "probes", "requests", "canary", "config", "models", "capacity", "reports" (POST /v1/report)
    model: str | None = None  # the model a canary-based part measured

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "age_s": self.age_s, "source": self.source, "model": self.model}


@dataclass(frozen=True, slots=True)
class RankedProvider:
    """One eligible provider with its score, the parts the score is made of, and where to send requests."""

    provider: str
    type: str
    score: float
    status: Status
    components: Mapping[str, float]  # availability, speed, latency, recency, priority, quality, task_fit, ...
    models: tuple[str, ...]  # models that matched the criteria (all listed ones when no model was asked)
    endpoint: str = ""  # base URL, userinfo removed
    api_base: str | None = None  # OpenAI-compatible base with /v1, where the server has one
    chat_url: str | None = None
    model: str | None = None  # the served model id that best fits the criteria; None: the server lists none
    evidence: Mapping[str, Evidence] = field(default_factory=dict)  # component -> what it rests on
    suspect: bool = False  # its last probe or real requests failed: ranked below every healthy provider
    saturated: bool = False  # no idle slot or a queue at the last probe: ranked below the unsaturated of its tier

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.type,
            "score": round(self.score, 6),
            "status": self.status.value,
            "components": {key: round(value, 6) for key, value in self.components.items()},
            "models": list(self.models),
            "endpoint": self.endpoint,
            "api_base": self.api_base,
            "chat_url": self.chat_url,
            "model": self.model,
            "evidence": {key: value.to_dict() for key, value in self.evidence.items()},
            "suspect": self.suspect,
            "saturated": self.saturated,
        }


@dataclass(frozen=True, slots=True)
class Ranking:
    """Providers best first for one set of criteria, and why every other configured provider was left out."""

    generated_at: datetime
    criteria: Criteria
    entries: tuple[RankedProvider, ...]
    excluded: Mapping[str, tuple[str, ...]]  # provider name -> reasons

    @property
    def best(self) -> RankedProvider | None:
        return self.entries[0] if self.entries else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at),
            "criteria": self.criteria.to_dict(),
            "entries": [entry.to_dict() for entry in self.entries],
            "excluded": {name: list(self.excluded[name]) for name in sorted(self.excluded)},
        }


# --- alerts ---


class AlertType(enum.StrEnum):
    """Every event a webhook can receive; the value is the JSON `type` and the `X-Monitord-Event` header."""

    PROVIDER_DOWN = "provider.down"
    PROVIDER_UP = "provider.up"  # recovery, with how long it was down
    PROVIDER_DEGRADED = "provider.degraded"
    PROVIDER_LOADING = "provider.loading"
    PROVIDER_FLAPPING = "provider.flapping"
    PROVIDER_STALLED = "provider.stalled"  # answers its health routes but cannot generate; recovery is provider.up
    PROVIDER_MISCONFIGURED = "provider.misconfigured"  # another type of server on the port; recovery is provider.up
    MODEL_ADDED = "model.added"
    MODEL_REMOVED = "model.removed"
    RANKING_BEST_CHANGED = "ranking.best_changed"
    TEST = "test"


ALERT_SCHEMA_VERSION = 1  # bump when a field of AlertEvent.to_dict() changes meaning or goes away


@dataclass(frozen=True, slots=True)
class AlertProvider:
    """The provider an alert is about, as anyone may see it: the endpoint is ProviderSpec.redacted_endpoint."""

    name: str
    type: str
    endpoint: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "endpoint": self.endpoint}


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One thing worth telling the webhooks. Built by alerts.rules, stored in the outbox, rendered by formats.

    `id` is a UUID that stays the same across retries and restarts (receivers de-duplicate on it).
    `silenced_by` names the silence that matched: the event is recorded but not delivered.
    """

    id: str
    type: AlertType
    at: datetime  # when it happened (start of the probe that caused it), timezone-aware UTC
    provider: AlertProvider | None = None  # None for `test`
    previous_status: Status | None = None
    status: Status | None = None
    since: datetime | None = None  # when the provider entered `status`
    failures_in_a_row: int = 0
    error_class: ErrorClass | None = None
    error: str | None = None  # short message, secrets already scrubbed by the probe
    down_for_s: float | None = None  # provider.up: how long it was not up
    models: tuple[str, ...] = ()  # model.added / model.removed: the model ids
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-safe extras of one event type
    silenced_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON schema (also the `json` webhook format and the outbox payload)."""
        return {
            "version": ALERT_SCHEMA_VERSION,
            "id": self.id,
            "type": self.type.value,
            "at": _iso(self.at),
            "provider": self.provider.to_dict() if self.provider else None,
            "previous_status": self.previous_status.value if self.previous_status else None,
            "status": self.status.value if self.status else None,
            "since": _iso(self.since),
            "failures_in_a_row": self.failures_in_a_row,
            "error_class": self.error_class.value if self.error_class else None,
            "error": self.error,
            "down_for_s": self.down_for_s,
            "models": list(self.models),
            "details": dict(self.details),
            "silenced_by": self.silenced_by,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AlertEvent:
        provider = raw.get("provider")
        previous, status, error_class = raw.get("previous_status"), raw.get("status"), raw.get("error_class")
        return cls(
            id=str(raw["id"]),
            type=AlertType(raw["type"]),
            at=datetime.fromisoformat(raw["at"]),
            provider=AlertProvider(str(provider["name"]), str(provider["type"]), str(provider["endpoint"]))
            if provider else None,
            previous_status=Status(previous) if previous else None,
            status=Status(status) if status else None,
            since=_parse_time(raw.get("since")),
            failures_in_a_row=int(raw.get("failures_in_a_row") or 0),
            error_class=ErrorClass(error_class) if error_class else None,
            error=raw.get("error"),
            down_for_s=raw.get("down_for_s"),
            models=tuple(raw.get("models") or ()),
            details=dict(raw.get("details") or {}),
            silenced_by=raw.get("silenced_by"),
        )


@dataclass(frozen=True, slots=True)
class Silence:
    """A maintenance window: events for matching providers are recorded but not delivered.

    `provider` is a name or a glob (`gpu-*`); active from `start` (None: already) until `end`, exclusive.
    """

    id: str
    provider: str
    end: datetime
    start: datetime | None = None
    reason: str | None = None
    created_by: str = "config"  # "config" or "api"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "start": _iso(self.start), "end": _iso(self.end),
                "reason": self.reason, "created_by": self.created_by}


class DeliveryState(enum.StrEnum):
    """Where an alert event stands with one webhook (the outbox record and GET /v1/alerts)."""

    PENDING = "pending"  # stored, not yet answered with a 2xx or a final failure
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # a permanent answer (4xx), or retrying gave up
    SILENCED = "silenced"  # recorded during a silence; never sent


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """One webhook an event goes to, decided when the event is raised (filters, silences, grouping)."""

    webhook: str
    state: DeliveryState  # PENDING, or SILENCED (recorded, never sent)
    wait_s: float = 0.0  # first attempt this long after the event is stored (a chat webhook's group_wait)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event with its deliveries, as the store writes it: in the same transaction as the probe rows behind it."""

    event: AlertEvent
    deliveries: tuple[PlannedDelivery, ...]


@dataclass(frozen=True, slots=True)
class WebhookFigures:
    """One webhook's deliveries for /metrics: attempt outcomes since start, and the outbox waiting for it."""

    webhook: str
    results: Mapping[str, int]  # delivered | retry | failed -> deliveries with that outcome
    pending: int  # deliveries stored and not yet delivered or failed
    oldest_pending: datetime | None  # when the oldest of them was stored


@dataclass(frozen=True, slots=True)
class AlertState:
    """What receivers were last told of one provider: stored, so a restart or a new cluster owner continues it.

    An incident opens when a bad status is first told and closes with the provider.up that ends it; its events
    take their ids from `incident_start`, so whoever raises them, receivers see one id per incident and kind.
    """

    provider: str
    told: Status | None = None  # the status of the last event sent (UP also once first seen up, silently)
    incident_start: datetime | None = None  # the first failed probe of the open incident (None: no incident)
    reminders: int = 0  # reminders sent in the open incident (alerts.repeat_interval)
