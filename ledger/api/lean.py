"""The hottest routes, declared with FastAPI but served without its per-request machinery.

FastAPI's request handling (solving the dependency graph, validating each parameter) is a
measurable share of a single-event append's CPU and of every idle stream's memory
(docs/ARCHITECTURE.md, "Lean routes"). A lean route runs the same endpoint function, with
its parameters found by the same dependency functions, so a regular request gets the same
answer; errors still reach the app's exception handlers.

A :class:`Lean` binding names the endpoint and, for each of its parameters, how to find it;
:func:`install` finds the declared ``APIRoute`` of that endpoint (its path and methods come
from there) and refuses to start if the binding does not supply exactly the endpoint's
parameters, so a parameter or dependency added to a declared route cannot be skipped by its
lean twin.

A lean route only takes the regular case. Anything else (a malformed path, header or body)
makes it raise :class:`Decline`, and the request goes to the declared FastAPI route, which
answers it exactly as it always has: every error shape stays FastAPI's own.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.convertors import StringConvertor
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ledger.api.middleware import PARSED_JSON, replaying

CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

# Set on a declined request's scope: on the second pass, lean routes match nothing.
DECLINED = "ledger.lean_declined"


class Decline(Exception):
    """Not the regular case: the declared FastAPI route answers this request."""


Serve = Callable[[Request], Awaitable[Response]]
Endpoint = Callable[..., Awaitable[Response]]
# How a lean route finds one parameter: from the request and the parameters found before
# it (in the binding's order); may return an awaitable, and may raise Decline.
Find = Callable[[Request, dict[str, Any]], Any]


@dataclass(frozen=True)
class Lean:
    """An endpoint served lean, and how each of its parameters is found, in order.

    Put the finders that may decline first: a request that is not the regular case must
    reach the declared route before any dependency can answer it differently.
    """

    endpoint: Endpoint
    find: Mapping[str, Find]

    async def serve(self, request: Request) -> Response:
        found: dict[str, Any] = {}
        for name, find in self.find.items():
            value = find(request, found)
            found[name] = await value if inspect.isawaitable(value) else value
        return await self.endpoint(**found)


def canonical_uuid(raw: str) -> UUID:
    """A UUID in the canonical form (any other spelling: FastAPI decides)."""
    if not CANONICAL_UUID.fullmatch(raw):
        raise Decline
    return UUID(raw)


def path_uuid(request: Request, name: str) -> UUID:
    """A path parameter in the canonical form."""
    return canonical_uuid(request.path_params[name])


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
    parsed = request.scope.get(PARSED_JSON)
    if parsed is not None:
        return parsed  # StrictJson parsed it already (and refused duplicate keys)
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


@dataclass(frozen=True)
class Declared:
    """Where and how FastAPI serves an endpoint (its effective route, prefixes applied)."""

    path: str
    methods: frozenset[str]
    # Dependencies FastAPI runs for the route besides the endpoint's parameters.
    dependencies: tuple[object, ...]


class LeanRoute(Route):
    def __init__(self, declared: Declared, serve: Serve, router: ASGIApp) -> None:
        super().__init__(
            declared.path,
            _Endpoint(serve, router),
            methods=list(declared.methods),
            include_in_schema=False,
        )
        # Starlette adds HEAD to every GET route; FastAPI's declared routes do not (a HEAD
        # on a stream would open one), so neither does a lean one.
        self.methods = set(declared.methods)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if DECLINED in scope:
            return Match.NONE, {}
        return super().matches(scope)

    def handle(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        scope["route"] = self  # the access log and metrics label by route template
        # Handed on, not awaited: no frame of this method stays for a stream's life.
        return super().handle(scope, receive, send)


def declared_route(
    app: FastAPI, endpoint: Callable[..., Any], kind: type[BaseRoute] = APIRoute
) -> Declared:
    """The one FastAPI route (of this ``kind``) whose endpoint is this function."""
    found = [
        Declared(
            path=str(context.path),
            methods=frozenset(getattr(context, "methods", None) or ()),
            dependencies=tuple(context.dependencies),
        )
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, kind) and context.endpoint is endpoint
    ]
    if len(found) != 1:
        raise RuntimeError(f"{endpoint.__qualname__} is declared by {len(found)} routes, not 1")
    return found[0]


def check(binding: Lean | LeanSocket, declared: Declared) -> None:
    """Refuse a binding that does not find exactly what the declared route would pass."""
    name = binding.endpoint.__qualname__
    wanted = set(inspect.signature(binding.endpoint).parameters)
    supplied = set(binding.find) | ({"websocket"} if isinstance(binding, LeanSocket) else set())
    if wanted != supplied:
        raise RuntimeError(
            f"the lean route of {name} finds {sorted(supplied)}, but the endpoint takes "
            f"{sorted(wanted)}"
        )
    if declared.dependencies:
        raise RuntimeError(f"{name} has route dependencies that its lean route would skip")


def install(app: FastAPI, bindings: list[Lean]) -> None:
    """Put the lean routes first, so they see the declared routes' requests first."""
    lean: list[BaseRoute] = []
    for binding in bindings:
        declared = declared_route(app, binding.endpoint)
        check(binding, declared)
        lean.append(LeanRoute(declared, binding.serve, app.router))
    app.router.routes[:0] = lean


@dataclass(frozen=True)
class LeanSocket:
    """A WebSocket endpoint served lean: it is passed the connection as ``websocket``, and
    each path parameter parsed by its function (which may raise :class:`Decline`)."""

    endpoint: Callable[..., Awaitable[None]]
    find: Mapping[str, Callable[[str], Any]]


SocketRoutes = list[tuple[WebSocketRoute, LeanSocket]]


class LeanSockets:
    """Middleware, innermost of the app's own: serves the bound WebSocket routes in front
    of Starlette's exception middleware, FastAPI's exit stacks and the router.

    Nothing those layers do applies to a WebSocket stream (no body; the endpoint answers
    every refusal and error itself), but each keeps a suspended frame for the socket's
    whole life: with FastAPI's dependency solving, about 4 KiB of every idle WebSocket
    (docs/ARCHITECTURE.md, "Memory per idle stream"). A path parameter that is not in its
    regular form declines before anything is read, and the declared route answers.
    """

    def __init__(self, app: ASGIApp, *, routes: SocketRoutes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for route, binding in self.routes:
                match, child = route.matches(scope)
                if match is not Match.FULL:
                    continue
                try:
                    found = {
                        name: parse(child["path_params"][name])
                        for name, parse in binding.find.items()
                    }
                except Decline:
                    break
                scope.update(child)
                scope["route"] = route  # the access log and metrics label by route template
                await binding.endpoint(WebSocket(scope, receive, send), **found)
                return
        await self.app(scope, receive, send)


def socket_routes(app: FastAPI, bindings: list[LeanSocket]) -> SocketRoutes:
    """Each binding with a route matching its declared WebSocket route's path."""
    routes: SocketRoutes = []
    for binding in bindings:
        declared = declared_route(app, binding.endpoint, APIWebSocketRoute)
        check(binding, declared)
        route = WebSocketRoute(declared.path, binding.endpoint)
        # Each finder parses the raw text of a path parameter of that name.
        raw = {n for n, c in route.param_convertors.items() if isinstance(c, StringConvertor)}
        if not set(binding.find) <= raw:
            raise RuntimeError(
                f"the lean route of {binding.endpoint.__qualname__} parses "
                f"{sorted(set(binding.find) - raw)}, not plain parameters of {declared.path}"
            )
        routes.append((route, binding))
    return routes
