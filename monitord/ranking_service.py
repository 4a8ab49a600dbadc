"""The ranking service: the one owner of rankings kept between requests and of the best-provider stream.

`RankingCache` keeps rankings and rendered answers while the live state stays (nearly) the same: a generation
ends at once when a provider's status or model list changes (`invalidate`) or the provider specs change (reload);
other probe results (a latency, a window's availability) end it at most every refresh_s; and every generation ends
after max_age_s, since recency and generated_at move with time even when nothing is probed.

The default ranking (the best-provider watch, GET /v1/ranking without parameters, /metrics) is not recomputed per
generation: a `Standing` keeps it, and each generation hands it only the providers the pipeline reported since
the last one (`note`), so its cost follows the results, not the fleet (see monitord.ranking.Standing for how
fleet-relative figures and recency stay right). Changes nobody reported (LiveState or GenerationState changed
more often than `note` was called, a reload, the canary windows aged by `expire`) fall back to checking every
provider's inputs by identity, which is cheap next to scoring. Other criteria are ranked on request, once per
generation.

`RankingService.watch()` is the one best-provider watcher: it looks at the head of the default ranking when the
live state changed (coalesced over check_interval_s) and at least every tick_s, and hands every look to its
subscribers as a `BestUpdate` (`changed` when the best provider is another one than last time). The SSE stream
(`ranking.best_changed` events) and the alert rules (which wait for a new best to hold) both subscribe to it.
"""

from __future__ import annotations

import asyncio
import gzip
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from monitord.aio import wait_event
from monitord.generation import GenerationState
from monitord.health import LiveState
from monitord.model import (
    Criteria,
    GenerationSample,
    OutcomeReport,
    ProbeResult,
    ProviderSpec,
    ProviderState,
    RankedProvider,
    Ranking,
)
from monitord.pipeline import Recorded
from monitord.ranking import Ranker, Standing, entry_json, headroom

log = structlog.get_logger("monitord.ranking")

FALLBACKS_IN_EVENTS = 3  # how many fallbacks a best-provider update names (the head of the default ranking)

DEFAULT_CRITERIA = Criteria()
MAX_FRAGMENTS = 4096
MAX_STANDINGS = 16  # criteria besides the default kept incrementally (the ones asked in two generations)
KEPT_CHANGES = 64  # generations whose changed providers are remembered for Standings brought up lazily
GZIP_IN_THREAD_BYTES = 64 * 1024  # smaller bodies compress in well under a millisecond: not worth a thread


