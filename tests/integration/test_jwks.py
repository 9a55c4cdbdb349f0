"""Tokens from an identity provider: keys by ``kid`` from a real JWKS server that the tests
change under a running ledger (design, section 11)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ledger.jwks import FETCH_TIMEOUT_SECONDS, KeySet
from tests.integration.test_browser import CHROMIUM, FLAGS
from tests.jwks_server import JwksServer, SigningKey, jwks_server
from tests.readme import block
from tests.support import (
    LiveServer,
    append,
    event_messages,
    iter_sse,
    metric,
    wait_until,
)

ONE_HOUR = 3600


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server() as server:
        yield server


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "rsa": SigningKey.new("rsa-1", "RS256"),
        "ec": SigningKey.new("ec-1", "ES256"),
        "ed": SigningKey.new("ed-1", "EdDSA"),
        "rsa2": SigningKey.new("rsa-2", "RS256"),
    }


ISSUER, AUDIENCE = "https://sso.clinic.test/", "ledger"


def claims(role: Any = "admin", sub: str = "dr-who", **more: Any) -> dict[str, Any]:
    return {
        "sub": sub,
        "role": role,
        "exp": int(time.time()) + ONE_HOUR,
        "iss": ISSUER,
        "aud": AUDIENCE,
        **more,
    }


def jwks_env(server: JwksServer, refresh: float = 1.0, **more: str) -> dict[str, str]:
    return {
        "LEDGER_JWT_JWKS_URL": server.url,
        "LEDGER_JWT_JWKS_REFRESH_SECONDS": str(refresh),
        "LEDGER_JWT_SECRET": "",
        "LEDGER_JWT_ISSUER": ISSUER,
        "LEDGER_JWT_AUDIENCE": AUDIENCE,
        **more,
    }


def status(live: LiveServer, token: str, path: str = "/api/sessions") -> int:
    with live.client() as client:
        return client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code


def detail(live: LiveServer, token: str) -> str:
    with live.client() as client:
        answer = client.get("/api/sessions", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text
    return str(answer.json()["detail"])


def new_session(live: LiveServer, token: str, patient_id: str) -> str:
    with live.client() as client:
        answer = client.post(
            "/api/sessions",
            json={"patient_id": patient_id},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def readiness(live: LiveServer) -> tuple[int, dict[str, Any]]:
    with live.client() as client:
        answer = client.get("/readyz")
    return answer.status_code, answer.json()


def test_rs256_es256_and_eddsa_tokens_verify_by_kid(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.publish(keys["rsa"], keys["ec"], keys["ed"])
    live = server_factory(**jwks_env(jwks))
    for name in ("rsa", "ec", "ed"):
        assert status(live, keys[name].token(claims())) == 200, name
    # A key's kid on another key's signature: refused.
    assert status(live, keys["rsa2"].token(claims(), kid="rsa-1")) == 401
    ready, body = readiness(live)
    assert ready == 200
    assert body["keys"] is True
    assert "keys_error" not in body


def test_keys_rotate_without_a_restart(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.publish(keys["rsa"])
    live = server_factory(**jwks_env(jwks, refresh=1))
    old = keys["rsa"].token(claims())
    assert status(live, old) == 200  # and now remembered by the process
    session_id = new_session(live, old, "patient-r")
    # A stream opened with the old key's token lives on until that token expires.
    stream = httpx.Client(base_url=live.base_url, timeout=30)
    response = stream.send(
        stream.build_request(
            "GET", f"/api/sessions/{session_id}/status/stream", params={"access_token": old}
        ),
        stream=True,
    )
    assert response.status_code == 200
    try:
        # The provider publishes a new key beside the old one, then signs with it.
        jwks.publish(keys["rsa"], keys["rsa2"])
        new = keys["rsa2"].token(claims())
        assert wait_until(lambda: status(live, new) == 200, timeout=10)
        # Then it withdraws the old key: refused after the next refresh, remembered or not.
        jwks.publish(keys["rsa2"])
        assert wait_until(lambda: status(live, old) == 401, timeout=10)
        assert "names no published key" in detail(live, old)
        assert "names no published key" in detail(live, keys["rsa"].token(claims(sub="x")))
        # New connections too: a WebSocket with the remembered token is refused.
        url = f"ws://127.0.0.1:{live.port}/api/sessions/{session_id}/status/ws"
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(f"{url}?access_token={old}", open_timeout=10),
        ):
            pass
        assert refused.value.response.status_code == 401
        with connect(f"{url}?access_token={new}", open_timeout=10) as ws:  # the new key's
            assert json.loads(ws.recv(timeout=10)) == {"event": "heartbeat"}  # no event yet
        assert status(live, new) == 200
        with live.client() as client:
            body = {"status": "queued", "progress": 5}
            headers = {"Authorization": f"Bearer {new}"}
            answer = client.post(f"/api/sessions/{session_id}/events", json=body, headers=headers)
            assert answer.status_code == 201, answer.text
        received = next(event_messages(iter_sse(response)))
        assert json.loads(received.data or "{}")["status"] == "queued"
    finally:
        response.close()
        stream.close()


def test_a_flood_of_unknown_kids_is_at_most_one_fetch_per_interval(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.publish(keys["rsa"])
    refresh = 30.0
    live = server_factory(**jwks_env(jwks, refresh=refresh))
    before = jwks.requests
    started = time.monotonic()

    # One client for the flood (httpx's clients are thread-safe): a client per request
    # cost the test 20 s on a slow host, none of it the server's.
    with live.client() as client, ThreadPoolExecutor(16) as pool:

        def forged(index: int) -> int:
            token = keys["rsa"].token(claims(), kid=f"forged-{index}-{uuid.uuid4().hex}")
            headers = {"Authorization": f"Bearer {token}"}
            return client.get("/api/sessions", headers=headers).status_code

        answers = list(pool.map(forged, range(1000)))
    elapsed = time.monotonic() - started
    assert answers == [401] * 1000
    assert jwks.requests - before <= 1 + int(elapsed // refresh), (jwks.requests, before)
    assert status(live, keys["rsa"].token(claims())) == 200


BAD_ANSWERS: dict[str, tuple[int, bytes, str]] = {
    "a 500": (500, b"internal error", "text/plain"),
    "HTML": (200, b"<html><body>Sign in</body></html>", "text/html"),
    "not an object": (200, b"[1, 2, 3]", "application/json"),
    "no keys": (200, b'{"keys": []}', "application/json"),
    "a key of the wrong type": (
        200,
        json.dumps(
            {"keys": [{"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]}
        ).encode(),
        "application/json",
    ),
    "a huge document": (200, b'{"keys": [' + b" " * (2 * 1024 * 1024) + b"]}", "application/json"),
    "a malformed key": (
        200,
        json.dumps({"keys": [{"kty": "RSA", "kid": "x", "alg": ["RS256"], "n": "AQAB"}]}).encode(),
        "application/json",
    ),
}


def test_every_fetch_is_at_least_an_interval_after_the_last(
    jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    """The key set alone, on a clock the test moves: a new kid is fetched by the first
    token that names it once the interval has passed, and 1,000 concurrent unknown kids
    then are one fetch, not a thousand."""
    now = [1000.0]
    jwks.publish(keys["rsa"])
    key_set = KeySet(jwks.url, refresh=60, algorithms=["RS256", "ES256"], clock=lambda: now[0])

    async def scenario() -> None:
        await key_set.fetch()
        assert jwks.requests == 1
        jwks.publish(keys["rsa"], keys["ec"])
        assert await key_set.key("ec-1") is None  # within the interval: no fetch
        assert jwks.requests == 1
        now[0] += 60
        found = await asyncio.gather(*(key_set.key(f"forged-{i}") for i in range(1000)))
        assert found == [None] * 1000
        assert jwks.requests == 2  # one fetch for all of them
        assert key_set.holds("ec-1")  # and it brought the new key
        now[0] += 60
        assert await key_set.key("ec-1") is not None  # known: no fetch
        assert (await key_set.key("rsa-2")) is None
        assert jwks.requests == 3  # an unknown kid after another interval: one more

    asyncio.run(scenario())


def test_a_trickling_endpoint_is_cut_off(jwks: JwksServer, keys: dict[str, SigningKey]) -> None:
    """A server that sends a byte at a time, slower than the fetch's bound, gets no hold
    on the lock: the fetch fails within FETCH_TIMEOUT_SECONDS and the keys stay."""
    jwks.publish(keys["rsa"])
    key_set = KeySet(jwks.url, refresh=0.01, algorithms=["RS256"])

    async def scenario() -> None:
        await key_set.fetch()
        assert key_set.holds("rsa-1")
        jwks.trickle = 1.0  # a second per byte
        await key_set.fetch()  # 20 bytes at a second each: past the bound, not read through
        assert key_set.error == f"no answer within {FETCH_TIMEOUT_SECONDS:g} s"
        assert key_set.holds("rsa-1")

    asyncio.run(scenario())


def test_a_failing_endpoint_leaves_the_cached_keys_verifying(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.publish(keys["rsa"])
    live = server_factory(**jwks_env(jwks, refresh=0.3))
    token = keys["rsa"].token(claims())
    assert status(live, token) == 200
    for name, (code, body, content_type) in BAD_ANSWERS.items():
        jwks.answer(code, body, content_type)
        asked = jwks.requests
        # Two more fetches: the second began after the first (of this answer) was judged.
        assert wait_until(lambda asked=asked: jwks.requests >= asked + 2, timeout=10), name
        ready, state = readiness(live)
        assert ready == 200, (name, state)
        assert state["keys"] is True, (name, state)
        assert state.get("keys_error"), (name, state)
        assert status(live, token) == 200, name
        assert status(live, keys["rsa"].token(claims(sub="fresh"))) == 200, name
    assert metric(live, "ledger_jwks_fetches_total", 'outcome="failed"') >= len(BAD_ANSWERS)
    assert "keys held keep verifying" in live.log()
    jwks.stop()  # down altogether: connections refused
    unreachable = lambda: "unreachable" in str(readiness(live)[1].get("keys_error"))  # noqa: E731
    assert wait_until(unreachable, timeout=30), (
        readiness(live),
        live.log()[-3000:],
    )
    assert status(live, keys["rsa"].token(claims(sub="after"))) == 200


def test_not_ready_until_the_keys_are_loaded(
    database_url: str, tmp_path: Any, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.answer(503, b"starting", "text/plain")
    live = LiveServer(database_url, tmp_path / "s", env=jwks_env(jwks, refresh=0.5))
    starting = threading.Thread(target=live.start)
    starting.start()
    try:
        token = keys["rsa"].token(claims())

        def refused() -> bool:
            try:
                ready, state = readiness(live)
            except httpx.TransportError:
                return False
            return ready == 503 and state["keys"] is False and status(live, token) == 401

        assert wait_until(refused, timeout=30)
        jwks.publish(keys["rsa"])
        starting.join(60)  # start() returns once /readyz says ready
        assert status(live, token) == 200
    finally:
        starting.join(60)
        live.stop()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def test_attacks_in_jwks_mode_are_401(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    jwks.publish(keys["rsa"], keys["ec"])
    live = server_factory(**jwks_env(jwks))
    attacker = SigningKey.new("rsa-1", "RS256")  # even the victim's kid
    public_pem = (
        keys["rsa"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with jwks_server() as elsewhere:
        elsewhere.publish(attacker)
        attacks = {
            "alg none": hand_made({"alg": "none", "kid": "rsa-1"}, claims(), lambda _: b""),
            "HS256 with the public key's bytes": hand_made(
                {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"},
                claims(),
                lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
            ),
            "a kid naming a key of another type": keys["rsa"].token(claims(), kid="ec-1"),
            "jku pointing elsewhere": attacker.token(claims(), kid="evil", jku=elsewhere.url),
            "x5u pointing elsewhere": attacker.token(claims(), x5u=elsewhere.url),
            "an embedded jwk": attacker.token(claims(), jwk=attacker.jwk()),
            "no kid": hand_made({"alg": "RS256"}, claims(), lambda _: b"x" * 256),
            "a kid that is not a string": hand_made(
                {"alg": "RS256", "kid": 7}, claims(), lambda _: b"x" * 256
            ),
        }
        for name, token in attacks.items():
            assert status(live, token) == 401, name
            assert status(live, token, "/api/events/stream?access_token=" + token) == 401, name
        assert elsewhere.requests == 0  # nothing the token named was ever fetched


def test_provider_shaped_claims_give_the_role_and_subject(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    """Keycloak: roles in realm_access.roles, the user name as the subject."""
    jwks.publish(keys["rsa"])
    live = server_factory(
        **jwks_env(
            jwks,
            LEDGER_JWT_ROLE_CLAIM="realm_access.roles",
            LEDGER_JWT_SUBJECT_CLAIM="preferred_username",
            LEDGER_JWT_AUDIENCE="ledger",
            LEDGER_JWT_ISSUER="https://sso.clinic.example/realms/clinic",
        )
    )

    def keycloak(roles: list[str], user: str, **more: Any) -> str:
        body = {
            "iss": "https://sso.clinic.example/realms/clinic",
            "aud": "ledger",
            "sub": str(uuid.uuid4()),
            "preferred_username": user,
            "realm_access": {"roles": roles},
            "exp": int(time.time()) + ONE_HOUR,
            **more,
        }
        return keys["rsa"].token(body)

    admin = keycloak(["offline_access", "admin", "patient"], "ada")
    assert status(live, admin, "/api/events") == 200  # admin wins over patient
    with live.client() as client:
        headers = {"Authorization": f"Bearer {admin}"}
        mine = client.post("/api/sessions", json={"patient_id": "alice"}, headers=headers)
        theirs = client.post("/api/sessions", json={"patient_id": "bob"}, headers=headers)
        assert mine.status_code == theirs.status_code == 201
        alice = {"Authorization": f"Bearer {keycloak(['patient', 'uma_authorization'], 'alice')}"}
        listed = client.get("/api/sessions", headers=alice)
        assert listed.status_code == 200
        assert [s["patient_id"] for s in listed.json()["sessions"]] == ["alice"]
        # Her own scope, not bob's.
        assert client.get("/api/events", headers=alice).status_code == 200
        bobs = client.get("/api/events", params={"patient_id": "bob"}, headers=alice)
        assert bobs.status_code == 403
    nobody = keycloak(["offline_access"], "eve")
    assert "no ledger role in 'realm_access.roles'" in detail(live, nobody)
    assert status(live, keycloak(["admin"], "ada", aud="another-app")) == 401
    assert status(live, keycloak(["admin"], "")) == 401  # an empty subject


HEADING = "Sign-in through the clinic's identity provider"


def exported(snippet: str) -> dict[str, str]:
    """The variables a shell would export from the snippet, read by the shell itself."""
    done = subprocess.run(
        ["bash", "-c", f"{snippet}\nenv -0"], env={}, capture_output=True, text=True, check=True
    )
    pairs = (item.partition("=") for item in done.stdout.split("\0") if item)
    return {k: v for k, _, v in pairs if k.startswith("LEDGER_")}


def provider_token(key: SigningKey, settings: dict[str, str], role: str, subject: str) -> str:
    """A token shaped as that provider issues it: the role and the subject where the
    README's settings say, under the issuer and audience they name."""
    body: dict[str, Any] = {
        "iss": settings["LEDGER_JWT_ISSUER"],
        "aud": settings["LEDGER_JWT_AUDIENCE"],
        "sub": "opaque-" + subject,
        "exp": int(time.time()) + ONE_HOUR,
    }
    role_path = settings["LEDGER_JWT_ROLE_CLAIM"]
    if role_path.startswith("https://"):
        body[role_path] = [role]  # Auth0: one namespaced key
    else:
        *outer, last = role_path.split(".")
        target = body
        for name in outer:
            target = target.setdefault(name, {})
        target[last] = ["offline_access", role]
    subject_claim = settings.get("LEDGER_JWT_SUBJECT_CLAIM", "sub")
    body[subject_claim] = subject
    return key.token(body)


