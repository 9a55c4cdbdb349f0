"""The lean routes answer every request exactly as the declared FastAPI routes do.

A second server runs the same app with its lean routes (and lean WebSocket routes) removed,
so FastAPI answers everything; hypothesis sends both the same requests (regular,
malformed, unauthorised, replayed) and the answers must agree, apart from what differs
between two sessions.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ledger.api.app import create_app
from ledger.api.lean import LeanRoute, LeanSockets
from ledger.cli.protocols import AnsweringWebSocketProtocol
from ledger.domain import Status
from ledger.settings import Settings
from ledger.testing import free_port
from tests.support import JWT_SECRET, LiveServer, append, create_session, token, wait_until

# What differs between two sessions' otherwise identical events.
VOLATILE = ("session_id", "position", "recorded_at")


@pytest.fixture(scope="module")
def declared(module_database_url: str) -> Iterator[str]:
    """The same app without its lean routes, served on a real socket."""
    app = create_app(
        Settings(jwt_secret=JWT_SECRET, jwt_leeway_seconds=1, heartbeat_seconds=1),
        database_url=module_database_url,
    )
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, LeanRoute)]
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not LeanSockets]  # type: ignore[comparison-overlap]
    port = free_port()
    server = uvicorn.Server(
        # The served protocol, so that only the lean routes differ between the two.
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            ws=AnsweringWebSocketProtocol,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started or not thread.is_alive(), timeout=30)
    assert server.started, "the declared app did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


def test_the_declared_app_has_no_lean_routes(declared: str) -> None:
    """The comparison means something only if the second server really is FastAPI's."""
    with httpx.Client(base_url=declared) as client:
        session = create_session(client)
        response = client.post(
            f"/api/sessions/{session}/events",
            json={"status": "queued"},
            headers={"Authorization": f"Bearer {token('service', 'pipeline')}"},
        )
        assert response.status_code == 201
    assert any(isinstance(r, LeanRoute) for r in create_app(Settings()).router.routes)


STATUSES = [status.value for status in Status]
LOOSE = st.one_of(st.none(), st.booleans(), st.integers(-5, 105), st.floats(), st.text(max_size=4))
EVENT = st.fixed_dictionaries(
    {"status": st.one_of(st.sampled_from(STATUSES), LOOSE)},
    optional={
        "progress": st.one_of(st.integers(-2, 102), LOOSE),
        "message": st.one_of(st.text(max_size=8), LOOSE),
        "error": st.one_of(st.text(max_size=8), LOOSE),
        "data": st.one_of(
            st.dictionaries(st.text(max_size=4), LOOSE, max_size=3),
            st.lists(st.integers(), max_size=2),
        ),
        "expected_version": st.one_of(st.integers(-1, 2), LOOSE),
        "colour": st.just("red"),
    },
)
VERSION = st.one_of(st.integers(-1, 2), LOOSE)
JSON_BODY = st.one_of(
    EVENT,
    st.lists(EVENT, max_size=3),
    st.fixed_dictionaries(
        {"events": st.lists(EVENT, max_size=3)}, optional={"expected_version": VERSION}
    ),
    LOOSE,
).map(lambda body: json.dumps(body).encode())
RAW_BODY = st.sampled_from(
    [b"", b"{", b"\xff\xfe", b'{"status": NaN}', b"[" * 5000, b'{"status": "queued"} x']
)
CONTENT_TYPE = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/vnd.api+json",
        "text/plain",
        None,
    ]
)
AUTHORIZATION = st.sampled_from(
    [
        f"Bearer {token('service', 'pipeline')}",
        f"bearer {token('admin', 'root')}",
        f"Bearer {token('patient', 'patient-1')}",
        f"Bearer {token('service', 'pipeline', ttl=-60)}",
        "Bearer not-a-jwt",
        "Bearer",
        "Token abc",
        None,
    ]
)
KEY = st.sampled_from([None, "key-1", "", "has space", "k" * 201, "k" * 200, "é".encode()])
IF_MATCH = st.sampled_from([None, '"0"', "0", 'W/"1"', '"1"', "abc", '"1234567890"'])
PATH = st.sampled_from(["session", "upper", "unknown", "malformed", "braces"])


Header = str | bytes | None


def _path(kind: str, session: str) -> str:
    target = {
        "session": session,
        "upper": session.upper(),
        "unknown": "00000000-0000-4000-8000-000000000000",
        "malformed": "not-a-uuid",
        "braces": "{" + session + "}",
    }[kind]
    return f"/api/sessions/{target}/events"


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.status_code == 201:
        body = [{k: v for k, v in event.items() if k not in VOLATILE} for event in body]
    headers = {
        name: response.headers.get(name)
        for name in ("content-type", "etag", "idempotent-replayed", "www-authenticate")
    }
    return response.status_code, headers, body


