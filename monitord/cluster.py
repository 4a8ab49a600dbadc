"""Several monitord instances on one PostgreSQL: which instance probes which provider, and what the others saw.

PostgreSQL is the coordination engine, with no consensus of our own: lease rows that expire (taken only when free
or expired, by a conditional upsert), renewed by a heartbeat. A SIGKILLed instance holds nothing once its leases
run out; a clean stop hands them back at once. Every instance reads the others' probes from the shared probes
table, so each one serves the same live state and ranking.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from monitord.model import ProbeResult
from monitord.store import Store

log = structlog.get_logger("monitord.cluster")

LEADER = "role:leader"  # one instance's cluster-wide duties; ':' never appears in a provider name
FORGET_AFTER_LEASES = 10  # registrations dead this many lease lengths are deleted


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def preference(instance_id: str, provider: str) -> int:
    """Rendezvous (highest random weight) score: each live instance prefers different providers, stably."""
    digest = hashlib.blake2b(f"{instance_id}\0{provider}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked_for(instance_id: str, live: Collection[str], names: Iterable[str]) -> list[str]:
    """`names` ordered by how strongly `instance_id` is their choice among `live`: first those it is the top
    choice for, then the second choice, and so on. Acquiring from the front and releasing from the back keeps
    instances from contending for the same providers."""
    others = [other for other in live if other != instance_id]

    def key(name: str) -> tuple[int, int]:
        mine = preference(instance_id, name)
        rank = sum(preference(other, name) > mine for other in others)
        return rank, -mine

    return sorted(names, key=key)


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What one heartbeat changed. `acquired` providers may be overdue for a probe: schedule them, then
    `Cluster.settle` them (until then this instance does not probe them)."""

    acquired: tuple[str, ...]  # taken by this heartbeat, or by an earlier one whose beat did not settle them
    lost: tuple[str, ...]  # taken over by another instance, released for balance, or no longer configured
    instances: int  # live instances, this one included
    held: int
    leader: bool


class Cluster:
    """One instance's side of the cluster; the daemon calls heartbeat() every lease_s / 3."""

    def __init__(self, store: Store, instance_id: str, lease_s: float, *, providers: Iterable[str] = ()) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.instance_id = instance_id
        self.lease_s = lease_s
        self._leases = store.leases
        self._store = store
        self._wanted: frozenset[str] = frozenset(providers)
        self._held: frozenset[str] = frozenset()
        self._unsettled: frozenset[str] = frozenset()  # acquired, not yet scheduled from their last probe
        self._leader = False
        self._last_seen: dict[str, datetime] = {}  # newest probe time folded per provider (own and peers')
        self._beats = 0

    @property
    def held(self) -> frozenset[str]:
        return self._held

    @property
    def leader(self) -> bool:
        """Whether this instance holds the leader lease (for duties one instance should do, once)."""
        return self._leader

    def set_providers(self, names: Iterable[str]) -> None:
        """The providers to share out (the enabled ones); applied at the next heartbeat."""
        self._wanted = frozenset(names)

    def owns(self, provider: str) -> bool:
        """Whether this instance probes `provider` now.

        The answer stands while heartbeats fail: if the database is away, each instance keeps probing what it
        held (and buffers the rows) rather than nobody probing at all; leases taken over meanwhile are given up
        at the next heartbeat that reaches the database. A provider just acquired is not probed until `settle`:
        its timer here may come due before the previous holder's last probe is read, and probe it a second time
        in one interval.
        """
        return provider in self._held and provider not in self._unsettled

    @property
    def unsettled(self) -> frozenset[str]:
        """Acquired, and not yet scheduled from their last probe (see `owns`)."""
        return self._unsettled

    def settle(self, names: Iterable[str]) -> None:
        """`names` (acquired) are scheduled from their last probe by anyone: probe them from now on."""
        self._unsettled -= frozenset(names)

    async def heartbeat(self, now: datetime) -> HeartbeatResult:
        """Register, renew, rebalance: keep about len(providers) / live instances, take free or expired leases.

        Raises if the database is away (the held set is kept; see `owns`).
        """
        expires_at = now + timedelta(seconds=self.lease_s)
        live = await self._leases.register(self.instance_id, now, expires_at)
        renewed = await self._leases.renew(self.instance_id)
        leader = LEADER in renewed
        keep = {name for name in renewed if name in self._wanted}
        share = math.ceil(len(self._wanted) / max(1, len(live)))
        release = {name for name in renewed if name != LEADER and name not in self._wanted}
        if len(keep) > share:
            extra = ranked_for(self.instance_id, live, keep)[share:]
            release |= set(extra)
            keep -= set(extra)
        if release:
            # their last probes committed first: the taker reads them and probes on, not again at once
            await self._flush_briefly()
            await self._leases.release(self.instance_id, release)
        wanted_roles = [] if leader else [LEADER]
        if len(keep) < share or wanted_roles:
            taken = await self._leases.holders(now)
            free = [name for name in self._wanted if name not in taken]
            candidates = ranked_for(self.instance_id, live, free)[: max(0, share - len(keep))]
            candidates += [role for role in wanted_roles if role not in taken]
            got = await self._leases.acquire(self.instance_id, candidates, now, expires_at)
            keep |= got & self._wanted
            leader = leader or LEADER in got
        self._beats += 1
        if self._beats % 30 == 1:  # now and then, not every beat
            await self._leases.forget_dead(now - timedelta(seconds=FORGET_AFTER_LEASES * self.lease_s))
        return self._apply(frozenset(keep), leader, len(live))

    def _apply(self, held: frozenset[str], leader: bool, instances: int) -> HeartbeatResult:
        acquired, lost = tuple(sorted(held - self._held)), tuple(sorted(self._held - held))
        self._unsettled = (self._unsettled & held) | frozenset(acquired)
        if acquired or lost or leader != self._leader:
            log.info("cluster.leases_changed", instance=self.instance_id, acquired=list(acquired), lost=list(lost),
                     held=len(held), instances=instances, leader=leader)
        self._held, self._leader = held, leader
        return HeartbeatResult(tuple(sorted(self._unsettled)), lost, instances, len(held), leader)

    async def leave(self) -> None:
        """A clean stop: hand every lease back so the others take over at their next heartbeat (after committing
        the last probes, so the takers continue the schedule instead of probing everything again at once)."""
        await self._flush_briefly()
        await self._leases.leave(self.instance_id)
        self._apply(frozenset(), False, 0)

    async def _flush_briefly(self) -> None:
        """Commit the buffered probes before leases go, waiting a sixth of a lease at most: a slow database must
        not hold the beat past the registration's expiry (the flush goes on, shielded, and the leases go)."""
        flushing = asyncio.ensure_future(self._store.flush())
        try:
            await asyncio.wait_for(asyncio.shield(flushing), self.lease_s / 6)
        except TimeoutError:
            log.warning("cluster.flush_slow", waited_s=round(self.lease_s / 6, 3))

    def observed(self, result: ProbeResult) -> None:
        """Note a probe this instance made, so peer_results never hands it back."""
        self._note(result.provider, result.started_at)

    async def peer_results(self, since: datetime) -> list[ProbeResult]:
        """Probes other instances stored with ts >= since that were not returned before, oldest first.

        Polls the shared probes table; choose `since` a little further back than a probe plus a writer flush
        takes, so late commits are seen. Per provider only newer probes are returned, so results fold in order.
        Providers acquired and not yet settled are read too: their previous holder's last probes say when they
        are due.
        """
        fresh = await self._store.results_since(since, exclude=self._held - self._unsettled, newer_than=self._last_seen)
        for result in fresh:
            self._note(result.provider, result.started_at)
        return fresh

    def _note(self, provider: str, at: datetime) -> None:
        last = self._last_seen.get(provider)
        if last is None or at > last:
            self._last_seen[provider] = at


