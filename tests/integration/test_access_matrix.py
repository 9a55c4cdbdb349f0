"""Every endpoint x every kind of caller x own / other / unknown session -> the status code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support import LiveServer, append, auth, create_session

# Who calls: (role, subject), or None for no token at all.
CALLERS: dict[str, tuple[str, str] | None] = {
    "anonymous": None,
    "patient-own": ("patient", "pat-a"),
    "patient-other": ("patient", "pat-b"),
    "therapist-assigned": ("therapist", "ther-1"),
    "therapist-unassigned": ("therapist", "ther-2"),
    "admin": ("admin", "root"),
    "auditor": ("auditor", "aud"),
    "service": ("service", "pipe"),
}

READ = {
    "anonymous": 401,
    "patient-own": 200,
    "patient-other": 403,
    "therapist-assigned": 200,
    "therapist-unassigned": 403,
    "admin": 200,
    "auditor": 200,
    "service": 403,
}
READ_UNKNOWN = {caller: 401 if caller == "anonymous" else 404 for caller in CALLERS}
APPEND = {
    caller: {"anonymous": 401, "admin": 201, "service": 201}.get(caller, 403) for caller in CALLERS
}
APPEND_UNKNOWN = {**APPEND, "admin": 404, "service": 404}
READ_ALL = {
    caller: {"anonymous": 401, "admin": 200, "auditor": 200}.get(caller, 403) for caller in CALLERS
}
ADMIN_ONLY = {caller: {"anonymous": 401, "admin": 204}.get(caller, 403) for caller in CALLERS}
ANY_TOKEN = {caller: 401 if caller == "anonymous" else 204 for caller in CALLERS}
OPEN = dict.fromkeys(CALLERS, 200)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {own}, {done}, {unknown} are filled in
    expected: dict[str, int]
    body: object = None
    streaming: bool = False


LIST = {caller: {"anonymous": 401, "service": 403}.get(caller, 200) for caller in CALLERS}

ENDPOINTS: dict[str, Endpoint] = {
    "list sessions": Endpoint("GET", "/api/sessions", LIST),
    "register session": Endpoint("POST", "/api/sessions", APPEND, body={"patient_id": "pat-a"}),
    "append": Endpoint("POST", "/api/sessions/{own}/events", APPEND, body={"status": "queued"}),
    "append unknown": Endpoint(
        "POST", "/api/sessions/{unknown}/events", APPEND_UNKNOWN, body={"status": "queued"}
    ),
    "status": Endpoint("GET", "/api/sessions/{own}/status", READ),
    "status unknown": Endpoint("GET", "/api/sessions/{unknown}/status", READ_UNKNOWN),
    "history": Endpoint("GET", "/api/sessions/{own}/events", READ),
    "history unknown": Endpoint("GET", "/api/sessions/{unknown}/events", READ_UNKNOWN),
    "stream": Endpoint("GET", "/api/sessions/{done}/status/stream", READ, streaming=True),
    "stream unknown": Endpoint(
        "GET", "/api/sessions/{unknown}/status/stream", READ_UNKNOWN, streaming=True
    ),
    "websocket": Endpoint("WS", "/api/sessions/{done}/status/ws", READ),
    "websocket unknown": Endpoint("WS", "/api/sessions/{unknown}/status/ws", READ_UNKNOWN),
    # Every reader gets its scope; admins and auditors without filters the global order.
    "all events": Endpoint("GET", "/api/events", LIST),
    "all events stream": Endpoint("GET", "/api/events/stream", LIST, streaming=True),
    "all events websocket": Endpoint("WS", "/api/events/ws", LIST),
    # A filter naming a session is access to that session.
    "events of a session": Endpoint("GET", "/api/events?session_id={own}", READ),
    "stream of a session's events": Endpoint(
        "GET", "/api/events/stream?session_id={own}", READ, streaming=True
    ),
    "events of an unknown session": Endpoint(
        "GET", "/api/events?session_id={unknown}", {**READ_UNKNOWN, "service": 403}
    ),
    "assign": Endpoint("PUT", "/api/care-assignments/ther-x/pat-z", ADMIN_ONLY),
    "unassign": Endpoint("DELETE", "/api/care-assignments/ther-x/pat-z", ADMIN_ONLY),
    "stream cookie": Endpoint("POST", "/api/auth/cookie", ANY_TOKEN),
    "clear stream cookie": Endpoint("DELETE", "/api/auth/cookie", dict.fromkeys(CALLERS, 204)),
    "healthz": Endpoint("GET", "/healthz", OPEN),
    "readyz": Endpoint("GET", "/readyz", OPEN),
    "metrics": Endpoint("GET", "/metrics", OPEN),
}


@pytest.fixture(scope="module")
def sessions(server: LiveServer) -> dict[str, str]:
    with server.client() as client:
        own = create_session(client, patient_id="pat-a")
        done = create_session(client, patient_id="pat-a")
        append(client, own, {"status": "uploaded"})
        append(client, done, [{"status": "uploaded"}, {"status": "processed"}])
        assigned = client.put("/api/care-assignments/ther-1/pat-a", headers=auth("admin"))
        assert assigned.status_code == 204
    return {"own": own, "done": done, "unknown": str(uuid.uuid4())}


def call(server: LiveServer, endpoint: Endpoint, path: str, caller: str) -> int:
    identity = CALLERS[caller]
    headers = auth(*identity) if identity else {}
    if endpoint.method == "WS":
        query = f"?access_token={headers['Authorization'][7:]}" if identity else ""
        try:
            with connect(f"ws://127.0.0.1:{server.port}{path}{query}"):
                return 200
        except InvalidStatus as refused:
            return refused.response.status_code
    with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(10, read=5)) as client:
        if endpoint.streaming:
            with client.stream(endpoint.method, path, headers=headers) as response:
                return response.status_code
        response = client.request(endpoint.method, path, headers=headers, json=endpoint.body)
        return response.status_code


CASES = [(name, caller) for name in ENDPOINTS for caller in CALLERS]


@pytest.mark.parametrize(("endpoint_name", "caller"), CASES, ids=[f"{e}-{c}" for e, c in CASES])
def test_access_matrix(
    server: LiveServer, sessions: dict[str, str], endpoint_name: str, caller: str
) -> None:
    endpoint = ENDPOINTS[endpoint_name]
    path = endpoint.path.format(**sessions)
    assert call(server, endpoint, path, caller) == endpoint.expected[caller]
