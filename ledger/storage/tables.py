"""The tables (and the analytics view the queries read), described once for SQLAlchemy Core.

The event columns come from :data:`ledger.domain.EVENT_FIELDS`: the SQLAlchemy column list,
the plain-SQL column list of the hot paths and the decoding of a row into an
:class:`~ledger.domain.Event` are all derived from it here. Alembic's migrations create the
tables; this module only describes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.types import BigInteger, UserDefinedType

from ledger.domain import EVENT_FIELDS, Event, EventType, Status


class Xid8(UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", PG_UUID(as_uuid=True), primary_key=True),
    Column("patient_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

care_assignments = Table(
    "care_assignments",
    metadata,
    Column("therapist_id", Text, primary_key=True),
    Column("patient_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("tx_id", Xid8, nullable=False),
    Column("session_id", PG_UUID(as_uuid=True), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", SmallInteger, nullable=False),
    Column("message", Text),
    Column("error", Text),
    Column("data", JSONB, nullable=False),
    Column("actor", Text, nullable=False),
    Column("idempotency_key", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)

# The Merkle tree over the global order (migrations 0003 to 0005): the hash of every
# perfect subtree of at least 2**STRATUM leaves, and the leaves themselves in the batches
# they were grown in (which event each is, its leaf hash, and where the batch ends in the
# global order); and the signed checkpoints.
merkle_nodes = Table(
    "merkle_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True),
    Column("node_index", BigInteger, primary_key=True),
    Column("hash", LargeBinary, nullable=False),
)

merkle_batches = Table(
    "merkle_batches",
    metadata,
    Column("first_leaf", BigInteger, primary_key=True),
    Column("leaf_count", Integer, nullable=False),
    Column("leaf_hashes", LargeBinary, nullable=False),
    Column("positions", ARRAY(BigInteger), nullable=False),
    Column("last_tx_id", Xid8, nullable=False),
    Column("last_position", BigInteger, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True),
    Column("root_hash", LargeBinary, nullable=False),
    Column("signed_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False),
)

# The view of migration 0002 that the stage figures read.
stage_durations = Table(
    "stage_durations",
    MetaData(),
    Column("session_id", PG_UUID(as_uuid=True)),
    Column("status", Text),
    Column("entered_at", DateTime(timezone=True)),
    Column("left_at", DateTime(timezone=True)),
    Column("seconds", Float),
)

# What every event read selects, in EVENT_FIELDS order: as SQLAlchemy columns and as text.
EVENT_COLUMNS = tuple(events.c[name] for name in EVENT_FIELDS)
EVENT_COLUMN_LIST = ", ".join(EVENT_FIELDS)
# What an append sends for each event: the position is the table's to give, and
# recorded_at is one instant for a whole group.
APPENDED_COLUMNS = (
    *(name for name in EVENT_FIELDS if name not in ("position", "recorded_at")),
    "idempotency_key",
)


def record_type(columns: Sequence[str]) -> str:
    """``name type, …`` of these columns, for ``json_to_recordset(...) AS b(...)``."""
    dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
    return ", ".join(f"{name} {events.c[name].type.compile(dialect=dialect)}" for name in columns)


# A dict lookup instead of calling the enum, per row of a replay.
_EVENT_TYPES = {kind.value: kind for kind in EventType}
_STATUSES = {status.value: status for status in Status}
_TYPE = EVENT_FIELDS.index("type")
_STATUS = EVENT_FIELDS.index("status")


def event_from_row(row: Sequence[Any]) -> Event:
    """An event from a row selected as :data:`EVENT_COLUMNS` (or its text form)."""
    values = dict(zip(EVENT_FIELDS, row, strict=True))
    values["type"] = _EVENT_TYPES[row[_TYPE]]
    values["status"] = _STATUSES[row[_STATUS]]
    return Event(**values)
