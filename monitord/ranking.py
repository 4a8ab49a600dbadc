"""Pure: rank providers for a set of criteria from their live state; every score carries its parts.

score = weight x status_factor x (weighted sum of availability, speed, recency, priority, quality, task_fit),
each part in [0, 1] and the weights chosen by the quality preference (WEIGHTS). `speed` is what users wait for:
the canary's TTFT and tokens/s of the model the criteria ask for, where samples exist; otherwise it falls back to
`latency`, the control-plane time of one HTTP request (per request, so types that ask one route and types that ask
three compare on equal work). `headroom` is the room the server published at its last probe (idle slots, queue,
KV cache; unknown counts half). A saturated provider (no idle slot or a queue) sorts below every unsaturated one of
its status tier, and `warm` (a factor like weight) costs a provider COLD_LOAD_FACTOR when the model it would serve
is not in memory and must be loaded first (Ollama, LM Studio). Every part says what it rests on
(RankedProvider.evidence).
Availability and speed blend what the probes and canaries saw with what applications reported of their real
requests (POST /v1/report): `report_weight` of each part, shown apart as `reported_availability` and
`reported_speed`. A suspect provider (its latest probe or reported request failed) sorts below every healthy one
of its status and above the next status: up, up-but-suspect, degraded, ...
No I/O and no clock reads (`now` is an argument). `Ranker` keeps the criteria-independent preparation of each
provider between calls, keyed by the identity of its immutable state and spec, so a request pays only for
matching and scoring; `rank()` is the one-shot form. `Standing` keeps one criteria's ranking (the default one, and
criteria asked repeatedly) up to date incrementally: only changed providers are re-scored; the fleet-relative
figures (least latency, canary and reported TTFT, most tokens/s) are kept as extremes that trigger a full re-score
only when one moves by more than 0.5%; recency is refreshed whenever it moved by 0.01 (so a score is within
weight x (0.10 x 0.01 + w_speed x 0.005) of rank()'s); see its docstring and docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fnmatch import translate

import orjson

from monitord.model import (
    CAPABILITY_ALIASES,
    Capacity,
    Criteria,
    Evidence,
    GenerationStats,
    ModelInfo,
    ModelKind,
    ProviderSpec,
    ProviderState,
    ProviderUrls,
    QualityPreference,
    RankedProvider,
    Ranking,
    Status,
    TaskType,
)
from monitord.providers import provider_urls

_CHAT_OR_COMPLETION = frozenset({"chat", "completion"})

# Capabilities each task needs; every set is "any of", and all sets must be met.
TASK_REQUIREMENTS: Mapping[TaskType, tuple[frozenset[str], ...]] = {
    TaskType.CHAT: (frozenset({"chat"}),),
    TaskType.COMPLETION: (frozenset({"completion"}),),
    TaskType.CODE_GENERATION: (_CHAT_OR_COMPLETION,),
    TaskType.CODE_ANALYSIS: (_CHAT_OR_COMPLETION,),
    TaskType.REASONING: (_CHAT_OR_COMPLETION,),
    TaskType.EMBEDDING: (frozenset({"embeddings"}),),
    TaskType.RERANK: (frozenset({"rerank"}),),
    TaskType.VISION: (frozenset({"chat"}), frozenset({"vision"})),
    TaskType.TOOLS: (frozenset({"chat"}), frozenset({"tools"})),
}

# Any chat model can write or read code; one that says so (config, model card, or a "code" model id) gets the
# task_fit part of the score instead of being required.
TASK_PREFERENCE: Mapping[TaskType, str] = {
    TaskType.CODE_GENERATION: "code_generation",
    TaskType.CODE_ANALYSIS: "code_analysis",
    TaskType.REASONING: "reasoning",
}
_SATISFIED_BY: Mapping[str, frozenset[str]] = {
    "code_generation": _CHAT_OR_COMPLETION,
    "code_analysis": _CHAT_OR_COMPLETION,
}
_CODE = frozenset({"code_generation", "code_analysis"})

# What an embedding or rerank model cannot do, whatever its provider's type says.
_GENERATIVE = frozenset({"chat", "completion", "streaming", "code_generation", "code_analysis", "tools", "vision",
                         "reasoning"})
_KIND_CAPABILITIES: Mapping[ModelKind, frozenset[str]] = {
    ModelKind.EMBEDDING: frozenset({"embeddings"}),
    ModelKind.RERANK: frozenset({"rerank"}),
    ModelKind.VISION: frozenset({"vision"}),
}

# Score weights by preference; each row sums to 1 so the weighted sum stays in [0, 1].
WEIGHTS: Mapping[QualityPreference, Mapping[str, float]] = {
    QualityPreference.FAST: {"availability": 0.20, "speed": 0.40, "headroom": 0.15, "recency": 0.10,
                             "priority": 0.05, "quality": 0.00, "task_fit": 0.10},
    QualityPreference.BALANCED: {"availability": 0.25, "speed": 0.20, "headroom": 0.15, "recency": 0.10,
                                 "priority": 0.10, "quality": 0.10, "task_fit": 0.10},
    QualityPreference.QUALITY: {"availability": 0.30, "speed": 0.05, "headroom": 0.10, "recency": 0.10,
                                "priority": 0.10, "quality": 0.25, "task_fit": 0.10},
}
UNKNOWN_HEADROOM = 0.5  # a server that publishes no load is neither idle nor full
COLD_LOAD_FACTOR = 0.8  # the score of a provider that must first load the model into memory
# How the speed part weighs its two measures, by preference: `fast` leans on time to first token.
SPEED_TTFT_SHARE: Mapping[QualityPreference, float] = {
    QualityPreference.FAST: 0.6, QualityPreference.BALANCED: 0.5, QualityPreference.QUALITY: 0.5,
}
_NO_GENERATION: Mapping[str, GenerationStats] = {}
# Degraded and loading providers stay eligible but always sort below every UP one (tier), and score less.
_STATUS_TIER: Mapping[Status, tuple[int, float]] = {
    Status.UP: (0, 1.0),
    Status.DEGRADED: (1, 0.5),
    Status.LOADING: (2, 0.25),
}
_UNKNOWN_QUALITY = 0.25  # neither size nor context known: scored like a small model

_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([mbt])(?![a-z])", re.IGNORECASE)
_SIZE_UNIT_B = {"m": 1e-3, "b": 1.0, "t": 1e3}


@dataclass(frozen=True, slots=True)
class RankingPolicy:
    recovery_tau_s: float = 300.0  # recency = 1 - exp(-time since last failure / tau)
    latency_floor_ms: float = 50.0  # added to both sides of best/latency: a few ms apart is no difference
    ttft_floor_ms: float = 50.0  # the same for time to first token
    wilson_z: float = 1.96  # availability is the Wilson lower bound at this z (few samples count less)
    report_weight: float = 0.5  # share of reported outcomes in the availability and speed parts
    report_prior: float = 5.0  # reports count against this many pseudo-reports at the probes' availability


def wilson_lower_bound(successes: int, samples: int, z: float = 1.96) -> float:
    """Lower bound of the Wilson score interval; 0 when there is no sample."""
    if samples <= 0:
        return 0.0
    p = successes / samples
    z2 = z * z
    centre = p + z2 / (2 * samples)
    margin = z * math.sqrt(p * (1 - p) / samples + z2 / (4 * samples * samples))
    return max(0.0, (centre - margin) / (1 + z2 / samples))


def parameter_billions(text: str | None) -> float | None:
    """'7B' -> 7.0, '137M' -> 0.137, 'mixtral-8x7b' -> 56.0; None when the text names no size."""
    if not text:
        return None
    match = _SIZE.search(text)
    if match is None:
        return None
    experts, number, unit = match.groups()
    return float(number) * _SIZE_UNIT_B[unit.lower()] * (int(experts) if experts else 1)


def model_quality(info: ModelInfo | None, model_id: str | None) -> float:
    """A [0, 1] guess at how capable a model is from its size and context (mean of what is known)."""
    parts: list[float] = []
    billions = parameter_billions(info.parameter_size if info else None) or parameter_billions(model_id)
    if billions:
        parts.append(min(1.0, max(0.0, (math.log10(billions) + 1) / (math.log10(400) + 1))))
    context = info.context_length if info else None
    if context and context > 0:
        parts.append(min(1.0, max(0.0, (math.log2(context) - 10) / 10)))
    return sum(parts) / len(parts) if parts else _UNKNOWN_QUALITY


class _Offer:
    """One model a provider offers, with what it can do; id None when the provider lists no model at all."""

    __slots__ = ("capabilities", "context_length", "declared", "id", "key", "own", "quality")

    def __init__(self, spec_capabilities: frozenset[str], info: ModelInfo | None, model_id: str | None) -> None:
        own = frozenset(CAPABILITY_ALIASES.get(c, c) for c in info.capabilities) if info else frozenset()
        if info is not None and info.kind is not None:
            own |= _KIND_CAPABILITIES.get(info.kind, frozenset())
        generative = spec_capabilities
        if (info is not None and info.kind in (ModelKind.EMBEDDING, ModelKind.RERANK)) or (
                own & {"embeddings", "rerank"} and not own & _CHAT_OR_COMPLETION):
            generative = spec_capabilities - _GENERATIVE
        self.id = model_id
        self.own = own  # what the model itself says it does (the provider's config aside)
        self.key = model_id.lower() if model_id is not None else None
        self.capabilities = own | generative
        self.declared = own | spec_capabilities
        if model_id is not None and "code" in model_id.lower() and "embed" not in model_id.lower():
            self.declared |= _CODE
        self.context_length = info.context_length if info else None
        self.quality = model_quality(info, model_id)


_OFFERS: dict[tuple[frozenset[str], ModelInfo | None, str | None], _Offer] = {}
_OFFERS_KEPT = 4096


def _offer(capabilities: frozenset[str], info: ModelInfo | None, model_id: str | None) -> _Offer:
    """The _Offer for these inputs, shared: every probe brings a new state with the same models, and reading a
    model's size, kind and capabilities again each time was most of a provider's preparation."""
    key = (capabilities, info, model_id)
    found = _OFFERS.get(key)
    if found is None:
        if len(_OFFERS) >= _OFFERS_KEPT:
            _OFFERS.clear()
        found = _OFFERS[key] = _Offer(capabilities, info, model_id)
    return found


class _Fit:
    """How one provider meets one query: the offers that fit and the parts of the score they decide."""

    __slots__ = ("model", "models", "quality", "reasons", "speed", "task_fit")

    def __init__(self, offers: tuple[_Offer, ...], reasons: tuple[str, ...], preferred: str | None,
                 groups: tuple[tuple[str, frozenset[str]], ...] = ()) -> None:
        self.reasons = reasons  # () when eligible
        self.speed: GenerationStats | None = None  # the canary statistics the speed part rests on
        self.models = tuple(o.id for o in offers if o.id is not None)
        self.quality = max((o.quality for o in offers), default=0.0)
        self.task_fit = 1.0 if preferred is None or any(preferred in o.declared for o in offers) else 0.0
        # The one to name: one that itself says it has the required capabilities, then one that says it does
        # the task, then the most capable; ties go to the first id.
        listed = [o for o in offers if o.id is not None]
        self.model = max(listed, key=lambda o: (sum(not g.isdisjoint(o.own) for _, g in groups),
                                                preferred is not None and preferred in o.declared, o.quality)
                         ).id if listed else None


class _Prepared:
    """Everything about one provider that does not depend on the criteria, and its fits to recent queries."""

    __slots__ = ("availability", "contexts", "fits", "generation", "headroom", "last_failure_s", "latency_ms",
                 "latency_source", "offers", "priority", "priority_part", "queue", "report_ms", "reported_availability",
                 "resident", "saturated", "spec", "state", "status", "status_factor", "status_reasons", "suspect",
                 "tier", "urls", "weight")

    def __init__(self, state: ProviderState | None, spec: ProviderSpec, policy: RankingPolicy,
                 generation: Mapping[str, GenerationStats] = _NO_GENERATION, *,
                 urls: ProviderUrls | None = None) -> None:
        self.state = state
        self.spec = spec
        self.generation = generation
        self.urls: ProviderUrls = urls if urls is not None else provider_urls(spec)
        self.status = state.status if state is not None else Status.UNKNOWN
        self.suspect = state is not None and state.suspect
        tier, self.status_factor = _STATUS_TIER.get(self.status, (3, 0.0))
        self.tier = 2 * tier + self.suspect  # a suspect sorts below its healthy peers, above the next status
        self.status_reasons = _status_reasons(state, spec)
        self.priority = spec.priority
        self.priority_part = 0.5 + 0.5 * spec.priority / (abs(spec.priority) + 5)
        self.weight = max(0.0, spec.weight)
        load = state.capacity if state is not None else None
        self.headroom = headroom(load)
        self.saturated = load is not None and load.saturated
        self.queue = load.queue_depth if load is not None else None
        self.resident = (frozenset(m.id for m in load.resident_models)
                         if load is not None and load.resident_models is not None else None)
        self.latency_source = "requests"
        if state is None:
            self.availability, self.latency_ms, self.last_failure_s = 0.0, None, None
            self.reported_availability, self.report_ms = 0.0, None
        else:
            self.availability = wilson_lower_bound(state.samples_ok, state.samples, policy.wilson_z)
            # Per request where this run timed requests; right after a restart only whole probes are known.
            self.latency_ms = state.request_latency_ms
            if self.latency_ms is None:
                self.latency_source = "probes"
                self.latency_ms = state.latency_ewma_ms if state.latency_ewma_ms is not None \
                    else state.latency_p50_ms
            self.last_failure_s = state.last_failure_at.timestamp() if state.last_failure_at else None
            # few reports say little: they pull from the probes' availability towards their own share
            prior = policy.report_prior
            self.reported_availability = (state.reports_ok + prior * self.availability) / (state.reports + prior)
            self.report_ms = state.report_ttft_p50_ms
        capabilities = frozenset(CAPABILITY_ALIASES.get(c, c) for c in spec.capabilities)
        if not spec.streaming_support:
            capabilities -= {"streaming"}
        if state is not None and state.models:
            offers = [_offer(capabilities, m.info, m.id) for m in state.models]
        elif spec.models:  # a server whose list is empty or not yet seen: trust the config
            offers = [_offer(capabilities, None, model_id) for model_id in spec.models]
        else:
            offers = [_offer(capabilities, None, None)]
        self.offers = tuple(sorted(offers, key=lambda offer: offer.id or ""))
        self.contexts = sorted({o.context_length for o in offers if o.context_length is not None})
        # Requests repeat the same few criteria while a state lives (one probe interval): remember the fits.
        self.fits: dict[tuple[object, ...], _Fit] = {}

    def fit_key(self, query: _Query) -> tuple[object, ...]:
        """The cache key of `query` here. Callers send a new max_tokens nearly every time, but the fit only
        depends on how many of this provider's known context lengths are below it: key on that count."""
        if query.max_tokens is None:
            return query.key
        return (*query.key, bisect.bisect_left(self.contexts, query.max_tokens))

    def fit(self, query: _Query, key: tuple[object, ...]) -> _Fit:
        fit = self.fits.get(key)
        if fit is None:
            if len(self.fits) >= _FITS_KEPT:
                self.fits.clear()
            offers, reason = query.match(self.offers)
            reasons = self.status_reasons if reason is None else (*self.status_reasons, reason)
            fit = self.fits[key] = _Fit(offers, reasons, query.preferred, query.groups)
            fit.speed = _measured(fit, self.generation)
        return fit


