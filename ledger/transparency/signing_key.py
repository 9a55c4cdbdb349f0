"""The checkpoints' Ed25519 key: ``LEDGER_CHECKPOINT_KEY``, or one kept under the data dir.

Never in the database: the key is what protects the history from whoever controls the
database. Several hosts serving one database must be given the same key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from ledger.errors import SetupError
from ledger.settings import Settings
from ledger.transparency.note import NoteError, Verifier, check_name

KEY_FILE = "checkpoint-key.pem"
# The newest checkpoint this host's key signed or proved: what it must never contradict.
VOUCHED_FILE = "checkpoint-vouched"


def parse_private_key(pem: str, source: str) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SetupError(f"{source} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SetupError(f"{source} is not an Ed25519 key")
    return key


def key_path(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def vouched_path(settings: Settings) -> Path:
    return settings.data_dir / VOUCHED_FILE


def load_signing_key(settings: Settings, *, create: bool = False) -> Ed25519PrivateKey | None:
    """The configured key, else the kept one; ``create`` (the server) makes it if missing.

    None when there is neither and nothing may be created (a CLI away from the server).
    """
    try:
        check_name(settings.checkpoint_origin)
    except NoteError as exc:
        raise SetupError(f"LEDGER_CHECKPOINT_ORIGIN: {exc}") from None
    if settings.checkpoint_key:
        return parse_private_key(settings.checkpoint_key, "LEDGER_CHECKPOINT_KEY")
    path = key_path(settings)
    if path.exists():
        return parse_private_key(path.read_text(), str(path))
    if not create:
        return None
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use that one
        return parse_private_key(path.read_text(), str(path))
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


def verifier_of(settings: Settings, key: Ed25519PrivateKey) -> Verifier:
    return Verifier.of(settings.checkpoint_origin, key.public_key())
