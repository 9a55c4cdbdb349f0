"""An identity provider's signing keys, from its JWKS document (design, section 11).

PyJWT parses each key (``PyJWK``) and verifies with its keys; fetching is ours,
because ``PyJWKClient`` fetches with blocking ``urllib`` (in the event loop, every
request would wait), reads a body of any size, forgets its cached keys when its cache
expires while the endpoint is down, and refetches on every unknown ``kid`` until a fetch
succeeds. Here one document at a time is fetched with a bounded size and time; a failed
fetch keeps the keys held; and every fetch, on schedule or for an unknown ``kid``, is at
least ``refresh`` seconds after the one before, so a flood of forged ``kid``s is at most
one fetch per interval (per process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

import httpx
from jwt import PyJWK

from ledger import metrics

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024  # providers publish a few kilobytes
FETCH_TIMEOUT_SECONDS = 5.0


class FetchFailed(Exception):
    """The document could not be fetched or held no usable key (the reason, in a line)."""


def signing_keys(document: object, algorithms: Iterable[str]) -> dict[str, PyJWK]:
    """The document's keys that may verify a token here: a ``kid``, for signing (``use``
    absent or ``sig``), asymmetric, and bound to one of ``algorithms``."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchFailed("not a JWKS document (a JSON object with a 'keys' list)")
    parsed = [key for key in map(parsed_key, document["keys"]) if key is not None]
    allowed = set(algorithms)
    keys = {
        key.key_id: key
        for key in parsed
        if isinstance(key.key_id, str)
        and key.key_id
        and key.public_key_use in ("sig", None)
        and key.key_type != "oct"
        and key.algorithm_name in allowed
    }
    if not keys:
        raise FetchFailed(f"no signing key with a kid for {', '.join(sorted(allowed))}")
    return keys


def parsed_key(entry: object) -> PyJWK | None:
    """One JWK as PyJWT reads it; None when PyJWT cannot (an unknown type or curve, a
    missing or malformed field): one bad key does not cost the document's others."""
    if not isinstance(entry, dict):
        return None
    try:
        return PyJWK(entry)
    except Exception:  # PyJWT's own errors, and e.g. a TypeError for a list where a name goes
        return None


class KeySet:
    def __init__(
        self,
        url: str,
        refresh: float,
        algorithms: Iterable[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh = refresh
        self.algorithms = tuple(algorithms)
        self.clock = clock
        self.keys: dict[str, PyJWK] = {}
        self.error: str | None = None  # why the last fetch failed; None after a good one
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return bool(self.keys)

    def holds(self, kid: str) -> bool:
        return kid in self.keys

    async def key(self, kid: str) -> PyJWK | None:
        """The key named ``kid``; an unknown one fetches the document first if the last
        fetch is at least an interval old."""
        found = self.keys.get(kid)
        if found is None and self._due():
            await self.fetch()
            found = self.keys.get(kid)
        return found

    def _due(self) -> bool:
        return self._last_attempt is None or self.clock() - self._last_attempt >= self.refresh

    async def fetch(self) -> None:
        """Fetch once (callers that queued behind a fetch take its result)."""
        attempt = self._last_attempt
        async with self._lock:
            if self._last_attempt != attempt:
                return  # fetched while this call waited
            self._last_attempt = self.clock()
            try:
                self.keys = signing_keys(await self._download(), self.algorithms)
            except FetchFailed as exc:
                self.error = str(exc)
                metrics.JWKS_FETCHES.labels("failed").inc()
                held = f"the {len(self.keys)} keys held keep verifying" if self.keys else "no keys"
                log.warning("JWKS %s: %s; %s", self.url, exc, held)
                return
            self.error = None
            metrics.JWKS_FETCHES.labels("ok").inc()
            metrics.JWKS_KEYS.set(len(self.keys))

    async def _download(self) -> object:
        """The document, within FETCH_TIMEOUT_SECONDS in all (not per read: a server that
        trickles bytes must not hold the lock) and MAX_DOCUMENT_BYTES as sent."""
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        try:
            async with (
                asyncio.timeout(FETCH_TIMEOUT_SECONDS),
                httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client,
                client.stream("GET", self.url, headers=headers) as got,
            ):
                if got.status_code != 200:
                    raise FetchFailed(f"answered {got.status_code}")
                body = bytearray()
                async for chunk in got.aiter_raw():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchFailed(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        except TimeoutError:
            raise FetchFailed(f"no answer within {FETCH_TIMEOUT_SECONDS:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise FetchFailed(f"unreachable ({exc.__class__.__name__}: {exc})") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise FetchFailed("not JSON") from None

    async def run(self) -> None:
        """Fetch now and then every interval, for as long as the server runs."""
        while True:
            if self._due():
                try:
                    await self.fetch()
                except Exception:  # a bug here must not end the refreshes (nor the server)
                    log.exception("JWKS %s: the refresh failed; the next one retries", self.url)
            assert self._last_attempt is not None
            await asyncio.sleep(max(self._last_attempt + self.refresh - self.clock(), 0.05))
