"""Token attacks, CORS, cookies and logs: what an attacker or a careless proxy would try."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from ledger.auth import Principal, Role, TokenVerifier, load_keys
from ledger.errors import Unauthorized
from ledger.settings import Settings
from tests.support import (
    LiveServer,
    auth,
    create_session,
    iter_sse,
    receive_all,
    stream,
    token,
    wait_until,
)

AUDIENCE = "ledger-api"
ISSUER = "https://idp.clinic.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rs256_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey
) -> Iterator[LiveServer]:
    live = LiveServer(
        module_database_url,
        tmp_path_factory.mktemp("rs256"),
        env={
            "LEDGER_JWT_PUBLIC_KEY": pem_public(rsa_key),
            "LEDGER_JWT_SECRET": "",
            "LEDGER_JWT_AUDIENCE": AUDIENCE,
            "LEDGER_JWT_ISSUER": ISSUER,
            "LEDGER_CORS_ORIGINS": "https://app.clinic.example, http://localhost:5173",
        },
    ).start()
    yield live
    live.stop()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="RS256")


def test_a_valid_rs256_token_is_accepted(
    rs256_server: LiveServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    response = httpx.get(
        f"{rs256_server.base_url}/api/events",
        headers={"Authorization": f"Bearer {rs256(rsa_key)}"},
    )
    assert response.status_code == 200


ATTACKS: dict[str, Callable[[rsa.RSAPrivateKey], str]] = {
    "alg none": lambda key: forge({"alg": "none", "typ": "JWT"}, claims(), lambda _: b""),
    "alg none, no signature part": lambda key: forge(
        {"alg": "none", "typ": "JWT"}, claims(), lambda _: b""
    ).rstrip("."),
    "HS256 signed with the RS256 public key (key confusion)": lambda key: forge(
        {"alg": "HS256", "typ": "JWT"},
        claims(),
        lambda data: hmac.new(pem_public(key).encode(), data, hashlib.sha256).digest(),
    ),
    "expired": lambda key: rs256(key, exp=int(time.time()) - 120),
    "not yet valid": lambda key: rs256(key, nbf=int(time.time()) + 600),
    "issued in the future with nbf": lambda key: rs256(key, nbf=int(time.time()) + 3600),
    "wrong audience": lambda key: rs256(key, aud="someone-else"),
    "no audience": lambda key: rs256(key, aud=None),
    "wrong issuer": lambda key: rs256(key, iss="https://evil.example"),
    "no exp": lambda key: rs256(key, exp=None),
    "bad signature": lambda key: (
        rs256(key)[:-6] + ("AAAAAA" if not rs256(key).endswith("AAAAAA") else "BBBBBB")
    ),
    "signed by another key": lambda key: rs256(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ),
    "missing sub": lambda key: rs256(key, sub=None),
    "empty sub": lambda key: rs256(key, sub=""),
    "missing role": lambda key: rs256(key, role=None),
    "unknown role": lambda key: rs256(key, role="superuser"),
    "role not a string": lambda key: rs256(key, role=5),
    "no ledger role in a list": lambda key: rs256(key, role=["superuser", 5]),
    "garbage": lambda key: "not.a.jwt",
    "random bytes": lambda key: "x" * 40,
    "100 KB token": lambda key: "a" * 100_000,
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attacks_are_401(rs256_server: LiveServer, rsa_key: rsa.RSAPrivateKey, attack: str) -> None:
    forged = ATTACKS[attack](rsa_key)
    with rs256_server.client() as client:
        response = client.get("/api/events", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401, (attack, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        if len(forged) < 8000:
            streamed = client.get("/api/events/stream", params={"access_token": forged})
            assert streamed.status_code == 401, attack
        by_cookie = client.get("/api/events/stream", headers={"Cookie": f"access_token={forged}"})
        assert by_cookie.status_code == 401, attack


def test_a_100_kb_header_is_refused_not_crashing(rs256_server: LiveServer) -> None:
    with rs256_server.client() as client:
        response = client.get("/api/events", headers={"Authorization": "Bearer " + "b" * 100_000})
    assert response.status_code in (401, 431)


def check(verifier: TokenVerifier, token: str) -> Principal:
    return asyncio.run(verifier.verify(token))


def test_es256_and_algorithm_pinning() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    settings = Settings(jwt_public_key=pem_public(key))
    verifier = TokenVerifier(settings, load_keys(settings))
    assert verifier.keys.algorithm == "ES256"
    good = jwt.encode(
        {"sub": "s", "role": "auditor", "exp": int(time.time()) + 60}, key, algorithm="ES256"
    )
    assert check(verifier, good).role is Role.AUDITOR
    with pytest.raises(Unauthorized):
        check(
            verifier,
            forge({"alg": "none"}, {"sub": "s", "role": "admin", "exp": 2**31}, lambda _: b""),
        )
    with pytest.raises(ValueError, match="does not match"):
        load_keys(Settings(jwt_public_key=pem_public(key), jwt_algorithm="RS256"))
    with pytest.raises(ValueError, match="needs LEDGER_JWT_PUBLIC_KEY"):
        load_keys(Settings(jwt_secret="x" * 40, jwt_algorithm="RS256"))


def test_a_remembered_token_still_expires() -> None:
    """Verified tokens skip the signature check next time, never the expiry."""
    settings = Settings(jwt_secret="s" * 40, jwt_leeway_seconds=0)
    verifier = TokenVerifier(settings, load_keys(settings))
    expires = int(time.time()) + 2
    short = jwt.encode({"sub": "s", "role": "service", "exp": expires}, "s" * 40, "HS256")
    assert check(verifier, short).subject == "s"
    assert check(verifier, short).subject == "s"  # from memory
    while time.time() < expires:
        time.sleep(0.1)
    with pytest.raises(Unauthorized, match="expired"):
        check(verifier, short)
    with pytest.raises(Unauthorized, match="expired"):
        check(verifier, short)  # and it stays refused once forgotten
    # A refused token is never remembered: a forged one fails every time.
    forged = short[:-4] + ("AAAA" if not short.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            check(verifier, forged)


def test_wildcard_cors_is_refused_by_configuration() -> None:
    with pytest.raises(ValidationError):
        Settings(cors_origins="*")


def test_cors_preflight_for_append(rs256_server: LiveServer) -> None:
    with rs256_server.client() as client:
        session_path = "/api/sessions/00000000-0000-4000-8000-000000000000/events"
        allowed = client.options(
            session_path,
            headers={
                "Origin": "https://app.clinic.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.clinic.example"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()
        denied = client.options(
            session_path,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in denied.headers
        simple = client.get("/healthz", headers={"Origin": "http://localhost:5173"})
        assert simple.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert simple.headers["access-control-allow-origin"] != "*"


def test_stream_cookie(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="henry")
        exchanged = client.post("/api/auth/cookie", headers=auth("patient", "henry"))
        assert exchanged.status_code == 204
        cookie = exchanged.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/api" in cookie
        with client.stream("GET", f"/api/sessions/{session_id}/status/stream") as response:
            assert response.status_code == 200
        assert client.post("/api/auth/cookie").status_code == 401
        cleared = client.delete("/api/auth/cookie")
        assert cleared.status_code == 204
        client.cookies.clear()
        assert client.get(f"/api/sessions/{session_id}/status/stream").status_code == 401


def test_tokens_never_reach_the_log(server: LiveServer) -> None:
    secret_token = token("admin", "log-check")
    with server.client() as client:
        session_id = create_session(client)
        params = {"access_token": secret_token, "last_event_id": "9"}
        with client.stream("GET", f"/api/sessions/{session_id}/status/stream", params=params) as r:
            assert r.status_code == 200
        client.get("/api/events", params={"token": secret_token})

    def access_lines() -> list[dict[str, Any]]:
        # Only whole lines: the server may be writing the last one as the test reads.
        whole = server.log().split("\n")[:-1]
        return [json.loads(line) for line in whole if line.startswith("{")]

    def stream_lines() -> list[dict[str, Any]]:
        route = "/api/sessions/{session_id}/status/stream"
        return [line for line in access_lines() if line.get("http", {}).get("route") == route]

    assert wait_until(lambda: len(stream_lines()) > 0), "the stream's access line is there"
    log = server.log()
    assert secret_token not in log
    assert secret_token.split(".")[2] not in log
    lines, streams = access_lines(), stream_lines()
    assert all("?" not in line["http"]["path"] for line in lines if "http" in line)
    assert all(line["request_id"] for line in streams)


def test_cross_tenant_errors_reveal_nothing(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="ivy-secret-id")
        client.post(
            f"/api/sessions/{session_id}/events",
            json={"status": "transcribing", "message": "private note"},
            headers=auth("service"),
        )
        other = auth("patient", "mallory")
        for path in ("status", "events", "status/stream"):
            response = client.get(f"/api/sessions/{session_id}/{path}", headers=other)
            assert response.status_code == 403
            assert response.json() == {"detail": "no access to this session"}
    with stream(
        server, f"/api/sessions/{session_id}/status/stream", role="patient", sub="mallory"
    ) as response:
        assert response.status_code == 403


def test_removing_an_assignment_ends_open_streams(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="judy")
        assert (
            client.put("/api/care-assignments/dr-k/judy", headers=auth("admin")).status_code == 204
        )
        url = f"/api/sessions/{session_id}/status/stream"
        ws_url = (
            f"ws://127.0.0.1:{server.port}{url.replace('stream', 'ws')}"
            f"?access_token={token('therapist', 'dr-k')}"
        )
        with (
            connect(ws_url) as ws,
            stream(server, url, role="therapist", sub="dr-k") as response,
        ):
            assert response.status_code == 200
            messages = iter_sse(response)
            next(messages)
            removed = client.delete("/api/care-assignments/dr-k/judy", headers=auth("admin"))
            assert removed.status_code == 204
            rest = list(messages)  # ends: the server closed the stream
            assert all(m.data is None for m in rest)
            assert receive_all(ws) == []
            assert ws.close_code == 1008
            assert ws.close_reason == "access revoked"
        again = client.get(url, headers=auth("therapist", "dr-k"))
        assert again.status_code == 403


def test_websocket_checks_the_origin(rs256_server: LiveServer, rsa_key: rsa.RSAPrivateKey) -> None:
    with rs256_server.client() as client:
        session_id = create_session_rs(client, rsa_key)
    url = (
        f"ws://127.0.0.1:{rs256_server.port}/api/sessions/{session_id}/status/ws"
        f"?access_token={rs256(rsa_key)}"
    )
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    with connect(url, origin=Origin("https://app.clinic.example")) as ws:
        assert json.loads(ws.recv(timeout=10))["event"] == "heartbeat"
    with connect(url) as ws:  # not a browser: no Origin header
        assert json.loads(ws.recv(timeout=10))["event"] == "heartbeat"


def create_session_rs(client: httpx.Client, key: rsa.RSAPrivateKey) -> str:
    response = client.post(
        "/api/sessions",
        json={"patient_id": "p"},
        headers={"Authorization": f"Bearer {rs256(key, role='service')}"},
    )
    assert response.status_code == 201
    session_id: str = response.json()["id"]
    return session_id
