"""Logging: JSON lines with a request id, and never a token.

Access lines come from ``ledger.api.middleware`` (uvicorn's own access log is off): they carry
the route and the path but never the query string, where browsers put their tokens. As a
second guard every message passes a filter that blanks anything shaped like a token
parameter.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

SECRET_QUERY = re.compile(r"(?i)((?:access_token|token)=)[^&\s]*")
BEARER = re.compile(r"(?i)(bearer\s+)[\w\-.~+/]+=*")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

LogFormat = Literal["json", "text"]


class Throttled:
    """A warning that anyone can cause thousands of times a second (every stream of a
    failover, every refused request of an overload) logged at most once per ``every``
    seconds, with how many were left out: the log stays readable and cheap."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self.skipped = 0
        self._last: float | None = None

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            self.skipped += 1
            return
        if self.skipped:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self.skipped, now - self._last if self._last is not None else 0)
        self.logger.warning(message, *args)
        self._last, self.skipped = now, 0


def redact(text: str) -> str:
    return BEARER.sub(r"\1[redacted]", SECRET_QUERY.sub(r"\1[redacted]", text))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and extras."""

    EXTRAS = ("http", "event")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key in self.EXTRAS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id.get()
        prefix = f"[{rid}] " if rid else ""
        line = f"{record.levelname:<7} {record.name}: {prefix}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_config(fmt: LogFormat = "json", level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the app alike."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "main",
        "filters": ["redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"main": {"()": formatter}},
        "handlers": {"main": handler},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "ledger": {"handlers": ["main"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["main"], "level": "WARNING"},
    }
