"""Which scoped streams of this process an event goes to: by session and by patient.

A scoped stream registers the sessions it names and the patients it follows; an event goes
to the streams of its session and of its session's patient, found in two dictionaries, so
the cost of routing follows the streams an event reaches, not the number of streams or the
size of their scopes. The patients of sessions seen recently are remembered, so that a
notification for a session no stream here follows costs no read at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar
from uuid import UUID

from ledger.live.subscription import ScopedSubscription

# Sessions whose patient is remembered; beyond it the memory starts again (a forgotten
# session costs one read the next time it is announced).
REMEMBERED_SESSIONS = 50_000
K = TypeVar("K")


class ScopedRoutes:
    def __init__(self) -> None:
        self.streams: set[ScopedSubscription] = set()
        self._by_session: dict[UUID, set[ScopedSubscription]] = {}
        self._by_patient: dict[str, set[ScopedSubscription]] = {}
        self._patient_of: dict[UUID, str] = {}

    def add(self, sub: ScopedSubscription) -> None:
        self.streams.add(sub)
        for session_id in sub.scope.sessions:
            self._by_session.setdefault(session_id, set()).add(sub)
        self._follow(sub, sub.patients)

    def discard(self, sub: ScopedSubscription) -> None:
        self.streams.discard(sub)
        for session_id in sub.scope.sessions:
            _drop(self._by_session, session_id, sub)
        for patient_id in sub.patients:
            _drop(self._by_patient, patient_id, sub)

    def follow(self, sub: ScopedSubscription, patients: Iterable[str]) -> None:
        """From now on ``sub`` receives the sessions of exactly these patients."""
        wanted = set(patients)
        for patient_id in sub.patients - wanted:
            _drop(self._by_patient, patient_id, sub)
        self._follow(sub, wanted - sub.patients)
        sub.patients = wanted

    def _follow(self, sub: ScopedSubscription, patients: Iterable[str]) -> None:
        for patient_id in patients:
            self._by_patient.setdefault(patient_id, set()).add(sub)

    def wants(self, session_id: UUID) -> bool:
        """Whether an announced session must be read for the scoped streams here."""
        if session_id in self._by_session:
            return True
        if not self._by_patient:
            return False
        patient_id = self._patient_of.get(session_id)
        return patient_id is None or patient_id in self._by_patient

    def targets(self, session_id: UUID, patient_id: str) -> set[ScopedSubscription]:
        if len(self._patient_of) >= REMEMBERED_SESSIONS:
            self._patient_of.clear()
        self._patient_of[session_id] = patient_id
        by_session = self._by_session.get(session_id)
        by_patient = self._by_patient.get(patient_id)
        if by_session is None:
            return by_patient or set()
        if by_patient is None:
            return by_session
        return by_session | by_patient


def _drop(index: dict[K, set[ScopedSubscription]], key: K, sub: ScopedSubscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]
