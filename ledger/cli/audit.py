"""The auditor's commands: keep a checkpoint, check kept ones, verify an export offline.

``ledger checkpoint fetch`` keeps the server's latest checkpoint (after checking its
signature); ``ledger checkpoint verify`` checks each kept one's signature and asks the
server to prove its latest checkpoint consistent with it; ``ledger verify --export
--checkpoint`` needs no server at all. Each says which verifier key it used. Exit 1 on
any failure, 2 on a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ledger.client import LedgerClientError
from ledger.errors import SetupError
from ledger.settings import Settings
from ledger.transparency.audit import check_export
from ledger.transparency.merkle import ProofError, verify_consistency
from ledger.transparency.note import Checkpoint, NoteError, Verifier, read_checkpoint
from ledger.transparency.signing_key import key_path, load_signing_key, verifier_of


class UsageError(Exception):
    """The command line asks for something impossible (exit 2)."""


def say(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass(frozen=True)
class Server:
    base_url: str
    token: str | None  # the verifier key needs none

    def get(self, path: str, **params: int) -> httpx.Response:
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            response = http.get(path, params=params, headers=headers)
        if response.status_code != 200:
            raise LedgerClientError(response.status_code, f"{path}: {detail_of(response)}")
        return response


def detail_of(response: httpx.Response) -> str:
    """An error answer's ``detail`` as one line (FastAPI's 422 is a list of messages)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail)


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc}") from None


def is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a key line is no path (too long, a NUL)
        return False


def find_verifier(settings: Settings, key: str | None, base_url: str | None) -> Verifier:
    """``--key`` (a line, or a file holding it), else the configured signing key's public
    half, else the key the server at ``base_url`` publishes (no token needed); says which."""
    if key is not None:
        line = read_text(key, "key file") if is_file(key) else key
        try:
            return chosen(Verifier.parse(line), "given with --key")
        except NoteError as exc:
            raise UsageError(f"--key: {exc}") from None
    signing = load_signing_key(settings)
    if signing is not None:
        where = "LEDGER_CHECKPOINT_KEY" if settings.checkpoint_key else str(key_path(settings))
        return chosen(verifier_of(settings, signing), f"the public half of {where}")
    if base_url is None:
        raise SetupError("no verifier key: pass --key, or run where the signing key is")
    line = Server(base_url, None).get("/api/checkpoint/key").text
    try:
        verifier = Verifier.parse(line)
    except NoteError as exc:
        raise SetupError(f"the server's published key is unusable: {exc}") from None
    return chosen(verifier, f"published by {base_url}; pass --key to pin it")


def chosen(verifier: Verifier, how: str) -> Verifier:
    say(f"verifier key: {verifier.line()} ({how})")
    return verifier


def fetch(server: Server, verifier: Verifier, output: str | None) -> int:
    note = server.get("/api/checkpoint").text
    try:
        checkpoint = read_checkpoint(note, verifier)
    except NoteError as exc:
        say(f"the server's checkpoint does not verify: {exc}")
        return 1
    if output is None:
        sys.stdout.write(note)
    else:
        try:
            Path(output).write_text(note, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    say(
        f"checkpoint of {checkpoint.size} events, root {checkpoint.root.hex()}, signature good"
        + ("" if output is None else f"; kept in {output}")
    )
    return 0


def verify_kept(server: Server, verifier: Verifier, files: list[str]) -> int:
    kept = [(path, read_text(path, "checkpoint")) for path in files]
    latest_note = server.get("/api/checkpoint").text
    try:
        latest = read_checkpoint(latest_note, verifier)
    except NoteError as exc:
        say(f"the server's latest checkpoint does not verify: {exc}")
        return 1
    failed = 0
    for path, note in kept:
        try:
            checkpoint = read_checkpoint(note, verifier)
            consistent(server, checkpoint, latest)
        except (NoteError, ProofError, LedgerClientError) as exc:
            failed += 1
            say(f"{path}: FAILED: {exc}")
            continue
        say(
            f"{path}: ok: {checkpoint.size} events, signature good, and the server's latest"
            f" checkpoint ({latest.size} events) extends it"
        )
    return 1 if failed else 0


def consistent(server: Server, kept: Checkpoint, latest: Checkpoint) -> None:
    if kept.size > latest.size:
        raise ProofError(
            f"the server's latest checkpoint covers {latest.size} events, fewer than the"
            f" {kept.size} of this one: the server has gone back on its history"
        )
    response = server.get("/api/proofs/consistency", first=kept.size, second=latest.size)
    try:
        proof = [bytes.fromhex(h) for h in response.json()["proof"]]
    except (KeyError, TypeError, ValueError):
        raise ProofError("the server's consistency proof is malformed") from None
    try:
        verify_consistency(kept.size, latest.size, kept.root, latest.root, proof)
    except ProofError as exc:
        raise ProofError(
            f"the server cannot prove its latest checkpoint ({latest.size} events) extends"
            f" this one: {exc}: its history was rewritten"
        ) from None


def export_lines(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as lines:
            yield from lines
    except FileNotFoundError:
        raise UsageError(f"no export at {path}") from None


def verify_export(export: str, checkpoint_file: str, verifier: Verifier) -> int:
    """Offline: the signature, every chain, the root of the checkpoint's size."""
    from ledger.cli.offline import progress_bar

    note = read_text(checkpoint_file, "checkpoint")
    if not Path(export).is_file():
        raise UsageError(f"no export at {export}")
    try:
        checkpoint = read_checkpoint(note, verifier)
    except NoteError as exc:
        say(f"{checkpoint_file}: FAILED: {exc}")
        return 1
    with progress_bar("reading the export") as bar:
        task = bar.add_task("read", total=None)
        report = check_export(
            export_lines(export), checkpoint, lambda n: bar.update(task, completed=n)
        )
        bar.update(task, total=report.events, completed=report.events)
    for problem in report.problems:
        say(f"FAILED: {problem}")
    if report.more_problems:
        say(f"FAILED: and {report.more_problems} more")
    if not report.ok:
        return 1
    say(
        f"ok: {report.events} events in {report.sessions} sessions, every chain intact, and"
        f" the first {checkpoint.size} give the signed root {checkpoint.root.hex()}"
    )
    return 0
