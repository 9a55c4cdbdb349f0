"""Many writers at once: versions stay 1..n, chains verify, retries never duplicate."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from ledger.domain import NewEvent, Status, verify_chain
from ledger.errors import NotFound
from ledger.storage.appends import Appender, AppendResult
from ledger.storage.notifications import EVENTS_CHANNEL
from ledger.storage.pool import create_pool
from tests.support import LiveServer, append, create_session, load_events


@dataclass(frozen=True)
class Job:
    session: int
    size: int
    key: str | None
    copies: int  # how many times the same request is sent (retries, possibly concurrent)


jobs = st.lists(
    st.builds(
        Job,
        session=st.integers(0, 3),
        size=st.integers(1, 5),
        key=st.none() | st.uuids().map(str),
        copies=st.integers(1, 3),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=15)
@given(jobs)
def test_concurrent_appenders(
    server: LiveServer, server_db: psycopg.Connection[Any], plan: list[Job]
) -> None:
    with server.client() as client:
        sessions = [create_session(client) for _ in range(4)]

    def send(job: Job, copy: int) -> tuple[Job, list[dict[str, Any]]]:
        body = [
            {"status": "transcribing", "progress": min(i, 100), "data": {"copy": 0}}
            for i in range(job.size)
        ]
        headers = {"Idempotency-Key": job.key} if job.key else {}
        with server.client() as client:
            response = append(client, sessions[job.session], body, headers)
        assert response.status_code == 201, response.text
        return job, response.json()

    requests = [(job, c) for job in plan for c in range(job.copies if job.key else 1)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda jc: send(*jc), requests))

    expected_counts = [0, 0, 0, 0]
    for job in plan:
        expected_counts[job.session] += job.size
    by_key: dict[str, list[list[int]]] = {}
    for job, events in results:
        if job.key:
            by_key.setdefault(job.key, []).append([e["version"] for e in events])
    for versions in by_key.values():
        assert all(v == versions[0] for v in versions), "a retry appended again"

    for index, session_id in enumerate(sessions):
        stored = load_events(server_db, session_id)
        assert [e.version for e in stored] == list(range(1, expected_counts[index] + 1))
        assert verify_chain(stored) is None
        returned = {e["version"] for job, events in results if job.session == index for e in events}
        assert returned == {e.version for e in stored}


async def test_writers_that_lose_a_race_retry_and_leave_an_exact_chain(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Twenty appends to one session at once from two appenders (two processes): within a
    process they queue, but the processes race. Both read the same head, one insert wins
    each version, the other loses on the unique version and retries under the session's
    lock. Every append lands exactly once, in a gap-free chain."""
    session = uuid.uuid4()
    db.execute(
        "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, 'p', now())", (session,)
    )
    pools = [create_pool(database_url, size=10) for _ in range(2)]
    logs = [Appender(pool) for pool in pools]
    for pool in pools:
        await pool.open()
    races = REGISTRY.get_sample_value("ledger_append_races_total") or 0.0
    try:
        results = await asyncio.gather(
            *(
                logs[i % 2].append(
                    session, [NewEvent(Status.TRANSCRIBING, i, f"writer {i}")], actor="t"
                )
                for i in range(20)
            )
        )
    finally:
        for pool in pools:
            await pool.close()
    assert (REGISTRY.get_sample_value("ledger_append_races_total") or 0.0) > races, "raced"
    versions = sorted(r.events[0].version for r in results)
    assert versions == list(range(1, 21))
    stored = load_events(db, str(session))
    assert [e.version for e in stored] == versions
    assert sorted(e.message for e in stored) == sorted(f"writer {i}" for i in range(20))
    assert verify_chain(stored) is None


