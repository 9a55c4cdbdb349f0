"""Python clients: ``Reporter`` for pipelines that append, ``follow`` for code that watches.

Both are small wrappers over httpx that get the two hard parts right: a retried append
never appends twice (every logical append carries one idempotency key across its
retries), and a followed session (or, with ``follow_all``, every session a reader may
read, on one stream) is resumed after any disconnect exactly after the last event seen
(``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx

from ledger.domain import uuid_prefix_range

TokenSource = str | Callable[[], str]
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
TERMINAL_EVENTS = frozenset({"complete", "error"})


class LedgerClientError(Exception):
    """A request the ledger refused for good (bad input, no access, unknown session)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def _token(source: TokenSource) -> str:
    return source() if callable(source) else source


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail")
    except ValueError:
        return response.text


def backoff_delays(base: float, cap: float) -> Callable[[int], float]:
    """Exponential backoff with full jitter: attempt n waits up to base * 2**n."""
    return lambda attempt: random.uniform(0, min(cap, base * 2**attempt))


# A Retry-After longer than this (a proxy's, say) is taken as this.
MAX_RETRY_AFTER = 60.0


def retry_after(response: httpx.Response) -> float:
    """The seconds a 429 or 503 asks the client to wait (the server spreads them out), or 0.

    Only the delay form (this server never sends a date), and at most ``MAX_RETRY_AFTER``.
    """
    value = response.headers.get("Retry-After", "").strip()
    if not (value.isascii() and value.isdigit()):
        return 0.0
    return min(float(value), MAX_RETRY_AFTER)


