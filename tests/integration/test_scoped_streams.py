"""One stream for all the sessions a reader follows (design section 10): scoped by access,
narrowed by filters, resumed exactly by its cursor, never held back by an open
transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import (
    LiveServer,
    SseMessage,
    append,
    auth,
    create_session,
    event_messages,
    iter_sse,
    stream,
    take,
)

PATH = "/api/events/stream"


def data(message: SseMessage) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(message.data or "")
    return found


def opened(response: httpx.Response) -> tuple[Iterator[SseMessage], str]:
    """The stream's messages and the cursor its first message (the retry hint) carries."""
    assert response.status_code == 200, response.read()
    messages = iter_sse(response)
    first = next(messages)
    assert first.retry is not None
    assert first.id is not None
    return event_messages(messages), first.id


def test_a_patient_follows_all_own_sessions_and_resumes_exactly(server: LiveServer) -> None:
    patient = f"p-{uuid.uuid4()}"
    with server.client() as client:
        mine = [create_session(client, patient) for _ in range(3)]
        theirs = create_session(client, f"other-{uuid.uuid4()}")
        append(client, mine[0], {"status": "queued"})  # before the stream: not replayed
        with stream(server, PATH, role="patient", sub=patient) as response:
            messages, _ = opened(response)
            append(client, theirs, {"status": "queued"})
            append(client, mine[1], {"status": "queued"})
            append(client, mine[0], {"status": "processed"})  # a terminal event
            later = create_session(client, patient)  # registered after the stream opened
            append(client, later, {"status": "queued"})
            got = take(messages, 3)
        assert [(data(m)["session_id"], data(m)["version"]) for m in got] == [
            (mine[1], 1),
            (mine[0], 2),
            (later, 1),
        ]
        assert [m.event for m in got] == ["progress", "complete", "progress"]
        cursor = got[0].id
        assert cursor is not None
        # Resume from the first: the other two again, then what came while away, once.
        append(client, mine[2], {"status": "queued"})
        append(client, theirs, {"status": "transcribing"})
        with stream(
            server, PATH, role="patient", sub=patient, headers={"Last-Event-ID": cursor}
        ) as response:
            messages, _ = opened(response)
            again = take(messages, 3)
        assert [(data(m)["session_id"], data(m)["version"]) for m in again] == [
            (mine[0], 2),
            (later, 1),
            (mine[2], 1),
        ]
        # And by the query parameter, from the last id: nothing is repeated.
        last = again[-1].id
        assert last is not None
        append(client, later, {"status": "processed"})
        with stream(
            server, PATH, role="patient", sub=patient, params={"last_event_id": last}
        ) as response:
            messages, _ = opened(response)
            (only,) = take(messages, 1)
        assert (data(only)["session_id"], data(only)["version"]) == (later, 2)


def test_an_open_transaction_does_not_hold_a_scoped_stream_back(
    server: LiveServer, module_database_url: str
) -> None:
    """A writer holds a transaction open (with an event in it) across another's commits: the
    patient's stream delivers its own event while that transaction is still open, and its
    cursor resumes exactly after the transaction finally commits."""
    patient = f"p-{uuid.uuid4()}"
    slow_session = uuid.uuid4()
    with server.client() as client, psycopg.connect(module_database_url) as slow:
        session = create_session(client, patient)
        with stream(server, PATH, role="patient", sub=patient) as response:
            messages, _ = opened(response)
            slow.execute(
                "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, %s, now())",
                (slow_session, patient),
            )
            slow.execute(
                """
                INSERT INTO events (session_id, version, type, status, progress, actor,
                                    recorded_at, prev_hash, hash)
                VALUES (%s, 1, 'progress', 'queued', 0, 'slow', clock_timestamp(),
                        repeat('0', 64), repeat('f', 64))
                """,
                (slow_session,),
            )
            slow.execute("SELECT pg_notify('ledger_events', %s)", (f"{slow_session} 1 1",))
            append(client, session, {"status": "queued"})
            (live,) = take(messages, 1)
            # Delivered before the transaction ends.
            assert slow.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS
            assert data(live)["session_id"] == session
            cursor = live.id
            assert cursor is not None
            slow.commit()
            (late,) = take(messages, 1)
            assert data(late)["session_id"] == str(slow_session)
        append(client, session, {"status": "transcribing"})
        with stream(
            server, PATH, role="patient", sub=patient, headers={"Last-Event-ID": cursor}
        ) as response:
            messages, _ = opened(response)
            resumed = take(messages, 2)
        assert sorted((data(m)["session_id"], data(m)["version"]) for m in resumed) == sorted(
            [(str(slow_session), 1), (session, 2)]
        )