async def test_concurrent_appends_share_one_commit_and_one_notification(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Appends to different sessions at once go in groups: fewer notifications than
    appends, each naming every session of its commit, and each request still answered on
    its own (one refused, the others stored and chained)."""
    sessions = [uuid.uuid4() for _ in range(12)]
    for session in sessions:
        db.execute(
            "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, 'p', now())",
            (session,),
        )
    missing = uuid.uuid4()
    pool = create_pool(database_url, size=10)
    log = Appender(pool)
    await pool.open()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        try:
            results = await asyncio.gather(
                *(
                    log.append(
                        s, [NewEvent(Status.QUEUED, 1, None), NewEvent(Status.QUEUED)], actor="t"
                    )
                    for s in [*sessions, missing]
                ),
                return_exceptions=True,
            )
        finally:
            await pool.close()
        payloads = [n.payload for n in listener.notifies(timeout=1)]
    assert isinstance(results[-1], NotFound)
    announced = [line for payload in payloads for line in payload.split("\n")]
    assert sorted(announced) == sorted(f"{s} 1 2" for s in sessions)
    assert len(payloads) < len(sessions), "the appends were not grouped"
    for session, result in zip(sessions, results, strict=False):
        assert isinstance(result, AppendResult)
        assert [e.version for e in result.events] == [1, 2]
        stored = load_events(db, str(session))
        assert [e.position for e in stored] == [e.position for e in result.events]
        assert verify_chain(stored) is None


async def test_a_request_the_database_refuses_fails_alone(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The API refuses what PostgreSQL cannot store, but should anything reach the database
    and be refused there, only its own request fails, not the others of its group."""
    sessions = [uuid.uuid4() for _ in range(12)]
    bad = 9  # past the first groups (one request each): in a group with others
    for session in sessions:
        db.execute(
            "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, 'p', now())",
            (session,),
        )
    unstorable = {"x": "\ud800"}  # an unpaired surrogate: jsonb refuses it
    pool = create_pool(database_url, size=10)
    log = Appender(pool)
    await pool.open()
    try:
        results = await asyncio.gather(
            *(
                log.append(
                    s,
                    [NewEvent(Status.QUEUED, 1, data=unstorable if i == bad else {})],
                    actor="t",
                )
                for i, s in enumerate(sessions)
            ),
            return_exceptions=True,
        )
    finally:
        await pool.close()
    assert isinstance(results[bad], psycopg.DataError)
    for index, (session, result) in enumerate(zip(sessions, results, strict=True)):
        stored = load_events(db, str(session))
        if index == bad:
            assert stored == []
        else:
            assert isinstance(result, AppendResult)
            assert [e.version for e in stored] == [1]


async def test_a_retried_append_is_answered_only_after_its_commit(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """After a lost race the append retries in a transaction; its answer must wait for that
    transaction's commit. Here the first insert loses a (simulated) race and the retry's
    commit fails (as a dropped connection or a full NOTIFY queue would make it): the caller
    must get the error, and nothing is stored."""
    session = uuid.uuid4()
    db.execute(
        "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, 'p', now())", (session,)
    )
    db.execute("CREATE SEQUENCE race_once")
    db.execute(
        """
        CREATE FUNCTION lose_first_race() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('race_once') = 1 THEN  -- a sequence is not rolled back
                RAISE unique_violation USING MESSAGE = 'simulated lost race';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    db.execute(
        "CREATE TRIGGER race BEFORE INSERT ON events FOR EACH ROW"
        " EXECUTE FUNCTION lose_first_race()"
    )
    db.execute(
        """
        CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the commit failed'; END $$
        """
    )
    db.execute(
        "CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON events"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()"
    )
    races = REGISTRY.get_sample_value("ledger_append_races_total") or 0.0
    pool = create_pool(database_url, size=4)
    log = Appender(pool)
    await pool.open()
    try:
        with pytest.raises(psycopg.errors.RaiseException, match="the commit failed"):
            await log.append(session, [NewEvent(Status.QUEUED)], actor="t")
    finally:
        await pool.close()
    assert (REGISTRY.get_sample_value("ledger_append_races_total") or 0.0) > races
    assert load_events(db, str(session)) == []