class Reporter:
    """Appends a session's progress, retrying through timeouts and outages safely.

    >>> reporter = Reporter("http://127.0.0.1:8000", token, session_id)
    >>> reporter.report("transcribing", 40, message="12 of 30 minutes")
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        session_id: str | uuid.UUID,
        *,
        retries: int = 6,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        on_stored: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.session_id = str(session_id)
        self.on_stored = on_stored
        self.token = token
        self.retries = retries
        self.delay = backoff_delays(backoff, max_backoff)
        self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @classmethod
    def register(
        cls,
        base_url: str,
        token: TokenSource,
        patient_id: str,
        *,
        session_id: str | uuid.UUID | None = None,
        **options: Any,
    ) -> Reporter:
        """Register a session (idempotent when you pass its id) and report on it."""
        session = str(session_id or uuid.uuid4())
        reporter = cls(base_url, token, session, **options)
        response = reporter._send(
            "POST", "/api/sessions", {"id": session, "patient_id": patient_id}, None
        )
        if response.status_code not in (201, 409):
            raise LedgerClientError(response.status_code, _detail(response))
        return reporter

    def report(
        self,
        status: str,
        progress: int | None = None,
        *,
        message: str | None = None,
        error: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one event; returns it as stored."""
        event: dict[str, Any] = {"status": status}
        for key, value in (("progress", progress), ("message", message), ("error", error)):
            if value is not None:
                event[key] = value
        if data:
            event["data"] = dict(data)
        return self.report_many([event])[0]

    def report_many(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append several events atomically; returns them as stored."""
        key = uuid.uuid4().hex
        response = self._send("POST", f"/api/sessions/{self.session_id}/events", list(events), key)
        if response.status_code != 201:
            raise LedgerClientError(response.status_code, _detail(response))
        stored: list[dict[str, Any]] = response.json()
        if self.on_stored is not None:
            self.on_stored(stored)
        return stored

    def _send(self, method: str, path: str, body: Any, key: str | None) -> httpx.Response:
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {_token(self.token)}"}
            if key is not None:
                headers["Idempotency-Key"] = key
            asked = 0.0
            try:
                response = self.http.request(method, path, json=body, headers=headers)
                if response.status_code not in RETRYABLE_STATUS or attempt >= self.retries:
                    return response
                asked = retry_after(response)
            except httpx.TransportError:
                # Sent or not, the same key makes the retry safe.
                if attempt >= self.retries:
                    raise
            time.sleep(max(asked, self.delay(attempt)))
            attempt += 1


def find_session(base_url: str, token: str, prefix: str) -> str:
    """The one session the caller may read whose id starts with ``prefix`` (the short ids
    the dashboard shows; a whole id works too)."""
    if uuid_prefix_range(prefix) is None:
        raise LedgerClientError(400, f"{prefix!r} is not the start of a session id (hex digits)")
    with httpx.Client(base_url=base_url, timeout=10) as http:
        response = http.get(
            "/api/sessions",
            params={"id_prefix": prefix, "limit": 2},
            headers={"Authorization": f"Bearer {token}"},
        )
    if response.status_code != 200:
        raise LedgerClientError(response.status_code, _detail(response))
    found = [session["id"] for session in response.json()["sessions"]]
    if not found:
        raise LedgerClientError(404, f"no session you may read starts with {prefix!r}")
    if len(found) > 1:
        raise LedgerClientError(409, f"{prefix!r} names more than one session: give more")
    return str(found[0])


async def follow(
    base_url: str,
    session_id: str | uuid.UUID,
    token: TokenSource,
    *,
    last_event_id: int | None = None,
    backoff: float = 0.2,
    max_backoff: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[dict[str, Any]]:
    """Every event of a session, in order, each once, across any number of reconnects.

    Starts after ``last_event_id`` (``0`` for the whole history, ``None`` for the current
    state first) and ends after the terminal event (or at once when it was already seen).
    Disconnects, server restarts and 5xx are retried with backoff; 4xx are raised. The
    token may be a callable, asked again at every reconnect (for short-lived tokens).
    """
    messages = _resumed(
        base_url,
        f"/api/sessions/{session_id}/status/stream",
        {},
        token,
        None if last_event_id is None else str(last_event_id),
        backoff_delays(backoff, max_backoff),
        transport,
    )
    async with contextlib.aclosing(messages) as events:
        async for kind, _, data in events:
            yield data
            if kind in TERMINAL_EVENTS:
                return


async def follow_all(
    base_url: str,
    token: TokenSource,
    *,
    session_ids: Sequence[str | uuid.UUID] = (),
    patient_ids: Sequence[str] = (),
    last_event_id: str | None = None,
    on_cursor: Callable[[str], None] | None = None,
    backoff: float = 0.2,
    max_backoff: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[dict[str, Any]]:
    """Every event of every session the token may read (or of those sessions and patients'
    sessions), on one stream, each once and in each session's order, across reconnects.

    Runs until cancelled: a terminal event of one session does not end it. ``last_event_id``
    is a cursor it handed out (``"0"`` for the whole history, ``None`` for from now);
    ``on_cursor`` is told the cursor after each event, to keep for a later run.
    """
    params = [("session_id", str(s)) for s in session_ids]
    params += [("patient_id", p) for p in patient_ids]
    messages = _resumed(
        base_url,
        "/api/events/stream",
        params,
        token,
        last_event_id,
        backoff_delays(backoff, max_backoff),
        transport,
    )
    async with contextlib.aclosing(messages) as events:
        async for _, cursor, data in events:
            yield data
            if on_cursor is not None:
                on_cursor(cursor)


async def _resumed(
    base_url: str,
    path: str,
    params: Any,
    token: TokenSource,
    last: str | None,
    delay: Callable[[int], float],
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncGenerator[tuple[str, str, dict[str, Any]]]:
    """A stream's (event, id, data), resumed with ``Last-Event-ID`` after every failure;
    ends when the server answers 204 (the client has seen the end)."""
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport) as http:
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {_token(token)}"}
            if last is not None:
                headers["Last-Event-ID"] = last
            asked = 0.0
            try:
                async with http.stream("GET", path, headers=headers, params=params) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code == 200:
                        attempt = 0
                        async for kind, event_id, data in _messages(response):
                            last = event_id
                            yield kind, event_id, data
                    elif response.status_code not in RETRYABLE_STATUS:
                        await response.aread()
                        raise LedgerClientError(response.status_code, _detail(response))
                    else:
                        asked = retry_after(response)
            except httpx.TransportError:
                pass
            await asyncio.sleep(max(asked, delay(attempt)))
            attempt += 1


async def _messages(response: httpx.Response) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) for each complete SSE message that carries data."""
    kind, event_id = "message", None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data and event_id is not None:
                yield kind, event_id, json.loads("\n".join(data))
            kind, event_id, data = "message", None, []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("id:"):
            event_id = line[3:].strip()