def test_filters_narrow_and_out_of_scope_is_refused(server: LiveServer) -> None:
    patient = f"p-{uuid.uuid4()}"
    with server.client() as client:
        a, b = create_session(client, patient), create_session(client, patient)
        other = create_session(client, f"o-{uuid.uuid4()}")
        with stream(
            server, PATH, role="patient", sub=patient, params={"session_id": b}
        ) as response:
            messages, _ = opened(response)
            append(client, a, {"status": "queued"})
            append(client, b, {"status": "queued"})
            (got,) = take(messages, 1)
            assert data(got)["session_id"] == b

        def status(role: str, sub: str, params: Any, headers: dict[str, str] | None = None) -> int:
            with stream(server, PATH, role=role, sub=sub, params=params, headers=headers) as r:
                return r.status_code

        assert status("patient", patient, {"session_id": other}) == 403
        assert status("patient", patient, {"patient_id": "someone-else"}) == 403
        assert status("therapist", "t-none", {"patient_id": patient}) == 403
        assert status("therapist", "t-none", {"session_id": a}) == 403
        assert status("patient", patient, {"session_id": str(uuid.uuid4())}) == 404
        assert status("service", "pipeline", {}) == 403
        assert status("patient", patient, {"session_id": "not-a-uuid"}) == 422
        assert status("patient", patient, [("session_id", a), ("session_id", a)]) == 400
        too_many = [("patient_id", f"x{i}") for i in range(101)]
        assert status("admin", "root", too_many) == 400
        for bad_id in ("\x00", "a\x00b", "", "x" * 201):
            assert status("admin", "root", {"patient_id": bad_id}) == 400, bad_id
            page = client.get("/api/events", params={"patient_id": bad_id}, headers=auth("admin"))
            assert page.status_code == 400, bad_id
        for bad in ("x", "1.-2.3", "1..2", "-1", "1.2.0", "1.3.-1", "1." + "9" * 30, "1.-5"):
            assert status("patient", patient, {}, {"Last-Event-ID": bad}) == 400, bad
        assert status("patient", patient, {}, {"Last-Event-ID": "1" * 2000}) == 422
        assert status("patient", patient, {}, {"Last-Event-ID": "999999999999"}) == 404
        assert status("patient", patient, {}, {"Last-Event-ID": "0.999999999999"}) == 404


def test_an_admin_with_filters_gets_a_scoped_stream_and_without_the_global_one(
    server: LiveServer,
) -> None:
    with server.client() as client:
        a = create_session(client, f"p-{uuid.uuid4()}")
        patient = f"p-{uuid.uuid4()}"
        with stream(server, PATH, role="admin", params={"patient_id": patient}) as response:
            messages, _ = opened(response)
            append(client, a, {"status": "queued"})
            b = create_session(client, patient)
            append(client, b, {"status": "queued"})
            (got,) = take(messages, 1)
            assert data(got)["session_id"] == b
        page = client.get("/api/events", params={"patient_id": patient}, headers=auth("admin"))
        assert page.status_code == 200, page.text
        body = page.json()
        assert [e["session_id"] for e in body["events"]] == [b]
        assert body["next_after"] is None
        assert isinstance(body["cursor"], str)


