"""The HTTP API against a real server process and a real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.support import LiveServer, append, auth, create_session


def test_register_append_and_read(server: LiveServer) -> None:
    with server.client() as client:
        session_id = str(uuid.uuid4())
        created = client.post(
            "/api/sessions",
            json={"id": session_id, "patient_id": "p-1"},
            headers=auth("admin", "root"),
        )
        assert created.status_code == 201
        assert created.json()["id"] == session_id
        assert created.json()["patient_id"] == "p-1"

        before = client.get(f"/api/sessions/{session_id}/status", headers=auth("auditor"))
        assert before.status_code == 200
        assert before.json()["version"] == 0
        assert before.json()["status"] is None

        one = append(client, session_id, {"status": "uploaded", "progress": 0, "message": "hi"})
        assert one.status_code == 201
        assert [e["version"] for e in one.json()] == [1]
        batch = append(
            client,
            session_id,
            [
                {"status": "queued"},
                {"status": "transcribing", "progress": 30, "data": {"k": [1, 2]}},
            ],
        )
        assert [e["version"] for e in batch.json()] == [2, 3]
        event = batch.json()[1]
        assert set(event) == {
            "session_id",
            "version",
            "position",
            "type",
            "status",
            "progress",
            "message",
            "error",
            "data",
            "actor",
            "recorded_at",
        }
        assert event["actor"] == "pipeline"
        assert event["type"] == "progress"
        assert batch.json()[0]["progress"] == 0  # omitted progress carries forward

        status = client.get(f"/api/sessions/{session_id}/status", headers=auth("patient", "p-1"))
        assert status.json() == event
        assert status.headers["etag"] == '"3"'

        page = client.get(
            f"/api/sessions/{session_id}/events", params={"limit": 2}, headers=auth("admin")
        ).json()
        assert [e["version"] for e in page["events"]] == [1, 2]
        assert page["next_after"] == 2
        rest = client.get(
            f"/api/sessions/{session_id}/events",
            params={"after": page["next_after"]},
            headers=auth("admin"),
        ).json()
        assert [e["version"] for e in rest["events"]] == [3]
        assert rest["next_after"] is None


def test_duplicate_session_id_conflicts(server: LiveServer) -> None:
    with server.client() as client:
        session_id = str(uuid.uuid4())
        body = {"id": session_id, "patient_id": "p"}
        assert client.post("/api/sessions", json=body, headers=auth("service")).status_code == 201
        again = client.post("/api/sessions", json=body, headers=auth("service"))
        assert again.status_code == 409
        assert "already exists" in again.json()["detail"]


def test_terminal_event_ends_the_session(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        done = append(client, session_id, {"status": "processed"})
        assert done.json()[0]["type"] == "complete"
        assert done.json()[0]["progress"] == 100
        late = append(client, session_id, {"status": "queued"})
        assert late.status_code == 409

        failed_id = create_session(client)
        failed = append(client, failed_id, {"status": "failed", "error": "codec"})
        assert failed.json()[0]["type"] == "error"
        assert append(client, failed_id, {"status": "failed"}).status_code == 409

        # Nothing may follow a terminal event inside one batch either; the batch is atomic.
        batch_id = create_session(client)
        mixed = append(client, batch_id, [{"status": "processed"}, {"status": "queued"}])
        assert mixed.status_code == 409
        status = client.get(f"/api/sessions/{batch_id}/status", headers=auth("admin"))
        assert status.json()["version"] == 0


def test_idempotency_key_returns_the_stored_events(
    server: LiveServer, server_db: psycopg.Connection[Any]
) -> None:
    with server.client() as client:
        session_id = create_session(client)
        body = [{"status": "queued", "progress": 1}, {"status": "transcribing", "progress": 2}]
        first = append(client, session_id, body, headers={"Idempotency-Key": "req-1"})
        retry = append(client, session_id, body, headers={"Idempotency-Key": "req-1"})
        assert first.status_code == retry.status_code == 201
        assert retry.json() == first.json()
        assert retry.headers["idempotent-replayed"] == "true"
        count = server_db.execute(
            "SELECT count(*) FROM events WHERE session_id = %s", (session_id,)
        ).fetchone()
        assert count == (2,)
        other = append(
            client, session_id, [{"status": "diarizing"}], headers={"Idempotency-Key": "req-1"}
        )
        assert other.status_code == 422


def test_expected_version_and_if_match(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        assert (
            append(client, session_id, {"status": "queued", "expected_version": 0}).status_code
            == 201
        )
        stale = append(client, session_id, {"status": "queued", "expected_version": 0})
        assert stale.status_code == 409
        assert (
            append(
                client, session_id, {"status": "queued"}, headers={"If-Match": '"1"'}
            ).status_code
            == 201
        )
        assert (
            append(
                client, session_id, {"status": "queued"}, headers={"If-Match": '"1"'}
            ).status_code
            == 409
        )
        envelope = {"events": [{"status": "diarizing"}], "expected_version": 2}
        assert append(client, session_id, envelope).status_code == 201
        disagree = append(
            client,
            session_id,
            {"status": "queued", "expected_version": 3},
            headers={"If-Match": "4"},
        )
        assert disagree.status_code == 409


def test_authentication_and_roles(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="alice")
        url = f"/api/sessions/{session_id}/status"
        missing = client.get(url)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get(url, headers=auth("patient", "alice")).status_code == 200
        assert client.get(url, headers=auth("patient", "bob")).status_code == 403
        assert client.get(url, headers=auth("therapist", "t1")).status_code == 403
        assert client.get(url, headers=auth("auditor")).status_code == 200
        assert client.get(url, headers=auth("service")).status_code == 403
        unknown = f"/api/sessions/{uuid.uuid4()}/status"
        assert client.get(unknown, headers=auth("admin")).status_code == 404

        append_url = f"/api/sessions/{session_id}/events"
        body = {"status": "queued"}
        assert client.post(append_url, json=body, headers=auth("auditor")).status_code == 403
        assert (
            client.post(append_url, json=body, headers=auth("patient", "alice")).status_code == 403
        )
        assert client.post(append_url, json=body, headers=auth("admin")).status_code == 201
        assert (
            client.post(
                f"/api/sessions/{uuid.uuid4()}/events", json=body, headers=auth("service")
            ).status_code
            == 404
        )

        assert client.get("/api/events", headers=auth("service", "alice")).status_code == 403
        assert client.get("/api/events", headers=auth("auditor")).status_code == 200


def test_therapist_reads_assigned_patients(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="carol")
        url = f"/api/sessions/{session_id}/status"
        assert client.get(url, headers=auth("therapist", "dr-t")).status_code == 403
        assign = "/api/care-assignments/dr-t/carol"
        assert client.put(assign, headers=auth("service")).status_code == 403
        assert client.put(assign, headers=auth("admin")).status_code == 204
        assert client.get(url, headers=auth("therapist", "dr-t")).status_code == 200
        assert client.delete(assign, headers=auth("admin")).status_code == 204
        assert client.get(url, headers=auth("therapist", "dr-t")).status_code == 403


def test_global_history_in_order(server: LiveServer) -> None:
    with server.client() as client:
        a, b = create_session(client), create_session(client)
        append(client, a, {"status": "queued"})
        append(client, b, [{"status": "queued"}, {"status": "transcribing"}])
        seen: list[dict[str, Any]] = []
        after = 0
        while True:
            page = client.get(
                "/api/events", params={"after": after, "limit": 2}, headers=auth("admin")
            ).json()
            seen.extend(page["events"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
        positions = [e["position"] for e in seen]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        ours = [(e["session_id"], e["version"]) for e in seen if e["session_id"] in (a, b)]
        assert ours == [(a, 1), (b, 1), (b, 2)]
        unknown = client.get("/api/events", params={"after": 10**12}, headers=auth("admin"))
        assert unknown.status_code == 404


def test_health_and_readiness(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "database": True, "listener": True, "keys": True}
        assert "ledger_subscribers" in client.get("/metrics").text


def test_sessions_are_found_by_the_start_of_their_id_within_the_callers_scope(
    server: LiveServer,
) -> None:
    with server.client() as client:
        mine = create_session(client, "prefix-patient")
        other = create_session(client, "someone-else")

        def found(prefix: str, role: str, sub: str = "someone") -> list[str]:
            response = client.get(
                "/api/sessions", params={"id_prefix": prefix}, headers=auth(role, sub)
            )
            assert response.status_code == 200
            return [s["id"] for s in response.json()["sessions"]]

        assert found(mine[:8], "admin") == [mine]
        assert found(mine.upper(), "auditor") == [mine]  # a whole id, any case
        assert found(mine[:8], "patient", "prefix-patient") == [mine]
        assert found(other[:8], "patient", "prefix-patient") == []  # not theirs
        for bad in ("xyz", ""):
            response = client.get("/api/sessions", params={"id_prefix": bad}, headers=auth("admin"))
            assert response.status_code == 422, bad
        assert found("1" * 33, "admin") == []  # no id is that long
        assert found("-", "admin") == []
