"""One module per resource; :data:`ROUTERS`, :data:`LEAN` and :data:`LEAN_SOCKETS` are
what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from ledger.api.lean import Lean, LeanSocket
from ledger.api.routes import (
    analytics,
    assignments,
    audit,
    checkpoints,
    cookies,
    events,
    health,
    sessions,
    streams,
)

ROUTERS: list[APIRouter] = [
    sessions.router,
    events.router,
    streams.router,
    audit.router,
    checkpoints.router,
    analytics.router,
    assignments.router,
    cookies.router,
    health.router,
]

# The hottest of those routes, served lean (ledger.api.lean).
LEAN: list[Lean] = [*streams.LEAN, *sessions.LEAN]
LEAN_SOCKETS: list[LeanSocket] = streams.LEAN_SOCKETS
