"""C2SP signed notes: golang.org/x/mod/sumdb/note's published vectors, and an independent
verifier written here from c2sp.org/signed-note (not from the code under test)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.transparency.merkle import EMPTY_ROOT
from ledger.transparency.note import (
    Checkpoint,
    NoteError,
    Verifier,
    open_note,
    read_checkpoint,
    sign,
    signed_checkpoint,
)

# golang.org/x/mod/sumdb/note (note.go's package documentation, note_test.go).
PN_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PN_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PN_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PN_SIGLINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIGLINE = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)
# c2sp.org/signed-note, "Example".
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXp"
    "pzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def pn_private_key() -> Ed25519PrivateKey:
    seed = base64.b64decode(PN_SKEY.split("+", 4)[4])[1:]
    return Ed25519PrivateKey.from_private_bytes(seed)


def spec_verify(note: str, vkey: str) -> str:
    """c2sp.org/signed-note, written out here: the text if ``vkey`` signed it, else raise."""
    name, hex_id, b64 = vkey.split("+", 2)
    raw = base64.b64decode(b64)
    assert raw[0] == 0x01, "Ed25519 verifier keys start with 0x01"
    assert len(raw) == 33, "and hold 32 bytes of key"
    key_id = hashlib.sha256(name.encode() + b"\x0a" + raw).digest()[:4]
    assert key_id.hex() == hex_id, "the key ID is SHA-256(name || LF || 0x01 || key)[:4]"
    assert note.endswith("\n")
    split = note.rindex("\n\n")
    text, signatures = note[: split + 1], note[split + 2 :]
    for line in signatures.split("\n")[:-1]:
        assert line.startswith("\u2014 "), "signature lines start with an em dash and a space"
        signer, encoded = line[2:].split(" ")
        blob = base64.b64decode(encoded, validate=True)
        if signer == name and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], text.encode())
            return text
    raise AssertionError("no signature by that key")


def test_signing_reproduces_the_published_sumdb_note_byte_for_byte() -> None:
    key = pn_private_key()
    assert Verifier.of("PeterNeumann", key.public_key()).line() == PN_VKEY
    assert sign(PN_TEXT, "PeterNeumann", key) == PN_TEXT + "\n" + PN_SIGLINE


def test_published_notes_open_with_their_keys() -> None:
    assert open_note(PN_TEXT + "\n" + PN_SIGLINE, Verifier.parse(PN_VKEY)) == PN_TEXT
    # A second, unknown signer's line is ignored, before or after ours.
    both = PN_TEXT + "\n" + ENOCH_SIGLINE + PN_SIGLINE
    assert open_note(both, Verifier.parse(PN_VKEY)) == PN_TEXT
    assert open_note(C2SP_NOTE, Verifier.parse(C2SP_VKEY)) == "This is an example message.\n"


def test_our_checkpoints_verify_with_the_independent_verifier() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = Verifier.of("clinic.example/ledger", key.public_key())
    for checkpoint in (
        Checkpoint("clinic.example/ledger", 0, EMPTY_ROOT),
        Checkpoint("clinic.example/ledger", 1_000_000, hashlib.sha256(b"x").digest()),
    ):
        note = signed_checkpoint(checkpoint, key)
        text = spec_verify(note, verifier.line())
        origin, size, root, end = text.split("\n")
        assert (origin, int(size), base64.b64decode(root), end) == (
            checkpoint.origin,
            checkpoint.size,
            checkpoint.root,
            "",
        )
        assert read_checkpoint(note, verifier) == checkpoint


def test_a_checkpoint_signed_with_the_sumdb_key_is_the_deterministic_one() -> None:
    """Ed25519 is deterministic: any implementation must produce these exact bytes."""
    root8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
    note = signed_checkpoint(Checkpoint("PeterNeumann", 8, root8), pn_private_key())
    assert note == (
        "PeterNeumann\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u2014 PeterNeumann "
        "x08gozdSgLMzAnw63LH1RGViJhUfW60EUGKY7Kmr004fQNOSqfrcd1hIk3BCtdcLWIqvGtX67sL24VN+44uTlxM"
        "nbAA=\n"
    )


def test_changed_notes_other_keys_and_wrong_key_ids_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = Verifier.of("ledger", key.public_key())
    note = signed_checkpoint(Checkpoint("ledger", 5, hashlib.sha256(b"r").digest()), key)
    for at in range(len(note.split("\n\n")[0])):  # every byte of the text
        changed = note[:at] + ("X" if note[at] != "X" else "Y") + note[at + 1 :]
        with pytest.raises(NoteError):
            read_checkpoint(changed, verifier)
    other = Verifier.of("ledger", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(NoteError, match="another key"):
        read_checkpoint(note, other)
    renamed = Verifier.of("someone-else", key.public_key())
    with pytest.raises(NoteError, match="not signed by someone-else"):
        read_checkpoint(note, renamed)
    wrong_id = Verifier(verifier.name, b"\x00\x00\x00\x00", verifier.public)
    with pytest.raises(NoteError):
        read_checkpoint(note, wrong_id)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+not base64!",
    ],
)
def test_bad_verifier_keys_are_refused(line: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(line)


@pytest.mark.parametrize(
    "note",
    [
        PN_TEXT + "\n" + PN_SIGLINE.rstrip("\n"),  # no final newline
        PN_TEXT,  # no signatures
        PN_TEXT + "\n" + PN_SIGLINE + "not a signature\n",
        PN_TEXT + "\n" + PN_SIGLINE * 101,
        "\x01" + PN_TEXT + "\n" + PN_SIGLINE,
        PN_TEXT + "\n" + PN_SIGLINE[:60] + "ABCD" + PN_SIGLINE[60:],
        PN_TEXT + "\n" + PN_SIGLINE.replace("\n", "\r\n"),  # CR: a control character
        PN_TEXT.replace("you", "y\tou") + "\n" + PN_SIGLINE,
        # A second signature by the same key that does not verify spoils the note.
        PN_TEXT + "\n" + PN_SIGLINE + PN_SIGLINE[:60] + "ABCD" + PN_SIGLINE[64:],
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, Verifier.parse(PN_VKEY))


@pytest.mark.parametrize(
    "text",
    [
        "Head\n9944\n",
        "\n5\nAAAA\n",
        "Log\n123\nYmFuYW5hcw==",
        "Log\nbananas\n" + "A" * 44 + "\n",
        "Log\n-34\n" + "A" * 43 + "=\n",
        "Log\n007\n" + "A" * 43 + "=\n",
        "Log\n1\nYmFuYW5hcw==\n",
        "Log\n" + "9" * 21 + "\n" + "A" * 43 + "=\n",
    ],
)
def test_malformed_checkpoint_bodies_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_a_verifier_key_whose_base64_holds_a_plus_parses() -> None:
    while (
        "+"
        not in (line := Verifier.of("ledger", Ed25519PrivateKey.generate().public_key()).line())[
            16:
        ]
    ):
        pass
    assert Verifier.parse(line).line() == line
