"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served whole by the app, with no internet.

FastAPI's own pages load their JavaScript, CSS, favicon (and ReDoc's Google fonts) from CDNs,
so without internet they are blank, and with it every visit tells a third party about the
service. The same pages are built here with FastAPI's own HTML builders, but pointing at
Swagger UI's and ReDoc's bundles as shipped inside the installed ``fastapi-offline`` package
(``fastapi_offline/static/``), served from :data:`ASSETS_URL`. Only its files are used, not
its ``FastAPIOffline`` factory, so that the app keeps its own ``FastAPI(...)``; the package's
version is pinned in ``pyproject.toml`` because the location of those files is not its API.
If they are missing, building the app fails at once rather than serving a blank page.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = ("fastapi_offline", "static")
ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"

# Swagger UI's validator badge (not part of this layout, but kept off all the same) would
# send the schema's address to validator.swagger.io.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
# What the bundles do not ask for still cannot leave: ReDoc's sidebar always shows Redocly's
# logo from their CDN, which this stops (the logo then hides itself; its link stays). The
# inline allowances are the pages' own inline start-up script and the bundles' inline styles.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'self'",
        "form-action 'self'",
        "base-uri 'self'",
    ]
)


def self_contained(response: HTMLResponse) -> HTMLResponse:
    """The page, told by :data:`CONTENT_SECURITY_POLICY` to load nothing but the server's."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def install(app: FastAPI) -> None:
    """Mount the bundled assets and add the three pages (the app's own are to be turned off)."""
    if app.docs_url or app.redoc_url:
        raise RuntimeError("create the app with docs_url=None, redoc_url=None: these replace them")
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise RuntimeError("the documentation pages need the app's OpenAPI schema")
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_swagger_ui_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=base + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )
        return self_contained(page)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return self_contained(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_redoc_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return self_contained(page)
