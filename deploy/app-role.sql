-- The application's database role: it may append and read, and nothing more.
--
-- Run once per database as the role that owns the schema (the one that runs
-- `ledger migrate`), with psql:  psql "$OWNER_URL" -v app=ledger_app -f deploy/app-role.sql
-- The role itself is created beforehand:  CREATE ROLE ledger_app LOGIN PASSWORD '…';
--
-- Why this is enough to keep history intact:
-- * the app role owns nothing: only an owner (or a superuser) can DISABLE or DROP the
--   trigger that refuses UPDATE, DELETE and TRUNCATE on events, or ALTER the table;
-- * it is granted no UPDATE, DELETE or TRUNCATE on events at all, so even without the
--   trigger the database would refuse;
-- * the hash chain makes any rewrite by an owner or superuser detectable (`ledger verify`),
--   and a kept signed checkpoint makes removals and rewritten history detectable too
--   (`ledger checkpoint verify`, `ledger verify --export … --checkpoint …`).

GRANT USAGE ON SCHEMA public TO :"app";
GRANT SELECT, INSERT ON sessions, events TO :"app";
-- The Merkle tree and its signed checkpoints: append-only like events (same trigger).
GRANT SELECT, INSERT ON merkle_nodes, merkle_batches, checkpoints TO :"app";
GRANT SELECT, INSERT, DELETE ON care_assignments TO :"app";
GRANT SELECT ON session_timeline, stage_durations, session_outcomes TO :"app";
GRANT SELECT ON alembic_version TO :"app";
