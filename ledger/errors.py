"""One root error for requests, which ``ledger.api.errors`` maps to HTTP statuses in one
handler; and :class:`SetupError` for what the person running the service must fix."""

from __future__ import annotations


class LedgerError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(LedgerError):
    status_code = 400


class Unauthorized(LedgerError):
    status_code = 401


class Forbidden(LedgerError):
    status_code = 403


class NotFound(LedgerError):
    status_code = 404


class Conflict(LedgerError):
    status_code = 409


class Unprocessable(LedgerError):
    status_code = 422


class TooManyRequests(LedgerError):
    """A per-subject limit: the request changed nothing; retry after ``retry_after`` s."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(LedgerError):
    """The database cannot be reached (or the server is stopping) right now. Retry after a
    moment; an append with the same Idempotency-Key, since it may have been stored."""

    status_code = 503


class SetupError(ValueError):
    """What the person running a command must fix (a setting, a missing key, an unreachable
    database, a session id that names no session): the CLI says it in one line."""
