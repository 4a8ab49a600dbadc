"""Silences made through the API, kept in the database so a restart (or another instance) honours them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from monitord.model import Silence
from monitord.store.schema import silences


class SilenceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, silence: Silence, now: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(silences).values(
                id=silence.id, provider=silence.provider, starts_at=silence.start, ends_at=silence.end,
                reason=silence.reason, created_at=now))

    async def delete(self, silence_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(silences).where(silences.c.id == silence_id))
        return bool(result.rowcount)

    async def active(self, now: datetime) -> list[Silence]:
        """Silences not yet over, oldest first; expired rows are deleted on the way."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(silences).where(silences.c.ends_at <= now))
            rows = await conn.execute(select(silences).order_by(silences.c.created_at, silences.c.id))
            return [Silence(id=row.id, provider=row.provider, start=row.starts_at, end=row.ends_at,
                            reason=row.reason, created_by="api") for row in rows]
