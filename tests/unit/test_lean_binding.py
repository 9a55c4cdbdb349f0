"""Lean routes are bound to their declared routes by identity, and refuse to start when they
would skip a parameter or a dependency the declared route has."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from fastapi import APIRouter, Depends, FastAPI, Response, WebSocket
from starlette.requests import Request
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from ledger.api import lean
from ledger.api.app import create_app
from ledger.api.lean import Lean, LeanRoute, LeanSocket, LeanSockets, canonical_uuid
from ledger.settings import Settings


async def endpoint(a: str, b: int) -> Response:
    return Response(f"{a}{b}")


async def other_endpoint(a: str) -> Response:
    return Response(a)


def app_with(*routes: tuple[str, Any], dependencies: list[Any] | None = None) -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/p", dependencies=dependencies or [])
    for path, function in routes:
        router.add_api_route(path, function, methods=["POST"])
    app.include_router(router)
    return app


def finds(*names: str) -> dict[str, lean.Find]:
    return {name: (lambda request, found: "1") for name in names}


def test_the_route_is_found_by_its_endpoint_with_its_path_and_methods() -> None:
    app = app_with(("/x/{a}", other_endpoint), ("/y", endpoint))
    lean.install(app, [Lean(endpoint, finds("a", "b"))])
    installed = app.router.routes[0]
    assert isinstance(installed, LeanRoute)
    assert (installed.path, installed.methods) == ("/p/y", {"POST"})


def test_a_parameter_the_binding_does_not_find_refuses_to_start() -> None:
    app = app_with(("/y", endpoint))
    with pytest.raises(RuntimeError, match="finds \\['a'\\], but the endpoint takes"):
        lean.install(app, [Lean(endpoint, finds("a"))])
    with pytest.raises(RuntimeError, match="but the endpoint takes"):
        lean.install(app, [Lean(endpoint, finds("a", "b", "c"))])


def test_a_route_dependency_refuses_to_start() -> None:
    async def audit() -> None:
        return None

    app = app_with(("/y", endpoint), dependencies=[Depends(audit)])
    with pytest.raises(RuntimeError, match="dependencies that its lean route would skip"):
        lean.install(app, [Lean(endpoint, finds("a", "b"))])


def test_an_undeclared_endpoint_refuses_to_start() -> None:
    with pytest.raises(RuntimeError, match="declared by 0 routes"):
        lean.install(app_with(("/x", other_endpoint)), [Lean(endpoint, finds("a", "b"))])


async def test_the_endpoint_is_called_with_what_was_found_in_order() -> None:
    seen: list[str] = []

    async def first(request: Request, found: dict[str, Any]) -> str:
        seen.append("a")
        return "x"

    def second(request: Request, found: dict[str, Any]) -> int:
        seen.append("b")
        return len(found["a"]) + 1

    response = await Lean(endpoint, {"a": first, "b": second}).serve(
        Request({"type": "http", "method": "POST", "headers": [], "path": "/"})
    )
    assert seen == ["a", "b"]
    assert bytes(response.body) == b"x2"


def test_the_apps_own_bindings_match_their_endpoints() -> None:
    app = create_app(Settings())
    lean_paths = {r.path for r in app.router.routes if isinstance(r, LeanRoute)}
    assert lean_paths == {
        "/api/sessions/{session_id}/status/stream",
        "/api/events/stream",
        "/api/sessions/{session_id}/events",
    }


async def socket_endpoint(websocket: WebSocket, a: UUID) -> None:
    return None


def test_a_lean_socket_is_bound_to_its_declared_websocket_route() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/p")
    router.add_api_websocket_route("/w/{a}", socket_endpoint)
    app.include_router(router)
    [(route, binding)] = lean.socket_routes(app, [LeanSocket(socket_endpoint, {"a": UUID})])
    assert route.path == "/p/w/{a}"
    assert binding.endpoint is socket_endpoint
    with pytest.raises(RuntimeError, match="finds \\['websocket'\\], but the endpoint takes"):
        lean.socket_routes(app, [LeanSocket(socket_endpoint, {})])
    with pytest.raises(RuntimeError, match="declared by 0 routes"):
        lean.socket_routes(app_with(("/y", endpoint)), [LeanSocket(socket_endpoint, {"a": UUID})])


def test_a_lean_socket_parses_only_plain_path_parameters() -> None:
    app = FastAPI()
    app.add_api_websocket_route("/w/{a:uuid}", socket_endpoint)
    with pytest.raises(RuntimeError, match="parses \\['a'\\], not plain parameters"):
        lean.socket_routes(app, [LeanSocket(socket_endpoint, {"a": UUID})])

    async def no_parameter(websocket: WebSocket, a: UUID) -> None:
        return None

    app.add_api_websocket_route("/v", no_parameter)
    with pytest.raises(RuntimeError, match="not plain parameters of /v"):
        lean.socket_routes(app, [LeanSocket(no_parameter, {"a": UUID})])


async def test_lean_sockets_serve_their_routes_and_hand_on_everything_else() -> None:
    """The bound endpoint serves a regular path, without the app behind; a declined id, an
    unbound path and an HTTP request go on to the app."""
    served: list[UUID] = []
    handed_on: list[str] = []

    async def stream(websocket: WebSocket, a: UUID) -> None:
        served.append(a)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        handed_on.append(scope["path"])

    routes = [(WebSocketRoute("/w/{a}", stream), LeanSocket(stream, {"a": canonical_uuid}))]
    middleware = LeanSockets(app, routes=routes)

    async def nothing() -> Message:
        raise AssertionError("nothing is read before the endpoint runs")

    async def ignore(message: Message) -> None:
        return None

    known = uuid4()
    for kind, path in [
        ("websocket", f"/w/{known}"),
        ("websocket", f"/w/{known.hex}"),  # a UUID FastAPI would take, in another spelling
        ("websocket", "/x"),
        ("http", f"/w/{known}"),
    ]:
        scope: Scope = {"type": kind, "path": path, "root_path": "", "headers": []}
        await middleware(scope, nothing, ignore)
    assert served == [known]
    assert handed_on == [f"/w/{known.hex}", "/x", f"/w/{known}"]


def test_the_apps_own_socket_bindings_match_their_endpoints() -> None:
    app = create_app(Settings())
    [lean_sockets] = [m for m in app.user_middleware if m.cls is LeanSockets]  # type: ignore[comparison-overlap]
    routes = cast(lean.SocketRoutes, lean_sockets.kwargs["routes"])
    paths = [route.path for route, _ in routes]
    assert paths == ["/api/sessions/{session_id}/status/ws", "/api/events/ws"]
