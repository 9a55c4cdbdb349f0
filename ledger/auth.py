"""Tokens, roles and the access policy.

The signing algorithm comes from configuration and is handed to PyJWT as the only one
allowed, so a token cannot choose ``none`` or turn an RS256 public key into an HS256 secret.
With an identity provider's JWKS (:mod:`ledger.jwks`) the token's ``kid`` picks the key,
and the key fixes the algorithm, which must be one of ``LEDGER_JWT_ALGORITHMS``. Where the
role and the subject are in the claims is configured for either (design, section 11).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ledger.errors import Forbidden, SetupError, Unauthorized
from ledger.jwks import KeySet
from ledger.settings import Settings

SECRET_FILE = "jwt-secret"
MAX_TOKEN_BYTES = 8192
# Verified tokens remembered per process: a writer or a reconnecting browser sends the same
# token again and again, and checking a signature costs more than the rest of the request's
# authentication. Bounded; cleared whole when full.
VERIFIED_CACHE_SIZE = 4096


class Role(StrEnum):
    PATIENT = "patient"
    THERAPIST = "therapist"
    ADMIN = "admin"
    AUDITOR = "auditor"
    SERVICE = "service"


# When a token carries several ledger roles (a provider's role list), the first of these wins.
ROLE_PRECEDENCE = (Role.ADMIN, Role.AUDITOR, Role.SERVICE, Role.THERAPIST, Role.PATIENT)
READ_ALL = frozenset({Role.ADMIN, Role.AUDITOR})
APPENDERS = frozenset({Role.ADMIN, Role.SERVICE})


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    # Unix time after which the token is refused (its exp plus the allowed clock skew).
    expires_at: float


@dataclass(frozen=True, slots=True)
class KeyConfig:
    algorithm: str
    verify_key: Any
    signing_key: Any | None
    jwks: KeySet | None = None  # set: keys by kid from the provider; the others unused


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a dotted ``path`` (``realm_access.roles``); a key holding dots itself
    (``https://clinic.example/roles``) is matched whole, the longest prefix first."""
    if path in claims:
        return claims[path]
    cut = len(path)
    while (cut := path.rfind(".", 0, cut)) > 0:
        inner = claims.get(path[:cut])
        if isinstance(inner, Mapping):
            return claim_at(inner, path[cut + 1 :])
    return None


def ledger_role(value: Any) -> Role | None:
    """The ledger role in a role claim (a string or a list of them), by precedence."""
    held = {value} if isinstance(value, str) else value if isinstance(value, list) else ()
    names = {name for name in held if isinstance(name, str)}
    return next((role for role in ROLE_PRECEDENCE if role.value in names), None)


