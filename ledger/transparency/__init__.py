"""The whole ledger as one Merkle tree, and the signed checkpoints of its head.

``merkle`` (RFC 9162 hashing and proofs) and ``note`` (C2SP signed notes and
checkpoints) are pure; ``signing_key`` finds the Ed25519 key. The tree's storage is in
``ledger.storage.tree``, and ``ledger.checkpointer`` grows it and signs its head.
"""
