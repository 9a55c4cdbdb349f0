"""The stream cookie: a browser trades its bearer token for an HttpOnly cookie.

Native ``EventSource`` cannot send headers; a cookie keeps the token out of URLs (and out
of browser history and proxy logs). HttpOnly keeps page scripts from reading it back;
SameSite=Strict keeps other sites from riding on it; Path=/api limits where it is sent.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from ledger.api.deps import TOKEN_COOKIE, BearerToken, CurrentPrincipal
from ledger.api.schemas import error_responses

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/cookie", status_code=204, responses=error_responses(401))
async def set_stream_cookie(
    request: Request, principal: CurrentPrincipal, token: BearerToken
) -> Response:
    response = Response(status_code=204)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=max(int(principal.expires_at - time.time()), 0),
        path="/api",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.delete("/cookie", status_code=204)
async def clear_stream_cookie() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(TOKEN_COOKIE, path="/api", httponly=True, samesite="strict")
    return response
