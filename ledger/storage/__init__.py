"""The only package that talks SQL to the tables.

Each table has one owner: :mod:`.sessions`, :mod:`.care` (care assignments), and for
``events`` :mod:`.appends` (writes), :mod:`.history` (reads by session), :mod:`.global_order`
(all sessions in commit-safe order) and :mod:`.reporting` (analytics, exports, chain
verification). :mod:`.tables` describes the tables once; :mod:`.notifications` owns the
NOTIFY payloads; :mod:`.database` and :mod:`.pool` are the two ways to the server;
:mod:`.migrations` applies Alembic's.
"""
