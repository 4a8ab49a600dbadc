"""Cluster coordination on the real PostgreSQL: leases shared fairly, taken over after a death, handed back on a
clean stop, never held twice (even when instances race), and every instance reading the others' probes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from monitord.cluster import LEADER, Cluster, ClusterBeat, next_beat, preference, ranked_for
from monitord.model import ErrorClass, ModelInfo, ProbeResult, ProviderSpec, Status
from monitord.store import Store, migrate

pytestmark = pytest.mark.postgres

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
LEASE_S = 3.0
BEAT = timedelta(seconds=LEASE_S / 3)
PROVIDERS = [f"p{i}" for i in range(9)]

OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def open_store(postgres_url: str) -> AsyncIterator[OpenStore]:
    """Stores on one migrated schema: one per instance, like separate processes."""
    await migrate.upgrade(postgres_url)
    opened: list[Store] = []

    async def open_one() -> Store:
        store = await Store.open(postgres_url, flush_interval_s=0.05)
        await store.start()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def instances(open_store: OpenStore, names: list[str]) -> list[Cluster]:
    return [Cluster(await open_store(), name, LEASE_S, providers=PROVIDERS) for name in names]


async def beat(clusters: list[Cluster], now: datetime, *, together: bool = False) -> None:
    """Each heartbeat, then what ClusterBeat does last: settle what was acquired (scheduled, probed from now)."""
    if together:
        results = await asyncio.gather(*(c.heartbeat(now) for c in clusters))
    else:
        results = [await cluster.heartbeat(now) for cluster in clusters]
    for cluster, result in zip(clusters, results, strict=True):
        cluster.settle(result.acquired)


def assert_partition(clusters: list[Cluster], providers: list[str] = PROVIDERS) -> None:
    held = [c.held for c in clusters]
    assert sum(len(h) for h in held) == len(set().union(*held)), f"a provider is held twice: {held}"
    assert set().union(*held) == set(providers), f"unowned providers: {set(providers) - set().union(*held)}"


def test_rendezvous_order_puts_each_instances_own_choices_first() -> None:
    live = ["a", "b", "c"]
    names = [f"x{i}" for i in range(300)]
    top = {name: max(live, key=lambda instance: preference(instance, name)) for name in names}
    for instance in live:
        mine = {name for name, chosen in top.items() if chosen == instance}
        assert 70 <= len(mine) <= 130  # each instance is the top choice for about a third
        assert set(ranked_for(instance, live, names)[:len(mine)]) == mine


async def test_three_instances_share_nine_providers(open_store: OpenStore) -> None:
    clusters = await instances(open_store, ["a", "b", "c"])
    now = T0
    for _ in range(4):
        await beat(clusters, now)
        now += BEAT
    assert_partition(clusters)
    assert sorted(len(c.held) for c in clusters) == [3, 3, 3]
    assert [c.leader for c in clusters].count(True) == 1
    assert all(c.owns(p) == (p in c.held) for c in clusters for p in PROVIDERS)


async def test_racing_instances_never_hold_a_provider_twice(open_store: OpenStore) -> None:
    clusters = await instances(open_store, [f"i{n}" for n in range(6)])
    now = T0
    for _ in range(5):
        await beat(clusters, now, together=True)
        held = [c.held for c in clusters]
        assert sum(len(h) for h in held) == len(set().union(*held))
        now += BEAT
    assert_partition(clusters)
    assert max(len(c.held) for c in clusters) <= 2  # ceil(9 / 6)


async def test_a_dead_instance_is_taken_over_within_a_lease_and_a_beat(open_store: OpenStore) -> None:
    a, b, c = await instances(open_store, ["a", "b", "c"])
    now = T0
    for _ in range(4):
        await beat([a, b, c], now)
        now += BEAT
    orphans = set(c.held)
    died_at = now - BEAT  # c's last heartbeat; from here on it is silent (as after SIGKILL)
    taken_at = None
    while taken_at is None:
        await beat([a, b], now)
        if orphans <= a.held | b.held:
            taken_at = now
        assert now - died_at <= timedelta(seconds=LEASE_S) + 2 * BEAT, "no takeover in time"
        assert not (a.held & b.held)
        now += BEAT
    assert taken_at - died_at > timedelta(seconds=LEASE_S) - BEAT  # not before c's leases ran out
    assert_partition([a, b])
    assert sorted(len(x.held) for x in (a, b)) == [4, 5]


async def test_a_clean_stop_hands_over_at_once_and_a_newcomer_gets_its_share(open_store: OpenStore) -> None:
    a, b, c = await instances(open_store, ["a", "b", "c"])
    now = T0
    for _ in range(3):
        await beat([a, b, c], now)
        now += BEAT
    await c.leave()
    assert c.held == frozenset()
    await beat([a, b], now)  # one beat: c's providers are free, no lease to wait out
    assert_partition([a, b])

    d = (await instances(open_store, ["d"]))[0]
    for _ in range(3):
        now += BEAT
        await beat([a, b, d], now)
        held = [x.held for x in (a, b, d)]
        assert sum(len(h) for h in held) == len(set().union(*held))
    assert_partition([a, b, d])
    assert sorted(len(x.held) for x in (a, b, d)) == [3, 3, 3]


async def test_providers_leave_and_join_with_the_config(open_store: OpenStore) -> None:
    a, b = await instances(open_store, ["a", "b"])
    now = T0
    await beat([a, b], now)
    await beat([a, b], now + BEAT)
    fewer = [*PROVIDERS[:4], "new"]
    for cluster in (a, b):
        cluster.set_providers(fewer)
    for step in range(2, 5):
        await beat([a, b], now + step * BEAT)
    assert_partition([a, b], fewer)


async def test_the_leader_role_moves_when_its_holder_dies(open_store: OpenStore) -> None:
    a, b = await instances(open_store, ["a", "b"])
    await beat([a, b], T0)
    other = b if a.leader else a
    assert a.leader != b.leader
    now = T0
    while not other.leader:
        now += BEAT
        await other.heartbeat(now)
        assert now - T0 <= timedelta(seconds=LEASE_S) + BEAT
    assert LEADER not in other.held  # roles are not providers


def probe(provider: str, at: datetime, status: Status = Status.UP, models: tuple[str, ...] = ()) -> ProbeResult:
    failed = status is Status.DOWN
    return ProbeResult(provider=provider, provider_type="vllm", started_at=at, status=status, total_ms=12.5,
                       error_class=ErrorClass.REFUSED if failed else None, error="refused" if failed else None,
                       models=tuple(ModelInfo(id=m) for m in models), server_version="0.6.3" if models else None)


async def test_peer_results_returns_each_other_probe_once_with_its_models(open_store: OpenStore) -> None:
    a, b = await instances(open_store, ["a", "b"])
    now = datetime.now(UTC)
    await beat([a, b], now)
    await beat([a, b], now + BEAT)
    mine, theirs = sorted(a.held)[0], sorted(b.held)[0]
    a_store, b_store = a._store, b._store  # each instance writes through its own store
    await b_store.sync_providers([ProviderSpec(name=theirs, type="vllm", base_url="http://127.0.0.1:1")], now)
    first = probe(theirs, now, models=("llama-3",))
    second = probe(theirs, now + timedelta(seconds=1), Status.DOWN)
    own = probe(mine, now)
    for result in (first, second):
        b_store.enqueue(result)
        b.observed(result)
    a_store.enqueue(own)
    a.observed(own)
    await b_store.flush()
    await a_store.flush()

    seen = await a.peer_results(now - timedelta(seconds=30))
    assert [(r.provider, r.started_at, r.status) for r in seen] == [
        (theirs, first.started_at, Status.UP), (theirs, second.started_at, Status.DOWN)]
    assert seen[0].model_ids == ("llama-3",) and seen[0].server_version == "0.6.3"
    assert seen[0].provider_type == "vllm" and seen[1].models == ()
    assert await a.peer_results(now - timedelta(seconds=30)) == [], "the overlap window is read again, not returned"
    assert await b.peer_results(now - timedelta(seconds=30)) == [
        r for r in await b_store.results_since(now - timedelta(seconds=30)) if r.provider == mine]

    later = probe(theirs, now + timedelta(seconds=2))
    b_store.enqueue(later)
    await b_store.flush()
    assert [r.started_at for r in await a.peer_results(now - timedelta(seconds=30))] == [later.started_at]


async def test_a_clean_stop_commits_its_last_probes_and_the_taker_schedules_from_them(
        open_store: OpenStore, postgres_url: str) -> None:
    """The leaving instance's buffered probes are committed before its leases go, and the taker reads them (and
    does not probe what it took) before it schedules them: no provider is probed twice in one interval."""
    a = (await instances(open_store, ["a"]))[0]
    slow = await Store.open(postgres_url, flush_interval_s=3600)  # rows stay buffered unless flushed
    await slow.start()
    try:
        b = Cluster(slow, "b", LEASE_S, providers=PROVIDERS)
        now = datetime.now(UTC)
        await beat([a, b], now)
        await beat([a, b], now + BEAT)
        theirs = sorted(b.held)
        last = {name: probe(name, now + BEAT) for name in theirs}
        for result in last.values():
            slow.enqueue(result)
            b.observed(result)
        await b.leave()

        seen: list[tuple[str, bool]] = []  # (provider, owned then): what the beat folded, and when
        scheduled: list[tuple[str, bool]] = []
        folded: dict[str, datetime] = {}

        async def no_refresh(_now: datetime) -> None:
            return None

        def fold(result: ProbeResult) -> None:
            folded[result.provider] = result.started_at
            seen.append((result.provider, a.owns(result.provider)))

        def probe_soon(name: str, _now: datetime) -> None:
            scheduled.append((name, a.owns(name)))
            assert folded.get(name) == last[name].started_at, f"{name} scheduled before its last probe was read"

        beat_a = ClusterBeat(a, clock=lambda: now + 2 * BEAT, window_s=lambda: 5.0, is_configured=lambda _: True,
                             fold_peer=fold, refresh=no_refresh, probe_soon=probe_soon)
        await beat_a.beat()
    finally:
        await slow.close()
    assert sorted(name for name, _ in scheduled) == theirs
    assert not any(owned for _, owned in scheduled + seen), "a taken provider was probed before it was scheduled"
    assert all(a.owns(name) for name in theirs)
    assert_partition([a])


async def test_a_rebalance_commits_what_it_releases_first(open_store: OpenStore, postgres_url: str) -> None:
    """An instance releasing providers to a newcomer commits their last probes before the release, so the
    newcomer's peer poll returns them along with the leases."""
    a = (await instances(open_store, ["a"]))[0]
    slow = await Store.open(postgres_url, flush_interval_s=3600)
    await slow.start()
    try:
        b = Cluster(slow, "b", LEASE_S, providers=PROVIDERS)
        now = datetime.now(UTC)
        await beat([a, b], now)
        await beat([a, b], now + BEAT)
        before = set(b.held)
        for name in before:
            result = probe(name, now + BEAT)
            slow.enqueue(result)
            b.observed(result)
        c = (await instances(open_store, ["c"]))[0]
        await c.heartbeat(now + 2 * BEAT)  # registers; everything is held
        await beat([a, b], now + 2 * BEAT)  # three live now: a and b release their extras
        taken = await c.heartbeat(now + 3 * BEAT)
        from_b = set(taken.acquired) & before
        assert from_b, "the newcomer took nothing from b"
        assert not any(c.owns(name) for name in taken.acquired)
        got = {r.provider: r.started_at for r in await c.peer_results(now - timedelta(seconds=30))}
        assert {name: got.get(name) for name in from_b} == {name: now + BEAT for name in from_b}
        c.settle(taken.acquired)
        assert all(c.owns(name) for name in taken.acquired)
    finally:
        await slow.close()


