"""One description of the event columns: the statements, the rows and the CSV follow it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime

from ledger.domain import EVENT_FIELDS, Event, EventType, Head, NewEvent, Status, seal
from ledger.exports import CSV_COLUMNS
from ledger.storage.appends import INSERT, PendingAppend, insert_params
from ledger.storage.history import LATEST, PAGE, RANGES
from ledger.storage.tables import (
    APPENDED_COLUMNS,
    EVENT_COLUMN_LIST,
    EVENT_COLUMNS,
    event_from_row,
    events,
)


def test_the_event_columns_are_the_event_fields_in_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Event)) == EVENT_FIELDS
    assert tuple(column.name for column in EVENT_COLUMNS) == EVENT_FIELDS
    assert set(EVENT_FIELDS) <= set(events.c.keys())
    assert CSV_COLUMNS == EVENT_FIELDS
    for statement in (LATEST, PAGE, RANGES):
        assert EVENT_COLUMN_LIST in statement


def test_a_row_decodes_by_name() -> None:
    values = {
        "session_id": uuid.uuid4(),
        "version": 3,
        "position": 17,
        "type": "error",
        "status": "failed",
        "progress": 40,
        "message": "m",
        "error": "e",
        "data": {"k": 1},
        "actor": "svc",
        "recorded_at": datetime(2026, 1, 1, tzinfo=UTC),
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    }
    event = event_from_row([values[name] for name in EVENT_FIELDS])
    assert dataclasses.asdict(event) == {
        **values,
        "type": EventType.ERROR,
        "status": Status.FAILED,
    }


def test_an_append_sends_exactly_the_columns_its_insert_names() -> None:
    session = uuid.uuid4()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    sealed = seal(session, Head(), [NewEvent(Status.QUEUED)], actor="svc", recorded_at=moment)
    request = PendingAppend(
        session_id=session,
        batch=[NewEvent(Status.QUEUED)],
        datas="[{}]",
        actor="svc",
        key="k-1",
        expected_version=None,
        done=None,  # type: ignore[arg-type]  # not awaited here
    )
    params = insert_params([(request, sealed)], moment)
    (row,) = json.loads(params["rows"])
    assert set(row) == set(APPENDED_COLUMNS)
    assert set(APPENDED_COLUMNS) | {"position", "recorded_at"} == set(EVENT_FIELDS) | {
        "idempotency_key"
    }
    assert f"INSERT INTO events ({', '.join(APPENDED_COLUMNS)}, recorded_at)" in INSERT
