"""C2SP signed notes (Ed25519) carrying C2SP ``tlog-checkpoint`` bodies.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(key ID || signature)>``; the signature covers the text's bytes. The
key ID is the first four bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``, and the
verifier key is written ``<name>+<key ID, 8 hex>+<base64(0x01 || public key)>``. A
checkpoint's text is the origin, the tree size and the base64 root hash, one per line
(c2sp.org/signed-note, c2sp.org/tlog-checkpoint). Go's ``sumdb/note`` and the
transparency-dev witnesses read the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.transparency.merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A note, key or checkpoint that is malformed, or a signature that does not verify."""


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteError(f"{what} is not standard base64") from None


def check_name(name: str) -> str:
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise NoteError(f"{name!r} is not a key name (no spaces, no '+', not empty)")
    return name


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    key_id: bytes
    public: bytes  # the raw 32-byte Ed25519 key

    @classmethod
    def of(cls, name: str, key: Ed25519PublicKey) -> Verifier:
        public = raw_public(key)
        return cls(check_name(name), key_id(name, public), public)

    @classmethod
    def parse(cls, line: str) -> Verifier:
        """``name+hex8+base64``, as ``GET /api/checkpoint/key`` gives it."""
        parts = line.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<8 hex digits>+<base64 key>")
        name, hex_id, encoded = parts
        check_name(name)
        try:
            given_id = bytes.fromhex(hex_id) if len(hex_id) == 8 else b""
        except ValueError:
            given_id = b""
        if not given_id:
            raise NoteError("a verifier key's key ID is 8 hex digits")
        raw = b64decode(encoded, "the verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("the verifier key is not an Ed25519 key (0x01 and 32 bytes)")
        if key_id(name, raw[1:]) != given_id:
            raise NoteError("the verifier key's key ID does not match its name and key")
        return cls(name, given_id, raw[1:])

    def line(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verifies(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, text)
        except InvalidSignature:
            return False
        return True


def sign(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """The signed note: ``text`` (which must end in a newline), a blank line, one signature."""
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("a note's text ends in one newline and has no blank line")
    verifier = Verifier.of(name, key.public_key())
    signature = key.sign(text.encode())
    encoded = base64.b64encode(verifier.key_id + signature).decode()
    return f"{text}\n{SIGNATURE_PREFIX}{name} {encoded}\n"


def open_note(note: str, verifier: Verifier) -> str:
    """The text of ``note`` if ``verifier``'s key signed it; ``NoteError`` saying why not."""
    if not note.endswith("\n"):
        raise NoteError("a signed note ends in a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note has a blank line before its signatures")
    if any((c < " " and c != "\n") or c == "\x7f" for c in note):
        raise NoteError("a signed note holds control characters")
    text, signatures = note[: cut + 1], note[cut + 2 :]
    lines = signatures[:-1].split("\n")
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("a signed note has between 1 and 100 signature lines")
    parsed = []
    for line in lines:  # every line well-formed before any is trusted
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"not a signature line: {line[:60]!r}")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        raw = b64decode(encoded, "a signature")
        if len(raw) < 5 or not name or " " in encoded:
            raise NoteError("a signature line is a key name, a space and a key ID + signature")
        parsed.append((name, raw))
    ours = [raw for name, raw in parsed if name == verifier.name and raw[:4] == verifier.key_id]
    # Every signature by the key must verify (others' are not ours to judge).
    for raw in ours:
        if not verifier.verifies(text.encode(), raw[4:]):
            raise NoteError(
                f"the signature of {verifier.name} does not verify: the note was changed"
            )
    if ours:
        return text
    names_seen = [name for name, _ in parsed]
    if verifier.name in names_seen:
        raise NoteError(f"signed by another key named {verifier.name}, not by the one given")
    raise NoteError(f"not signed by {verifier.name} (signed by: {', '.join(names_seen)})")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint is an origin, a tree size and a root hash, a line each")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin:
            raise NoteError("a checkpoint's first line (its origin) is empty")
        decimal = size.isascii() and size.isdigit() and len(size) <= 20  # a uint64
        if not decimal or (len(size) > 1 and size[0] == "0"):
            raise NoteError(f"a checkpoint's tree size is a decimal number, not {size[:30]!r}")
        digest = b64decode(root, "the checkpoint's root hash")
        if len(digest) != HASH_SIZE:
            raise NoteError("the checkpoint's root hash is not 32 bytes")
        return cls(origin, int(size), digest)


def signed_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> str:
    """The key name is the origin (design, section 9)."""
    return sign(checkpoint.text(), checkpoint.origin, key)


def read_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise NoteError(f"the checkpoint's origin {checkpoint.origin!r} is not the key's name")
    return checkpoint
