"""The ``session_id`` / ``patient_id`` filters that the all-sessions routes share."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Query

SessionFilter = Annotated[
    list[UUID] | None,
    Query(description="Follow this session (repeatable, up to 100; adds to patient_id)."),
]
PatientFilter = Annotated[
    list[str] | None,
    Query(description="Follow this patient's sessions, present and future (repeatable)."),
]
