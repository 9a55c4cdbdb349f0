"""Signed checkpoints end to end: real servers, real PostgreSQL, the CLI as a user runs it.

An auditor keeps a checkpoint; later checkpoints must extend it; an export must give its
root; every way a superuser can rewrite history is named; two processes signing under
many writers never produce two inconsistent checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command

from ledger.storage.migrations import alembic_config, upgrade
from ledger.transparency.merkle import (
    leaf_hash,
    perfect_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from ledger.transparency.note import Checkpoint
from tests.support import (
    DatabaseFactory,
    LiveServer,
    append,
    auth,
    create_session,
    signed_size,
    wait_until,
)

FAST = {"LEDGER_CHECKPOINT_SECONDS": "0.2"}


def ledger(server: LiveServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``ledger ARGS`` where the server runs: its data directory holds the signing key."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env={
            **clean,
            "LEDGER_DATA_DIR": str(server.data_dir),
            "LEDGER_PORT": str(server.port),
            "LEDGER_JWT_SECRET": server.base_env()["LEDGER_JWT_SECRET"],
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def fill(server: LiveServer, sessions: int = 3, events: int = 4) -> list[str]:
    ids = []
    with server.client() as client:
        for s in range(sessions):
            session_id = create_session(client, f"patient-{s}")
            for i in range(events):
                body = {"status": "transcribing", "progress": 10 * (i + 1), "data": {"i": i}}
                assert append(client, session_id, body).status_code == 201
            ids.append(session_id)
    return ids


def event_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def signed_all(server: LiveServer, db: psycopg.Connection[Any]) -> int:
    total = event_count(db)
    assert wait_until(lambda: signed_size(server) == total), (signed_size(server), total)
    return total


def latest_note(server: LiveServer) -> str:
    response = httpx.get(f"{server.base_url}/api/checkpoint", headers=auth("auditor"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def parse(note: str) -> Checkpoint:
    return Checkpoint.parse(note.split("\n\n")[0] + "\n")


def export(server: LiveServer, path: Path) -> Path:
    response = httpx.get(
        f"{server.base_url}/api/events", params={"format": "ndjson"}, headers=auth("auditor")
    )
    assert response.status_code == 200
    path.write_bytes(response.content)
    return path


def global_hashes(db: psycopg.Connection[Any]) -> list[bytes]:
    rows = db.execute("SELECT hash FROM events ORDER BY tx_id, position").fetchall()
    return [bytes.fromhex(h) for (h,) in rows]


def leaf_positions(db: psycopg.Connection[Any]) -> list[int]:
    """The event position of every leaf, in leaf order, as the batches store them."""
    rows = db.execute(
        "SELECT u.p FROM merkle_batches b CROSS JOIN LATERAL"
        " unnest(b.positions) WITH ORDINALITY AS u(p, o) ORDER BY b.first_leaf, u.o"
    ).fetchall()
    return [int(p) for (p,) in rows]


def as_superuser(db: psycopg.Connection[Any], *statements: str) -> None:
    """Triggers off for this transaction only, as a superuser or owner can do."""
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            db.execute(statement)


def test_an_auditor_keeps_a_checkpoint_and_proves_the_ledger_later(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    live = server_factory(**FAST)
    fill(live)
    size = signed_all(live, db)
    kept = tmp_path / "kept.checkpoint"
    done = ledger(live, "checkpoint", "fetch", "-o", str(kept))
    assert done.returncode == 0, done.stderr
    assert f"checkpoint of {size} events" in done.stderr
    assert "the public half of" in done.stderr  # it says which key it used
    assert kept.read_text() == latest_note(live)
    checkpoint = parse(kept.read_text())
    assert checkpoint.root == tree_root(global_hashes(db))

    fill(live, sessions=2)
    later = signed_all(live, db)
    assert later > size
    done = ledger(live, "checkpoint", "verify", str(kept))
    assert done.returncode == 0, done.stderr
    assert f"the server's latest checkpoint ({later} events) extends it" in done.stderr

    exported = export(live, tmp_path / "ledger.ndjson")
    done = ledger(live, "verify", "--export", str(exported), "--checkpoint", str(kept))
    assert done.returncode == 0, done.stderr
    assert f"ok: {later} events in 5 sessions, every chain intact" in done.stderr

    # With the key pinned from the server's public endpoint, and nothing else configured.
    key = httpx.get(f"{live.base_url}/api/checkpoint/key").text.strip()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ledger", "verify", "--export", str(exported)),
            *("--checkpoint", str(kept), "--key", key),
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "(given with --key)" in done.stderr

    # Every event's inclusion proof leads to the kept root; every stored checkpoint
    # extends every earlier one.
    with live.client(headers=auth("auditor")) as client:
        positions = [
            p for (p,) in db.execute("SELECT position FROM events ORDER BY tx_id, position")
        ]
        for index, position in enumerate(positions[: checkpoint.size]):
            answer = client.get(
                "/api/proofs/inclusion", params={"position": position, "tree_size": checkpoint.size}
            ).json()
            assert answer["leaf_index"] == index
            digest = db.execute(
                "SELECT hash FROM events WHERE position = %s", (position,)
            ).fetchone()
            assert digest is not None
            verify_inclusion(
                index,
                checkpoint.size,
                leaf_hash(bytes.fromhex(digest[0])),
                [bytes.fromhex(h) for h in answer["proof"]],
                checkpoint.root,
            )
        stored = client.get("/api/checkpoints").json()["checkpoints"]
        assert_all_consistent(client, stored)


def assert_all_consistent(client: httpx.Client, stored: list[dict[str, Any]]) -> None:
    for i, later in enumerate(stored):
        assert later["note"].startswith(f"ledger\n{later['tree_size']}\n")
        for earlier in stored[:i]:
            answer = client.get(
                "/api/proofs/consistency",
                params={"first": earlier["tree_size"], "second": later["tree_size"]},
            )
            assert answer.status_code == 200, answer.text
            verify_consistency(
                earlier["tree_size"],
                later["tree_size"],
                bytes.fromhex(earlier["root_hash"]),
                bytes.fromhex(later["root_hash"]),
                [bytes.fromhex(h) for h in answer.json()["proof"]],
            )


def test_a_migration_builds_the_tree_for_events_stored_before_it(
    server_factory: Callable[..., LiveServer], database_url: str, db: psycopg.Connection[Any]
) -> None:
    live = server_factory(LEDGER_CHECKPOINT_SECONDS="0")  # no tree grown while serving
    fill(live, sessions=4, events=5)
    live.stop()
    command.downgrade(alembic_config(database_url), "0002")  # a ledger from before the tree
    assert db.execute("SELECT to_regclass('merkle_nodes')").fetchone() == (None,)
    upgrade(database_url)
    hashes = global_hashes(db)
    in_order = db.execute("SELECT position FROM events ORDER BY tx_id, position").fetchall()
    assert leaf_positions(db) == [p for (p,) in in_order]
    again = server_factory(**FAST)
    assert wait_until(lambda: signed_size(again) == len(hashes))
    assert parse(latest_note(again)).root == tree_root(hashes)


def test_a_tree_in_the_first_layout_is_converted_and_stays_consistent(
    server_factory: Callable[..., LiveServer], database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Migration 0003 stored a row per leaf and every node; 0004's downgrade writes that
    layout back, its upgrade converts it: the checkpoints signed before still verify."""
    live = server_factory(**FAST)
    fill(live, sessions=5, events=7)  # 35 leaves: stored nodes and computed ones
    size = signed_all(live, db)
    before = latest_note(live)
    live.stop()
    command.downgrade(alembic_config(database_url), "0003")
    assert db.execute("SELECT count(*) FROM merkle_leaves").fetchone() == (size,)
    role = f"ledger_app_{uuid.uuid4().hex[:8]}"  # granted on 0003's table, as deployed
    db.execute(f'CREATE ROLE "{role}"')
    db.execute(f'GRANT SELECT, INSERT ON merkle_leaves TO "{role}"')
    # Every perfect subtree, leaves included: 35 + 17 + 8 + 4 + 2 + 1.
    assert db.execute("SELECT count(*) FROM merkle_nodes").fetchone() == (67,)
    upgrade(database_url)
    assert db.execute("SELECT to_regclass('merkle_leaves')").fetchone() == (None,)
    assert db.execute("SELECT min(level) FROM merkle_nodes").fetchone() == (4,)
    try:
        rights = db.execute(
            "SELECT has_table_privilege(%(r)s, 'merkle_batches', 'SELECT'),"
            " has_table_privilege(%(r)s, 'merkle_batches', 'INSERT'),"
            " has_table_privilege(%(r)s, 'merkle_batches', 'UPDATE')",
            {"r": role},
        ).fetchone()
        assert rights == (True, True, False)
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')
    key = (live.data_dir / "checkpoint-key.pem").read_text()
    again = server_factory(**FAST, LEDGER_CHECKPOINT_KEY=key)
    fill(again, sessions=1, events=3)
    signed_all(again, db)
    with again.client(headers=auth("auditor")) as client:
        assert_all_consistent(client, client.get("/api/checkpoints").json()["checkpoints"])
    assert parse(before).size == size
    assert parse(latest_note(again)).root == tree_root(global_hashes(db))


