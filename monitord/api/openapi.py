"""The OpenAPI 3.1 document of the query API, served at /openapi.json.

Written by hand next to the views; tests check that it names every route the router has (and no other) and
validate real responses against its schemas, so it cannot drift from the implementation unnoticed.
"""

from __future__ import annotations

from typing import Any

from monitord.api.alerts import MAX_SILENCE
from monitord.api.replies import MAX_TOKENS
from monitord.api.reports import MAX_MS, MAX_TEXT
from monitord.api.reports import MAX_TOKENS as REPORT_MAX_TOKENS
from monitord.api.selection import MAX_SESSION_KEY
from monitord.model import (
    AlertType,
    DeliveryState,
    ErrorClass,
    ModelKind,
    QualityPreference,
    SelectStrategy,
    Status,
    TaskType,
)
from monitord.spread import DEFAULT_MARGIN

Schema = dict[str, Any]

ERROR_CODES = {
    "bad_request": "the request could not be read",
    "invalid_parameter": "a query parameter is unknown, repeated or malformed",
    "invalid_json": "the body is not a JSON object",
    "invalid_criteria": "a criteria field has a wrong value",
    "unauthorized": "missing or wrong bearer token",
    "not_found": "no such route",
    "provider_not_found": "no configured provider has that name",
    "method_not_allowed": "the route exists but not for this method",
    "body_too_large": "the request body exceeds 64 KiB",
    "no_provider": "no provider matches the selection criteria (reasons in details.excluded)",
    "not_ready": "the first probe round is not done, the store does not answer or probes are stale "
                 "(details.checks, details.stale_providers)",
    "store_unavailable": "the database did not answer",
    "too_many_subscribers": "too many event streams are open",
    "shutting_down": "monitord is stopping",
    "alerts_unavailable": "alerts are not wired into this server",
    "invalid_silence": "a silence field is missing or malformed",
    "invalid_report": "a report field is missing, unknown or malformed (the message names it)",
    "silence_not_found": "no silence has that id",
    "silence_in_config": "config silences are removed in the config file, then SIGHUP",
    "too_many_silences": "the most silences made through the API are active; end some first",
    "internal_error": "a bug; see the monitord log",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def _enum(values: type[Any]) -> list[str]:
    return [member.value for member in values]


def _object(properties: dict[str, Schema], *, required: list[str] | None = None, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


MAX_SILENCE_S = int(MAX_SILENCE.total_seconds())
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = _nullable("string", format="date-time")
STATUS = {"type": "string", "enum": _enum(Status)}
STRINGS = {"type": "array", "items": {"type": "string"}}
TEXT = {"type": "string", "pattern": "\\S"}  # the API refuses empty and blank strings where it reads names
TEXTS = {"type": "array", "items": TEXT}

def _sse_event(name: str, data: Schema, *, with_id: bool = False) -> Schema:
    fields: dict[str, Schema] = {"event": {"const": name},
                                 "data": {"type": "string", "contentMediaType": "application/json",
                                          "contentSchema": data},
                                 "id": {"type": "string", "pattern": "^[0-9]+$"},
                                 "retry": {"type": "integer", "minimum": 0}}
    return _object(fields, required=["event", "data", "id"] if with_id else ["event", "data"])


_MODEL_INFO = _object({
    "id": {"type": "string"},
    "kind": {"type": "string", "enum": _enum(ModelKind)},
    "context_length": {"type": "integer"},
    "loaded": {"type": "boolean"},
    "size_bytes": {"type": "integer"},
    "family": {"type": "string"},
    "parameter_size": {"type": "string"},
    "quantization": {"type": "string"},
    "owned_by": {"type": "string"},
    "capabilities": STRINGS,
}, required=["id"])

_RESIDENT = _object({
    "id": {"type": "string"},
    "expires_at": {**TIME_OR_NULL, "description": "When the server unloads it (Ollama keep_alive), if it says."},
    "size_bytes": _nullable("integer", minimum=0),
})
_CAPACITY = _object({
    "saturated": {"type": "boolean", "description": "No idle slot, or requests waiting."},
    "slots_total": _nullable("integer", minimum=0, description="Parallel slots (llama.cpp, KoboldCpp: 1)."),
    "slots_busy": _nullable("integer", minimum=0),
    "queue_depth": _nullable("integer", minimum=0, description="Requests waiting for a slot."),
    "kv_cache_usage": _nullable("number", minimum=0, maximum=1),
    "requests_running": _nullable("integer", minimum=0),
    "generation_tokens_total": _nullable("number", minimum=0, description="Monotonic generated-token counter."),
    "resident_models": {"type": ["array", "null"], "items": _RESIDENT,
                        "description": "Models in memory now (Ollama /api/ps, LM Studio); null: not said."},
}, required=["saturated"])
_IDENTITY = _object({
    "looks_like": {**_nullable("string"), "description": "The provider type the server's answers point to."},
    "version": _nullable("string"),
    "evidence": {**_nullable("string"), "description": "The signal that told (header, body, route)."},
})

_PROVIDER = _object({
    "name": {"type": "string"},
    "type": {"type": "string"},
    "status": STATUS,
    "since": TIME_OR_NULL,
    "failures_in_a_row": {"type": "integer", "minimum": 0},
    "successes_in_a_row": {"type": "integer", "minimum": 0},
    "last_probe_at": TIME_OR_NULL,
    "last_result_status": {"type": ["string", "null"], "enum": [*_enum(Status), None]},
    "last_error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
    "last_error": _nullable("string"),
    "last_error_at": TIME_OR_NULL,
    "last_success_at": TIME_OR_NULL,
    "last_failure_at": TIME_OR_NULL,
    "availability": _nullable("number", minimum=0, maximum=1),
    "samples": {"type": "integer", "minimum": 0},
    "samples_ok": {"type": "integer", "minimum": 0},
    "latency_p50_ms": _nullable("number"),
    "latency_p95_ms": _nullable("number"),
    "latency_ewma_ms": _nullable("number"),
    "request_latency_ms": {**_nullable("number"), "description": "EWMA of one HTTP request's time over the "
                           "window's ok probes (a probe makes one to three requests, by type); null right after "
                           "a restart until a probe times its requests."},
    "request_samples": {"type": "integer", "minimum": 0},
    "models": {"type": "array", "items": _ref("ServedModel")},
    "server_version": _nullable("string"),
    "transitions_recent": {"type": "integer", "minimum": 0},
    "saturated": {"type": ["boolean", "null"],
                  "description": "Beside the status: no idle slot or a queue at the last probe; null: unknown."},
    "capacity": {"oneOf": [{"type": "null"}, _CAPACITY],
                 "description": "The load the server published at the last probe; null: unknown."},
    "identity": {"oneOf": [{"type": "null"}, _IDENTITY],
                 "description": "What the server on the port looked like, the last time its answers told."},
    "suspect": {"type": "boolean", "description": "The latest probe or reported request failed; the status waits "
                                                 "for failure_threshold, the ranking does not."},
    "reports": {"type": "integer", "minimum": 0, "description": "Reported outcomes in the report window."},
    "reports_ok": {"type": "integer", "minimum": 0},
    "report_ttft_p50_ms": {**_nullable("number"), "description": "Median reported time to first token (the "
                                                                "duration where no TTFT was given)."},
    "last_report_at": TIME_OR_NULL,
    "last_report_ok": _nullable("boolean"),
    "last_report_error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
    "reports_dropped": {"type": "integer", "minimum": 0,
                        "description": "Reports over the per-provider rate budget since start (not counted)."},
    "endpoint": {"type": "string", "description": "Base URL with any userinfo replaced by ***."},
    "enabled": {"type": "boolean"},
    "capabilities": STRINGS,
    "configured_models": STRINGS,
    "priority": {"type": "integer"},
    "weight": {"type": "number"},
    "probe_interval_s": {"type": "number"},
    "generation": {"type": "object", "additionalProperties": _ref("GenerationStats"),
                   "description": "Generation canary statistics over the last hour, by model id (empty: no canary "
                                  "sample yet)."},
})

_CRITERIA = _object({
    "task_type": {"type": ["string", "null"], "enum": [*_enum(TaskType), None]},
    "required_capabilities": STRINGS,
    "max_tokens": _nullable("integer", minimum=1),
    "quality_preference": {"type": "string", "enum": _enum(QualityPreference)},
    "model": _nullable("string"),
    "providers": {"type": ["array", "null"], "items": {"type": "string"}},
    "max_queue": _nullable("integer", minimum=0),
})

_LIST_OR_CSV = {"oneOf": [TEXT, TEXTS]}
_SELECT_REQUEST = _object({
    "task_type": {"type": "string", "enum": _enum(TaskType)},
    "required_capabilities": {**_LIST_OR_CSV, "description": "e.g. [\"vision\", \"tools\"] or \"vision,tools\""},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
    "quality_preference": {"type": "string", "enum": _enum(QualityPreference)},
    "model": {**TEXT, "description": "Exact model id or glob (* ? [...]), case-insensitive."},
    "providers": {**_LIST_OR_CSV, "description": "Allow-list of provider names."},
    "max_queue": {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS,
                  "description": "Exclude providers whose published queue of waiting requests is longer (a server "
                                 "that publishes no queue is kept)."},
    "fallbacks": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3},
    "strategy": {"type": "string", "enum": _enum(SelectStrategy), "default": "best",
                 "description": "best: the top of the ranking. weighted: random, in proportion to score, among the "
                                "providers of the best one's tier within `margin` of its score. least_loaded: most "
                                "headroom (capacity) first, then score. round_robin: each provider of the best "
                                "one's tier in turn, in score order (per criteria)."},
    "session_key": {"type": "string", "minLength": 1, "maxLength": MAX_SESSION_KEY, "pattern": "\\S",
                    "description": "Sticky sessions: the same key gets the same provider while it stays in the "
                                   "best tier (weighted rendezvous hashing); it moves only when that provider "
                                   "stops being eligible. Takes precedence over strategy."},
    "margin": {"type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_MARGIN,
               "description": "weighted: how far below the best score (as a share of it) a provider may be."},
}, required=[])

_ENTRY = _object({
    "provider": {"type": "string"},
    "type": {"type": "string"},
    "score": {"type": "number", "minimum": 0},
    "status": STATUS,
    "components": {"type": "object", "additionalProperties": {"type": "number"},
                   "description": "availability, speed, headroom, recency, priority, quality, task_fit (each 0..1) "
                                  "are weighted and summed; score = weight x status_factor x warm x that sum. "
                                  "headroom: room the server published (idle slots, queue, KV cache; 0.5 when it "
                                  "publishes none); warm: 1, or 0.8 when the model must be loaded into memory "
                                  "first (Ollama, LM Studio). A saturated provider sorts below unsaturated ones of "
                                  "its status. speed comes "
                                  "from canary TTFT and tokens/s where samples exist, else it equals latency "
                                  "(control-plane time per HTTP request), which is always reported. "
                                  "reported_availability and reported_speed come from POST /v1/report (the "
                                  "measured values where nothing was reported): availability and speed each "
                                  "count half measured, half reported."},
    "evidence": {"type": "object", "additionalProperties": _ref("Evidence"),
                 "description": "What each component rests on."},
    "models": STRINGS,
    "endpoint": {"type": "string", "description": "The provider's base URL, userinfo removed."},
    "api_base": {**_nullable("string"), "description": "The OpenAI-compatible base URL (ends in /v1) to give an "
                                                      "OpenAI client; null where the server has no such API."},
    "chat_url": {**_nullable("string"), "description": "The chat completions URL (api_base + "
                                                      "/chat/completions, or the configured chat_endpoint)."},
    "suspect": {"type": "boolean", "description": "Its latest probe or reported request failed: ranked below "
                                                 "every healthy provider until evidence says otherwise."},
    "saturated": {"type": "boolean", "description": "No idle slot or a queue at the last probe: ranked below the "
                                                   "unsaturated providers of its status; strategies spread only "
                                                   "over the best one's tier."},
    "model": {**_nullable("string"), "description": "The served model id that best fits the criteria (the one "
                                                   "asked for, else one that suits the task, else the most "
                                                   "capable); null when the server lists none."},
})

_EVIDENCE = _object({
    "samples": {"type": "integer", "minimum": 0, "description": "Samples the part rests on (0: config)."},
    "age_s": {**_nullable("number", minimum=0), "description": "Seconds since the newest of them."},
    "source": {"type": "string", "enum": ["probes", "requests", "canary", "config", "models", "capacity",
                                          "reports"]},
    "model": {**_nullable("string"), "description": "The model a canary-based part measured."},
})

_GENERATION = _object({
    "model": {"type": "string"},
    "kind": {"type": "string", "enum": ["generation", "embedding"]},
    "samples": {"type": "integer", "minimum": 0, "description": "Measured samples in the window (ok + failed)."},
    "samples_ok": {"type": "integer", "minimum": 0},
    "skipped": {"type": "integer", "minimum": 0, "description": "busy, not_loaded, budget_exhausted, ...: "
                                                                "neither success nor failure."},
    "ttft_p50_ms": _nullable("number"),
    "ttft_p95_ms": _nullable("number"),
    "tokens_per_s_p50": _nullable("number"),
    "total_p50_ms": _nullable("number"),
    "tokens_spent": {"type": "integer", "minimum": 0, "description": "Prompt + completion tokens in the window."},
    "last_sample_at": TIME_OR_NULL,
    "last_sample_age_s": _nullable("number", minimum=0),
    "last_ok_at": TIME_OR_NULL,
    "last_error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
    "last_error": _nullable("string"),
    "last_error_at": TIME_OR_NULL,
    "last_skip_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
    "last_skip_at": TIME_OR_NULL,
})

_EXCLUDED = {"type": "object", "additionalProperties": STRINGS,
             "description": "Provider name -> why it was left out."}

_SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": _object({
        "code": {"type": "string", "description": "; ".join(f"{k}: {v}" for k, v in ERROR_CODES.items())},
        "message": {"type": "string"},
        "details": {"type": "object"},
    }, required=["code", "message"])}),
    "Health": _object({"status": {"const": "ok"}, "version": {"type": "string"}}),
    "Ready": _object({"status": {"const": "ready"},
                      "checks": _object({"first_round": {"type": "boolean"}, "store": {"type": "boolean"},
                                         "probes_fresh": {"type": "boolean"}})}),
    "ModelInfo": _MODEL_INFO,
    "Evidence": _EVIDENCE,
    "GenerationStats": _GENERATION,
    "ServedModel": {**_MODEL_INFO, "properties": {**_MODEL_INFO["properties"], "first_seen": TIME,
                                                  "last_seen": TIME},
                    "required": ["id", "first_seen", "last_seen"]},
    "Provider": _PROVIDER,
    "ProviderList": _object({"generated_at": TIME, "providers": {"type": "array", "items": _ref("Provider")}}),
    "Sample": _object({
        "ts": TIME, "status": STATUS,
        "error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
        "error": _nullable("string"), "connect_ms": _nullable("number"), "ttfb_ms": _nullable("number"),
        "total_ms": {"type": "number"}, "http_status": _nullable("integer"),
        "model_count": {"type": "integer"}, "attempts": {"type": "integer"},
        "capacity": {"oneOf": [{"type": "null"}, _object({
            "saturated": {"type": "boolean"},
            "slots_total": _nullable("integer", minimum=0), "slots_busy": _nullable("integer", minimum=0),
            "queue_depth": _nullable("integer", minimum=0), "requests_running": _nullable("integer", minimum=0),
            "kv_cache_usage": _nullable("number", minimum=0, maximum=1),
        })], "description": "The load the server published at this probe; null when it said nothing."},
    }),
    "Bucket": _object({
        "start": TIME, "count": {"type": "integer"}, "ok_count": {"type": "integer"},
        "availability": {"type": "number", "minimum": 0, "maximum": 1},
        "latency_avg_ms": _nullable("number"), "latency_p95_ms": _nullable("number"),
    }),
    "History": _object({"provider": {"type": "string"}, "since": TIME_OR_NULL, "until": TIME_OR_NULL,
                        "limit": {"type": "integer"}, "samples": {"type": "array", "items": _ref("Sample")}}),
    "Aggregates": _object({"provider": {"type": "string"}, "step": {"type": "string"},
                           "step_s": {"type": "integer"}, "since": TIME, "until": TIME,
                           "buckets": {"type": "array", "items": _ref("Bucket")}}),
    "GenerationSample": _object({
        "ts": TIME, "model": {"type": "string"}, "kind": {"type": "string", "enum": ["generation", "embedding"]},
        "ok": {"type": "boolean"}, "skipped": {"type": "boolean"},
        "error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
        "error": _nullable("string"), "ttft_ms": _nullable("number"), "total_ms": _nullable("number"),
        "tokens_per_s": _nullable("number"), "prompt_tokens": _nullable("integer"),
        "completion_tokens": _nullable("integer"), "finish_reason": _nullable("string"),
        "streamed": {"type": "boolean"}, "stream_complete": _nullable("boolean"),
    }),
    "GenerationHistory": _object({
        "provider": {"type": "string"}, "model": _nullable("string"), "since": TIME_OR_NULL,
        "until": TIME_OR_NULL, "limit": {"type": "integer"},
        "samples": {"type": "array", "items": _ref("GenerationSample")}}),
    "GenerationBucket": _object({
        "start": TIME, "count": {"type": "integer", "minimum": 0}, "ok_count": {"type": "integer", "minimum": 0},
        "failed_count": {"type": "integer", "minimum": 0}, "skipped_count": {"type": "integer", "minimum": 0},
        "ttft_p50_ms": _nullable("number"), "ttft_p95_ms": _nullable("number"),
        "tokens_per_s_p50": _nullable("number"), "tokens_spent": {"type": "integer", "minimum": 0}}),
    "GenerationAggregates": _object({
        "provider": {"type": "string"}, "model": _nullable("string"), "step": {"type": "string"},
        "step_s": {"type": "integer"}, "since": TIME, "until": TIME,
        "models": {"type": "array", "items": _object({
            "model": {"type": "string"}, "buckets": {"type": "array", "items": _ref("GenerationBucket")}})}}),
    "Criteria": _CRITERIA,
    "SelectRequest": _SELECT_REQUEST,
    "RankedEntry": _ENTRY,
    "Ranking": _object({"generated_at": TIME, "criteria": _ref("Criteria"),
                        "ranking": {"type": "array", "items": _ref("RankedEntry")}, "excluded": _EXCLUDED}),
    "Selection": _object({"generated_at": TIME, "provider": _ref("RankedEntry"),
                          "fallbacks": {"type": "array", "items": _ref("RankedEntry")},
                          "criteria": _ref("Criteria"),
                          "strategy": {"type": "string", "enum": _enum(SelectStrategy)}}),
    "ReportRequest": _object({
        "provider": {**TEXT, "maxLength": MAX_TEXT, "description": "The provider name the request went to."},
        "model": {**TEXT, "maxLength": MAX_TEXT},
        "outcome": {"type": "string", "enum": ["ok", *_enum(ErrorClass)],
                    "description": "ok, or the error class of the failure (timeout, refused, http_5xx, ...)."},
        "ttft_ms": {"type": "number", "minimum": 0, "maximum": MAX_MS, "description": "Time to first token."},
        "completion_tokens": {"type": "integer", "minimum": 0, "maximum": REPORT_MAX_TOKENS},
        "duration_ms": {"type": "number", "minimum": 0, "maximum": MAX_MS},
        "client": {**TEXT, "maxLength": MAX_TEXT, "description": "A label of the application, for the record."},
    }, required=["provider", "outcome"]),
    "ReportAccepted": _object({
        "provider": {"type": "string"},
        "counted": {"type": "boolean", "description": "false: over the provider's rate budget this second, left "
                                                      "out of the window (a failure still makes it suspect)."},
        "suspect": {"type": "boolean", "description": "The provider is suspect now."},
    }),
    "ModelServer": _object({"provider": {"type": "string"}, "provider_type": {"type": "string"},
                            "status": STATUS, "model": _ref("ModelInfo"), "first_seen": TIME, "last_seen": TIME,
                            "generation": {"oneOf": [_ref("GenerationStats"), {"type": "null"}],
                                           "description": "This provider's canary statistics of the model."}}),
    "ModelList": _object({"generated_at": TIME, "models": {"type": "array", "items": _object({
        "id": {"type": "string"}, "up": {"type": "integer", "minimum": 0},
        "providers": {"type": "array", "items": _ref("ModelServer")}})}}),
    "StatusChangedEvent": _object({
        "provider": {"type": "string"}, "provider_type": {"type": "string"}, "previous": STATUS,
        "current": STATUS, "at": TIME, "since_previous_s": _nullable("number"),
        "error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
        "error": _nullable("string"),
    }),
    "AlertEvent": _object({
        "version": {"type": "integer"}, "id": {"type": "string"}, "type": {"type": "string", "enum": _enum(AlertType)},
        "at": TIME,
        "provider": {"oneOf": [_object({"name": {"type": "string"}, "type": {"type": "string"},
                                        "endpoint": {"type": "string"}}), {"type": "null"}]},
        "previous_status": {"type": ["string", "null"], "enum": [*_enum(Status), None]},
        "status": {"type": ["string", "null"], "enum": [*_enum(Status), None]},
        "since": TIME_OR_NULL, "failures_in_a_row": _nullable("integer"),
        "error_class": {"type": ["string", "null"], "enum": [*_enum(ErrorClass), None]},
        "error": _nullable("string"), "down_for_s": _nullable("number"), "models": STRINGS,
        "details": {"type": "object"}, "silenced_by": _nullable("string"),
    }),
    "AlertList": _object({"generated_at": TIME, "alerts": {"type": "array", "items": _object({
        "event": _ref("AlertEvent"), "created_at": TIME,
        "deliveries": {"type": "object", "additionalProperties": _object({
            "state": {"type": "string", "enum": _enum(DeliveryState)}, "attempts": {"type": "integer"},
            "last_status": _nullable("integer"), "last_error": _nullable("string"),
            "next_attempt_at": TIME_OR_NULL, "delivered_at": TIME_OR_NULL})}})}}),
    "Silence": _object({"id": {"type": "string"}, "provider": {"type": "string"}, "start": TIME_OR_NULL,
                        "end": TIME, "reason": _nullable("string"),
                        "created_by": {"type": "string", "enum": ["config", "api"]}, "active": {"type": "boolean"}}),
    "SilenceList": _object({"silences": {"type": "array", "items": _ref("Silence")}}),
    "SilenceRequest": {**_object({"provider": {**TEXT, "maxLength": 256, "description": "Provider name or glob."},
                                  "start": {**TIME, "description": "Default: now."},
                                  "end": {**TIME, "description": "Give end or duration_s."},
                                  "duration_s": {"type": "number", "exclusiveMinimum": 0,
                                                 "maximum": MAX_SILENCE_S},
                                  "reason": {"type": "string", "maxLength": 1024}}, required=["provider"]),
                       "oneOf": [{"required": ["end"]}, {"required": ["duration_s"]}],
                       "description": "At most 366 days long, ending after start (or now)."},
    "GenerationUpdatedEvent": {**_GENERATION, "properties": {"provider": {"type": "string"},
                                                             **_GENERATION["properties"]},
                               "required": ["provider", *_GENERATION["required"]]},
    "BestChangedEvent": _object({
        "at": TIME, "previous": _nullable("string"), "current": _nullable("string"),
        "entry": {"oneOf": [_ref("RankedEntry"), {"type": "null"}]}, "fallbacks": STRINGS,
    }),
    # OpenAPI 3.1 has no itemSchema: the text/event-stream schema describes one event as a client parses it.
    "StreamEvent": {"description": "One Server-Sent Event of GET /v1/events: its `event` name, its `id` (to "
                                   "resume with Last-Event-ID) and its `data`, a JSON text.",
                    "oneOf": [_sse_event("provider.status_changed", _ref("StatusChangedEvent"), with_id=True),
                              _sse_event("ranking.best_changed", _ref("BestChangedEvent"), with_id=True),
                              _sse_event("generation.updated", _ref("GenerationUpdatedEvent"), with_id=True),
                              _sse_event("shutdown", _object({})),
                              _sse_event("lagged", _object({"reconnect": {"const": True}}))]},
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    meaning = {400: "Bad parameters or body", 401: "Missing or wrong bearer token (when api.token is set)",
               404: "Unknown provider (or silence)", 409: "Conflict with the config file", 413: "Body too large",
               503: "Unavailable"}
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _page(content_type: str, description: str) -> Schema:
    return {"description": description, "content": {content_type: {"schema": {"type": "string"}}}}


