"""Rankings and rendered answers kept between requests while the live state stays the same.

One generation lasts until the live state changes (LiveState.version), the provider specs change (reload), or
max_age_s passes (recency and generated_at move with time even when nothing is probed).
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
                 clock: Callable[[], datetime], *, max_age_s: float = 2.0, max_entries: int = 128) -> None:
        self.live = live
        self.specs = specs
        self.ranker = ranker
        self.clock = clock
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._version = -1
        self._specs: Mapping[str, ProviderSpec] | None = None  # held so its identity stays meaningful
        self._born_s = 0.0
        self._entries: OrderedDict[Hashable, object] = OrderedDict()

    def invalidate(self) -> None:
        self._version = -1

    def _current(self) -> tuple[Mapping[str, ProviderSpec], datetime]:
        """The specs and `now`, after starting a new generation if the old one no longer holds."""
        specs = self.specs()
        now = self.clock()
        now_s = now.timestamp()
        if (self.live.version != self._version or specs is not self._specs
                or not 0.0 <= now_s - self._born_s < self.max_age_s):
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

    def rendered(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """Bytes for `key` rendered once per generation (render may call `ranking`)."""
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
