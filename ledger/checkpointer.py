"""Grows the Merkle tree behind the global order and signs its head (design, section 9).

Every process runs one; an advisory lock lets one at a time do the work, so two workers
or two hosts never sign two checkpoints of one size. Each round grows the tree in short
transactions, then, if the tree has grown and the last checkpoint is at least
``LEDGER_CHECKPOINT_SECONDS`` old, signs the new head, but only after proving it
consistent with the last stored checkpoint and with the newest head this host has vouched
for. That head (the newest checkpoint this key signed, or one it found stored and proved)
is kept beside the key in the data directory, so neither deleting checkpoint rows nor a
restart nor another worker can make the server sign a head that contradicts it: a tree
rewritten behind the server's back is refused, never signed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, func, select
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

# With nothing committed, one round in this many still looks (a minute at the default).
IDLE_ROUNDS = 6


class Inconsistent(Exception):
    """The tree as stored does not extend a checkpoint already signed."""


class Checkpointer:
    def __init__(
        self,
        engine: AsyncEngine,
        key: Ed25519PrivateKey,
        verifier: Verifier,
        every: float,
        vouched: Path,
        activity: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.tree = Tree(engine)
        self.key = key
        self.verifier = verifier
        self.every = every
        self.vouched = vouched
        self.activity = activity
        self._seen: int | None = None
        self._quiet_rounds = 0

    def _due(self) -> bool:
        """Skip rounds (no statement at all) while nothing was committed anywhere: the
        listener hears every commit of every process. Events a long transaction held back
        and no notification announced are taken by a round every IDLE_ROUNDS."""
        now = self.activity()
        if now == self._seen and self._quiet_rounds < IDLE_ROUNDS:
            self._quiet_rounds += 1
            return False
        self._seen, self._quiet_rounds = now, 0
        return True

    async def run(self) -> None:
        while True:
            try:
                if self._due():
                    await self.round()
            except Inconsistent as exc:
                metrics.CHECKPOINT_REFUSALS.inc()
                log.error("refusing to sign a checkpoint: %s", exc)
            except DATABASE_ERRORS as exc:
                log.warning("checkpoint round failed (%s); the next one retries", exc)
            except Exception:
                log.exception("checkpoint round failed; the next one retries")
            await asyncio.sleep(self.every)

    async def round(self) -> StoredCheckpoint | None:
        """Grow the tree over everything committed, then sign its head if due."""
        try:
            while (added := await self.tree.grow(GROW_BATCH)) == GROW_BATCH:
                pass
            if added:
                self._seen = None  # more may have become visible meanwhile: look again
        except TreeDamaged as exc:
            raise Inconsistent(f"the stored tree cannot grow: {exc}") from None
        async with self.engine.begin() as conn:
            return await conn.run_sync(self._sign)

    def _sign(self, conn: Connection) -> StoredCheckpoint | None:
        if not try_lock(conn):
            return None  # another process is at it
        size = tree_size(conn)
        metrics.TREE_SIZE.set(size)
        last = checkpoints.latest(conn)
        trusted = self.load_vouched()
        stored, ours = self._as_checkpoint(last)
        if stored is not None and stored.size == size and stored == trusted:
            return None  # nothing new since the head this host vouched for
        try:
            root = root_at(conn, size)
            for earlier in (trusted, stored):
                if earlier is None:
                    continue
                if earlier.size > size:
                    raise Inconsistent(
                        f"the tree holds {size} leaves, fewer than the {earlier.size} of a"
                        " signed checkpoint: leaves were removed"
                    )
                proof = consistency_proof(conn, earlier.size, size)
                verify_consistency(earlier.size, size, earlier.root, root, proof)
        except (ProofError, TreeDamaged) as exc:
            raise Inconsistent(f"the stored tree does not extend the checkpoint: {exc}") from None
        # Both are prefixes of the tree as it is: the stored one is vouched for from now on.
        newer = stored is not None and (trusted is None or stored.size > trusted.size)
        if last is not None and newer and ours:
            self.vouch(last.note)
        if last is not None:
            now = conn.execute(select(func.now())).scalar_one()
            if last.tree_size == size or now < last.signed_at + timedelta(seconds=self.every):
                return None
        note = signed_checkpoint(Checkpoint(self.verifier.name, size, root), self.key)
        signed = checkpoints.store(conn, size, root, note)
        self.vouch(note)
        metrics.CHECKPOINTS_SIGNED.inc()
        return signed

    def _as_checkpoint(self, stored: StoredCheckpoint | None) -> tuple[Checkpoint | None, bool]:
        """The last stored head as its signed note says, and True, when this key signed it;
        else as its row says (another key, rotated or misconfigured: its row still binds)."""
        if stored is None:
            return None, False
        try:
            return read_checkpoint(stored.note, self.verifier), True
        except NoteError as exc:
            log.warning("checkpoint %d is not this key's (%s)", stored.tree_size, exc)
            return Checkpoint(self.verifier.name, stored.tree_size, stored.root_hash), False

    def load_vouched(self) -> Checkpoint | None:
        try:
            note = self.vouched.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return read_checkpoint(note, self.verifier)
        except NoteError as exc:
            raise Inconsistent(
                f"{self.vouched} does not hold a checkpoint of this key: {exc}"
            ) from None

    def vouch(self, note: str) -> None:
        """Keep ``note`` as the newest head vouched for, replacing the file atomically."""
        partial = self.vouched.with_name(f".{self.vouched.name}.{os.getpid()}")
        partial.write_text(note, encoding="utf-8")
        os.replace(partial, self.vouched)