def _dev_secret(data_dir: Path, *, create: bool) -> str:
    """A random secret kept under the data directory, so development tokens survive restarts.

    Only the server creates it: a CLI that minted with a secret of its own would make
    tokens that the running server refuses.
    """
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise SetupError(
            f"no development secret at {path.resolve()}: start the server first (it creates "
            "one), run this where the server runs (the nearest .ledger/ upward is used), or set "
            "LEDGER_DATA_DIR or LEDGER_JWT_SECRET as the server has them"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret


def load_keys(settings: Settings, *, create: bool = False) -> KeyConfig:
    """The configured keys; ``create`` (the server) makes the development secret if needed."""
    if settings.jwt_jwks_url:
        if settings.jwt_public_key or settings.jwt_secret:
            raise SetupError(
                "LEDGER_JWT_JWKS_URL is set: unset LEDGER_JWT_PUBLIC_KEY and LEDGER_JWT_SECRET"
                " (one source of keys; never an HMAC secret beside a JWKS)"
            )
        if not settings.jwt_issuer or not settings.jwt_audience:
            raise SetupError(
                "LEDGER_JWT_JWKS_URL needs LEDGER_JWT_ISSUER and LEDGER_JWT_AUDIENCE: a"
                " provider signs other tenants' and other applications' tokens with the same keys"
            )
        keys = KeySet(
            settings.jwt_jwks_url, settings.jwt_jwks_refresh_seconds, settings.jwt_algorithms
        )
        return KeyConfig("", None, None, jwks=keys)
    if settings.jwt_public_key:
        try:
            public = load_pem_public_key(settings.jwt_public_key.encode())
        except ValueError as exc:
            raise SetupError(f"LEDGER_JWT_PUBLIC_KEY is not a PEM public key ({exc})") from None
        default = "ES256" if isinstance(public, ec.EllipticCurvePublicKey) else "RS256"
        algorithm = settings.jwt_algorithm or default
        if not algorithm.startswith(("RS", "ES")):
            raise SetupError("LEDGER_JWT_PUBLIC_KEY needs an RS* or ES* LEDGER_JWT_ALGORITHM")
        if algorithm.startswith("RS") != isinstance(public, rsa.RSAPublicKey):
            raise SetupError(f"{algorithm} does not match the type of LEDGER_JWT_PUBLIC_KEY")
        return KeyConfig(algorithm, public, settings.jwt_private_key)
    secret = settings.jwt_secret or _dev_secret(settings.data_dir, create=create)
    algorithm = settings.jwt_algorithm or "HS256"
    if not algorithm.startswith("HS"):
        raise SetupError(f"{algorithm} needs LEDGER_JWT_PUBLIC_KEY")
    return KeyConfig(algorithm, secret, secret)


class TokenVerifier:
    def __init__(self, settings: Settings, keys: KeyConfig) -> None:
        self.keys = keys
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway_seconds
        self.role_claim = settings.jwt_role_claim
        self.subject_claim = settings.jwt_subject_claim
        # Each verified token with the JWKS key that verified it (None: a fixed key), so
        # that a remembered token does not outlive its key.
        self._verified: dict[str, tuple[Principal, tuple[str, jwt.PyJWK] | None]] = {}

    async def verify(self, token: str) -> Principal:
        """The token's principal; a token seen before skips the signature, not the expiry,
        nor the check that the JWKS key which verified it is still the one published.

        Only a token that passed every check is remembered, and what can change with time
        (``exp``, the key set) is checked on every use; a passed ``nbf`` stays passed.
        """
        known = self._verified.get(token)
        if known is not None:
            principal, verified_by = known
            if time.time() >= principal.expires_at:
                del self._verified[token]
                raise Unauthorized("token expired")
            if verified_by is None or self._still_published(*verified_by):
                return principal
            del self._verified[token]  # keys refreshed since: verified again, in full
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too large")
        key, algorithms, verified_by = self.keys.verify_key, [self.keys.algorithm], None
        if self.keys.jwks is not None:
            verified_by = await self._jwks_key(token)
            key, algorithms = verified_by[1], list(self.keys.jwks.algorithms)
        principal = self._verify_signed(token, key, algorithms)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, verified_by)
        return principal

    def _still_published(self, kid: str, key: jwt.PyJWK) -> bool:
        """Whether ``key`` is the one the last fetch published under ``kid`` (each fetch
        makes new key objects, so a remembered token is verified again once after it)."""
        return self.keys.jwks is not None and self.keys.jwks.keys.get(kid) is key

    async def _jwks_key(self, token: str) -> tuple[str, jwt.PyJWK]:
        assert self.keys.jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid token: no 'kid' header naming the provider's key")
        key = await self.keys.jwks.key(kid)
        if key is None:
            raise Unauthorized("invalid token: its 'kid' names no published key")
        return kid, key

    def _verify_signed(self, token: str, key: Any, algorithms: list[str]) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        subject = claim_at(claims, self.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthorized(f"invalid token: '{self.subject_claim}' must be a non-empty string")
        role = ledger_role(claim_at(claims, self.role_claim))
        if role is None:
            expected = ", ".join(r.value for r in ROLE_PRECEDENCE)
            raise Unauthorized(
                f"invalid token: no ledger role in '{self.role_claim}' (expected one of {expected})"
            )
        # Valid until the same moment the verifier would start refusing it.
        return Principal(subject, role, float(claims["exp"]) + self.leeway)

    def mint(self, role: Role, subject: str, ttl_seconds: int) -> str:
        if self.keys.jwks is not None:
            raise SetupError(
                "with LEDGER_JWT_JWKS_URL the identity provider issues the tokens: pass one"
                " with --token"
            )
        if self.keys.signing_key is None:
            raise SetupError("minting RS/ES tokens needs LEDGER_JWT_PRIVATE_KEY")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "role": role.value, "iat": now}
        claims["exp"] = now + ttl_seconds
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.keys.signing_key, algorithm=self.keys.algorithm)


def require_append(principal: Principal) -> None:
    if principal.role not in APPENDERS:
        raise Forbidden("this role may not append events")


def require_read_all(principal: Principal) -> None:
    if principal.role not in READ_ALL:
        raise Forbidden("this role may not read all sessions")


def require_admin(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise Forbidden("admin only")


def may_read_patient(principal: Principal, patient_id: str, *, assigned: bool) -> bool:
    """Whether ``principal`` may read a session of ``patient_id``.

    ``assigned`` is whether a care assignment links the therapist to that patient; callers
    look it up only for therapists.
    """
    if principal.role in READ_ALL:
        return True
    if principal.role is Role.PATIENT:
        return principal.subject == patient_id
    if principal.role is Role.THERAPIST:
        return assigned
    return False


def reader_scope(principal: Principal) -> dict[str, str]:
    """Which sessions a listing may show: everything, one patient's, or a therapist's
    assigned patients'. Roles that read nothing are refused."""
    if principal.role in READ_ALL:
        return {}
    if principal.role is Role.PATIENT:
        return {"patient_id": principal.subject}
    if principal.role is Role.THERAPIST:
        return {"therapist_id": principal.subject}
    raise Forbidden("this role reads no sessions")
