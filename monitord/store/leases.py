"""The cluster tables: instance registrations and leases, each valid until its `expires_at`.

Rows in, names out; who should hold what is decided in monitord.cluster. A lease passes to another holder only
once it has expired (a conditional upsert that PostgreSQL re-checks under the row lock), so two live instances
never hold one name, and a SIGKILLed instance's leases are free again after one lease length, with nothing to
clean up.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from monitord.store import dialects
from monitord.store.schema import cluster_instances, cluster_leases


class LeaseStore:
    """cluster_instances and cluster_leases on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def register(self, instance_id: str, now: datetime, expires_at: datetime) -> list[str]:
        """Say `instance_id` is alive until `expires_at`; returns the live instances (it included), sorted."""
        i = cluster_instances
        stmt = dialects.upsert(self._engine.dialect.name, i, ("instance_id",), lambda excluded: {
            "heartbeat_at": excluded.heartbeat_at, "expires_at": excluded.expires_at})
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [{"instance_id": instance_id, "started_at": now, "heartbeat_at": now,
                                       "expires_at": expires_at}])
            live = (await conn.execute(select(i.c.instance_id).where(i.c.expires_at > now)
                                       .order_by(i.c.instance_id))).scalars().all()
        return list(live)

    async def renew(self, holder: str, now: datetime, expires_at: datetime) -> set[str]:
        """Extend every lease `holder` still holds (expired or not, if nobody took it); returns their names."""
        l_ = cluster_leases
        stmt = (l_.update().where(l_.c.holder == holder).values(expires_at=expires_at)
                .returning(l_.c.name))
        async with self._engine.begin() as conn:
            return set((await conn.execute(stmt)).scalars().all())

    async def holders(self, now: datetime) -> dict[str, str]:
        """Name -> holder of every lease valid at `now`."""
        l_ = cluster_leases
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(l_.c.name, l_.c.holder).where(l_.c.expires_at > now))).all()
        return {row.name: row.holder for row in rows}

    async def acquire(self, holder: str, names: Collection[str], now: datetime, expires_at: datetime) -> set[str]:
        """Take each of `names` that is free or expired at `now` (or already `holder`'s); returns those taken."""
        if not names:
            return set()
        l_ = cluster_leases
        stmt = dialects.upsert(
            self._engine.dialect.name, l_, ("name",),
            lambda excluded: {"holder": excluded.holder, "acquired_at": excluded.acquired_at,
                              "expires_at": excluded.expires_at},
            where=lambda excluded: (l_.c.expires_at <= now) | (l_.c.holder == excluded.holder),
        )
        rows = [{"name": name, "holder": holder, "acquired_at": now, "expires_at": expires_at}
                for name in sorted(names)]  # one order everywhere: concurrent takers never deadlock
        async with self._engine.begin() as conn:
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
        async with self._engine.begin() as conn:
            await conn.execute(delete(cluster_leases).where(cluster_leases.c.holder == instance_id))
            await conn.execute(delete(cluster_instances).where(cluster_instances.c.instance_id == instance_id))

    async def forget_dead(self, before: datetime) -> int:
        """Delete registrations that expired before `before` (leases need no cleanup: they expire)."""
        i = cluster_instances
        async with self._engine.begin() as conn:
            return int((await conn.execute(delete(i).where(i.c.expires_at < before))).rowcount)
