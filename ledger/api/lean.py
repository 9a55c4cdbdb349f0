"""The hottest routes, declared with FastAPI but served without its per-request machinery.

FastAPI's request handling (solving the dependency graph, validating each parameter, its
exit stacks) cost a single-event append about a fifth of its server CPU (py-spy, under the
benchmark's load). For a stream it stays alive as long as the connection: about 4.5 KiB of
every idle stream's 32. A lean route runs the same endpoint function with its dependencies
resolved by the same functions, so a regular request gets the same answer; errors still
reach the app's exception handlers.

A lean route only takes the regular case. Anything else (a malformed path, header or body)
makes it raise :class:`Decline`, and the request goes to the declared FastAPI route, which
answers it exactly as it always has: every error shape stays FastAPI's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ledger.api.limits import replaying

CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

# Set on a declined request's scope: on the second pass, lean routes match nothing.
DECLINED = "ledger.lean_declined"


class Decline(Exception):
    """Not the regular case: the declared FastAPI route answers this request."""


Serve = Callable[[Request], Awaitable[Response]]


def path_uuid(request: Request, name: str) -> UUID:
    """A path parameter in the canonical form (any other spelling: FastAPI decides)."""
    raw: str = request.path_params[name]
    if not CANONICAL_UUID.fullmatch(raw):
        raise Decline
    return UUID(raw)


def header(
    request: Request, name: str, pattern: re.Pattern[str], max_length: int | None = None
) -> str | None:
    """An optional header within its declared pattern and length."""
    value = request.headers.get(name)
    if value is not None and (
        not pattern.fullmatch(value) or (max_length is not None and len(value) > max_length)
    ):
        raise Decline
    return value


def bearer_token(request: Request) -> str:
    """The token of a well-formed ``Authorization: Bearer <token>`` (else FastAPI's 401)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Decline
    return token


async def json_body(request: Request) -> Any:
    """The body as FastAPI would parse it (the standard library's ``json.loads``), when it
    is declared ``application/json`` and parses."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise Decline
    body = await request.body()
    if not body:
        raise Decline
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise Decline from None


class _Endpoint:
    """An object, not a function: Starlette calls it as a bare ASGI app."""

    def __init__(self, serve: Serve, router: ASGIApp) -> None:
        self.serve = serve
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.serve(request)
        except Decline:
            try:
                body = await request.body()
            except ClientDisconnect:
                return  # nobody to answer
            scope[DECLINED] = True
            await self.router(scope, replaying(body, receive), send)
            return
        await response(scope, receive, send)


class LeanRoute(Route):
    def __init__(self, path: str, method: str, serve: Serve, router: ASGIApp) -> None:
        super().__init__(path, _Endpoint(serve, router), methods=[method], include_in_schema=False)
        # Starlette adds HEAD to every GET route; FastAPI's declared routes do not (a HEAD
        # on a stream would open one), so neither does a lean one.
        self.methods = {method}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if DECLINED in scope:
            return Match.NONE, {}
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # the access log and metrics label by route template
        await super().handle(scope, receive, send)


def install(app: FastAPI, routes: list[tuple[str, str, Serve]]) -> None:
    """Put the lean routes first, so they see the declared routes' requests first."""
    lean: list[BaseRoute] = [
        LeanRoute(path, method, serve, app.router) for path, method, serve in routes
    ]
    app.router.routes[:0] = lean