_FITS_KEPT = 32


def headroom(load: Capacity | None) -> float:
    """Room for one more request, 0..1, from what the server published: the tightest of idle slots / slots,
    1 / (1 + queue) and the free KV cache; UNKNOWN_HEADROOM when it says nothing."""
    if load is None:
        return UNKNOWN_HEADROOM
    parts = []
    if load.slots_total and load.slots_busy is not None:
        parts.append(max(0, load.slots_total - load.slots_busy) / load.slots_total)
    if load.queue_depth is not None:
        parts.append(1.0 / (1 + load.queue_depth))
    if load.kv_cache_usage is not None:
        parts.append(1.0 - load.kv_cache_usage)
    return min(parts) if parts else UNKNOWN_HEADROOM


def warm_factor(resident: frozenset[str] | None, model: str | None) -> float:
    """COLD_LOAD_FACTOR when the server says what is in memory and `model` is not among it, else 1."""
    if resident is None or model is None or model in resident:
        return 1.0
    return COLD_LOAD_FACTOR


def _first_answer_ms(stats: GenerationStats) -> float | None:
    """Time to first token; an embedding has no tokens to stream, so its whole answer stands in."""
    return stats.ttft_p50_ms if stats.ttft_p50_ms is not None else stats.total_p50_ms


def _measured(fit: _Fit, generation: Mapping[str, GenerationStats]) -> GenerationStats | None:
    """The canary statistics of the fitting model the entry names, else of the fitting model with the most
    successful samples; None when no fitting model has a timed canary sample."""
    if not generation:
        return None
    timed = [stats for model in fit.models if (stats := generation.get(model)) is not None and stats.samples_ok
             and (_first_answer_ms(stats) is not None or stats.tokens_per_s_p50 is not None)]
    if not timed:
        return None
    named = [stats for stats in timed if stats.model == fit.model]
    return named[0] if named else max(timed, key=lambda stats: (stats.samples_ok, stats.model))


