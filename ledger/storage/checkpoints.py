"""The signed checkpoints, stored append-only like events (refused UPDATE/DELETE/TRUNCATE).

``tree_size`` is the key: two processes can never store two checkpoints of one size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.storage.tables import checkpoints


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    signed_at: datetime
    note: str


_COLUMNS = (
    checkpoints.c.tree_size,
    checkpoints.c.root_hash,
    checkpoints.c.signed_at,
    checkpoints.c.note,
)


def _stored(row: tuple[int, bytes, datetime, str]) -> StoredCheckpoint:
    size, root, signed_at, note = row
    return StoredCheckpoint(tree_size=size, root_hash=bytes(root), signed_at=signed_at, note=note)


def latest(conn: Connection) -> StoredCheckpoint | None:
    row = conn.execute(select(*_COLUMNS).order_by(checkpoints.c.tree_size.desc()).limit(1)).first()
    return None if row is None else _stored(tuple(row))


def store(conn: Connection, size: int, root: bytes, note: str) -> StoredCheckpoint:
    row = conn.execute(
        insert(checkpoints)
        .values(tree_size=size, root_hash=root, signed_at=func.now(), note=note)
        .returning(*_COLUMNS)
    ).one()
    return _stored(tuple(row))


class Checkpoints:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def latest(self) -> StoredCheckpoint | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(latest)

    async def after(self, size: int, limit: int) -> list[StoredCheckpoint]:
        """Stored checkpoints of trees larger than ``size``, smallest first."""
        stmt = (
            select(*_COLUMNS)
            .where(checkpoints.c.tree_size > size)
            .order_by(checkpoints.c.tree_size)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_stored(tuple(row)) for row in await conn.execute(stmt)]
