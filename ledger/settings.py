"""Every ``LEDGER_*`` variable, in one place: no other module reads the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ledger.database_url import sqlalchemy_url

DATA_DIR_NAME = ".ledger"
# Never echoed back in an error message.
SECRET_FIELDS = frozenset(
    {
        "database_url",
        "test_database_url",
        "jwt_secret",
        "jwt_private_key",
        "jwt_public_key",
        "checkpoint_key",
    }
)


def find_data_dir() -> Path:
    """The data directory when ``LEDGER_DATA_DIR`` is unset: the working directory's
    ``.ledger/``, else the nearest one in a parent (as git finds ``.git``), so the CLI run
    from a subdirectory of a checkout uses the server's key; else ``./.ledger`` (the server
    creates it). The search stops below the home directory (a stray ``~/.ledger`` is no
    project's) and passes over directories owned by someone else (a ``/tmp/.ledger`` that
    another user planted would hand them the secret). The one place this is decided."""
    here = Path.cwd()
    if (here / DATA_DIR_NAME).is_dir():
        return Path(DATA_DIR_NAME)
    home = Path.home().resolve()
    for folder in here.resolve().parents:
        if folder == home:
            break
        candidate = folder / DATA_DIR_NAME
        try:
            if candidate.is_dir() and candidate.stat().st_uid == os.getuid():
                return candidate
        except OSError:  # unreadable: not ours to use
            continue
    return Path(DATA_DIR_NAME)


# What a JWKS key may verify: PyJWT's asymmetric algorithms.
JWKS_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    # libpq form (postgresql://user@host:5432/db); unset means the embedded server.
    database_url: str | None = None
    # Used only by the test suite: a server on which tests may create databases.
    test_database_url: str | None = None
    # Embedded PostgreSQL data and the generated development secret live here.
    data_dir: Path = Field(default_factory=find_data_dir)

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    # Only `ledger token` needs it, to mint RS/ES tokens for development.
    jwt_private_key: str | None = None
    # Fixed by configuration, never read from a token. Defaults from the key type.
    jwt_algorithm: JwtAlgorithm | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300)
    # An identity provider's keys (design, section 11): its JWKS document, fetched again
    # this often and on an unknown `kid` (at most once per interval); only these
    # asymmetric algorithms (never `none` or HMAC).
    jwt_jwks_url: str | None = None
    jwt_jwks_refresh_seconds: float = Field(default=300.0, gt=0)
    jwt_algorithms: Annotated[list[str], NoDecode] = ["RS256", "ES256", "EdDSA"]
    # Where the role and the subject are in the token's claims: a dotted path (a key that
    # itself holds dots, like Auth0's namespaced claims, is matched whole first).
    jwt_role_claim: str = Field(default="role", min_length=1)
    jwt_subject_claim: str = Field(default="sub", min_length=1)

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    # The `retry:` hint (milliseconds) sent to EventSource clients.
    retry_ms: int = Field(default=2000, ge=0)
    cors_origins: Annotated[list[str], NoDecode] = []
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # A request head (request line and headers) larger than this is 431; one not complete
    # within the timeout is 408; a body not complete within its timeout is 408.
    # 128 KiB: a 100 KB token still reaches the app (and gets its 401); nginx in front
    # allows 4 x 16 KiB (deploy/nginx.conf).
    max_header_bytes: int = Field(default=128 * 1024, ge=4096)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    max_batch_events: int = Field(default=1000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # WebSocket permessage-deflate: off, because a stream's messages are small JSON, and
    # its zlib state cost 46 KiB per open socket (docs/ARCHITECTURE.md, "Memory per idle
    # stream"); on, if bandwidth matters more than memory.
    ws_deflate: bool = False
    # Per-subscriber bound; on overflow the subscriber reads from the table instead.
    subscriber_queue_size: int = Field(default=256, ge=1)
    # Per subject and per process; 0 turns a limit off.
    max_streams_per_subject: int = Field(default=200, ge=0)
    max_appends_per_second_per_subject: float = Field(default=500.0, ge=0)
    # Streams opening at once per process (request received, response not started); 8 times
    # as many wait, and more are answered 503 with a Retry-After of 1-10 s (0: no limit).
    max_opening_streams: int = Field(default=64, ge=0)
    # Connections per process: see the README's connection budget.
    pool_size: int = Field(default=16, ge=1)
    # How long a request waits for a free connection before it answers 503.
    pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # Set by `ledger serve --workers N` so /metrics adds up every worker's series.
    metrics_dir: Path | None = Field(default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR")
    # How long `ledger serve` waits for an unreachable database before it gives up.
    database_wait_seconds: float = Field(default=30.0, ge=0)
    # Free memory is given back to the system this often (0: never).
    memory_trim_seconds: float = Field(default=30.0, ge=0)
    # How long the listener waits in silence before probing its connection.
    listener_probe_seconds: float = Field(default=5.0, gt=0)

    # Signed checkpoints (design, section 9): the Ed25519 signing key in PEM (PKCS#8);
    # unset, one is generated once under the data directory. Never in the database.
    checkpoint_key: str | None = None
    # The checkpoints' origin line, which is also the key's name.
    checkpoint_origin: str = Field(default="ledger", min_length=1, max_length=200)
    # A new checkpoint at most this often once the tree has grown (0: no tree, no signing).
    checkpoint_seconds: float = Field(default=10.0, ge=0)

    @field_validator("database_url", "test_database_url")
    @classmethod
    def _libpq_url(cls, value: str | None) -> str | None:
        if value is not None:
            sqlalchemy_url(value)  # both readers must understand it (NotALibpqUrl if not)
        return value

    @field_validator("cors_origins", "jwt_algorithms", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        refused = [name for name in value if name not in JWKS_ALGORITHMS]
        if refused:
            raise ValueError(
                f"{', '.join(refused)} not allowed: one or more of {', '.join(JWKS_ALGORITHMS)}"
                " (a JWKS publishes public keys: never 'none' or an HMAC algorithm)"
            )
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        """https, or http on this machine only: whoever can change the document in
        transit can publish keys of their own."""
        if value is None:
            return value
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL ({exc})") from None
        local = url.host in ("127.0.0.1", "localhost", "::1")
        if (
            not url.host
            or url.scheme not in ("https", "http")
            or (url.scheme == "http" and not local)
        ):
            raise ValueError("expected the https:// URL of a JWKS document (http only on loopback)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("'*' is not allowed: streams are read with credentials")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def describe(error: ValidationError) -> str:
    """A settings error in one line, naming the variable, the value and what was expected."""
    env_names = {
        name: (field.validation_alias if isinstance(field.validation_alias, str) else None)
        or f"LEDGER_{name.upper()}"
        for name, field in Settings.model_fields.items()
    }
    parts = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        variable = env_names.get(field, field)
        message = str(problem["msg"]).removeprefix("Value error, ")
        shown = "" if field in SECRET_FIELDS else f"={problem['input']!r}"
        parts.append(f"{variable}{shown}: {message}")
    return "; ".join(parts)