def _status_reasons(state: ProviderState | None, spec: ProviderSpec) -> tuple[str, ...]:
    if not spec.enabled:
        return ("disabled in config",)
    if state is None or state.status is Status.UNKNOWN:
        return ("status unknown (not probed yet)",)
    if state.status is Status.MISCONFIGURED:  # another server on the port: nothing it says is about this type
        return (f"status misconfigured ({state.last_error})" if state.last_error else "status misconfigured",)
    if state.status not in (Status.DOWN, Status.STALLED):  # stalled: answers, but cannot generate
        return ()
    reason = f"status {state.status.value}"
    if state.since is not None:
        reason += f" since {state.since.isoformat()}"
    if state.last_error_class is not None:
        reason += f" ({state.last_error_class.value}" + (f": {state.last_error})" if state.last_error else ")")
    return (reason,)


class _Query:
    """The criteria compiled once per request."""

    def __init__(self, criteria: Criteria) -> None:
        groups: list[tuple[str, frozenset[str]]] = []
        for capability in sorted({CAPABILITY_ALIASES.get(c, c) for c in criteria.required_capabilities}):
            groups.append((capability, frozenset({capability}) | _SATISFIED_BY.get(capability, frozenset())))
        task = TaskType(criteria.task_type) if criteria.task_type is not None else None
        if task is not None:
            for group in TASK_REQUIREMENTS[task]:
                groups.append((" or ".join(sorted(group)), group))
        self.groups = tuple(groups)
        self.max_tokens = criteria.max_tokens
        self.max_queue = criteria.max_queue
        self.model = criteria.model
        self.model_match: Callable[[str], object] | None = None  # truthy on a match
        if criteria.model is not None:
            pattern = criteria.model.lower()
            if any(char in pattern for char in "*?["):
                self.model_match = re.compile(translate(pattern)).match
            else:
                self.model_match = pattern.__eq__
        self.preferred = TASK_PREFERENCE.get(task) if task is not None else None
        self.preference = QualityPreference(criteria.quality_preference)
        self.weights = WEIGHTS[self.preference]
        self.key = (task, criteria.required_capabilities, criteria.max_tokens is not None, criteria.model)

    def match(self, offers: tuple[_Offer, ...]) -> tuple[tuple[_Offer, ...], str | None]:
        """The offers that meet the criteria, or why none does."""
        if self.model_match is not None:
            match = self.model_match
            found = tuple(o for o in offers if o.key is not None and match(o.key))
            if not found:
                listed = offers[0].id is not None
                return found, f"model {self.model!r} not served" + ("" if listed else " (no model list yet)")
            offers = found
        if self.groups:
            fitting = tuple(o for o in offers if all(not g.isdisjoint(o.capabilities) for _, g in self.groups))
            if not fitting:
                missing = min(
                    (tuple(label for label, g in self.groups if g.isdisjoint(o.capabilities)) for o in offers),
                    key=len,
                )
                return fitting, "missing capabilities: " + ", ".join(missing)
            offers = fitting
        if self.max_tokens is not None:
            limit = self.max_tokens
            fitting = tuple(o for o in offers if o.context_length is None or o.context_length >= limit)
            if not fitting:
                largest = max(o.context_length or 0 for o in offers)
                return fitting, f"context too small for max_tokens: largest known is {largest}"
            offers = fitting
        return offers, None


