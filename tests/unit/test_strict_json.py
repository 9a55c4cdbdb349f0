"""Which bodies name a key twice (refused as ambiguous), and which are left to the route."""

from __future__ import annotations

from ledger.api.middleware import duplicate_key


def test_a_key_named_twice_at_any_depth_is_found() -> None:
    assert duplicate_key(b'{"status": "queued", "status": "processed"}') == "status"
    assert duplicate_key(b'[{"a": 1}, {"data": {"x": 1, "x": 2}}]') == "x"
    # Escapes spell the same key: it is the decoded key that counts.
    assert duplicate_key(b'{"a": 1, "\\u0061": 2}') == "a"


def test_everything_else_is_left_to_the_route() -> None:
    for body in (b'{"status": "queued"}', b"[]", b"not json", b'{"a": 1', b'{"a": {"a": 1}}'):
        assert duplicate_key(body) is None
