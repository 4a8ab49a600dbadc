"""Run one generation canary against one model and turn every outcome into a GenerationSample.

Mirrors probe.py: the one place that applies the canary's deadline (first token, and the longest gap between two
tokens), its timeout, the body cap and auth, that times the stream and classifies failures. `run_canary` never
raises (except on cancellation). `CanaryRunner` adds the concurrency cap and the daily token budget; it has its own
semaphore, so canaries never hold up health probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog

from monitord.model import (
    Capacity,
    ErrorClass,
    GenerationSample,
    ModelInfo,
    ModelKind,
    ProbeResult,
    ProviderSpec,
    SampleKind,
    Status,
)
from monitord.probe import (
    AiohttpProbeHttp,
    _Attempt,
    classify,
    create_session,
    request_headers,
    scrub,
    ssl_context_for,
    utcnow,
)
from monitord.providers.base import HttpResponse, error_for_status
from monitord.providers.generate import DIALECTS, CanaryRequest, Preflight, Skip, plan
from monitord.providers.streams import StreamEvent, StreamFormatError, StreamTally
from monitord.scheduler import Limit

log = structlog.get_logger("monitord.canary")

_DRAIN_S = 1.0
_NO_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None)  # the canary's own clock ends the wait, not aiohttp's
_NOT_GENERATING = frozenset({ModelKind.EMBEDDING, ModelKind.RERANK})
_BUSY_MESSAGES = ("busy", "no slot", "overloaded")  # 503 KoboldCpp, 503 llama.cpp, 429 TGI
# failures after which the server may still have generated up to max_tokens (charged to the budget as such)
_MAY_HAVE_GENERATED = frozenset({ErrorClass.GENERATION_TIMEOUT, ErrorClass.STREAM_STALLED, ErrorClass.STREAM_BROKEN,
                                 ErrorClass.EMPTY_GENERATION, ErrorClass.TIMEOUT, ErrorClass.CONNECTION})


# -- which models ----------------------------------------------------------------------------------------------


def canary_models(spec: ProviderSpec, listed: Sequence[ModelInfo]) -> tuple[tuple[str, ModelKind | None], ...]:
    """The models to test and their kinds: canary.models, else the provider's models, else the first chat model
    the server lists, preferring one it holds in memory (none yet: nothing to test)."""
    kinds = {m.id: m.kind for m in listed}
    named = spec.canary.models or spec.models
    if named:
        return tuple((model, kinds.get(model)) for model in named)
    chat = [info for info in listed if info.kind not in _NOT_GENERATING]
    chat.sort(key=lambda info: info.loaded is not True)  # stable: the first one in memory, else the first listed
    return ((chat[0].id, chat[0].kind),) if chat else ()


@dataclass(frozen=True, slots=True)
class CanaryJob:
    """One scheduled canary: a provider and one model (None: the model the server lists, chosen at each run)."""

    spec: ProviderSpec
    model: str | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.model}" if self.model is not None else self.spec.name

    @property
    def probe_interval_s(self) -> float:
        return self.spec.canary.interval_s

    @property
    def timeout_s(self) -> float:
        return self.spec.canary.timeout_s

    @property
    def enabled(self) -> bool:
        return self.spec.enabled and self.spec.canary.enabled


def canary_jobs(specs: Iterable[ProviderSpec]) -> list[CanaryJob]:
    """The canary jobs of every provider whose canary is on: one per named model, else one that picks its model."""
    jobs = []
    for spec in specs:
        if not (spec.enabled and spec.canary.enabled):
            continue
        named = spec.canary.models or spec.models
        jobs += [CanaryJob(spec, model) for model in named] if named else [CanaryJob(spec)]
    return jobs


def job_model(job: CanaryJob, listed: Sequence[ModelInfo]) -> tuple[str, ModelKind | None] | None:
    """The model a job tests now and its kind as the server lists it; None while there is nothing to test."""
    if job.model is not None:
        kinds = {m.id: m.kind for m in listed}
        return job.model, kinds.get(job.model)
    models = canary_models(job.spec, listed)
    return models[0] if models else None


# -- the daily budget ------------------------------------------------------------------------------------------


class CanaryBudget:
    """Tokens each (provider, model) spent on canaries in the current UTC day. In memory: a restart starts over."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], tuple[int, int]] = {}  # (provider, model) -> (UTC day number, tokens)

    @staticmethod
    def _day(at: datetime) -> int:
        """The UTC day `at` falls in, as days since the epoch (a division, not a calendar)."""
        return int(at.timestamp() // 86_400)

    def spent(self, provider: str, model: str, at: datetime) -> int:
        found = self._spent.get((provider, model))
        return found[1] if found is not None and found[0] == self._day(at) else 0

    def refusal(self, spec: ProviderSpec, model: str, at: datetime) -> str | None:
        """Why the next canary may not run (it could overrun the budget), or None."""
        limit = spec.canary.max_tokens_per_day
        spent = self.spent(spec.name, model, at)
        if spent + spec.canary.max_tokens <= limit:
            return None
        resumes = datetime.fromtimestamp((self._day(at) + 1) * 86_400, UTC).isoformat()
        return f"daily canary budget spent: {spent} of {limit} tokens; resumes at {resumes}"

    def charge(self, sample: GenerationSample, spec: ProviderSpec) -> int:
        """Count what a canary that was sent cost: generated tokens (input tokens for an embedding)."""
        if sample.skipped:
            return 0
        told = sample.completion_tokens is not None or sample.prompt_tokens is not None
        if not sample.ok and not told and sample.error_class not in _MAY_HAVE_GENERATED:
            return 0  # refused, rejected, cut before an answer: the server generated nothing for it
        if sample.kind is SampleKind.EMBEDDING:
            cost = sample.prompt_tokens if sample.prompt_tokens is not None else len(spec.canary.prompt) // 4 + 1
        else:
            cost = sample.completion_tokens if sample.completion_tokens is not None else spec.canary.max_tokens
        key = (sample.provider, sample.model)
        total = self.spent(sample.provider, sample.model, sample.started_at) + cost
        self._spent[key] = (self._day(sample.started_at), total)
        return cost

    def forget(self, keep: Iterable[str]) -> None:
        """Drop providers no longer configured."""
        kept = set(keep)
        self._spent = {key: value for key, value in self._spent.items() if key[0] in kept}


# -- one canary ------------------------------------------------------------------------------------------------


class _Outcome(Exception):
    """A classified end of a canary, raised inside the timed block and turned into the sample."""

    def __init__(self, error_class: ErrorClass, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.skipped = skipped


class _Clock:
    """When the current wait must end: the first-token deadline, then each gap's, never past the timeout.

    Checked lazily, so a token costs one attribute store: a token only moves `waiting_since`, and one timer,
    armed for the earliest moment the wait could end, looks again when it fires. If a token came meanwhile it
    re-arms for the new end; if not, the wait is over and it expires the window at once. A stall is caught at
    the same moment as by a timer re-armed at every token (the timer fires at the deadline of the last token
    seen when it was armed, or re-arms to the later one), with one timer per deadline period instead of one per
    token.
    """

    __slots__ = ("_armed", "_handle", "_loop", "_offset", "_window", "deadline_s", "hard_end", "started",
                 "waiting_since")

    def __init__(self, started: float, deadline_s: float, hard_end: float) -> None:
        self.started = started
        self.deadline_s = deadline_s
        self.hard_end = hard_end
        self.waiting_since = started
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0

    def next_end(self) -> float:
        return min(self.waiting_since + self.deadline_s, self.hard_end)

    def watch(self, window: asyncio.Timeout) -> None:
        """Start timing the wait; `window` (entered, with no deadline of its own) expires when the wait ends."""
        self._loop = asyncio.get_running_loop()
        self._offset = self._loop.time() - time.perf_counter()  # perf_counter deadlines on the loop's clock
        self._window = window
        self._arm(self.next_end())

    def stop(self) -> None:
        """The wait is over (the reply ended, or the window is being left): no more checks."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, end: float) -> None:
        self._armed = end
        self._handle = self._loop.call_at(end + self._offset, self._check)

    def _check(self) -> None:
        end = self.next_end()
        if end > self._armed:  # a token came since this timer was armed: wait for the new end
            self._arm(end)
            return
        self._handle = None
        self._window.reschedule(self._loop.time())  # nothing since: the deadline has passed


async def run_canary(spec: ProviderSpec, model: str, session: aiohttp.ClientSession, *,
                     kind: ModelKind | None = None, capacity: Capacity | None = None,
                     budget: CanaryBudget | None = None,
                     now: Callable[[], datetime] = utcnow) -> GenerationSample:
    """One canary of `model` on `spec`'s server. Never raises, except on cancellation."""
    started_at = now()
    planned = plan(spec, model, kind)
    sample_kind = SampleKind.EMBEDDING if kind is ModelKind.EMBEDDING else SampleKind.GENERATION
    if isinstance(planned, Skip):
        return GenerationSample(provider=spec.name, provider_type=spec.type, model=model, started_at=started_at,
                                ok=False, kind=sample_kind, skipped=True, error=planned.reason)
    base = GenerationSample(provider=spec.name, provider_type=spec.type, model=model, started_at=started_at,
                            ok=False, kind=planned.kind, streamed=planned.stream)
    refusal = budget.refusal(spec, model, started_at) if budget is not None else None
    if refusal is not None:
        return replace(base, skipped=True, error_class=ErrorClass.BUDGET_EXHAUSTED, error=refusal)
    try:
        sample = await _run(spec, model, session, planned, capacity, base)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug here is recorded, never raised into the scheduler
        log.exception("canary.internal_error", provider=spec.name, model=model)
        error_class, message = classify(exc)
        sample = replace(base, error_class=error_class, error=scrub(message, spec))
    if budget is not None:
        budget.charge(sample, spec)
    return sample


async def _run(spec: ProviderSpec, model: str, session: aiohttp.ClientSession, request: CanaryRequest,
               capacity: Capacity | None, base: GenerationSample) -> GenerationSample:
    canary = spec.canary
    started = time.perf_counter()
    ssl_context = ssl_context_for(spec)
    preflight = await _preflight(spec, model, session, ssl_context, started + min(canary.deadline_s, 5.0))
    if preflight.busy:
        return replace(base, skipped=True, error_class=ErrorClass.BUSY, server_busy=True,
                       error=f"no idle slot ({preflight.detail or 'server busy'}): not queued behind real work")
    if preflight.resident is False and not canary.load:
        return replace(base, skipped=True, error_class=ErrorClass.NOT_LOADED,
                       error="model not loaded; canary.load is off, so it is not loaded to be tested")
    busy_before = bool(capacity is not None and capacity.saturated)
    started = time.perf_counter()
    clock = _Clock(started, canary.deadline_s if request.stream else canary.timeout_s, started + canary.timeout_s)
    tally = StreamTally()
    complete: bool | None = None
    error: _Outcome | None = None
    try:
        complete = await _exchange(spec, session, ssl_context, request, tally, clock)
    except _Outcome as outcome:
        error = outcome
    except TimeoutError:
        error = _timeout(tally, clock, request)
    except StreamFormatError as exc:
        error = _Outcome(ErrorClass.STREAM_BROKEN, f"malformed chunk: {exc}")
    except aiohttp.ClientPayloadError:
        error = _Outcome(ErrorClass.STREAM_BROKEN, "connection cut mid-stream" if tally.events else
                         "response body cut short")
    except (aiohttp.ClientError, OSError) as exc:
        error_class, message = classify(exc)
        if tally.events and error_class is ErrorClass.CONNECTION:
            error_class, message = ErrorClass.STREAM_BROKEN, f"connection cut mid-stream ({message})"
        error = _Outcome(error_class, message)
    total_ms = (time.perf_counter() - started) * 1000
    if error is None:
        error = _judge(tally, complete, request)
    ttft_ms = (tally.first_token_at - started) * 1000 if tally.first_token_at is not None else None
    stalled = error is not None and error.error_class in (ErrorClass.GENERATION_TIMEOUT, ErrorClass.STREAM_STALLED)
    return replace(
        base,
        ok=error is None,
        skipped=error.skipped if error is not None else False,
        error_class=error.error_class if error is not None else None,
        error=scrub(error.message, spec) if error is not None else None,
        ttft_ms=ttft_ms if request.stream else None,
        total_ms=total_ms,
        tokens_per_s=tally.tokens_per_s() if request.stream else tally.server_tokens_per_s,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion if request.kind is SampleKind.GENERATION else None,
        finish_reason=tally.finish_reason,
        stream_complete=bool(complete) if request.stream else None,
        server_busy=busy_before if stalled else None,
    )


async def _preflight(spec: ProviderSpec, model: str, session: aiohttp.ClientSession,
                     ssl_context: Any, deadline: float) -> Preflight:
    """Ask the server whether the canary may run; a failed question is no answer (the canary still runs)."""
    dialect = DIALECTS[spec.type]
    if not dialect.asks_first:
        return Preflight()
    http = AiohttpProbeHttp(session, spec, deadline, ssl_context, _Attempt())
    try:
        async with asyncio.timeout(max(deadline - time.perf_counter(), 0.001)):
            return await dialect.preflight(http, spec, model)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("canary.preflight_failed", provider=spec.name, error=type(exc).__name__)
        return Preflight()


async def _exchange(spec: ProviderSpec, session: aiohttp.ClientSession, ssl_context: Any, request: CanaryRequest,
                    tally: StreamTally, clock: _Clock) -> bool:
    """Send the request and read the reply into `tally`; True when the stream ended with its terminal marker."""
    async with asyncio.timeout(None) as window:
        clock.watch(window)
        try:
            async with session.post(spec.base_url + request.path, json=request.payload,
                                    headers=request_headers(spec), ssl=ssl_context,
                                    timeout=_NO_CLIENT_TIMEOUT, max_redirects=5) as resp:
                if resp.status >= 300:
                    body = await resp.content.read(64 * 1024)
                    raise _status_outcome(HttpResponse(resp.status, dict(resp.headers), body, request.path))
                if not request.stream:
                    body = await _read_body(resp, spec.max_body_bytes, request.path)
                    try:
                        parsed = orjson.loads(body)
                    except orjson.JSONDecodeError:
                        raise _Outcome(ErrorClass.BAD_PAYLOAD, f"{request.path}: the reply is not JSON") from None
                    tally.add(request.read_reply(parsed), time.perf_counter())
                    return True
                assert request.new_reader is not None
                reader = request.new_reader()
                size, cap = 0, spec.max_body_bytes
                async for data in resp.content.iter_any():
                    size += len(data)
                    if size > cap:
                        raise _Outcome(ErrorClass.TOO_LARGE, f"{request.path}: stream exceeds the {cap}-byte cap")
                    events = reader.feed(data)
                    if events:
                        _fold(tally, events, clock)
                        if tally.done or tally.error is not None:
                            clock.stop()
                            await _drain(resp)
                            return tally.done
                _fold(tally, reader.close(), clock)
                return tally.done
        finally:
            clock.stop()


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows the terminal marker (the chunked-encoding end) so the server finishes its reply and the
    connection is reused; a server that keeps writing is cut after a moment, without changing the verdict."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
        async with asyncio.timeout(_DRAIN_S):
            await resp.content.read(64 * 1024)


def _fold(tally: StreamTally, events: list[StreamEvent], clock: _Clock) -> None:
    """Fold the events of one read (they arrived together, so one time for all); a token restarts the stall
    clock."""
    at = time.perf_counter()
    for event in events:
        if tally.add(event, at):
            clock.waiting_since = at


async def _read_body(resp: aiohttp.ClientResponse, cap: int, path: str) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise _Outcome(ErrorClass.TOO_LARGE, f"{path}: body exceeds the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _status_outcome(response: HttpResponse) -> _Outcome:
    """A refused canary: a saturated server's own answer is BUSY (skipped), anything else its HTTP class."""
    failure = error_for_status(response)
    text = failure.message.lower()
    if response.status in (429, 503) and any(word in text for word in _BUSY_MESSAGES):
        return _Outcome(ErrorClass.BUSY, f"server busy: {failure.message}", skipped=True)
    return _Outcome(failure.error_class, failure.message)


def _timeout(tally: StreamTally, clock: _Clock, request: CanaryRequest) -> _Outcome:
    limit = clock.deadline_s
    if time.perf_counter() >= clock.hard_end - 0.001 and tally.first_token_at is not None:
        return _Outcome(ErrorClass.GENERATION_TIMEOUT, f"not finished within the {clock.hard_end - clock.started:g}s "
                                                       "timeout")
    if tally.first_token_at is None:
        what = "no first token" if request.stream else "no reply"
        return _Outcome(ErrorClass.GENERATION_TIMEOUT, f"{what} within {limit:g}s")
    return _Outcome(ErrorClass.STREAM_STALLED, f"no token for {limit:g}s after {tally.token_chunks} "
                                               f"chunk(s)")


def _judge(tally: StreamTally, complete: bool | None, request: CanaryRequest) -> _Outcome | None:
    """A reply that arrived: was it a good one?"""
    if tally.error is not None:
        return _Outcome(ErrorClass.STREAM_BROKEN, f"server error mid-stream: {tally.error}")
    if request.stream and not complete:
        return _Outcome(ErrorClass.STREAM_BROKEN, f"stream ended without {request.terminal}")
    if not tally.generated:
        what = "an empty embedding" if request.kind is SampleKind.EMBEDDING else "no token"
        reason = f" (finish_reason {tally.finish_reason})" if tally.finish_reason else ""
        return _Outcome(ErrorClass.EMPTY_GENERATION, f"finished with {what}{reason}")
    return None


# -- once, for `monitord check --generate` -------------------------------------------------------------------


async def canary_once(specs: Sequence[ProviderSpec], results: Sequence[ProbeResult], *,
                      session: aiohttp.ClientSession | None = None,
                      concurrency: int = 2) -> dict[str, GenerationSample]:
    """One canary per provider that answered its probe (the first model its canary would test), whether or not
    its canary is enabled; provider name -> sample."""
    by_name = {r.provider: r for r in results}
    own = session is None
    http = session or create_session(limit=max(concurrency, 4))
    runner = CanaryRunner(http, concurrency=concurrency)

    async def one(spec: ProviderSpec) -> tuple[str, GenerationSample] | None:
        result = by_name.get(spec.name)
        if result is None or result.status not in (Status.UP, Status.DEGRADED):
            return None
        models = canary_models(spec, result.models)
        if not models:
            return None
        model, kind = models[0]
        return spec.name, await runner.run(spec, model, kind=kind, capacity=result.capacity)

    try:
        done = await asyncio.gather(*(one(spec) for spec in specs))
    finally:
        if own:
            await http.close()
    return dict(pair for pair in done if pair is not None)


# -- the runner the daemon holds -------------------------------------------------------------------------------


class CanaryRunner:
    """Runs canaries under their own concurrency cap and charges each to its model's daily budget."""

    def __init__(self, session: aiohttp.ClientSession, *, concurrency: int = 2,
                 now: Callable[[], datetime] = utcnow) -> None:
        self._session = session
        self._limit = Limit(concurrency)  # resizable: a reload of monitor.canary.concurrency
        self._now = now
        self.budget = CanaryBudget()
        self._paused: set[tuple[str, str]] = set()  # said once per pause, not at every skipped run

    def set_concurrency(self, concurrency: int) -> None:
        """A reload: the next canaries to start are held to the new cap (running ones finish)."""
        self._limit.resize(concurrency)

    async def run(self, spec: ProviderSpec, model: str, *, kind: ModelKind | None = None,
                  capacity: Capacity | None = None) -> GenerationSample:
        async with self._limit:
            sample = await run_canary(spec, model, self._session, kind=kind, capacity=capacity,
                                      budget=self.budget, now=self._now)
        key = (spec.name, model)
        if sample.error_class is ErrorClass.BUDGET_EXHAUSTED and key not in self._paused:
            self._paused.add(key)
            log.warning("canary.paused", provider=spec.name, model=model, reason=sample.error)
        elif sample.error_class is not ErrorClass.BUDGET_EXHAUSTED and key in self._paused:
            self._paused.discard(key)
            log.info("canary.resumed", provider=spec.name, model=model)
        return sample