class Ranker:
    """Ranks providers; reuses each provider's preparation while its state and spec objects stay the same."""

    def __init__(self, policy: RankingPolicy | None = None) -> None:
        self.policy = policy or RankingPolicy()
        self._prepared: dict[str, _Prepared] = {}
        self._contexts: Counter[int] = Counter()  # context lengths over every prepared provider's offers

    def rank(self, states: Mapping[str, ProviderState], specs: Mapping[str, ProviderSpec], criteria: Criteria,
             now: datetime, *, limit: int | None = None,
             generation: Mapping[str, Mapping[str, GenerationStats]] | None = None) -> Ranking:
        """Configured providers (`specs`) best first; every other one under `excluded` with its reasons.

        `generation` (provider -> model -> canary statistics, monitord.generation.GenerationState.all()) feeds the
        speed part; each provider's mapping is taken by identity, like its state, so it must be replaced, never
        changed in place.

        Order: status tier (up, degraded, loading), unsaturated before saturated, then score desc, priority desc,
        name asc. A provider not in an allow-list (`criteria.providers`) is left out silently; a listed name that
        is not configured is excluded as such; one whose published queue is over `criteria.max_queue` is excluded
        with the reason. `limit` caps the entries (not the exclusions) and saves building the rest.
        """
        query = _Query(criteria)
        excluded: dict[str, tuple[str, ...]] = {}
        candidates: list[tuple[_Prepared, _Fit]] = []
        prepared_for = self._prepared.get
        state_for = states.get
        allowed = criteria.providers
        names: Iterable[str] = specs if allowed is None else sorted(allowed & specs.keys())
        generation_for = generation.get if generation else None
        for name in names:
            spec = specs[name]
            state = state_for(name)
            measured = generation_for(name, _NO_GENERATION) if generation_for is not None else _NO_GENERATION
            prepared = prepared_for(name)
            if (prepared is None or prepared.state is not state or prepared.spec is not spec
                    or prepared.generation is not measured):
                prepared = self.prepared(name, state, spec, measured)
            key = prepared.fit_key(query)
            fit = prepared.fits.get(key) or prepared.fit(query, key)
            reasons = fit.reasons
            if query.max_queue is not None and prepared.queue is not None and prepared.queue > query.max_queue:
                reasons = (*reasons, f"queue of {prepared.queue} waiting request(s) is over max_queue "
                                     f"{query.max_queue}")
            if reasons:
                excluded[name] = reasons
            else:
                candidates.append((prepared, fit))
        if allowed is not None:
            for name in sorted(allowed - specs.keys()):
                excluded[name] = ("not configured",)
        if len(self._prepared) > 2 * len(specs) + 16:
            self._prepared = {name: p for name, p in self._prepared.items() if name in specs}
            self._contexts = Counter(c for p in self._prepared.values() for c in p.contexts)
        entries = self._score(candidates, query, now, limit)
        return Ranking(generated_at=now, criteria=criteria, entries=entries, excluded=excluded)

    def _score(self, candidates: list[tuple[_Prepared, _Fit]], query: _Query, now: datetime,
               limit: int | None) -> tuple[RankedProvider, ...]:
        scale = _Scale.of(candidates, self.policy, query.preference)
        now_s = now.timestamp()
        # Sort keys end with the candidate's index: names are unique, so nothing past the name is compared.
        keyed: list[tuple[int, bool, float, int, str, int]] = []
        parts: list[_Parts] = []
        for index, (prepared, fit) in enumerate(candidates):
            scored = _parts(prepared, fit, scale, query.weights, self.policy, now_s)
            keyed.append((prepared.tier, prepared.saturated, -scored[0], -prepared.priority, prepared.spec.name, index))
            parts.append(scored)
        if limit is not None and limit < len(keyed):
            keyed = heapq.nsmallest(max(0, limit), keyed)
        else:
            keyed.sort()
        return tuple(_entry(*candidates[k[5]], parts[k[5]], now) for k in keyed)

    def prepared(self, name: str, state: ProviderState | None, spec: ProviderSpec,
                 measured: Mapping[str, GenerationStats]) -> _Prepared:
        """The criteria-independent preparation of one provider, kept while its inputs stay the same objects."""
        prepared = self._prepared.get(name)
        if (prepared is None or prepared.state is not state or prepared.spec is not spec
                or prepared.generation is not measured):
            urls = None
            if prepared is not None:
                self._contexts.subtract(prepared.contexts)
                urls = prepared.urls if prepared.spec is spec else None
            prepared = self._prepared[name] = _Prepared(state, spec, self.policy, measured, urls=urls)
            self._contexts.update(prepared.contexts)
        return prepared

    def forget(self, name: str) -> None:
        """Drop a provider's preparation (it left the configuration)."""
        prepared = self._prepared.pop(name, None)
        if prepared is not None:
            self._contexts.subtract(prepared.contexts)

    def context_bounds(self) -> list[int]:
        """Every context length a prepared provider's models have, ascending (see `canonical`)."""
        return sorted(length for length, count in self._contexts.items() if count > 0)

    @staticmethod
    def canonical(criteria: Criteria, bounds: list[int]) -> Criteria:
        """`criteria` with max_tokens moved to the least context length in `bounds` (context_bounds()) at or
        above it: the same ranking whenever `bounds` holds every context length of the states ranked, since
        max_tokens only ever meets a known context length (is it at least max_tokens) and no reason names it.
        Callers send a new max_tokens nearly every time; this lets them share one ranking per interval."""
        wanted = criteria.max_tokens
        if wanted is None:
            return criteria
        index = bisect.bisect_left(bounds, wanted)
        moved = bounds[index] if index < len(bounds) else (bounds[-1] + 1 if bounds else 1)
        return criteria if moved == wanted else replace(criteria, max_tokens=moved)


