"""Rankings and rendered answers kept between requests while the live state stays (nearly) the same.

A generation of cached answers ends at once when a provider's status or model list changes (`invalidate`) or the
provider specs change (reload); other probe results (a latency, a window's availability) end it at most every
refresh_s, so 1,000 providers probed every 30 s cost a few re-rankings a second rather than one per result; and
every generation ends after max_age_s, since recency and generated_at move with time even when nothing is probed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime

from monitord.health import LiveState
from monitord.model import Criteria, ProviderSpec, Ranking
from monitord.ranking import Ranker

DEFAULT_CRITERIA = Criteria()


class RankingCache:
    """Serves the default ranking and repeated queries from memory; computes anything else on request.

    `specs` should return the same Mapping object until the configuration changes: a new object starts a new
    generation (and the Ranker re-prepares providers whose ProviderSpec objects are new).
    """

    def __init__(self, live: LiveState, specs: Callable[[], Mapping[str, ProviderSpec]], ranker: Ranker,
                 clock: Callable[[], datetime], *, refresh_s: float = 1.0, max_age_s: float = 5.0,
                 max_entries: int = 128) -> None:
        self.live = live
        self.specs = specs
        self.ranker = ranker
        self.clock = clock
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._stale = True  # end the generation on the next read, whatever its age
        self._version = -1
        self._specs: Mapping[str, ProviderSpec] | None = None  # held so its identity stays meaningful
        self._born_s = 0.0
        self._entries: OrderedDict[Hashable, object] = OrderedDict()

    def invalidate(self) -> None:
        """Something callers must see at once changed (a status, a model list): end the generation now."""
        self._stale = True

    @property
    def pending(self) -> bool:
        """The live state changed since this generation began (it will show within refresh_s)."""
        return self._stale or self.live.version != self._version

    def _current(self) -> tuple[Mapping[str, ProviderSpec], datetime]:
        """The specs and `now`, after starting a new generation if the old one no longer holds."""
        specs = self.specs()
        now = self.clock()
        now_s = now.timestamp()
        age_s = now_s - self._born_s
        if (self._stale or specs is not self._specs or not 0.0 <= age_s < self.max_age_s
                or (self.live.version != self._version and age_s >= self.refresh_s)):
            self._stale = False
            self._entries.clear()
            self._version = self.live.version
            self._specs = specs
            self._born_s = now_s
        return specs, now

    def ranking(self, criteria: Criteria = DEFAULT_CRITERIA, *, limit: int | None = None) -> Ranking:
        """The ranking for `criteria` in this generation, computed at most once per generation."""
        specs, now = self._current()
        key = ("ranking", criteria, limit)
        found = self._entries.get(key)
        if isinstance(found, Ranking):
            return found
        result = self.ranker.rank(self.live.all(), specs, criteria, now, limit=limit)
        self._remember(key, result)
        return result

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