@settings(max_examples=60)
@given(
    path=PATH,
    body=st.one_of(JSON_BODY, RAW_BODY),
    content_type=CONTENT_TYPE,
    authorization=AUTHORIZATION,
    key=KEY,
    if_match=IF_MATCH,
)
def test_appends_answer_as_declared(
    server: LiveServer,
    declared: str,
    path: str,
    body: bytes,
    content_type: str | None,
    authorization: str | None,
    key: Header,
    if_match: str | None,
) -> None:
    headers = [
        (name, value if isinstance(value, bytes) else value.encode())
        for name, value in (
            (b"Content-Type", content_type),
            (b"Authorization", authorization),
            (b"Idempotency-Key", key),
            (b"If-Match", if_match),
        )
        if value is not None
    ]
    answers = []
    for base_url in (server.base_url, declared):
        with httpx.Client(base_url=base_url) as client:
            session = create_session(client)
            # Twice: the second is a replay, a conflict or a second append.
            answers.append(
                [
                    _comparable(client.post(_path(path, session), content=body, headers=headers))
                    for _ in range(2)
                ]
            )
    lean, fastapi = answers
    assert lean == fastapi
    assert all(status < 500 for status, _, _ in lean)


def test_stream_routes_decline_to_the_declared_routes(server: LiveServer, declared: str) -> None:
    """Streams: every refusal is the declared route's (the opening of a 200 differs only in
    the session it follows)."""
    cases = [
        ("/api/sessions/not-a-uuid/status/stream", {}),
        (f"/api/sessions/{uuid.uuid4()}/status/stream", {}),
        ("/api/events/stream", {"Last-Event-ID": "x" * 41}),
        ("/api/events/stream?last_event_id=" + "1" * 41, {}),
        ("/api/events/stream", {"Last-Event-ID": "nope"}),
        ("/api/events/stream", {"Authorization": "Token abc"}),
    ]
    auth = {"Authorization": f"Bearer {token('admin', 'root')}"}
    for path, extra in cases:
        answers = []
        for base_url in (server.base_url, declared):
            with httpx.Client(base_url=base_url) as client:
                response = client.get(path, headers={**auth, **extra})
                answers.append((response.status_code, response.json()))
        assert answers[0] == answers[1], path
        assert answers[0][0] in (400, 401, 404, 422), path


def test_stream_routes_answer_other_methods_as_declared(server: LiveServer, declared: str) -> None:
    """Starlette adds HEAD to a GET route, FastAPI does not: a HEAD must not open a stream."""
    auth = {"Authorization": f"Bearer {token('admin', 'root')}"}
    with httpx.Client(base_url=server.base_url) as client:
        session = create_session(client)
    for method in ("HEAD", "POST", "PUT"):
        for path in (f"/api/sessions/{session}/status/stream", "/api/events/stream"):
            answers = []
            for base_url in (server.base_url, declared):
                with httpx.Client(base_url=base_url, timeout=5) as client:
                    response = client.request(method, path, headers=auth)
                    answers.append((response.status_code, response.headers.get("allow")))
            assert answers[0] == answers[1] == (405, "GET"), (method, path, answers)


def _ws_answer(base_url: str, path: str) -> tuple[int, Any]:
    """A WebSocket open's outcome: the refusal's status and body, or 101 and the first
    message (its session id left out: each server follows a session of its own)."""
    url = base_url.replace("http://", "ws://") + path
    try:
        with connect(url, open_timeout=10) as ws:
            first = json.loads(ws.recv(timeout=10))
    except InvalidStatus as refused:
        body = refused.response.body.decode()
        return refused.response.status_code, json.loads(body) if body else None
    first.get("data", {}).pop("session_id", None)
    for volatile in VOLATILE:
        first.get("data", {}).pop(volatile, None)
    return 101, first


def test_websocket_routes_answer_as_declared(server: LiveServer, declared: str) -> None:
    """The WebSocket streams served in front of the router (``LeanSockets``) open, refuse
    and decline (a session id in another spelling) exactly as FastAPI's routes do."""
    admin, unknown = token("admin", "root"), uuid.uuid4()
    answers = []
    for base_url in (server.base_url, declared):
        with httpx.Client(base_url=base_url) as client:
            session = create_session(client, patient_id="frank")
            append(client, session, {"status": "queued"})
        paths = [
            f"/api/sessions/{session}/status/ws?access_token={admin}",
            f"/api/sessions/{session.upper()}/status/ws?access_token={admin}",
            # Declined by the lean route, served by FastAPI's (which takes this spelling).
            f"/api/sessions/{uuid.UUID(session).hex}/status/ws?access_token={admin}",
            f"/api/sessions/{session}/status/ws",
            f"/api/sessions/{session}/status/ws?access_token=garbage",
            f"/api/sessions/{session}/status/ws?access_token={token('patient', 'grace')}",
            f"/api/sessions/{session}/status/ws?access_token={admin}&last_event_id=x",
            f"/api/sessions/{unknown}/status/ws?access_token={admin}",
            f"/api/sessions/not-a-uuid/status/ws?access_token={admin}",
            f"/api/events/ws?access_token={admin}&session_id={session}",
            f"/api/events/ws?access_token={admin}&session_id=nope",
            "/api/events/ws",
        ]
        answers.append([_ws_answer(base_url, path) for path in paths])
    lean, fastapi = answers
    assert lean == fastapi
    assert [status for status, _ in lean][:3] == [101, 101, 101]
    assert lean[0][1]["event"] == "progress"
    assert lean[0][1]["data"]["status"] == "queued"
    assert all(status != 500 for status, _ in lean)
