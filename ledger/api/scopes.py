"""Which sessions a reader's scoped stream or page covers: the access policy and the
``session_id`` / ``patient_id`` filters, checked once per request against the tables.

Filters add up (the sessions named and the patients named, as Mercure's topics do); each
must be within the caller's access, or the request is refused with 403 rather than
quietly narrowed. Admins and auditors without filters get ``None``: the global stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from ledger.api.schemas import MAX_IDENTIFIER, storable_text
from ledger.auth import READ_ALL, Principal, Role
from ledger.domain import Scope
from ledger.errors import BadRequest, Forbidden, NotFound
from ledger.runtime import Runtime

MAX_FILTERS = 100


@dataclass(frozen=True, slots=True)
class ReaderScope:
    scope: Scope
    # The patients whose care assignment the filters rest on (removing one ends the
    # stream); the others of an unfiltered therapist's scope only narrow it.
    relied: frozenset[str]


def _distinct(name: str, values: list[str] | list[UUID]) -> None:
    if len(values) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} {name} filters")
    if len(set(values)) != len(values):
        raise BadRequest(f"a {name} filter is given twice")


def _patient_ids(values: list[str]) -> None:
    for value in values:
        if not 1 <= len(value) <= MAX_IDENTIFIER:
            raise BadRequest(f"a patient_id filter must be 1 to {MAX_IDENTIFIER} characters")
        try:
            storable_text(value)
        except ValueError as exc:
            raise BadRequest(f"a patient_id filter {exc}") from None


async def reader_scope(
    runtime: Runtime,
    principal: Principal,
    session_ids: list[UUID] | None,
    patient_ids: list[str] | None,
) -> ReaderScope | None:
    session_ids = session_ids or []
    patient_ids = patient_ids or []
    _distinct("session_id", session_ids)
    _distinct("patient_id", patient_ids)
    _patient_ids(patient_ids)
    role = principal.role
    if role not in READ_ALL and role not in (Role.PATIENT, Role.THERAPIST):
        raise Forbidden("this role reads no sessions")
    if not session_ids and not patient_ids:
        if role in READ_ALL:
            return None
        if role is Role.PATIENT:
            return ReaderScope(Scope(patients=frozenset({principal.subject})), frozenset())
        scope = Scope(therapist=principal.subject, assigned=True)
        return ReaderScope(scope, frozenset())
    owners = await runtime.sessions.owners(session_ids)
    for session_id in session_ids:
        if session_id not in owners:
            raise NotFound(f"session {session_id} not found")
    wanted = set(owners.values()) | set(patient_ids)
    if role is Role.PATIENT and wanted != {principal.subject}:
        raise Forbidden("no access to a session or patient in the filters")
    therapist = principal.subject if role is Role.THERAPIST else None
    if therapist is not None and not wanted <= await runtime.care.patients_of(therapist):
        raise Forbidden("no access to a session or patient in the filters")
    scope = Scope(
        sessions=frozenset(session_ids), patients=frozenset(patient_ids), therapist=therapist
    )
    return ReaderScope(scope, frozenset(wanted) if therapist is not None else frozenset())
