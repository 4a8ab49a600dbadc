"""The cluster tables: instance registrations, each valid until its `expires_at`, and leases, each valid while its
holder's registration is.

Rows in, names out; who should hold what is decided in monitord.cluster. A heartbeat renews one row, the
instance's registration, whatever the number of leases it holds (renewing every lease row each beat made the
renewals the cluster's biggest write load: 3 x providers / lease rows a second). A lease passes to another holder
only once its holder's registration has expired (a conditional upsert), so a SIGKILLed instance's leases are free
again after one lease length, with nothing to clean up. Two live instances never hold one name: a taker share-locks
the registrations before it reads them as expired, so a holder renewing its own (a row lock) either comes first,
and is seen alive, or waits until the taking is committed, and then no longer finds the taken lease its own.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import ColumnClause

from monitord.store import dialects
from monitord.store.schema import cluster_instances, cluster_leases


class LeaseStore:
    """cluster_instances and cluster_leases on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def register(self, instance_id: str, now: datetime, expires_at: datetime) -> list[str]:
        """Say `instance_id` (and so every lease it holds) is alive until `expires_at`; returns the live instances
        (it included), sorted. Call `renew` after it, in another transaction (see the module docstring)."""
        i = cluster_instances
        stmt = dialects.upsert(self._engine.dialect.name, i, ("instance_id",), lambda excluded: {
            "heartbeat_at": excluded.heartbeat_at, "expires_at": excluded.expires_at})
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [{"instance_id": instance_id, "started_at": now, "heartbeat_at": now,
                                       "expires_at": expires_at}])
            live = (await conn.execute(select(i.c.instance_id).where(i.c.expires_at > now)
                                       .order_by(i.c.instance_id))).scalars().all()
        return list(live)

    async def renew(self, holder: str) -> set[str]:
        """The leases `holder` holds (its registration, renewed by `register`, keeps them); nothing is written."""
        l_ = cluster_leases
        async with self._engine.connect() as conn:
            return set((await conn.execute(select(l_.c.name).where(l_.c.holder == holder))).scalars().all())

    async def holders(self, now: datetime) -> dict[str, str]:
        """Name -> holder of every lease valid at `now` (its holder's registration is)."""
        l_, i = cluster_leases, cluster_instances
        stmt = (select(l_.c.name, l_.c.holder).join(i, i.c.instance_id == l_.c.holder).where(i.c.expires_at > now))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {row.name: row.holder for row in rows}

    async def acquire(self, holder: str, names: Collection[str], now: datetime, expires_at: datetime) -> set[str]:
        """Take each of `names` that is free, or whose holder's registration has expired at `now` (or already
        `holder`'s); returns those taken. A lease row's own expires_at only says when it was last taken."""
        if not names:
            return set()
        l_, i = cluster_leases, cluster_instances
        # the conflicting row's holder, named as text: SQLAlchemy does not correlate a subquery with an INSERT's
        # target and would add cluster_leases to the subquery's FROM
        conflicting_holder: ColumnClause[str] = literal_column(f"{l_.name}.{l_.c.holder.name}")
        holder_alive = select(i.c.instance_id).where(i.c.instance_id == conflicting_holder,
                                                     i.c.expires_at > now).exists()
        stmt = dialects.upsert(
            self._engine.dialect.name, l_, ("name",),
            lambda excluded: {"holder": excluded.holder, "acquired_at": excluded.acquired_at,
                              "expires_at": excluded.expires_at},
            where=lambda excluded: ~holder_alive | (l_.c.holder == excluded.holder),
        )
        rows = [{"name": name, "holder": holder, "acquired_at": now, "expires_at": expires_at}
                for name in sorted(names)]  # one order everywhere: concurrent takers never deadlock
        async with self._engine.begin() as conn:
            # registrations share-locked first: one being renewed now is waited for, and read alive by the upsert
            # (a statement of its own, so it reads what was committed meanwhile)
            await conn.execute(select(i.c.instance_id).order_by(i.c.instance_id).with_for_update(read=True))
            return set((await conn.execute(stmt.values(rows).returning(l_.c.name))).scalars().all())

    async def release(self, holder: str, names: Collection[str]) -> int:
        """Give up `names` (only those `holder` holds) so another instance can take them at once."""
        if not names:
            return 0
        l_ = cluster_leases
        stmt = delete(l_).where(l_.c.holder == holder, l_.c.name.in_(sorted(names)))
        async with self._engine.begin() as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def leave(self, instance_id: str) -> None:
        """A clean stop: drop the registration and every lease, so the others rebalance without waiting."""
        async with self._engine.begin() as conn:  # the registration first: a taker share-locks it before leases
            await conn.execute(delete(cluster_instances).where(cluster_instances.c.instance_id == instance_id))
            await conn.execute(delete(cluster_leases).where(cluster_leases.c.holder == instance_id))

    async def forget_dead(self, before: datetime) -> int:
        """Delete registrations that expired before `before` (leases need no cleanup: they expire)."""
        i = cluster_instances
        async with self._engine.begin() as conn:
            return int((await conn.execute(delete(i).where(i.c.expires_at < before))).rowcount)
