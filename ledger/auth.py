"""Tokens, roles and the access policy.

The signing algorithm comes from configuration and is handed to PyJWT as the only one
allowed, so a token cannot choose ``none`` or turn an RS256 public key into an HS256 secret.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ledger.errors import Forbidden, SetupError, Unauthorized
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
        self._verified: dict[str, Principal] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal; a token seen before skips the signature, not the expiry.

        Only a token that passed every check is remembered, and what can change with time
        (``exp``) is checked on every use; a passed ``nbf`` stays passed.
        """
        known = self._verified.get(token)
        if known is not None:
            if time.time() >= known.expires_at:
                del self._verified[token]
                raise Unauthorized("token expired")
            return known
        principal = self._verify_signed(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    def _verify_signed(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too large")
        try:
            claims = jwt.decode(
                token,
                self.keys.verify_key,
                algorithms=[self.keys.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        subject, role = claims.get("sub"), claims.get("role")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("invalid token: 'sub' must be a non-empty string")
        try:
            parsed_role = Role(role if isinstance(role, str) else "")
        except ValueError:
            raise Unauthorized("invalid token: unknown role") from None
        # Valid until the same moment the verifier would start refusing it.
        return Principal(subject, parsed_role, float(claims["exp"]) + self.leeway)

    def mint(self, role: Role, subject: str, ttl_seconds: int) -> str:
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