def test_scoped_pages_walk_a_scope_exactly(server: LiveServer) -> None:
    patient = f"p-{uuid.uuid4()}"
    with server.client() as client:
        sessions = [create_session(client, patient) for _ in range(3)]
        for step in ("queued", "transcribing", "diarizing"):
            for session in sessions:
                append(client, session, {"status": step})
        seen: list[tuple[str, int]] = []
        params: dict[str, Any] = {"limit": 4}
        while True:
            page = client.get("/api/events", params=params, headers=auth("patient", patient))
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [(e["session_id"], e["version"]) for e in body["events"]]
            if body["next_after"] is None:
                break
            params["after"] = body["next_after"]
        assert sorted(seen) == sorted((s, v) for s in sessions for v in (1, 2, 3))
        for session in sessions:
            assert [v for s, v in seen if s == session] == [1, 2, 3]
        # The last cursor resumes the stream where the pages ended.
        append(client, sessions[1], {"status": "analyzing"})
        with stream(
            server,
            PATH,
            role="patient",
            sub=patient,
            headers={"Last-Event-ID": body["cursor"]},
        ) as response:
            messages, _ = opened(response)
            (got,) = take(messages, 1)
        assert (data(got)["session_id"], data(got)["version"]) == (sessions[1], 4)
        bad = client.get("/api/events", params={"format": "csv"}, headers=auth("patient", patient))
        assert bad.status_code == 400
        assert client.get("/api/events", headers=auth("service")).status_code == 403


@pytest.mark.parametrize("kind", ["narrowed", "ended"])
def test_care_assignments_take_effect_at_once(server: LiveServer, kind: str) -> None:
    therapist = f"t-{uuid.uuid4()}"
    kept, moved = f"k-{uuid.uuid4()}", f"m-{uuid.uuid4()}"
    admin = auth("admin", "root")
    with server.client() as client:
        keep_session = create_session(client, kept)
        moved_session = create_session(client, moved)
        assert client.put(f"/api/care-assignments/{therapist}/{kept}", headers=admin).is_success
        params = {} if kind == "narrowed" else {"patient_id": [kept, moved]}
        if kind == "ended":
            client.put(f"/api/care-assignments/{therapist}/{moved}", headers=admin)
        with stream(server, PATH, role="therapist", sub=therapist, params=params) as response:
            messages, _ = opened(response)
            if kind == "narrowed":
                # Added while open: followed from now on.
                client.put(f"/api/care-assignments/{therapist}/{moved}", headers=admin)
            append(client, moved_session, {"status": "queued"})
            (got,) = take(messages, 1)
            assert data(got)["session_id"] == moved_session
            client.delete(f"/api/care-assignments/{therapist}/{moved}", headers=admin)
            append(client, moved_session, {"status": "transcribing"})
            append(client, keep_session, {"status": "queued"})
            rest = take(messages, 1)
            if kind == "narrowed":
                assert [data(m)["session_id"] for m in rest] == [keep_session]
            else:
                assert rest == []  # the stream ended: its filter rested on the assignment
        with stream(server, PATH, role="therapist", sub=therapist, params=params) as response:
            assert response.status_code == (200 if kind == "narrowed" else 403)


def test_a_patient_removed_and_added_again_resumes_where_it_was(
    server: LiveServer, module_database_url: str
) -> None:
    """An unfiltered therapist stream delivers a patient's event beyond the safe point (an
    open transaction holds the point back); the assignment is removed and added again:
    the event is not sent twice, the next one follows."""
    therapist, patient = f"t-{uuid.uuid4()}", f"p-{uuid.uuid4()}"
    path = f"/api/care-assignments/{therapist}/{patient}"
    admin = auth("admin", "root")
    with server.client() as client, psycopg.connect(module_database_url) as holder:
        session = create_session(client, patient)
        assert client.put(path, headers=admin).is_success
        with stream(server, PATH, role="therapist", sub=therapist) as response:
            messages, _ = opened(response)
            holder.execute("SELECT pg_current_xact_id()")
            append(client, session, {"status": "queued"})
            (first,) = take(messages, 1)
            assert client.delete(path, headers=admin).is_success
            assert client.put(path, headers=admin).is_success
            append(client, session, {"status": "transcribing"})
            (second,) = take(messages, 1)
            holder.rollback()
    assert [(data(m)["session_id"], data(m)["version"]) for m in (first, second)] == [
        (session, 1),
        (session, 2),
    ]