class RankingCache:
    """Serves the default ranking and repeated queries from memory; computes anything else on request.

    `specs` should return the same Mapping object until the configuration changes: a new object starts a new
    generation (and the Ranker re-prepares providers whose ProviderSpec objects are new).
    """

    def __init__(self, live: LiveState, specs: Callable[[], Mapping[str, ProviderSpec]], ranker: Ranker,
                 clock: Callable[[], datetime], *, refresh_s: float = 1.0, max_age_s: float = 5.0,
                 max_entries: int = 128, generation: GenerationState | None = None) -> None:
        self.live = live
        self.generation = generation or GenerationState()  # canary statistics: the speed part of the score
        self.specs = specs
        self.ranker = ranker
        self.clock = clock
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._stale = True  # end the generation on the next read, whatever its age
        self._version = (-1, -1)
        self._specs: Mapping[str, ProviderSpec] | None = None  # held so its identity stays meaningful
        self._born_s = 0.0
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self.standing = Standing(ranker, DEFAULT_CRITERIA, stale_s=max_age_s)
        self._fragments: dict[int, tuple[RankedProvider, bytes]] = {}  # by id, the entry held so the id stays
        self._bounds: list[int] | None = None  # the fleet's context lengths, fixed per generation
        self._noted: set[str] = set()  # providers reported since the standing's last update
        self._told = 0  # how many reports (a provider may report twice)
        self._sequence = 0  # generations so far
        self._changes: list[set[str] | None] = []  # per recent generation: who changed (None: check everyone)
        self._standings: OrderedDict[Criteria, tuple[Standing, int]] = OrderedDict()  # kept, with their generation
        self._asked: OrderedDict[Criteria, int] = OrderedDict()  # criteria asked lately, by generation
        self.clock_now = datetime.fromtimestamp(0, UTC)  # `now` of the current generation
        self._seen_versions = (-1, -1)  # the versions at the standing's last update
        self._expired_s = float("-inf")
        self._gzip_done: tuple[bytes, str, bytes] | None = None  # the default body last compressed: tag, gzip
        self._gzip_task: asyncio.Future[None] | None = None  # compressing in a worker thread
        self._gzip_started_s = 0.0  # loop time the last compression started

    def note(self, provider: str) -> None:
        """The pipeline reported a result of `provider`: its entry of the default ranking is due at the next
        generation."""
        self._noted.add(provider)
        self._told += 1

    def invalidate(self) -> None:
        """Something callers must see at once changed (a status, a model list): end the generation now."""
        self._stale = True

    @property
    def pending(self) -> bool:
        """The live state changed since this generation began (it will show within refresh_s)."""
        return self._stale or self._versions() != self._version

    def _versions(self) -> tuple[int, int]:
        return self.live.version, self.generation.version

    def _current(self) -> tuple[Mapping[str, ProviderSpec], datetime]:
        """The specs and `now`, after starting a new generation if the old one no longer holds."""
        specs = self.specs()
        now = self.clock()
        now_s = now.timestamp()
        age_s = now_s - self._born_s
        if (self._stale or specs is not self._specs or not 0.0 <= age_s < self.max_age_s
                or (self._versions() != self._version and age_s >= self.refresh_s)):
            self._stale = False
            self._entries.clear()
            self._fragments.clear()
            self._bounds = None
            if now_s - self._expired_s >= self.max_age_s or now_s < self._expired_s:
                # canary samples leave their window with time, not only with new ones
                self.generation.expire(now)
                self._expired_s = now_s
            self._update_standing(specs, now)
            self._version = self._versions()
            self._specs = specs
            self._born_s = now_s
            self.clock_now = now
        return specs, now

    def _update_standing(self, specs: Mapping[str, ProviderSpec], now: datetime) -> None:
        versions = self._versions()
        seen_live, seen_generation = self._seen_versions
        noted = self._noted
        # every fold moves a version by one and is reported by one `note`: more moves than notes means changes
        # nobody reported, so every provider is checked
        told = specs is self._specs and seen_live >= 0 and max(
            versions[0] - seen_live, versions[1] - seen_generation) <= self._told
        self.standing.update(self.live.all(), specs, self.generation.all(), now, noted if told else None)
        self._sequence += 1
        self._changes.append(noted if told else None)
        if len(self._changes) > KEPT_CHANGES:
            del self._changes[0]
        self._noted = set()
        self._told = 0
        self._seen_versions = versions

    def _kept(self, criteria: Criteria) -> Standing | None:
        """The Standing kept for `criteria`, brought up to this generation with the changes since its last one;
        None when `criteria` is not asked for often enough to keep one. A criteria asked in two generations gets
        one: from then on it costs what changed, like the default ranking."""
        held = self._standings.get(criteria)
        sequence = self._sequence
        if held is None:
            asked = self._asked.pop(criteria, None)
            self._asked[criteria] = sequence
            if len(self._asked) > MAX_STANDINGS * 4:
                self._asked.popitem(last=False)
            if asked is None or asked == sequence:
                return None
            standing = Standing(self.ranker, criteria, stale_s=self.max_age_s)
            self._standings[criteria] = (standing, sequence)
            if len(self._standings) > MAX_STANDINGS:
                self._standings.popitem(last=False)
            standing.update(self.live.all(), self._specs or {}, self.generation.all(), self.clock_now)
            return standing
        standing, seen = held
        self._standings.move_to_end(criteria)
        if seen != sequence:
            missed = sequence - seen
            changes = self._changes[-missed:] if missed <= len(self._changes) else [None]
            names: set[str] | None = set()
            for changed in changes:
                if changed is None or names is None:
                    names = None
                    break
                names |= changed
            standing.update(self.live.all(), self._specs or {}, self.generation.all(), self.clock_now, names)
            self._standings[criteria] = (standing, sequence)
        return standing

    def ranking(self, criteria: Criteria = DEFAULT_CRITERIA, *, limit: int | None = None) -> Ranking:
        """The ranking for `criteria` in this generation, computed at most once per generation (the default one
        is the Standing's)."""
        specs, now = self._current()
        if criteria == DEFAULT_CRITERIA:
            return self.standing.ranking(limit)
        if criteria.max_tokens is not None:  # one ranking per interval between the fleet's context lengths
            if self._bounds is None:
                self._bounds = self.ranker.context_bounds()
            asked, criteria = criteria, self.ranker.canonical(criteria, self._bounds)
        else:
            asked = criteria
        key = ("ranking", criteria, limit)
        found = self._entries.get(key)
        if isinstance(found, Ranking):
            return found if asked is criteria else replace(found, criteria=asked)
        standing = self._kept(criteria)
        if standing is not None:
            result = standing.ranking(limit)
        else:
            result = self.ranker.rank(self.live.all(), specs, criteria, now, limit=limit,
                                      generation=self.generation.all())
        self._remember(key, result)
        return result if asked is criteria else replace(result, criteria=asked)

    def default_body(self) -> tuple[bytes, str]:
        """The default ranking's JSON (spliced by the Standing) and its entity tag."""
        self._current()
        body = self.standing.body()
        return body, f'"r{self.standing.version}-{self._born_s:.3f}"'

    async def default_gzip(self, body: bytes, tag: str, level: int) -> tuple[bytes, str]:
        """The default ranking gzipped, with its tag: `body` once it is compressed, the previous one meanwhile.

        Compressing a 1 MB ranking takes ~10 ms, and a busy fleet changes it several times a second (each status,
        suspect or load-shape change ends a generation). So it runs in a worker thread (zlib lets go of the GIL),
        never blocking the loop; at most one starts per refresh_s; and requests meanwhile get the ranking
        compressed before (at most refresh_s plus a compression older; its own ETag) rather than waiting. Only
        the first request ever waits.
        """
        done = self._gzip_done
        if done is not None and done[0] is body:
            return done[2], done[1]
        if len(body) < GZIP_IN_THREAD_BYTES:
            packed = gzip.compress(body, compresslevel=level, mtime=0)
            self._gzip_done = (body, tag, packed)
            return packed, tag
        now_s = asyncio.get_running_loop().time()
        if self._gzip_task is None and (done is None or now_s - self._gzip_started_s >= self.refresh_s):
            self._gzip_started_s = now_s
            self._gzip_task = asyncio.ensure_future(self._compress(body, tag, level))
        if done is not None:
            return done[2], done[1]
        task = self._gzip_task
        assert task is not None  # nothing compressed yet: one was started above, or before
        await asyncio.shield(task)
        done = self._gzip_done
        assert done is not None
        return done[2], done[1]

    async def _compress(self, body: bytes, tag: str, level: int) -> None:
        try:
            packed = await asyncio.to_thread(gzip.compress, body, level, mtime=0)
            self._gzip_done = (body, tag, packed)
        finally:
            self._gzip_task = None

    def fragment(self, entry: RankedProvider) -> bytes:
        """The JSON of one entry of a ranking of this generation, rendered once: selections that differ only in
        their criteria or the chosen provider share their entries' JSON."""
        held = self._fragments.get(id(entry))
        if held is not None and held[0] is entry:
            return held[1]
        if len(self._fragments) >= MAX_FRAGMENTS:
            self._fragments.clear()
        body = entry_json(entry)
        self._fragments[id(entry)] = (entry, body)
        return body

    def rendered(self, key: Hashable, render: Callable[[], bytes], *, checked: bool = False) -> bytes:
        """Bytes for `key` rendered once per generation (render may call `ranking`).

        checked: the caller has just read this generation (it derives these bytes from others), skip the check.
        """
        if not checked:
            self._current()
        entry_key = ("rendered", key)
        found = self._entries.get(entry_key)
        if isinstance(found, bytes):
            self._entries.move_to_end(entry_key)
            return found
        body = render()
        self._remember(entry_key, body)
        return body

    def _remember(self, key: Hashable, value: object) -> None:
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class BestUpdate:
    """One look at the default ranking's best provider."""

    previous: RankedProvider | None
    current: RankedProvider | None
    fallbacks: tuple[str, ...]  # the next providers of the default ranking, best first
    at: datetime  # the ranking's generated_at
    changed: bool  # current names another provider than previous


