"""The wire encoding: the hand-built SSE frame is FastAPI's, the fast JSON is the JSON."""

from __future__ import annotations

import json
from typing import Any

from fastapi.sse import format_sse_event
from hypothesis import given
from hypothesis import strategies as st

from ledger.wire import dumps, sse_frame, sse_retry

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_dumps_is_compact_json_of_the_same_value(value: Any) -> None:
    encoded = dumps(value)
    assert json.loads(encoded) == value
    assert "\n" not in encoded
    assert "\r" not in encoded
    # Beyond 64 bits (jsonb keeps 1e20 as an integer) the value stays exact.
    assert dumps({"n": 10**20}) == '{"n":100000000000000000000}'


@given(
    st.sampled_from(["progress", "complete", "error", "reset"]),
    st.integers(min_value=0, max_value=2**62),
    json_values,
)
def test_event_frames_are_what_format_sse_event_writes(event: str, id: int, value: Any) -> None:
    data = dumps({"data": value})
    assert sse_frame(event, id, data) == format_sse_event(data_str=data, event=event, id=str(id))


@given(st.integers(min_value=0, max_value=10**6), st.none() | st.integers(0, 2**62))
def test_the_opening_retry_message_is_what_format_sse_event_writes(
    retry_ms: int, id: int | None
) -> None:
    expected = format_sse_event(retry=retry_ms, id=None if id is None else str(id))
    assert sse_retry(retry_ms, id) == expected