def test_two_processes_route_events_and_assignments_to_each_other(
    server_factory: Any,
) -> None:
    """A therapist's stream on one process; sessions, appends and a new assignment go
    through another: the stream follows the new patient at once, including a session
    registered afterwards, routed by patient."""
    first, second = server_factory(), server_factory()
    therapist, patient = f"t-{uuid.uuid4()}", f"p-{uuid.uuid4()}"
    with second.client() as client:
        with stream(first, PATH, role="therapist", sub=therapist) as response:
            messages, _ = opened(response)
            client.put(f"/api/care-assignments/{therapist}/{patient}", headers=auth("admin"))
            session = create_session(client, patient)
            append(client, session, [{"status": "queued"}, {"status": "transcribing"}])
            got = take(messages, 2)
            cursor = got[0].id
        assert [(data(m)["session_id"], data(m)["version"]) for m in got] == [
            (session, 1),
            (session, 2),
        ]
        assert cursor is not None
        with stream(
            second, PATH, role="therapist", sub=therapist, headers={"Last-Event-ID": cursor}
        ) as response:
            messages, _ = opened(response)
            (again,) = take(messages, 1)
        assert (data(again)["session_id"], data(again)["version"]) == (session, 2)


def test_scoped_websocket_resumes_and_refuses_like_sse(server: LiveServer) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.support import token

    patient = f"p-{uuid.uuid4()}"
    base = f"ws://127.0.0.1:{server.port}/api/events/ws"
    with server.client() as client:
        a, b = create_session(client, patient), create_session(client, patient)
        append(client, a, {"status": "queued"})
        query = httpx.QueryParams({"access_token": token("patient", patient), "last_event_id": "0"})
        with connect(f"{base}?{query}") as ws:
            first = json.loads(ws.recv(timeout=10))
            append(client, b, {"status": "processed"})
            second = json.loads(ws.recv(timeout=10))
            append(client, a, {"status": "transcribing"})  # the stream outlives b's end
            third = json.loads(ws.recv(timeout=10))
        assert [(m["data"]["session_id"], m["event"]) for m in (first, second, third)] == [
            (a, "progress"),
            (b, "complete"),
            (a, "progress"),
        ]
        assert all(isinstance(m["id"], str) for m in (first, second, third))
        resume = httpx.QueryParams(
            {"access_token": token("patient", patient), "last_event_id": first["id"]}
        )
        with connect(f"{base}?{resume}") as ws:
            again = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        assert [m["data"]["version"] for m in again] == [1, 2]
        for params, expected in (
            ({"session_id": str(uuid.uuid4())}, 404),
            ({"patient_id": "someone-else"}, 403),
            ({"last_event_id": "x.y"}, 400),
            ({"session_id": "nope"}, 400),
            ({"patient_id": "\x00"}, 400),
        ):
            query = httpx.QueryParams({"access_token": token("patient", patient), **params})
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{base}?{query}").close()
            assert refused.value.response.status_code == expected, params
        admin = httpx.QueryParams({"access_token": token("admin")})
        with connect(f"{base}?{admin}") as ws:  # unfiltered admin: global ids, positions
            append(client, a, {"status": "diarizing"})
            fresh = json.loads(ws.recv(timeout=10))  # from now: the history is not replayed
        assert isinstance(fresh["id"], int)
        assert (fresh["data"]["session_id"], fresh["data"]["version"]) == (a, 3)
