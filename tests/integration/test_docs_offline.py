"""``/docs`` and ``/redoc`` work with no internet: every file they need is the server's own."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from tests.integration import test_browser
from tests.support import LiveServer

# The browser fixture and its Chromium (and its skip where there is none) are the dashboard
# tests' own.
browser = test_browser.browser
needs_chromium = test_browser.pytestmark

PAGES = ["/docs", "/redoc", "/docs/oauth2-redirect"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ABSOLUTE_URL = re.compile(r"https?://[^\s\"'<>)]+")


@dataclass
class Reference:
    tag: str
    rel: str
    url: str


class References(HTMLParser):
    """Every ``src=`` and ``href=`` in a page, with the tag (and ``rel``) it stands on."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[Reference] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            url = values.get(name)
            if url is not None:
                self.found.append(Reference(tag, values.get("rel") or "", url))


def references(html: str) -> list[Reference]:
    parser = References()
    parser.feed(html)
    parser.close()
    return parser.found


def is_own(url: str, base_url: str) -> bool:
    """A relative URL, or an absolute one to the server itself."""
    parts, own = urlsplit(url), urlsplit(base_url)
    return not parts.scheme or (parts.scheme, parts.netloc) == (own.scheme, own.netloc)


@pytest.mark.parametrize("path", PAGES)
def test_the_page_references_nothing_but_the_server(server: LiveServer, path: str) -> None:
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for reference in references(response.text):
        assert is_own(reference.url, server.base_url), reference
    # Not in an attribute either (an inline script's string, a CSS url(), …).
    outside = [u for u in ABSOLUTE_URL.findall(response.text) if not is_own(u, server.base_url)]
    assert outside == []


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_every_file_the_page_references_is_served(server: LiveServer, path: str) -> None:
    page_url = server.base_url + path
    with server.client() as client:
        found = references(client.get(path).text)
        scripts = [r for r in found if r.tag == "script"]
        styles = [r for r in found if r.tag == "link" and "stylesheet" in r.rel.split()]
        icons = [r for r in found if r.tag == "link" and "icon" in r.rel.split()]
        assert scripts
        assert icons
        assert styles or path == "/redoc"  # ReDoc's bundle carries its own styles
        for references_, kind in ((scripts, "javascript"), (styles, "css"), (icons, "image/")):
            for reference in references_:
                assert is_own(reference.url, server.base_url), reference  # never fetched
                asset = client.get(urljoin(page_url, reference.url))
                assert asset.status_code == 200, reference
                assert kind in asset.headers["content-type"], (reference, asset.headers)
                assert len(asset.content) > 1000, reference


@dataclass
class Offline:
    """A page that records every request for a host other than loopback, and aborts it.

    A request that reaches the network layer (``page.route``) is one that would have left.
    One that the page's Content-Security-Policy refuses is seen only as an event, with the
    failure ``csp``: the browser stopped it before any connection.
    """

    page: Any
    reached_network: list[str] = field(default_factory=list)
    attempted: dict[str, str | None] = field(default_factory=dict)  # url -> failure
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.route("**/*", self.route)
        self.page.on("request", self.requested)
        self.page.on("requestfailed", self.failed)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    @staticmethod
    def outside(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme not in ("data", "blob", "about") and parts.hostname not in LOOPBACK

    def route(self, route: Any) -> None:
        if self.outside(route.request.url):
            self.reached_network.append(route.request.url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    def requested(self, request: Any) -> None:
        if self.outside(request.url):
            self.attempted.setdefault(request.url, None)

    def failed(self, request: Any) -> None:
        if self.outside(request.url):
            self.attempted[request.url] = request.failure

    def assert_nothing_left(self) -> None:
        self.page.wait_for_load_state("networkidle")
        deadline = time.monotonic() + 5
        while None in self.attempted.values() and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        assert self.reached_network == []
        refused = {url: failure for url, failure in self.attempted.items() if failure != "csp"}
        assert refused == {}, "only the page's own policy may stop these"
        assert self.errors == []


@needs_chromium
def test_swagger_ui_renders_the_operations_offline(browser: Any, server: LiveServer) -> None:
    offline = Offline(browser.new_page())
    offline.page.goto(server.base_url + "/docs")
    offline.page.wait_for_selector(".opblock-summary-path:has-text('/api/sessions')")
    assert offline.page.locator(".opblock").count() >= 10
    assert "ledger" in offline.page.locator(".info h1.title").inner_text()
    # Styled by its own CSS: an operation block has Swagger UI's border, not the default.
    border = offline.page.locator(".opblock").first.evaluate("e => getComputedStyle(e).borderStyle")
    assert border == "solid"
    offline.assert_nothing_left()


@needs_chromium
def test_redoc_renders_the_api_offline(browser: Any, server: LiveServer) -> None:
    offline = Offline(browser.new_page())
    offline.page.goto(server.base_url + "/redoc")
    offline.page.wait_for_selector("h1:has-text('ledger')")
    offline.page.wait_for_selector('text="/api/sessions"')
    offline.assert_nothing_left()


@pytest.mark.parametrize("path", PAGES)
def test_the_page_may_load_only_from_the_server(server: LiveServer, path: str) -> None:
    with server.client() as client:
        policy = client.get(path).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for directive, sources in directives.items():
        # Keywords ('self', 'unsafe-inline') and data:/blob: only: no host at all.
        assert all(s.startswith("'") or s in ("data:", "blob:") for s in sources.split()), directive