# score, speed, reported_speed, latency, recency, warm
_Parts = tuple[float, float, float, float, float, float]


class _Scale:
    """The fleet-relative figures every score is measured against: the best control-plane latency, canary TTFT
    and tokens/s, and reported TTFT among the candidates (each with its floor added where it has one)."""

    __slots__ = ("best_ms", "best_report_ms", "floor_ms", "speed", "ttft_floor_ms")

    def __init__(self, policy: RankingPolicy, preference: QualityPreference, least_latency_ms: float | None,
                 least_ttft_ms: float | None, most_tps: float | None, least_report_ms: float | None) -> None:
        self.floor_ms = policy.latency_floor_ms
        self.best_ms = least_latency_ms + self.floor_ms if least_latency_ms is not None else self.floor_ms
        self.ttft_floor_ms = policy.ttft_floor_ms
        self.best_report_ms = (least_report_ms + self.ttft_floor_ms if least_report_ms is not None
                               else self.ttft_floor_ms)
        self.speed = _SpeedScale(least_ttft_ms, most_tps, policy.ttft_floor_ms, SPEED_TTFT_SHARE[preference])

    def close_to(self, other: _Scale, tolerance: float) -> bool:
        """Every figure within `tolerance` (a share) of `other`'s, and the same ones known."""
        for mine, theirs in ((self.best_ms, other.best_ms), (self.best_report_ms, other.best_report_ms),
                             (self.speed.best_ttft_ms, other.speed.best_ttft_ms),
                             (self.speed.best_tps, other.speed.best_tps)):
            if mine != theirs and (mine is None or theirs is None or abs(mine - theirs) > tolerance * theirs):
                return False
        return True

    @classmethod
    def of(cls, candidates: list[tuple[_Prepared, _Fit]], policy: RankingPolicy,
           preference: QualityPreference) -> _Scale:
        latencies = [p.latency_ms for p, _ in candidates if p.latency_ms is not None]
        measured = [fit.speed for _, fit in candidates if fit.speed is not None]
        ttfts = [ms for stats in measured if (ms := _first_answer_ms(stats)) is not None]
        rates = [stats.tokens_per_s_p50 for stats in measured if stats.tokens_per_s_p50]
        reported = [p.report_ms for p, _ in candidates if p.report_ms is not None]
        return cls(policy, preference, min(latencies, default=None), min(ttfts, default=None),
                   max(rates, default=None), min(reported, default=None))


def _parts(prepared: _Prepared, fit: _Fit, scale: _Scale, w: Mapping[str, float], policy: RankingPolicy,
           now_s: float) -> _Parts:
    """One candidate's score and the parts of it that depend on the fleet (`scale`) or on the time (`now_s`)."""
    floor_ms = scale.floor_ms
    latency_ms = prepared.latency_ms
    # each relative figure is at most 1 (a Standing's scale may lag a new best by SCALE_TOLERANCE: it stays 1)
    latency = min(1.0, scale.best_ms / (latency_ms + floor_ms)) if latency_ms is not None else 0.0
    fast = scale.speed.part(fit.speed) if fit.speed is not None else latency  # control plane: the fallback
    report_ms = prepared.report_ms
    # the TTFT real requests saw, against the fastest reported provider; the measured speed where none
    reported_speed = (min(1.0, scale.best_report_ms / (report_ms + scale.ttft_floor_ms)) if report_ms is not None
                      else fast)
    failed_s = prepared.last_failure_s
    recency = 1.0 if failed_s is None else 1.0 - math.exp(-max(0.0, now_s - failed_s) / policy.recovery_tau_s)
    report_w = policy.report_weight
    probe_w = 1.0 - report_w
    availability = probe_w * prepared.availability + report_w * prepared.reported_availability
    total = (w["availability"] * availability + w["speed"] * (probe_w * fast + report_w * reported_speed)
             + w["recency"] * recency + w["priority"] * prepared.priority_part + w["quality"] * fit.quality
             + w["task_fit"] * fit.task_fit + w["headroom"] * prepared.headroom)
    warm = warm_factor(prepared.resident, fit.model)
    return prepared.weight * prepared.status_factor * warm * total, fast, reported_speed, latency, recency, warm