BestListener = Callable[[BestUpdate], None]


class RankingService:
    """Owns the ranking cache and the one best-provider watch; the pipeline tells it about results."""

    def __init__(self, live: LiveState, specs: Callable[[], Mapping[str, ProviderSpec]], *,
                 clock: Callable[[], datetime], ranker: Ranker | None = None, check_interval_s: float = 0.25,
                 tick_s: float = 1.0, generation: GenerationState | None = None) -> None:
        self.live = live
        self.cache = RankingCache(live, specs, ranker or Ranker(), clock, generation=generation)
        self.check_interval_s = check_interval_s  # coalesces bursts of results into one check
        self.tick_s = tick_s  # a look at least this often, for listeners that wait for time to pass
        self._listeners: list[BestListener] = []
        self._seen: dict[str, Hashable] = {name: _routing(s) for name, s in live.all().items()}
        self._changed = asyncio.Event()
        self._best: RankedProvider | None = None

    @property
    def ranker(self) -> Ranker:
        return self.cache.ranker

    @property
    def best(self) -> RankedProvider | None:
        """The best provider as of the last look (None before the first)."""
        return self._best

    def subscribe(self, listener: BestListener) -> None:
        """Call `listener` with every look the watcher takes (it must not block)."""
        self._listeners.append(listener)

    def on_probe(self, recorded: Recorded[ProbeResult]) -> None:
        """Pipeline sink: status, suspect and model-list changes reach rankings at once, other results within
        refresh_s."""
        self.observed(recorded.observation.provider, bool(recorded.changes))

    def on_sample(self, recorded: Recorded[GenerationSample]) -> None:
        """Pipeline sink: a canary's verdict (stalled, or back) reaches rankings at once; its timings, which move
        the speed part, within refresh_s."""
        self.observed(recorded.observation.provider, bool(recorded.changes))

    @property
    def generation(self) -> GenerationState:
        """Live canary statistics per provider and model: the speed part of every score."""
        return self.cache.generation

    def on_report(self, recorded: Recorded[OutcomeReport]) -> None:
        """Pipeline sink: a failed real request makes its provider suspect, and selections see it at once."""
        self.observed(recorded.observation.provider, False)

    def observed(self, provider: str, status_changed: bool) -> None:
        self.cache.note(provider)
        state = self.live.get(provider)
        seen = _routing(state) if state is not None else ((), False, None)
        if status_changed or self._seen.get(provider) != seen:
            self._seen[provider] = seen
            self.cache.invalidate()
        self._changed.set()

    def reconfigured(self, removed: Iterable[str] = ()) -> None:
        """After a reload: forget removed providers and re-rank."""
        for name in removed:
            self._seen.pop(name, None)
            self.generation.remove(name)
        self.cache.invalidate()
        self._changed.set()

    def top(self) -> Ranking:
        """The head of the default ranking (best and the fallbacks updates name), once per cache generation.

        The Standing keeps the default ranking incrementally and builds entries only for the head, so a look
        costs what changed since the last one, not the fleet.
        """
        return self.cache.ranking(limit=1 + FALLBACKS_IN_EVENTS)

    def look(self) -> BestUpdate | None:
        """Rank the head now and tell the listeners; None if ranking failed (logged; the next look tries again)."""
        try:
            ranking = self.top()
        except Exception:  # a bug must not end the watch: the next result tries again
            log.exception("ranking.check_failed")
            return None
        previous, current = self._best, ranking.best
        changed = _name(previous) != _name(current)
        update = BestUpdate(previous, current, tuple(e.provider for e in ranking.entries[1:1 + FALLBACKS_IN_EVENTS]),
                            ranking.generated_at, changed)
        if changed:
            log.info("ranking.best_changed", previous=_name(previous), current=_name(current))
        self._best = current
        for listener in self._listeners:
            listener(update)
        return update

    async def watch(self) -> None:
        """Look whenever the live state changed (at most every check_interval_s) and every tick_s. Until cancelled."""
        self._best = self._quiet_best()
        while True:
            await wait_event(self._changed, self.tick_s)
            self._changed.clear()
            self.look()
            await asyncio.sleep(self.check_interval_s)
            if self.cache.pending:  # a change the cached generation does not show yet: look again
                self._changed.set()

    def _quiet_best(self) -> RankedProvider | None:
        """The best at the start, without an update: a restart is not a change of the best provider."""
        try:
            return self.top().best
        except Exception:
            log.exception("ranking.check_failed")
            return None


def _routing(state: ProviderState) -> Hashable:
    """What must reach selections at once when it changes: the model list, the suspect flag and the published
    load's coarse shape (load_signature)."""
    return state.model_ids, state.suspect, load_signature(state)


def _name(entry: RankedProvider | None) -> str | None:
    return entry.provider if entry is not None else None


def load_signature(state: ProviderState | None) -> Hashable:
    """The part of a provider's published load that moves its place at once: saturated or not, headroom in
    quarters (queues included), which models are resident. Finer moves (one more request of many, a queue a bit
    longer) wait for refresh_s, so a fleet of busy servers does not re-rank on every probe."""
    load = state.capacity if state is not None else None
    if load is None:
        return None
    resident = frozenset(m.id for m in load.resident_models) if load.resident_models is not None else None
    return load.saturated, round(headroom(load) * 4), resident
