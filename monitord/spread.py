"""Pure: which eligible provider one select request gets, by strategy, and sticky sessions (rendezvous hashing).

The ranking orders providers; this module spreads requests over the ones that are as good as the best: the pool
is the entries in the best one's tier (up before suspect before degraded before loading; saturated below the
unsaturated of each) and, for `weighted`, within `margin` of its score. No I/O; randomness comes from an
injected `random.Random`.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from itertools import accumulate

from monitord.model import RankedProvider, SelectStrategy, Status

DEFAULT_MARGIN = 0.2  # weighted: providers scoring at least 80% of the best share the requests
_STATUS_TIER = {Status.UP: 0, Status.DEGRADED: 1, Status.LOADING: 2}
_HASH_SPAN = float(1 << 64)


def tier(entry: RankedProvider) -> tuple[int, bool, bool]:
    """The ranking's own tier of an entry: status, then suspect below healthy, then saturated below idle."""
    return _STATUS_TIER.get(entry.status, 3), entry.suspect, entry.saturated


def pool_size(entries: Sequence[RankedProvider]) -> int:
    """How many leading entries share the best one's tier (the ranking sorts by tier first)."""
    if not entries:
        return 0
    best = tier(entries[0])
    size = 1
    while size < len(entries) and tier(entries[size]) == best:
        size += 1
    return size


def rendezvous_weight(key: str, provider: str, score: float) -> float:
    """Weighted rendezvous (highest random weight) hashing: the largest value over a pool wins the key.

    A key keeps its provider while the pool only grows or loses others; shares follow the scores.
    """
    digest = hashlib.blake2b(f"{key}\0{provider}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / _HASH_SPAN  # in (0, 1)
    return -max(score, 1e-9) / math.log(unit)


class Spreader:
    """Chooses one entry per request. Keeps round-robin positions and session assignments, both bounded."""

    def __init__(self, rng: random.Random | None = None, *, max_sessions: int = 100_000,
                 max_rotations: int = 1024) -> None:
        self.rng = rng or random.Random()
        self.max_sessions = max_sessions
        self.max_rotations = max_rotations
        self._sessions: OrderedDict[tuple[Hashable, str], str] = OrderedDict()
        self._rotations: OrderedDict[Hashable, int] = OrderedDict()

    def choose(self, entries: Sequence[RankedProvider], strategy: SelectStrategy, *, key: Hashable = None,
               session_key: str | None = None, margin: float = DEFAULT_MARGIN) -> int:
        """The index in `entries` (a ranking, best first) of the provider to use; `entries` must not be empty.

        `key` names the question (the criteria), so round-robin turns and sessions are kept per question.
        A `session_key` wins over the strategy: the same key gets the same provider while it stays in the pool.
        """
        size = pool_size(entries)
        if session_key is not None:
            return self._session(entries, size, (key, session_key))
        if size <= 1 or strategy is SelectStrategy.BEST:
            return 0
        if strategy is SelectStrategy.WEIGHTED:
            return self._weighted(entries, size, margin)
        if strategy is SelectStrategy.LEAST_LOADED:
            return _least_loaded(entries, size)
        return self._round_robin(size, key)

    def _weighted(self, entries: Sequence[RankedProvider], size: int, margin: float) -> int:
        floor = entries[0].score * (1.0 - margin)
        scores = [max(0.0, entry.score) for entry in entries[:size] if entry.score >= floor]
        total = sum(scores)
        if len(scores) <= 1 or total <= 0.0:
            return 0
        cumulative = list(accumulate(scores))
        return min(bisect.bisect_right(cumulative, self.rng.random() * total), len(scores) - 1)

    def _round_robin(self, size: int, key: Hashable) -> int:
        turn = self._rotations.pop(key, -1) + 1
        self._rotations[key] = turn
        if len(self._rotations) > self.max_rotations:
            self._rotations.popitem(last=False)
        return turn % size

    def _session(self, entries: Sequence[RankedProvider], size: int, session: tuple[Hashable, str]) -> int:
        remembered = self._sessions.get(session)
        if remembered is not None:
            for index in range(size):
                if entries[index].provider == remembered:
                    self._sessions.move_to_end(session)
                    return index
        name = session[1]
        index = max(range(size), key=lambda i: rendezvous_weight(name, entries[i].provider, entries[i].score))
        self._sessions[session] = entries[index].provider
        self._sessions.move_to_end(session)
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return index


def _least_loaded(entries: Sequence[RankedProvider], size: int) -> int:
    """Most headroom first (the capacity part of the ranking), then score; without capacity data, the best."""
    return min(range(size), key=lambda i: (-entries[i].components.get("headroom", 1.0), -entries[i].score, i))