@pytest.mark.parametrize(("due", "now", "expected"), [
    (10.0, 10.1, 12.0),  # a quick beat: one period from its due time, not from its end
    (10.0, 11.5, 12.0),  # a slow beat still renews on time
    (10.0, 12.5, 12.5),  # slower than a period: the next one at once
    (10.0, 19.0, 19.0),  # a long stall: one beat now, not one per missed period
])
def test_beats_keep_their_cadence_whatever_a_beat_takes(due: float, now: float, expected: float) -> None:
    assert next_beat(due, now, 2.0) == expected


async def test_providers_taken_just_before_the_database_went_away_are_still_probed(open_store: OpenStore) -> None:
    """The heartbeat took them, the peer poll that should tell when they are due failed: they are scheduled from
    what is known and probed, not left to nobody for the length of the outage."""
    a = (await instances(open_store, ["a"]))[0]
    scheduled: list[str] = []

    async def no_refresh(_now: datetime) -> None:
        return None

    async def database_away(_since: datetime) -> list[ProbeResult]:
        raise ConnectionRefusedError("database away")

    a.peer_results = database_away  # type: ignore[method-assign]
    beat_a = ClusterBeat(a, clock=lambda: datetime.now(UTC), window_s=lambda: 5.0, is_configured=lambda _: True,
                         fold_peer=lambda _result: None, refresh=no_refresh,
                         probe_soon=lambda name, _now: scheduled.append(name))
    await beat_a.beat()
    assert beat_a.down
    assert sorted(scheduled) == sorted(PROVIDERS) and all(a.owns(name) for name in PROVIDERS)