def next_beat(due: float, now: float, period: float) -> float:
    """When the beat after the one due at `due` is due, `now` being when that beat ended: one period on from
    `due`, or at once if that has passed (never a burst of beats to catch up)."""
    return max(due + period, now)


class ClusterBeat:
    """The daemon's side of the heartbeat: every lease_s / 3, renew leases, fold the other instances' new probes
    (through `fold_peer`, the result pipeline), refresh what peers may have changed (`refresh`: silences), and
    have what was just taken over probed soon (`probe_soon`). A database outage is logged once; probing goes on
    with the providers held (see Cluster.owns)."""

    def __init__(self, cluster: Cluster, *, clock: Callable[[], datetime], window_s: Callable[[], float],
                 is_configured: Callable[[str], bool], fold_peer: Callable[[ProbeResult], object],
                 refresh: Callable[[datetime], Awaitable[None]], probe_soon: Callable[[str, datetime], None],
                 taken_over: Callable[[Collection[str]], Awaitable[None]] | None = None) -> None:
        self.cluster = cluster
        self.clock = clock
        self.window_s = window_s  # how far back peers' rows may still arrive: a probe, a flush, a beat
        self.is_configured = is_configured
        self.fold_peer = fold_peer
        self.refresh = refresh
        self.probe_soon = probe_soon
        self.taken_over = taken_over  # providers just acquired: continue their predecessor's alert state
        self.down = False

    async def run(self) -> None:
        """Beat every lease_s / 3 until cancelled (the first beat is `beat()`, before the first probe).

        The cadence counts from each beat's start, not its end: a beat slowed by folding many peer rows does not
        push the next renewal back. A beat that starts more than a third of a lease late (a starved process or
        a blocked loop) is logged, and so is one that takes longer than a third of a lease (a slow database):
        two more such delays and this instance's leases pass to the others.
        """
        loop = asyncio.get_running_loop()
        period = self.cluster.lease_s / 3
        due = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            late_s = loop.time() - due
            if late_s > period:
                log.warning("cluster.beat_late", late_s=round(late_s, 3), lease_s=self.cluster.lease_s,
                            held=len(self.cluster.held))
            started = loop.time()
            await self.beat()
            took_s = loop.time() - started
            if took_s > period:  # the database or the peer fold slow: the next renewal comes late too
                log.warning("cluster.beat_slow", took_s=round(took_s, 3), lease_s=self.cluster.lease_s)
            due = next_beat(due, loop.time(), period)

    async def beat(self) -> None:
        cluster = self.cluster
        now = self.clock()
        try:
            beat = await cluster.heartbeat(now)
            peers = await cluster.peer_results(now - timedelta(seconds=self.window_s() + cluster.lease_s))
        except Exception as exc:  # whatever the driver raised, the database did not answer
            if not self.down:
                self.down = True
                log.warning("cluster.heartbeat_failed", error=type(exc).__name__, held=len(cluster.held))
            # taken, but their previous holder's last probes unread: schedule them from what is known rather
            # than leave them unprobed while the database is away
            self._schedule(cluster.unsettled, now)
            return
        if self.down:
            self.down = False
            log.info("cluster.heartbeat_recovered", held=len(cluster.held))
        for result in peers:
            if self.is_configured(result.provider):
                self.fold_peer(result)
        await self.refresh(now)  # another instance may have added or ended a silence
        if beat.acquired and self.taken_over is not None:
            await self.taken_over(beat.acquired)
        self._schedule(beat.acquired, now)

    def _schedule(self, names: Collection[str], now: datetime) -> None:
        for name in names:
            self.probe_soon(name, now)
        self.cluster.settle(names)
