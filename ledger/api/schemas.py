"""Request and response bodies. Input is strict: a wrong type is an error, never coerced."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    WithJsonSchema,
)

from ledger.domain import EventType, NewEvent, Status

MAX_DATA_DEPTH = 16
MAX_TEXT = 4000
MAX_IDENTIFIER = 200
MAX_VERSION = 2**31 - 1
MAX_POSITION = 2**63 - 1


UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(value: str) -> None:
    # PostgreSQL text and jsonb hold neither U+0000 nor an unpaired surrogate (which JSON's
    # "\ud800" escape can carry but UTF-8 cannot): refuse them here instead of failing there.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    if not value.isascii() and UNPAIRED_SURROGATE.search(value):
        raise ValueError("must not contain an unpaired surrogate (not valid Unicode)")


def _storable_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_DATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DATA_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_text(key)
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)


def _check_data(value: dict[str, Any]) -> dict[str, Any]:
    _storable_json(value)
    return value


NO_NUL = r"^[^\x00]*$"
# What `data` may hold, stated for clients and schema-driven tools: any JSON object whose
# strings and keys carry no NUL (PostgreSQL cannot store it).
STORABLE_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/StorableJson"},
}
STORABLE_JSON_VALUE: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/StorableJson"}},
        STORABLE_JSON_SCHEMA,
    ]
}

Text = Annotated[StrictStr, Field(max_length=MAX_TEXT, pattern=NO_NUL)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_IDENTIFIER, pattern=NO_NUL)]
Data = Annotated[
    dict[str, Any],
    AfterValidator(_check_data),
    WithJsonSchema({**STORABLE_JSON_SCHEMA, "description": "Free JSON object."}),
]


def _whole_number(value: Any) -> int:
    # JSON has one number type: 44.0 is the integer 44, but "44", 4.5 and true are errors.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("must be an integer")


Version = Annotated[int, Field(ge=0, le=MAX_VERSION), BeforeValidator(_whole_number)]
Progress = Annotated[int, Field(ge=0, le=100), BeforeValidator(_whole_number)]


class EventIn(BaseModel):
    """One progress change. ``progress`` may be omitted: it then keeps its last value."""

    model_config = ConfigDict(extra="forbid")

    status: Status
    progress: Progress | None = None
    message: Text | None = None
    error: Text | None = None
    data: Data = Field(default_factory=dict)

    def to_new(self) -> NewEvent:
        return NewEvent(
            status=self.status,
            progress=self.progress,
            message=self.message,
            error=self.error,
            data=self.data,
        )


class SingleEventIn(EventIn):
    expected_version: Version | None = None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[EventIn], Field(min_length=1)]
    expected_version: Version | None = None


AppendBody = SingleEventIn | BatchIn | Annotated[list[EventIn], Field(min_length=1)]


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID | None = None
    patient_id: Identifier


class SessionOut(BaseModel):
    id: UUID
    patient_id: str
    created_at: str


class EventOut(BaseModel):
    session_id: UUID
    version: int
    position: int
    type: EventType
    status: Status
    progress: int
    message: str | None
    error: str | None
    data: dict[str, Any]
    actor: str
    recorded_at: str


class StatusOut(BaseModel):
    """The latest event, or ``version: 0`` and nulls before the first one."""

    session_id: UUID
    version: int
    position: int | None
    type: EventType | None
    status: Status | None
    progress: int
    message: str | None
    error: str | None
    data: dict[str, Any]
    actor: str | None
    recorded_at: str | None


class SessionWithState(SessionOut):
    state: StatusOut


class SessionListOut(BaseModel):
    sessions: list[SessionWithState]


class PageOut(BaseModel):
    events: list[EventOut]
    # A position (a session's or the global order's), or a scoped page's cursor.
    next_after: int | str | None
    cursor: str | None = Field(
        default=None,
        description="Scoped pages: where this page ends, for the next page or the stream.",
    )


class ErrorOut(BaseModel):
    detail: Any


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the JSON ``{"detail": ...}`` errors an operation can answer."""
    return {code: {"model": ErrorOut} for code in codes}