def test_the_verifier_key_is_public_and_checkpoints_are_for_auditors(
    server_factory: Callable[..., LiveServer],
) -> None:
    live = server_factory(**FAST)
    key = httpx.get(f"{live.base_url}/api/checkpoint/key")
    assert key.status_code == 200
    name, key_id, encoded = key.text.strip().split("+", 2)
    raw = base64.b64decode(encoded)
    assert name == "ledger"
    assert key_id == hashlib.sha256(b"ledger\n" + raw).digest()[:4].hex()
    with live.client() as client:
        for path in (
            "/api/checkpoint",
            "/api/checkpoints",
            "/api/proofs/consistency?first=0&second=0",
            "/api/proofs/inclusion?position=1&tree_size=1",
        ):
            assert client.get(path).status_code == 401
            for role in ("patient", "therapist", "service"):
                assert client.get(path, headers=auth(role)).status_code == 403, (path, role)
        forged = auth("auditor")["Authorization"][:-4] + "AAAA"
        assert client.get("/api/checkpoint", headers={"Authorization": forged}).status_code == 401
        expired = auth("auditor", ttl=-60)
        assert client.get("/api/checkpoint", headers=expired).status_code == 401


def test_bad_proof_parameters_get_clear_errors(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any]
) -> None:
    live = server_factory(**FAST)
    fill(live, sessions=1, events=6)
    size = signed_all(live, db)
    first = db.execute("SELECT min(position) FROM events").fetchone()
    assert first is not None
    position = int(first[0])
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("inclusion", {"position": "x", "tree_size": size}, 422),
        ("inclusion", {"position": position}, 422),
        ("inclusion", {"position": -1, "tree_size": size}, 422),
        ("inclusion", {"position": position, "tree_size": 0}, 422),
        ("inclusion", {"position": 2**64, "tree_size": size}, 422),
        ("inclusion", {"position": position, "tree_size": size + 1}, 400),
        ("inclusion", {"position": 10**12, "tree_size": size}, 404),
        ("consistency", {"first": size, "second": 1}, 400),
        ("consistency", {"first": 1, "second": size + 1}, 400),
        ("consistency", {"first": "1.5", "second": size}, 422),
        ("consistency", {"second": size}, 422),
        ("consistency", {"first": -1, "second": size}, 422),
        ("consistency", {"first": 0, "second": size}, 200),
        ("consistency", {"first": size, "second": size}, 200),
    ]
    with live.client(headers=auth("auditor")) as client:
        for kind, params, status in cases:
            response = client.get(f"/api/proofs/{kind}", params=params)
            assert response.status_code == status, (kind, params, response.text)
            if status != 200:
                assert "detail" in response.json()
        assert client.get("/api/checkpoints", params={"after": -1}).status_code == 422
        assert client.get("/api/checkpoints", params={"limit": 0}).status_code == 422
        # An event appended after the latest checkpoint: not in that tree yet.
        session_id = fill(live, sessions=1, events=1)[0]
        newest = db.execute(
            "SELECT position FROM events WHERE session_id = %s", (session_id,)
        ).fetchone()
        assert newest is not None
        response = client.get(
            "/api/proofs/inclusion", params={"position": newest[0], "tree_size": size}
        )
        assert response.status_code == 409, response.text