def _query(name: str, schema: Schema, description: str, *, repeat: bool = False) -> Schema:
    parameter: Schema = {"name": name, "in": "query", "required": False, "description": description,
                         "schema": {"type": "array", "items": schema} if repeat else schema}
    if repeat:
        parameter.update(style="form", explode=True)
    return parameter


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_CRITERIA_PARAMETERS = [
    _query("task_type", {"type": "string", "enum": _enum(TaskType)}, "What the request is for."),
    _query("capability", TEXT, "Required capability; repeat or comma-separate "
                                             "(alias: required_capabilities).", repeat=True),
    _query("max_tokens", {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
           "Excludes providers whose known context length is smaller."),
    _query("quality", {"type": "string", "enum": _enum(QualityPreference)},
           "fast, balanced (default) or quality (alias: quality_preference)."),
    _query("model", TEXT, "Exact model id or glob."),
    _query("provider", TEXT, "Allow-list of provider names (alias: providers).", repeat=True),
    _query("max_queue", {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS},
           "Excludes providers whose published queue of waiting requests is longer."),
]


def _paths() -> dict[str, Schema]:
    return {
        "/healthz": {"get": {"summary": "The process is alive.", "operationId": "healthz", "security": [],
                             "responses": {"200": _json(_ref("Health"), "Alive")}}},
        "/readyz": {"get": {"summary": "First probe round done, the store reachable, every provider probed recently.",
                            "operationId": "readyz",
                            "responses": {"200": _json(_ref("Ready"), "Ready"), **_errors(401, 503)}}},
        "/v1/providers": {"get": {
            "summary": "Live state of every configured provider, by name.", "operationId": "listProviders",
            "responses": {"200": _json(_ref("ProviderList"), "Providers"), **_errors(400, 401)}}},
        "/v1/providers/{name}": {"get": {
            "summary": "Live state of one provider.", "operationId": "getProvider", "parameters": [_NAME],
            "responses": {"200": _json(_ref("Provider"), "The provider"), **_errors(400, 401, 404)}}},
        "/v1/providers/{name}/history": {"get": {
            "summary": "Stored probes, newest first; with `step`, aggregates per step instead.",
            "operationId": "getProviderHistory",
            "parameters": [
                _NAME,
                _query("since", TIME, "Inclusive start (ISO 8601; no offset means UTC)."),
                _query("until", TIME, "Exclusive end (ISO 8601; default now with step)."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 500},
                       "Most samples or buckets returned (the newest)."),
                _query("step", {"type": "string", "enum": ["1m", "5m", "1h", "1d"]}, "Aggregate per step."),
            ],
            "responses": {"200": _json({"oneOf": [_ref("History"), _ref("Aggregates")]}, "Samples or buckets"),
                          **_errors(400, 401, 404, 503)}}},
        "/v1/providers/{name}/generation": {"get": {
            "summary": "Stored generation canary samples, newest first; with `step`, per-model aggregates (TTFT "
                       "p50/p95, tokens/s p50, counts, tokens spent) per step instead, read from rollups once the "
                       "raw samples have aged out.",
            "operationId": "getProviderGeneration",
            "parameters": [
                _NAME,
                _query("since", TIME, "Inclusive start (ISO 8601; no offset means UTC)."),
                _query("until", TIME, "Exclusive end (ISO 8601; default now with step)."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 500},
                       "Most samples, or buckets per model, returned (the newest)."),
                _query("step", {"type": "string", "enum": ["1m", "5m", "1h", "1d"]}, "Aggregate per step."),
                _query("model", TEXT, "Only this model."),
            ],
            "responses": {"200": _json({"oneOf": [_ref("GenerationHistory"), _ref("GenerationAggregates")]},
                                       "Samples or per-model buckets"),
                          **_errors(400, 401, 404, 503)}}},
        "/v1/ranking": {"get": {
            "summary": "Providers best first for the criteria, each with its score components; and the excluded.",
            "operationId": "getRanking",
            "parameters": [*_CRITERIA_PARAMETERS,
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000},
                                  "Most entries returned.")],
            "responses": {"200": _json(_ref("Ranking"), "The ranking"), **_errors(400, 401)}}},
        "/v1/select": {"post": {
            "summary": "The provider to use for a request, and what to fall back to.", "operationId": "select",
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("SelectRequest")}}},
            "responses": {"200": _json(_ref("Selection"), "The best provider and its fallbacks"),
                          **_errors(400, 401, 413, 503)}}},
        "/v1/report": {"post": {
            "summary": "Report how a real request to a provider went: folds into its availability and speed "
                       "(reported_* components), and a failure makes it suspect at once.",
            "operationId": "report",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ReportRequest")}}},
            "responses": {"202": _json(_ref("ReportAccepted"), "Taken into the live state"),
                          **_errors(400, 401, 404, 413)}}},
        "/v1/models": {"get": {
            "summary": "Every model id served now, with the providers serving it.", "operationId": "listModels",
            "responses": {"200": _json(_ref("ModelList"), "Models"), **_errors(400, 401)}}},
        "/v1/events": {"get": {
            "summary": "Server-Sent Events: `provider.status_changed` (StatusChangedEvent), "
                       "`ranking.best_changed` (BestChangedEvent) and `generation.updated` (GenerationUpdatedEvent, "
                       "one per canary sample); `: keep-alive` comments; `shutdown` on stop.",
            "operationId": "streamEvents",
            "parameters": [
                _query("provider", {"type": "string"}, "Only status changes and generation updates of these "
                                                       "providers.", repeat=True),
                _query("last_event_id", {"type": "integer"}, "Replay newer buffered events (or the "
                                                             "Last-Event-ID header)."),
            ],
            "responses": {"200": {"description": "An event stream",
                                  "content": {"text/event-stream": {"schema": _ref("StreamEvent")}}},
                          **_errors(400, 401, 404, 503)}}},
        "/v1/alerts": {"get": {
            "summary": "Recent alert events, newest first, with their delivery state per webhook.",
            "operationId": "listAlerts",
            "parameters": [
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Most events."),
                _query("since", TIME, "Only events stored at or after this time."),
                _query("provider", {"type": "string"}, "Only this provider's events."),
                _query("type", {"type": "string", "enum": _enum(AlertType)}, "Only this event type."),
            ],
            "responses": {"200": _json(_ref("AlertList"), "Alert events"), **_errors(400, 401, 503)}}},
        "/v1/silences": {
            "get": {"summary": "Silences (maintenance windows) from the config and the API.",
                    "operationId": "listSilences",
                    "responses": {"200": _json(_ref("SilenceList"), "Silences"), **_errors(400, 401, 503)}},
            "post": {"summary": "Silence a provider (name or glob): its events are recorded, not delivered.",
                     "operationId": "createSilence",
                     "requestBody": {"required": True,
                                     "content": {"application/json": {"schema": _ref("SilenceRequest")}}},
                     "responses": {"201": _json(_ref("Silence"), "The silence"),
                                   **_errors(400, 401, 409, 413, 503)}}},
        "/v1/silences/{id}": {"delete": {
            "summary": "End a silence made through the API (config silences are removed in the config).",
            "operationId": "deleteSilence",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"204": {"description": "Deleted"}, **_errors(400, 401, 404, 409, 503)}}},
        "/metrics": {"get": {
            "summary": "Prometheus text exposition.", "operationId": "metrics",
            "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(401)}}},
        "/": {"get": {
            "summary": "The status page (HTML; its script reads this API, so the page itself holds no data).",
            "operationId": "statusPage", "security": [], "responses": {"200": _page("text/html", "The overview")}}},
        "/providers/{name}": {"get": {
            "summary": "The status page of one provider (HTML shell; the data comes from /v1/providers/{name}).",
            "operationId": "statusPageProvider", "security": [], "parameters": [_NAME],
            "responses": {"200": _page("text/html", "The detail page")}}},
        "/ui/page.js": {"get": {"summary": "The status page's script.", "operationId": "statusPageScript",
                                "security": [], "responses": {"200": _page("text/javascript", "The script")}}},
        "/ui/page.css": {"get": {"summary": "The status page's stylesheet.", "operationId": "statusPageStyle",
                                 "security": [], "responses": {"200": _page("text/css", "The stylesheet")}}},
        "/openapi.json": {"get": {
            "summary": "This document.", "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors(401)}}},
    }


def build_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "monitord query API", "version": version,
                 "description": "Live state, ranking and selection of local LLM inference servers. Every error "
                                "is {\"error\": {\"code\", \"message\", \"details\"?}}."},
        "security": [{}, {"bearerAuth": []}],  # the token is optional (api.token)
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
