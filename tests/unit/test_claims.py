"""Where the role and the subject are in a provider's token, and which JWKS keys count."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from ledger.auth import Role, TokenVerifier, claim_at, ledger_role, load_keys
from ledger.errors import SetupError, Unauthorized
from ledger.jwks import FetchFailed, signing_keys
from ledger.settings import Settings
from tests.jwks_server import SigningKey

KEYCLOAK = {
    "sub": "6f1c0c1e-0d5a-4d59-9a43-3c1e0b1f7a10",
    "preferred_username": "dr.grey",
    "realm_access": {"roles": ["offline_access", "uma_authorization", "therapist"]},
    "resource_access": {"ledger": {"roles": ["auditor"]}},
}
AUTH0 = {
    "sub": "auth0|64b7f0c2",
    "https://ledger.clinic.example/roles": ["patient"],
    "https://ledger.clinic.example/patient": "alice",
}
ENTRA = {"sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "7c4d", "roles": ["admin"]}


@pytest.mark.parametrize(
    ("claims", "role_path", "subject_path", "role", "subject"),
    [
        (KEYCLOAK, "realm_access.roles", "preferred_username", Role.THERAPIST, "dr.grey"),
        (KEYCLOAK, "resource_access.ledger.roles", "sub", Role.AUDITOR, KEYCLOAK["sub"]),
        (AUTH0, "https://ledger.clinic.example/roles", "sub", Role.PATIENT, "auth0|64b7f0c2"),
        (
            AUTH0,
            "https://ledger.clinic.example/roles",
            "https://ledger.clinic.example/patient",
            Role.PATIENT,
            "alice",
        ),
        (ENTRA, "roles", "oid", Role.ADMIN, "7c4d"),
    ],
    ids=["keycloak realm", "keycloak client", "auth0", "auth0 namespaced subject", "entra"],
)
def test_provider_shaped_claims(
    claims: dict[str, Any], role_path: str, subject_path: str, role: Role, subject: str
) -> None:
    assert ledger_role(claim_at(claims, role_path)) is role
    assert claim_at(claims, subject_path) == subject


def test_role_precedence_and_shapes() -> None:
    assert ledger_role(["patient", "admin", "therapist"]) is Role.ADMIN
    assert ledger_role(["therapist", "service"]) is Role.SERVICE
    assert ledger_role("auditor") is Role.AUDITOR
    for nothing in (None, 5, {"admin": True}, [], ["Admin"], ["superuser", 1]):
        assert ledger_role(nothing) is None
    assert claim_at(KEYCLOAK, "realm_access.missing") is None
    assert claim_at(KEYCLOAK, "preferred_username.deeper") is None
    assert claim_at({"a.b": 1, "a": {"b": 2}}, "a.b") == 1  # a whole key first


def hs_verifier(**settings: Any) -> TokenVerifier:
    configured = Settings(jwt_secret="k" * 40, **settings)
    return TokenVerifier(configured, load_keys(configured))


def test_the_configured_claims_decide_role_and_subject() -> None:
    verifier = hs_verifier(
        jwt_role_claim="realm_access.roles", jwt_subject_claim="preferred_username"
    )
    body = {**KEYCLOAK, "exp": int(time.time()) + 60}
    principal = asyncio.run(verifier.verify(jwt.encode(body, "k" * 40, "HS256")))
    assert (principal.role, principal.subject) == (Role.THERAPIST, "dr.grey")
    nobody = {**body, "realm_access": {"roles": ["offline_access"]}}
    with pytest.raises(Unauthorized, match=r"no ledger role in 'realm_access\.roles'"):
        asyncio.run(verifier.verify(jwt.encode(nobody, "k" * 40, "HS256")))
    anonymous = {**body, "preferred_username": ""}
    with pytest.raises(Unauthorized, match="'preferred_username' must be a non-empty string"):
        asyncio.run(verifier.verify(jwt.encode(anonymous, "k" * 40, "HS256")))


def test_jwks_mode_refuses_symmetric_configuration() -> None:
    url = "https://sso.example/jwks"
    with pytest.raises(SetupError, match="unset LEDGER_JWT_PUBLIC_KEY and LEDGER_JWT_SECRET"):
        load_keys(Settings(jwt_jwks_url=url, jwt_secret="s" * 40))
    with pytest.raises(ValueError, match="HS256 not allowed"):
        Settings(jwt_jwks_url=url, jwt_algorithms="RS256,HS256")
    with pytest.raises(ValueError, match="none not allowed"):
        Settings(jwt_jwks_url=url, jwt_algorithms="none")
    with pytest.raises(ValueError, match="expected the https:// URL"):
        Settings(jwt_jwks_url="file:///etc/passwd")
    with pytest.raises(SetupError, match="needs LEDGER_JWT_ISSUER and LEDGER_JWT_AUDIENCE"):
        load_keys(Settings(jwt_jwks_url=url, jwt_secret="", jwt_audience="ledger"))
    with pytest.raises(ValueError, match="http only on loopback"):
        Settings(jwt_jwks_url="http://sso.example/jwks")
    Settings(jwt_jwks_url="http://127.0.0.1:8080/jwks")  # a provider on this machine
    provider = Settings(jwt_jwks_url=url, jwt_secret="", jwt_issuer=url, jwt_audience="ledger")
    keys = load_keys(provider)
    with pytest.raises(SetupError, match="identity provider issues the tokens"):
        TokenVerifier(provider, keys).mint(Role.ADMIN, "x", 60)


def test_only_asymmetric_signing_keys_with_a_kid_are_kept() -> None:
    rsa_key, ec_key, ed_key = (
        SigningKey.new("r", "RS256"),
        SigningKey.new("e", "ES256"),
        SigningKey.new("d", "EdDSA"),
    )
    document = {
        "keys": [
            rsa_key.jwk(),
            ec_key.jwk(),
            ed_key.jwk(),
            {**SigningKey.new("enc", "RS256").jwk(), "use": "enc"},
            {key: value for key, value in rsa_key.jwk().items() if key != "kid"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "odd", "alg": ["RS256"], "n": "AQAB", "e": "AQAB"},
        ]
    }
    assert set(signing_keys(document, ["RS256", "ES256", "EdDSA"])) == {"r", "e", "d"}
    assert set(signing_keys(document, ["ES256"])) == {"e"}
    bad_documents: list[object] = [
        {"keys": []},
        [],
        {"keys": "x"},
        {"nothing": 1},
        {"keys": [document["keys"][5]]},
    ]
    for bad in bad_documents:
        with pytest.raises(FetchFailed):
            signing_keys(bad, ["RS256"])
