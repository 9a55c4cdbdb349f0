"""One subject cannot take the server: per-subject limits on open streams and on appends,
answered 429 with Retry-After, counted, and nobody else's requests touched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support import LiveServer, append, auth, create_session, metric, stream, token


def test_a_subjects_streams_are_limited_and_others_are_not(
    server_factory: Callable[..., LiveServer],
) -> None:
    live = server_factory(LEDGER_MAX_STREAMS_PER_SUBJECT="2")
    with live.client() as client:
        session_id = create_session(client, "limited-patient")
    path = f"/api/sessions/{session_id}/status/stream"
    patient = auth("patient", "limited-patient")
    with stream(live, path, headers=patient), stream(live, path, headers=patient):
        with live.client() as client:
            refused = client.get(path, headers=patient)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert "at most 2 open streams" in refused.json()["detail"]
            ws_url = live.base_url.replace("http", "ws") + f"/api/sessions/{session_id}/status/ws"
            with pytest.raises(InvalidStatus) as denied:  # a WebSocket counts too
                connect(f"{ws_url}?access_token={token('patient', 'limited-patient')}").close()
            assert denied.value.response.status_code == 429
        with stream(live, path, headers=auth("admin", "someone-else")) as other:
            assert other.status_code == 200
    assert metric(live, "ledger_limited_total", 'limit="streams"') >= 2
    with stream(live, path, headers=patient) as again:  # slots come back when streams close
        assert again.status_code == 200


def test_a_subjects_appends_are_limited_and_others_are_not(
    server_factory: Callable[..., LiveServer],
) -> None:
    live = server_factory(LEDGER_MAX_APPENDS_PER_SECOND_PER_SUBJECT="5")
    with live.client() as client:
        session_id = create_session(client)
        answers = [
            append(client, session_id, {"status": "transcribing", "progress": n}).status_code
            for n in range(20)
        ]
        assert answers.count(201) >= 5
        assert 429 in answers
        refused = append(client, session_id, {"status": "queued"})
        if refused.status_code == 429:
            assert int(refused.headers["Retry-After"]) >= 1
        other = client.post(
            f"/api/sessions/{session_id}/events",
            json={"status": "queued"},
            headers=auth("admin", "another-writer"),
        )
        assert other.status_code == 201
        stored = client.get(f"/api/sessions/{session_id}/status", headers=auth("admin")).json()[
            "version"
        ]
    assert stored == answers.count(201) + (refused.status_code == 201) + 1  # nothing else
    assert metric(live, "ledger_limited_total", 'limit="appends"') >= 1