async def test_a_heartbeat_writes_one_row_whatever_the_leases_held(open_store: OpenStore, postgres_url: str) -> None:
    """Leases stay valid through their holder's registration: steady beats rewrite no lease row (renewing every
    lease row each beat was the cluster's biggest write load)."""
    clusters = await instances(open_store, ["a", "b", "c"])
    now = T0
    for _ in range(3):
        await beat(clusters, now)
        now += BEAT
    versions = await lease_versions(postgres_url)
    for _ in range(6):  # two lease lengths: every lease would have been renewed six times
        await beat(clusters, now)
        now += BEAT
    assert_partition(clusters)
    assert await lease_versions(postgres_url) == versions


async def lease_versions(url: str) -> dict[str, str]:
    """Each lease row's name -> its row version (xmin): it changes whenever the row is written."""
    from sqlalchemy import text

    from monitord.store.dialects import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT name, xmin::text AS version FROM cluster_leases"))).all()
    finally:
        await engine.dispose()
    return {row.name: row.version for row in rows}


async def test_an_instance_presumed_dead_gives_up_its_leases_when_it_beats_again(open_store: OpenStore) -> None:
    """A starved instance that beats after its registration ran out may have lost any of its leases to the
    others meanwhile: it holds none of its old ones until it takes them again, so none is held twice."""
    a, b = await instances(open_store, ["a", "b"])
    now = T0
    for _ in range(3):
        await beat([a, b], now)
        now += BEAT
    silent_from = now
    while now - silent_from <= timedelta(seconds=LEASE_S):  # b is starved for over a lease; a beats on
        await beat([a], now)
        now += BEAT
    assert a.held == frozenset(PROVIDERS)
    revived = await b.heartbeat(now)
    assert b.held == frozenset() and not revived.acquired
    assert set(revived.lost) and a.held == frozenset(PROVIDERS)
    for _ in range(3):
        await beat([a, b], now)
        held = [x.held for x in (a, b)]
        assert not (held[0] & held[1])
        now += BEAT
    assert_partition([a, b])
    assert sorted(len(x.held) for x in (a, b)) == [4, 5]


async def test_a_slow_flush_does_not_hold_a_rebalance_past_the_lease(open_store: OpenStore) -> None:
    """Releasing for balance commits the last probes first, but a database slow to take them must not keep the
    beat (and the registration's renewal after it) waiting: the leases go after a sixth of a lease."""
    a, b = await instances(open_store, ["a", "b"])
    now = T0
    await beat([a, b], now)
    await beat([a, b], now + BEAT)
    database_answers = asyncio.Event()

    async def slow_flush() -> None:
        await database_answers.wait()

    b._store.flush = slow_flush  # type: ignore[method-assign]
    c = (await instances(open_store, ["c"]))[0]
    await c.heartbeat(now + 2 * BEAT)
    before = set(b.held)
    try:
        async with asyncio.timeout(30):  # without the bound, this beat would wait for the database forever
            await b.heartbeat(now + 2 * BEAT)
    finally:
        database_answers.set()
    assert len(b.held) < len(before), "b released nothing"
    await beat([a, b, c], now + 3 * BEAT)
    await beat([a, b, c], now + 4 * BEAT)
    assert_partition([a, b, c])