@pytest.mark.parametrize("nth", [0, 1, 2], ids=["keycloak", "auth0", "entra"])
def test_the_readmes_provider_settings_work_as_pasted(
    server_factory: Callable[..., LiveServer],
    jwks: JwksServer,
    keys: dict[str, SigningKey],
    nth: int,
) -> None:
    settings = exported(block(HEADING, "sh", nth))
    assert settings["LEDGER_JWT_JWKS_URL"].startswith("https://")
    jwks.publish(keys["rsa"])
    # Only the provider's address is ours: the test's JWKS server stands in for it.
    live = server_factory(**{**jwks_env(jwks), **settings, "LEDGER_JWT_JWKS_URL": jwks.url})
    with live.client() as client:
        therapist = provider_token(keys["rsa"], settings, "therapist", "dr-house")
        admin = provider_token(keys["rsa"], settings, "admin", "ada")
        headers = {"Authorization": f"Bearer {admin}"}
        assert client.get("/api/events", headers=headers).status_code == 200
        assigned = client.put("/api/care-assignments/dr-house/p-1", headers=headers)
        assert assigned.status_code == 204
        session = client.post("/api/sessions", json={"patient_id": "p-1"}, headers=headers)
        assert session.status_code == 201
        theirs = {"Authorization": f"Bearer {therapist}"}
        listed = client.get("/api/sessions", headers=theirs).json()["sessions"]
        assert [s["id"] for s in listed] == [session.json()["id"]]  # its subject, its patient
        # The therapist's scope is its assigned patient's, by its subject too.
        scoped = client.get("/api/events", params={"patient_id": "p-1"}, headers=theirs)
        assert scoped.status_code == 200
        others = client.get("/api/events", params={"patient_id": "p-2"}, headers=theirs)
        assert others.status_code == 403


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (.ci/run installs it)"
)
def test_the_readmes_browser_handoff_works_as_pasted(
    server_factory: Callable[..., LiveServer], jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    from playwright.sync_api import sync_playwright

    jwks.publish(keys["ec"])
    pages = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    origin = f"http://127.0.0.1:{pages.server_address[1]}"
    live = server_factory(**jwks_env(jwks), LEDGER_CORS_ORIGINS=origin)
    admin = keys["ec"].token(claims("admin", "ada"))
    session_id = new_session(live, admin, "p-browser")
    Page.html = (
        block(HEADING, "html")
        .replace("http://127.0.0.1:8000", live.base_url)
        .replace("…session id…", session_id)
        .replace("…the provider's access token…", admin)
    )
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{origin}/")
            opened = "/status/stream"
            with live.client() as client:  # the stream starts with the session's status
                body = {"status": "transcribing", "progress": 30}
                headers = {"Authorization": f"Bearer {admin}"}
                assert append(client, session_id, body, headers).status_code == 201
            page.wait_for_function(
                "document.getElementById('status').textContent === 'transcribing'"
            )
            streams = [url for url in requested if opened in url]
            # The stream was opened with the cookie alone: no token in its URL.
            assert streams
            assert all("access_token" not in url for url in streams), streams
            browser.close()
    finally:
        pages.shutdown()
        pages.server_close()


class Page(BaseHTTPRequestHandler):
    html = ""

    def do_GET(self) -> None:
        body = f"<!doctype html><meta charset=utf-8>{self.html}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
