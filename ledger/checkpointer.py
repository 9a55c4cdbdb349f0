"""Grows the Merkle tree behind the global order and signs its head (design, section 9).

Every process runs one; an advisory lock lets one at a time do the work, so two workers
or two hosts never sign two checkpoints of one size. Each round grows the tree in short
transactions, then, if the tree has grown and the last checkpoint is at least
``LEDGER_CHECKPOINT_SECONDS`` old, signs the new head, but only after proving it
consistent with the last stored checkpoint and with the newest one this process has
seen: a tree rewritten behind the server's back is refused, never signed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import metrics
from ledger.storage import checkpoints
from ledger.storage.checkpoints import StoredCheckpoint
from ledger.storage.database import DATABASE_ERRORS
from ledger.storage.tree import (
    GROW_BATCH,
    Tree,
    TreeDamaged,
    consistency_proof,
    root_at,
    tree_size,
    try_lock,
)
from ledger.transparency.merkle import ProofError, verify_consistency
from ledger.transparency.note import (
    Checkpoint,
    NoteError,
    Verifier,
    read_checkpoint,
    signed_checkpoint,
)

log = logging.getLogger(__name__)


class Inconsistent(Exception):
    """The tree as stored does not extend a checkpoint already signed."""


class Checkpointer:
    def __init__(
        self, engine: AsyncEngine, key: Ed25519PrivateKey, verifier: Verifier, every: float
    ) -> None:
        self.engine = engine
        self.tree = Tree(engine)
        self.key = key
        self.verifier = verifier
        self.every = every
        # The newest head this process signed or verified: deleting checkpoint rows
        # cannot make it forget what it already vouched for.
        self.trusted: Checkpoint | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Inconsistent as exc:
                metrics.CHECKPOINT_REFUSALS.inc()
                log.error("refusing to sign a checkpoint: %s", exc)
            except DATABASE_ERRORS as exc:
                log.warning("checkpoint round failed (%s); the next one retries", exc)
            await asyncio.sleep(self.every)

    async def round(self) -> StoredCheckpoint | None:
        """Grow the tree over everything committed, then sign its head if due."""
        while (await self.tree.grow(GROW_BATCH)) == GROW_BATCH:
            pass
        async with self.engine.begin() as conn:
            return await conn.run_sync(self._sign)

    def _sign(self, conn: Connection) -> StoredCheckpoint | None:
        if not try_lock(conn):
            return None  # another process is at it
        size = tree_size(conn)
        metrics.TREE_SIZE.set(size)
        last = checkpoints.latest(conn)
        if last is not None:
            due = last.signed_at + timedelta(seconds=self.every)
            if last.tree_size == size or datetime.now(UTC) < due:
                return None
        try:
            root = root_at(conn, size)
            for earlier in self._earlier(last):
                if earlier.size > size:
                    raise Inconsistent(
                        f"the tree holds {size} leaves, fewer than the {earlier.size} of an"
                        " earlier checkpoint: leaves were removed"
                    )
                proof = consistency_proof(conn, earlier.size, size)
                verify_consistency(earlier.size, size, earlier.root, root, proof)
        except (ProofError, TreeDamaged) as exc:
            raise Inconsistent(f"the stored tree does not extend the checkpoint: {exc}") from None
        checkpoint = Checkpoint(self.verifier.name, size, root)
        stored = checkpoints.store(conn, size, root, signed_checkpoint(checkpoint, self.key))
        self.trusted = checkpoint
        metrics.CHECKPOINTS_SIGNED.inc()
        return stored

    def _earlier(self, last: StoredCheckpoint | None) -> list[Checkpoint]:
        """What a new head must extend: the last stored checkpoint (as its signed note
        says, when this key signed it) and the newest this process vouched for."""
        found = [] if self.trusted is None else [self.trusted]
        if last is not None:
            try:
                found.append(read_checkpoint(last.note, self.verifier))
            except NoteError as exc:
                # Another key (rotated, or several hosts given different ones): its row
                # still binds what may be signed next.
                log.warning("checkpoint %d is not this key's (%s)", last.tree_size, exc)
                found.append(Checkpoint(self.verifier.name, last.tree_size, last.root_hash))
        return found