class _SpeedScale:
    """Speed relative to the best candidate with canary samples: TTFT as best/own (with a floor, as latency),
    tokens/s as own/best, mixed by `ttft_share`; a measure a candidate lacks leaves the other alone."""

    __slots__ = ("best_tps", "best_ttft_ms", "floor_ms", "ttft_share")

    def __init__(self, least_ttft_ms: float | None, most_tps: float | None, floor_ms: float,
                 ttft_share: float) -> None:
        self.floor_ms = floor_ms
        self.best_ttft_ms = least_ttft_ms + floor_ms if least_ttft_ms is not None else floor_ms
        self.best_tps = most_tps
        self.ttft_share = ttft_share

    def part(self, stats: GenerationStats) -> float:
        ttft_ms = _first_answer_ms(stats)
        ttft = min(1.0, self.best_ttft_ms / (ttft_ms + self.floor_ms)) if ttft_ms is not None else None
        rate = min(1.0, stats.tokens_per_s_p50 / self.best_tps) if stats.tokens_per_s_p50 and self.best_tps else None
        if ttft is None:
            return rate or 0.0
        if rate is None:
            return ttft
        return self.ttft_share * ttft + (1.0 - self.ttft_share) * rate


def _age_s(now: datetime, at: datetime | None) -> float | None:
    return max(0.0, (now - at).total_seconds()) if at is not None else None


_CONFIG = Evidence(0, None, "config")


def _evidence(prepared: _Prepared, fit: _Fit, now: datetime) -> dict[str, Evidence]:
    """What each part rests on: probes of the window (how many, the newest's age), canary samples, or config."""
    state = prepared.state
    probed = _age_s(now, state.last_probe_at) if state is not None else None
    samples = state.samples if state is not None else 0
    if state is not None and prepared.latency_source == "requests":
        latency = Evidence(state.request_samples, probed, "requests")
    else:
        latency = Evidence(state.samples_ok if state is not None else 0, probed, "probes")
    stats = fit.speed
    speed = latency if stats is None else Evidence(stats.samples_ok, _age_s(now, stats.last_ok_at), "canary",
                                                   stats.model)
    models = Evidence(len(state.models) if state is not None else 0,
                      _age_s(now, max((m.last_seen for m in state.models), default=None)) if state else None,
                      "models") if state is not None and state.models else _CONFIG
    reports = Evidence(state.reports, _age_s(now, state.last_report_at), "reports") \
        if state is not None and state.reports else None
    return {
        "availability": Evidence(samples, probed, "probes"),
        "reported_availability": reports or Evidence(samples, probed, "probes"),
        "reported_speed": reports if reports is not None and state is not None
        and state.report_ttft_p50_ms is not None else speed,
        "speed": speed,
        "latency": latency,
        "recency": Evidence(samples, probed, "probes"),
        "priority": _CONFIG,
        "quality": models,
        "task_fit": models,
        "weight": _CONFIG,
        "status_factor": Evidence(samples, probed, "probes"),
        "headroom": Evidence(1 if state is not None and state.capacity is not None else 0, probed, "capacity"),
        "warm": Evidence(1 if prepared.resident is not None else 0, probed, "capacity", fit.model),
    }


def _entry(prepared: _Prepared, fit: _Fit, parts: _Parts, now: datetime) -> RankedProvider:
    score, speed, reported_speed, latency, recency, warm = parts
    urls = prepared.urls
    return RankedProvider(
        provider=prepared.spec.name, type=prepared.spec.type, score=score, status=prepared.status,
        components={
            "availability": prepared.availability, "reported_availability": prepared.reported_availability,
            "speed": speed, "reported_speed": reported_speed, "latency": latency, "recency": recency,
            "priority": prepared.priority_part, "quality": fit.quality, "task_fit": fit.task_fit,
            "weight": prepared.weight, "status_factor": prepared.status_factor,
            "headroom": prepared.headroom, "warm": warm,
        },
        models=fit.models,
        endpoint=urls.endpoint, api_base=urls.api_base, chat_url=urls.chat_url, model=fit.model,
        evidence=_evidence(prepared, fit, now), suspect=prepared.suspect, saturated=prepared.saturated,
    )


def entry_json(entry: RankedProvider) -> bytes:
    """One entry as the API sends it (RankedProvider.to_dict: score and components to 6 decimals). Rounding
    shortens the ranking's JSON by a fifth after gzip; entries are rendered once per change, so it is cheap."""
    return orjson.dumps(entry.to_dict())


# --- the default ranking, kept up to date entry by entry ---------------------------------------------------------

RECENCY_STEP = 0.01  # a recovering provider is re-scored whenever its recency has moved by this much
SCALE_TOLERANCE = 0.005  # the fleet figures move every score only once one moved by more than this share


class _Extreme:
    """One fleet figure (the least, or the most, of a value over the candidates) kept as values change: only a
    change at or past the current extreme looks at all the values again (`settle`)."""

    __slots__ = ("best", "largest", "unsettled", "values")

    def __init__(self, *, largest: bool = False) -> None:
        self.values: dict[str, float] = {}
        self.best: float | None = None
        self.largest = largest
        self.unsettled = False

    def set(self, name: str, value: float | None) -> None:
        old = self.values.get(name)
        if value is None:
            if old is None:
                return
            del self.values[name]
        elif old == value:
            return
        else:
            self.values[name] = value
        best = self.best
        if best is None or old == best or (value is not None and (value > best if self.largest else value < best)):
            self.unsettled = True

    def settle(self) -> bool:
        """Recompute the extreme if a change may have moved it; whether it moved."""
        if not self.unsettled:
            return False
        self.unsettled = False
        values = self.values.values()
        best = (max(values) if self.largest else min(values)) if values else None
        moved = best != self.best
        self.best = best
        return moved


class _Slot:
    """One eligible provider in the Standing: its preparation, fit, score parts, sort key and, once asked for,
    its entry and rendered JSON."""

    __slots__ = ("due_s", "entry", "failed_s", "fit", "fragment", "key", "parts", "prepared", "rendered_s")

    def __init__(self, prepared: _Prepared, fit: _Fit) -> None:
        self.prepared = prepared
        self.fit = fit
        self.key: tuple[int, bool, float, int, str] | None = None
        self.parts: _Parts = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self.entry: RankedProvider | None = None
        self.fragment: bytes | None = None
        self.rendered_s = 0.0
        self.due_s: float | None = None  # when recency will have moved by RECENCY_STEP
        self.failed_s: float | None = None  # the last failure due_s was reckoned from


