"""Pure readers of what servers publish about their load, into one typed `Capacity`.

Every reader takes an answer that was already fetched and returns a Capacity, or None when the answer says
nothing usable (404, 401, 501, HTML, garbage): capacity is then unknown, which never fails a probe.
Servers with Prometheus `/metrics` share one parser and differ only in their metric names (MetricNames).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from monitord.model import Capacity, ModelInfo, ResidentModel
from monitord.providers.base import HttpResponse


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Which Prometheus metric of one server means which Capacity field (None: the server has none)."""

    running: str | None = None  # gauge: requests being generated now
    waiting: str | None = None  # gauge: requests queued for a slot
    kv_cache: tuple[str, ...] = ()  # gauge in 0..1, first name present wins (renamed across releases)
    generation_tokens: str | None = None  # counter of generated tokens


# Names as each server's own code registers them (see README "Capacity").
VLLM_METRICS = MetricNames(running="vllm:num_requests_running", waiting="vllm:num_requests_waiting",
                           kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                           generation_tokens="vllm:generation_tokens_total")
SGLANG_METRICS = MetricNames(running="sglang:num_running_reqs", waiting="sglang:num_queue_reqs",
                             kv_cache=("sglang:token_usage",), generation_tokens="sglang:generation_tokens_total")
TGI_METRICS = MetricNames(running="tgi_batch_current_size", waiting="tgi_queue_size",
                          generation_tokens="tgi_request_generated_tokens_sum")
LLAMACPP_METRICS = MetricNames(running="llamacpp:requests_processing", waiting="llamacpp:requests_deferred",
                               kv_cache=("llamacpp:kv_cache_usage_ratio",),
                               generation_tokens="llamacpp:tokens_predicted_total")


def parse_prometheus(text: str, wanted: Iterable[str]) -> dict[str, list[float]]:
    """The samples of the `wanted` metrics in a Prometheus text exposition, one value per label set.

    Comments, other metrics, NaN/Inf and lines that do not parse are skipped; a metric never seen is absent.
    Finds each wanted name where it starts a line rather than splitting every line: a server's page holds
    hundreds of lines (histograms) for the four or five samples read, on every probe.
    """
    found: dict[str, list[float]] = {}
    size = len(text)
    for name in dict.fromkeys(wanted):
        at = text.find(name)
        while at >= 0:
            after = at + len(name)
            end = text.find("\n", after)
            if end < 0:
                end = size
            if (at == 0 or text[at - 1] == "\n") and after < end:
                value = _sample_value(text, after, end)
                if value is not None:
                    found.setdefault(name, []).append(value)
            at = text.find(name, end)
    return found


def _sample_value(text: str, after: int, end: int) -> float | None:
    """The value of the sample line text[..end] whose metric name ends at `after`: labels, then the value."""
    mark = text[after]
    if mark == "{":
        close = text.rfind("}", after, end)
        if close < 0:
            return None
        rest = text[close + 1:end].split()
    elif mark == " ":
        rest = text[after + 1:end].split()
    else:
        return None  # another metric whose name starts with this one
    if not rest:
        return None
    try:
        value = float(rest[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_metrics(response: HttpResponse | None, names: MetricNames) -> Capacity | None:
    """Capacity from a `/metrics` answer: running/waiting/tokens summed over label sets (engines, models), the
    KV-cache share as the fullest one. None when the route is off or answers something else."""
    if response is None or response.status != 200 or response.body.lstrip()[:1] in (b"<", b"{", b"["):
        return None
    wanted = [n for n in (names.running, names.waiting, names.generation_tokens, *names.kv_cache)
              if n]
    samples = parse_prometheus(response.text(), wanted)
    if not samples:
        return None

    def total(name: str | None) -> float | None:
        values = samples.get(name) if name else None
        return sum(values) if values else None

    kv = next((max(samples[n]) for n in names.kv_cache if n in samples), None)
    running, waiting = total(names.running), total(names.waiting)
    return Capacity(
        requests_running=_count(running),
        queue_depth=_count(waiting),
        kv_cache_usage=min(1.0, max(0.0, kv)) if kv is not None else None,
        generation_tokens_total=total(names.generation_tokens),
    )


def read_llamacpp_slots(response: HttpResponse | None) -> Capacity | None:
    """`/slots`: one object per slot, `is_processing` true while it serves a request (501 with `--no-slots`)."""
    body = _json_ok(response)
    if not isinstance(body, list) or not body or not all(isinstance(s, dict) for s in body):
        return None
    flags = [s.get("is_processing") for s in body]
    if not all(isinstance(f, bool) for f in flags):
        # builds before `is_processing` said `state`: 0 idle, anything else busy
        states = [s.get("state") for s in body]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in states):
            return Capacity(slots_total=len(body))
        flags = [v != 0 for v in states]
    return Capacity(slots_total=len(body), slots_busy=sum(1 for f in flags if f))


def llamacpp_total_slots(props: Mapping[str, Any]) -> int | None:
    """`total_slots` of `/props` (the `--parallel` count), when the server says."""
    return _count(props.get("total_slots"))


def read_kobold_perf(response: HttpResponse | None) -> Capacity | None:
    """KoboldCpp `/api/extra/perf`: one generation at a time; `idle` 1 when free, `queue` requests waiting."""
    body = _json_ok(response)
    if not isinstance(body, dict) or "idle" not in body:
        return None
    idle, queue = body.get("idle"), body.get("queue")
    busy = None if not isinstance(idle, int | float) or isinstance(idle, bool) else (0 if idle else 1)
    waiting = _count(queue)
    return Capacity(slots_total=1 if busy is not None else None, slots_busy=busy, queue_depth=waiting,
                    requests_running=busy)


def read_ollama_ps(response: HttpResponse | None) -> tuple[ResidentModel, ...] | None:
    """Ollama `/api/ps`: models in memory with `expires_at` (when keep_alive unloads them) and size."""
    body = _json_ok(response)
    entries = body.get("models") if isinstance(body, dict) else None
    if entries is None and isinstance(body, dict) and "models" in body:
        return ()
    if not isinstance(entries, list):
        return None
    resident = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if not isinstance(name, str) or not name:
            continue
        size = entry.get("size")
        resident.append(ResidentModel(id=name, expires_at=parse_time(entry.get("expires_at")),
                                      size_bytes=size if isinstance(size, int) and size > 0 else None))
    return tuple(resident)


def resident_from_models(models: Iterable[ModelInfo]) -> tuple[ResidentModel, ...]:
    """The loaded models of a listing that says which are loaded (LM Studio `state`, `loaded_instances`)."""
    return tuple(ResidentModel(id=m.id, size_bytes=m.size_bytes) for m in models if m.loaded)


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 with nanoseconds and `Z` (Go's format) as an aware datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Python takes at most microseconds: cut the fraction to 6 digits
    dot = text.find(".")
    if dot >= 0:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[:dot + 1] + text[dot + 1:end][:6] + text[end:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def merge(*parts: Capacity | None) -> Capacity | None:
    """Several partial readings of one server (slots from one route, queue from another): first known value wins."""
    known = [p for p in parts if p is not None]
    if not known:
        return None
    values: dict[str, Any] = {}
    for name in (f.name for f in fields(Capacity)):
        values[name] = next((getattr(p, name) for p in known if getattr(p, name) is not None), None)
    return Capacity(**values)


def _json_ok(response: HttpResponse | None) -> Any:
    if response is None or response.status != 200:
        return None
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)