def test_checkpoints_turned_off(server_factory: Callable[..., LiveServer]) -> None:
    live = server_factory(LEDGER_CHECKPOINT_SECONDS="0")
    assert httpx.get(f"{live.base_url}/api/checkpoint/key").status_code == 404
    response = httpx.get(f"{live.base_url}/api/checkpoint", headers=auth("auditor"))
    assert response.status_code == 404
    assert "LEDGER_CHECKPOINT_SECONDS" in response.json()["detail"]


def test_kept_checkpoints_that_were_changed_or_signed_by_another_key_are_refused(
    server_factory: Callable[..., LiveServer],
    db: psycopg.Connection[Any],
    databases: DatabaseFactory,
    tmp_path: Path,
) -> None:
    live = server_factory(**FAST)
    fill(live, sessions=1)
    signed_all(live, db)
    note = latest_note(live)
    text, signature = note.split("\n\n")
    size = parse(note).size
    changed = tmp_path / "changed"
    changed.write_text(text.replace(f"\n{size}\n", f"\n{size + 1}\n") + "\n\n" + signature)
    # Another ledger (its own database and data directory, so its own key).
    other = LiveServer(databases.create(), tmp_path / "other", env=FAST).start()
    try:
        fill(other, sessions=1)
        assert wait_until(lambda: signed_size(other) > 0)
        foreign = tmp_path / "foreign"
        foreign.write_text(latest_note(other))
    finally:
        other.stop()
    wrong_id = tmp_path / "wrong-id"
    name, blob = signature.removeprefix("\u2014 ").split(" ")
    raw = base64.b64decode(blob)
    wrong_id.write_text(
        text + "\n\n\u2014 " + name + " " + base64.b64encode(b"\0\0\0\0" + raw[4:]).decode() + "\n"
    )
    for path, reason in (
        (changed, "does not verify: the note was changed"),
        (foreign, "another key named ledger"),
        (wrong_id, "another key named ledger"),
    ):
        done = ledger(live, "checkpoint", "verify", str(path))
        assert done.returncode == 1, done.stderr
        assert f"{path}: FAILED: the signature of ledger {reason}" in done.stderr or (
            f"{path}: FAILED: signed by {reason}" in done.stderr
        ), done.stderr
    missing = ledger(live, "checkpoint", "verify", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2
    assert "no checkpoint at" in missing.stderr
    usage = ledger(live, "verify", "--checkpoint", str(changed))
    assert usage.returncode == 2
    assert "--checkpoint goes with --export" in usage.stderr
    for args, said in (
        (("checkpoint", "fetch", "-o", str(tmp_path / "no" / "such" / "dir")), "cannot write"),
        (("checkpoint", "verify", str(changed), "--key", "x" * 300), "--key: a verifier key"),
        (
            ("verify", "--export", str(changed), "--checkpoint", str(changed), "--key", "a+b+c"),
            "--key: a verifier key's key ID",
        ),
    ):
        done = ledger(live, *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"ledger: {said}"), done.stderr


TAMPERING = {
    "an edited event": (
        "UPDATE events SET progress = 99 WHERE session_id = '{s}' AND version = 2",
        "version 2: the stored hash does not match the event's content",
    ),
    "a session's newest event deleted": (
        "DELETE FROM events WHERE session_id = '{s}' AND version = 4",
        "signed events are missing",
    ),
    "a whole session deleted": (
        "DELETE FROM events WHERE session_id = '{s}'",
        "4 signed events are missing",
    ),
    "a forged event in the middle of a chain": (
        "DELETE FROM events WHERE session_id = '{s}' AND version = 3;"
        " INSERT INTO events (session_id, version, type, status, progress, data, actor,"
        " recorded_at, prev_hash, hash) SELECT session_id, 3, type, status, 55, data, actor,"
        " recorded_at, hash, encode(sha256('forged'), 'hex') FROM events"
        " WHERE session_id = '{s}' AND version = 2",
        # The forged row is the newest in the global order: the chain misses version 3.
        "version 3: version 3 is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_after_a_kept_checkpoint_is_named_offline(
    server_factory: Callable[..., LiveServer],
    db: psycopg.Connection[Any],
    tmp_path: Path,
    case: str,
) -> None:
    live = server_factory(**FAST)
    sessions = fill(live)
    signed_all(live, db)
    kept = tmp_path / "kept"
    assert ledger(live, "checkpoint", "fetch", "-o", str(kept)).returncode == 0
    statement, named = TAMPERING[case]
    as_superuser(db, *statement.format(s=sessions[1]).split(";"))
    exported = export(live, tmp_path / "after.ndjson")
    done = ledger(live, "verify", "--export", str(exported), "--checkpoint", str(kept))
    assert done.returncode == 1, done.stderr
    assert named in done.stderr, done.stderr
    if "session" in named or "version" in named:
        assert sessions[1] in done.stderr


def test_a_rewritten_tree_is_never_signed_and_is_named(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    live = server_factory(**FAST)
    fill(live, sessions=1, events=3)  # not a power of two: a later proof covers leaf 1
    signed_all(live, db)
    early = tmp_path / "early"
    assert ledger(live, "checkpoint", "fetch", "-o", str(early)).returncode == 0
    fill(live, sessions=1)
    signed_all(live, db)
    # The tree rewritten so that it would vouch for another history: leaf 1 replaced and
    # every node above it recomputed, as a careful forger would.
    forged = hashlib.sha256(b"another history").digest()
    as_superuser(db, *forged_tree_statements(db, 1, forged))
    before = signed_size(live)
    fill(live, sessions=1)
    assert wait_until(lambda: "refusing to sign a checkpoint" in live.log())
    assert signed_size(live) == before  # nothing signed over the rewritten tree
    done = ledger(live, "checkpoint", "verify", str(early))
    assert done.returncode == 1, done.stderr
    assert "history was rewritten" in done.stderr
    # Deleting every stored checkpoint and restarting does not make it forget what it
    # vouched for (kept beside its key): still nothing is signed.
    as_superuser(db, "DELETE FROM checkpoints")
    live.stop()
    live.start()
    fill(live, sessions=1)
    assert wait_until(lambda: live.log().count("refusing to sign a checkpoint") >= 2)
    assert db.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)


def test_a_damaged_tree_is_refused_loudly_and_the_server_keeps_serving(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any]
) -> None:
    live = server_factory(**FAST)
    fill(live, sessions=4, events=5)
    size = signed_all(live, db)
    as_superuser(db, "DELETE FROM merkle_nodes WHERE level = 4 AND node_index = 0")
    fill(live, sessions=1, events=1)
    # Every round says so (the checkpointer lives on), and nothing is signed.
    assert wait_until(lambda: live.log().count("the stored tree cannot grow") >= 2)
    assert signed_size(live) == size
    with live.client(headers=auth("auditor")) as client:
        # Leaf 17's path has the lost node (leaves 0 to 15); leaf 2's is computed from the
        # leaf hashes, which are intact.
        positions = leaf_positions(db)
        params = {"position": positions[17], "tree_size": size}
        response = client.get("/api/proofs/inclusion", params=params)
        assert response.status_code == 500
        assert "the tree lacks" in response.json()["detail"]
        params = {"position": positions[2], "tree_size": 16}
        assert client.get("/api/proofs/inclusion", params=params).status_code == 200
        assert client.get("/api/sessions").status_code == 200


def test_the_tree_grows_past_a_deleted_event(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The newest leaf's event deleted: the tree goes on (its cursor is its own), and the
    export shows the deletion against any checkpoint that covered it."""
    live = server_factory(**FAST)
    fill(live, sessions=1, events=3)
    size = signed_all(live, db)
    kept = tmp_path / "kept"
    assert ledger(live, "checkpoint", "fetch", "-o", str(kept)).returncode == 0
    as_superuser(db, "DELETE FROM events WHERE position = (SELECT max(position) FROM events)")
    fill(live, sessions=1, events=2)
    assert wait_until(lambda: signed_size(live) == size + 2)
    exported = export(live, tmp_path / "after.ndjson")
    done = ledger(live, "verify", "--export", str(exported), "--checkpoint", str(kept))
    assert done.returncode == 1
    assert "an event among them was changed, removed, added or moved" in done.stderr


def test_an_event_forged_into_the_middle_of_the_order_is_named(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    live = server_factory(**FAST)
    sessions = fill(live, sessions=2, events=3)
    signed_all(live, db)
    kept = tmp_path / "kept"
    assert ledger(live, "checkpoint", "fetch", "-o", str(kept)).returncode == 0
    # A row with an old transaction id sorts among the signed events; global readers and
    # the tree never see it, the export does.
    as_superuser(
        db,
        "INSERT INTO events (tx_id, session_id, version, type, status, progress, data, actor,"
        " recorded_at, prev_hash, hash) SELECT tx_id, session_id, 4, type, status, 60, data,"
        f" actor, recorded_at, hash, encode(sha256('x'), 'hex') FROM events"
        f" WHERE session_id = '{sessions[0]}' AND version = 1",
    )
    exported = export(live, tmp_path / "after.ndjson")
    done = ledger(live, "verify", "--export", str(exported), "--checkpoint", str(kept))
    assert done.returncode == 1, done.stderr
    assert f"session {sessions[0]}" in done.stderr
    assert "the checkpoint signed" in done.stderr  # and the root differs


def test_an_offline_check_needs_only_the_key(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """No JWT secret, no server: the data directory holds only the signing key."""
    live = server_factory(**FAST)
    fill(live, sessions=1)
    signed_all(live, db)
    kept = tmp_path / "kept"
    kept.write_text(latest_note(live))
    exported = export(live, tmp_path / "ledger.ndjson")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "checkpoint-key.pem").write_bytes((live.data_dir / "checkpoint-key.pem").read_bytes())
    live.stop()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    command = ["verify", "--export", str(exported), "--checkpoint", str(kept)]
    done = subprocess.run(
        [sys.executable, "-m", "ledger", *command],
        env={**clean, "LEDGER_DATA_DIR": str(alone)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "the public half of" in done.stderr


def forged_tree_statements(db: psycopg.Connection[Any], leaf: int, data: bytes) -> list[str]:
    """UPDATEs replacing one leaf hash of the stored tree and every stored node above it."""
    batches = db.execute("SELECT first_leaf, leaf_hashes FROM merkle_batches").fetchall()
    leaves = {
        int(first) + i: bytes(hashes[i * 32 : (i + 1) * 32])
        for first, hashes in batches
        for i in range(len(hashes) // 32)
    }
    first = max(int(f) for f, _ in batches if int(f) <= leaf)
    leaves[leaf] = leaf_hash(data)
    statements = [
        f"UPDATE merkle_batches SET leaf_hashes = overlay(leaf_hashes PLACING"
        f" '\\x{leaves[leaf].hex()}' FROM {(leaf - first) * 32 + 1} FOR 32)"
        f" WHERE first_leaf = {first}"
    ]
    stored = {
        (int(level), int(index))
        for level, index in db.execute("SELECT level, node_index FROM merkle_nodes")
    }
    level, index = 4, leaf >> 4
    while (level, index) in stored:
        node = perfect_hash([leaves[i] for i in range(index << level, (index + 1) << level)])
        statements.append(
            f"UPDATE merkle_nodes SET hash = '\\x{node.hex()}'"
            f" WHERE level = {level} AND node_index = {index}"
        )
        level, index = level + 1, index >> 1
    return statements


def test_two_processes_sign_under_many_writers_and_never_disagree(
    server_factory: Callable[..., LiveServer], db: psycopg.Connection[Any]
) -> None:
    first = server_factory(**FAST)
    # Several hosts serving one database are given the same key (design, section 9).
    key = (first.data_dir / "checkpoint-key.pem").read_text()
    servers = [first, server_factory(**FAST, LEDGER_CHECKPOINT_KEY=key)]
    with servers[0].client() as client:
        sessions = [create_session(client, f"p{i}") for i in range(12)]
    errors: list[str] = []

    def writer(index: int) -> None:
        target = servers[index % 2]
        with target.client() as client:
            for step in range(15):
                session_id = sessions[(index + step) % len(sessions)]
                body = [{"status": "transcribing", "progress": step}] * (1 + step % 3)
                response = append(client, session_id, body)
                if response.status_code != 201:
                    errors.append(response.text)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = signed_all(servers[0], db)
    leaves = leaf_positions(db)
    in_order = db.execute("SELECT position FROM events ORDER BY tx_id, position").fetchall()
    assert leaves == [p for (p,) in in_order]  # every event once, in global order
    assert len(leaves) == total
    with servers[1].client(headers=auth("auditor")) as client:
        stored = client.get("/api/checkpoints").json()["checkpoints"]
        assert len(stored) >= 2
        sizes = [c["tree_size"] for c in stored]
        assert sizes == sorted(set(sizes))
        assert_all_consistent(client, stored[-12:])
        for later in stored[1:]:
            answer = client.get(
                "/api/proofs/consistency",
                params={"first": stored[0]["tree_size"], "second": later["tree_size"]},
            ).json()
            verify_consistency(
                stored[0]["tree_size"],
                later["tree_size"],
                bytes.fromhex(stored[0]["root_hash"]),
                bytes.fromhex(later["root_hash"]),
                [bytes.fromhex(h) for h in answer["proof"]],
            )