class Standing:
    """The ranking for one fixed set of criteria (the default one), kept up to date incrementally.

    `rank()` prepares, fits and scores every provider and builds an entry for each; done once a second for 1,000s
    of providers that is the daemon's largest cost. A Standing does that work only for the providers that changed:

    - `update(..., changed=names)` re-prepares, re-fits and re-scores just `names` (the ones whose state, spec or
      canary statistics object is new; `changed=None` checks every provider's inputs by identity, e.g. after a
      reload). Each eligible provider keeps its sort key in one sorted list (bisect), so a change moves one key.
    - Scores are relative to fleet figures (the least latency, canary TTFT and reported TTFT, the most tokens/s
      among the candidates: `_Scale`). Each is kept by `_Extreme`, which recomputes it only when a change touches
      the current extreme. The scale in use moves (and every candidate is re-scored: cheap floats, entries and
      JSON are rebuilt lazily) only once a figure is more than SCALE_TOLERANCE (0.5%) off it: the fastest
      provider's own EWMA moves a little at every probe, and following it exactly re-scored the fleet every few
      seconds. Each relative part is then within 0.5% of rank()'s (and capped at 1, as rank()'s always is).
    - Recency (1 - exp(-age / tau)) moves with time: a provider that failed is re-scored whenever its recency has
      moved by RECENCY_STEP (0.01), from a heap of due times (about 100 re-scores per failure in all); once within
      0.01 of 1 it is left alone.
    - So a score can differ from rank()'s by at most weight x status_factor x warm x (w_recency x RECENCY_STEP +
      w_speed x SCALE_TOLERANCE): 0.003 for weight 1 and the balanced weights, and two providers closer than that
      may sit in either order.
    - Entries (`RankedProvider`) and their JSON fragments are built when first asked for after a change, with
      evidence ages as of then; one older than `stale_s` is rebuilt, so ages lag generated_at by at most stale_s.
      `body()` splices the fragments in order (bytes joins, no per-entry work).

    What the rest of the fleet costs per update is nothing: the work is in proportion to the changed providers,
    the recovering ones due for a recency step, and (rarely) a fleet figure that moved by more than 0.5%.
    """

    def __init__(self, ranker: Ranker, criteria: Criteria | None = None, *, stale_s: float = 5.0) -> None:
        self.ranker = ranker
        self.policy = ranker.policy
        self.criteria = criteria if criteria is not None else Criteria()
        self.stale_s = stale_s
        self._query = _Query(self.criteria)
        self._slots: dict[str, _Slot] = {}
        self._excluded: dict[str, tuple[str, ...]] = {}
        self._order: list[tuple[int, bool, float, int, str]] = []
        self._latency = _Extreme()
        self._ttft = _Extreme()
        self._tps = _Extreme(largest=True)
        self._report = _Extreme()
        self._scale = _Scale(self.policy, self._query.preference, None, None, None, None)
        self._rescore_due: list[tuple[float, str]] = []  # heap of (due at, name): recovering providers
        self.now = datetime.fromtimestamp(0, UTC)
        self.version = 0  # grows whenever the order, a score, an entry or the exclusions may have changed
        self._rankings: dict[int | None, Ranking] = {}
        self._body: tuple[int, float, bytes] | None = None  # (version, generated at, bytes)
        self._excluded_json: bytes | None = None
        self._specs: Mapping[str, ProviderSpec] | None = None
        self.updates = self.rescored = 0  # counts, for tests and benchmarks: the work done

    def update(self, states: Mapping[str, ProviderState], specs: Mapping[str, ProviderSpec],
               generation: Mapping[str, Mapping[str, GenerationStats]], now: datetime,
               changed: Iterable[str] | None = None) -> None:
        """Take the changes of `changed` (None: check every provider), then re-score what time or a moved fleet
        figure makes due. `now` becomes generated_at."""
        self.now = now
        now_s = now.timestamp()
        self.updates += 1
        touched: dict[str, _Slot] = {}
        if changed is None or specs is not self._specs:
            names: Iterable[str] = list(specs)
            for name in [name for name in (*self._slots, *self._excluded) if name not in specs]:
                self._drop(name)
                self.ranker.forget(name)  # removed from the config
                touched[name] = _GONE
            self._specs = specs
            self._excluded_json = None  # allow-listed names that are not configured may have changed
        else:
            names = changed
        for name in names:
            taken = self._take(name, states, specs, generation)
            if taken is not None:
                touched[name] = taken
        due = self._rescore_due
        while due and due[0][0] <= now_s:
            due_s, name = heapq.heappop(due)
            slot = self._slots.get(name)
            if slot is not None and slot.due_s == due_s:
                touched[name] = slot
        self._latency.settle()
        self._ttft.settle()
        self._tps.settle()
        self._report.settle()
        scale = _Scale(self.policy, self._query.preference, self._latency.best, self._ttft.best, self._tps.best,
                       self._report.best)
        moved = not self._scale.close_to(scale, SCALE_TOLERANCE)
        if moved:
            self._scale = scale
        self._rescore_many(touched, moved, now_s)
        if touched or moved:
            self.version += 1
        self._rankings.clear()  # generated_at moved (and entries past stale_s are due for new evidence ages)

    def _take(self, name: str, states: Mapping[str, ProviderState], specs: Mapping[str, ProviderSpec],
              generation: Mapping[str, Mapping[str, GenerationStats]]) -> _Slot | None:
        """Re-prepare and re-fit `name` if its inputs are new objects: its slot to re-score, _GONE when it left
        the order, None when nothing changed."""
        query = self._query
        spec = specs.get(name)
        allowed = self.criteria.providers
        if spec is None or (allowed is not None and name not in allowed):
            return _GONE if self._drop(name) else None
        measured = generation.get(name, _NO_GENERATION)
        slot = self._slots.get(name)
        state = states.get(name)
        if slot is not None:
            held = slot.prepared
            if held.state is state and held.spec is spec and held.generation is measured:
                return None
        prepared = self.ranker.prepared(name, state, spec, measured)
        key = prepared.fit_key(query)
        fit = prepared.fits.get(key) or prepared.fit(query, key)
        reasons = fit.reasons
        if query.max_queue is not None and prepared.queue is not None and prepared.queue > query.max_queue:
            reasons = (*reasons, f"queue of {prepared.queue} waiting request(s) is over max_queue {query.max_queue}")
        if reasons:
            if self._excluded.get(name) == reasons:
                return None
            self._drop(name)
            self._excluded[name] = reasons
            self._excluded_json = None
            return _GONE
        if self._excluded.pop(name, None) is not None:
            self._excluded_json = None
        if slot is None:
            slot = self._slots[name] = _Slot(prepared, fit)
        else:
            slot.prepared, slot.fit = prepared, fit
        self._figures(name, slot)
        return slot

    def _figures(self, name: str, slot: _Slot) -> None:
        prepared, stats = slot.prepared, slot.fit.speed
        self._latency.set(name, prepared.latency_ms)
        self._report.set(name, prepared.report_ms)
        self._ttft.set(name, _first_answer_ms(stats) if stats is not None else None)
        self._tps.set(name, (stats.tokens_per_s_p50 or None) if stats is not None else None)

    def _drop(self, name: str) -> bool:
        """Take `name` out of the order and the fleet figures (and out of the exclusions); whether it was in."""
        slot = self._slots.pop(name, None)
        if self._excluded.pop(name, None) is not None:
            self._excluded_json = None
            found = True
        else:
            found = False
        if slot is None:
            return found
        if slot.key is not None:
            self._unorder(slot.key)
        for extreme in (self._latency, self._ttft, self._tps, self._report):
            extreme.set(name, None)
        return True

    def _unorder(self, key: tuple[int, bool, float, int, str]) -> None:
        order = self._order
        index = bisect.bisect_left(order, key)
        del order[index]

    def _rescore_many(self, touched: Mapping[str, _Slot], everyone: bool, now_s: float) -> None:
        if everyone:  # new keys, then one sort (not a bisect move each)
            for slot in self._slots.values():
                self._rescore(slot, now_s, reorder=False)
            self._order = sorted([slot.key for slot in self._slots.values() if slot.key is not None])
            return
        for slot in touched.values():
            if slot is not _GONE:
                self._rescore(slot, now_s)

    def _rescore(self, slot: _Slot, now_s: float, *, reorder: bool = True) -> None:
        """New parts and sort key for `slot`; `reorder` False leaves the sorted order to the caller (a whole
        re-score sorts once)."""
        prepared = slot.prepared
        parts = _parts(prepared, slot.fit, self._scale, self._query.weights, self.policy, now_s)
        key = (prepared.tier, prepared.saturated, -parts[0], -prepared.priority, prepared.spec.name)
        if key != slot.key:
            if reorder:
                if slot.key is not None:
                    self._unorder(slot.key)
                bisect.insort(self._order, key)
            slot.key = key
        slot.parts = parts
        slot.entry = slot.fragment = None
        self.rescored += 1
        failed_s = prepared.last_failure_s
        if failed_s is not None and failed_s == slot.failed_s and slot.due_s is not None and slot.due_s > now_s:
            return  # the same failure, its next recency step already due
        slot.failed_s = failed_s
        slot.due_s = None
        if failed_s is not None:  # recency still moving: due again once it has moved by RECENCY_STEP
            tau_s = self.policy.recovery_tau_s
            remaining = math.exp(-max(0.0, now_s - failed_s) / tau_s)  # 1 - recency
            if remaining > RECENCY_STEP:
                slot.due_s = max(now_s, failed_s) - tau_s * math.log((remaining - RECENCY_STEP) / remaining)
                heapq.heappush(self._rescore_due, (slot.due_s, prepared.spec.name))

    def _entry(self, slot: _Slot) -> RankedProvider:
        entry = slot.entry
        if entry is None or slot.rendered_s < self.now.timestamp() - self.stale_s:
            entry = slot.entry = _entry(slot.prepared, slot.fit, slot.parts, self.now)
            slot.fragment = None
            slot.rendered_s = self.now.timestamp()
        return entry

    def ranking(self, limit: int | None = None) -> Ranking:
        """The ranking as of the last update (entries built where needed); `limit` caps the entries."""
        if limit is not None and limit >= len(self._order):
            limit = None
        found = self._rankings.get(limit)
        if found is None:
            slots = self._slots
            keys = self._order if limit is None else self._order[:max(0, limit)]
            found = self._rankings[limit] = Ranking(
                generated_at=self.now, criteria=self.criteria,
                entries=tuple(self._entry(slots[key[4]]) for key in keys), excluded=self._all_excluded())
        return found

    def _all_excluded(self) -> dict[str, tuple[str, ...]]:
        """The exclusions, and (as rank() says) every allow-listed name that is not configured."""
        excluded = dict(self._excluded)
        allowed = self.criteria.providers
        if allowed is not None and self._specs is not None:
            for name in sorted(allowed - self._specs.keys()):
                excluded[name] = ("not configured",)
        return excluded

    def body(self) -> bytes:
        """The JSON of `ranking()` (as GET /v1/ranking serves it), spliced from each entry's rendered fragment."""
        now_s = self.now.timestamp()
        held = self._body
        if held is not None and held[0] == self.version and held[1] == now_s:
            return held[2]
        slots = self._slots
        fragments = []
        for key in self._order:
            slot = slots[key[4]]
            fragment = slot.fragment
            if fragment is None or slot.rendered_s < now_s - self.stale_s:
                fragment = slot.fragment = entry_json(self._entry(slot))
            fragments.append(fragment)
        if self._excluded_json is None:
            self._excluded_json = orjson.dumps(dict(sorted(self._all_excluded().items())))
        body = b"".join((
            b'{"generated_at":', orjson.dumps(self.now.isoformat()), b',"criteria":',
            orjson.dumps(self.criteria.to_dict()), b',"ranking":[', b",".join(fragments), b'],"excluded":',
            self._excluded_json, b"}"))
        self._body = (self.version, now_s, body)
        return body

    def __len__(self) -> int:
        return len(self._order)


_GONE = _Slot.__new__(_Slot)  # marks a provider that left the order in `Standing.update`'s touched set



def rank(states: Mapping[str, ProviderState], specs: Mapping[str, ProviderSpec], criteria: Criteria,
         now: datetime, *, limit: int | None = None, policy: RankingPolicy | None = None,
         generation: Mapping[str, Mapping[str, GenerationStats]] | None = None) -> Ranking:
    """One-shot ranking; hold a Ranker instead to reuse per-provider preparation across calls."""
    return Ranker(policy).rank(states, specs, criteria, now, limit=limit, generation=generation)
