"""One issuer's signing keys (its JWKS): fetched with a timeout, cached, refreshed, and its failures kept.

- Fetched on first use, again when a token names a key id the copy lacks (at most every
  `refresh_interval` seconds: a key rotation needs no restart), and when the copy is older than
  `MAX_AGE` (a key the issuer withdrew stops working within that time).
- Only asymmetric signing keys are kept (`kty` RSA, EC, OKP; no `oct`, no `use: enc`).
- When the issuer cannot be reached, keys it published before keep verifying tokens for at most
  `STALE_FOR`; a token whose key is unknown then, or an issuer never reached, is a 503 that names the
  issuer. After a failure, callers get that 503 at once for `RETRY_AFTER` seconds instead of each
  waiting on a timeout. Only this issuer's callers are affected.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .errors import Unauthenticated, UpstreamUnavailable

log = logging.getLogger("mlflow_gate")
FETCH_TIMEOUT = httpx.Timeout(5.0)
MAX_AGE = 300.0
STALE_FOR = 3600.0
RETRY_AFTER = 5.0
KEY_TYPES = ("RSA", "EC", "OKP")

# A JSON document by URL (the JWKS, a discovery document), raising httpx.HTTPError, OSError or ValueError.
GetJson = Callable[[str], Awaitable[Any]]


class Jwks:
    def __init__(self, what: str, locate: Callable[[], Awaitable[str]], get_json: GetJson, *,
                 refresh_interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what                  # "the identity provider", "issuer 'kubernetes' (https://...)"
        self.locate = locate              # the JWKS URL (configured, or from discovery)
        self.get_json = get_json
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.keys: KeySet | None = None
        self.kids: frozenset[str] = frozenset()
        self.fetched_at = 0.0
        self.error: str | None = None     # the last fetch's failure, until a fetch succeeds
        self.failed_at: float | None = None
        self._lock = asyncio.Lock()

    def published(self, kid: str) -> bool:
        """Whether the copy in hand still holds key `kid` (verified tokens are trusted only while it does)."""
        return not kid or kid in self.kids

    async def get(self, kid: str) -> KeySet:
        """The keys to verify a token signed with key `kid` (empty: none named)."""
        async with self._lock:
            now = self.clock()
            known = self.keys is not None and self.published(kid)
            age = now - self.fetched_at
            if self.keys is None or age >= MAX_AGE or (not known and age >= self.refresh_interval):
                await self._refresh(now, required=not known or age >= STALE_FOR)
            assert self.keys is not None
            if not self.published(kid):
                raise Unauthenticated(f"Authentication failed: the JWT's key {kid!r} is not published by {self.what}.")
            return self.keys

    async def probe(self) -> None:
        """Fetch once if never fetched (for /_gate/health), without raising."""
        async with self._lock:
            if self.keys is None and not self._backing_off(self.clock()):
                await self._refresh(self.clock(), required=False)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.keys is not None and self.error is None, "keys": sorted(self.kids)}
        if self.keys is not None:
            out["fetched_seconds_ago"] = round(self.clock() - self.fetched_at, 1)
        if self.error:
            out["error"] = self.error
        return out

    def _backing_off(self, now: float) -> bool:
        return self.failed_at is not None and now - self.failed_at < RETRY_AFTER

    async def _refresh(self, now: float, *, required: bool) -> None:
        """Fetch the keys; when that fails and `required`, a 503 naming the issuer (else the old copy, if any,
        stays)."""
        if not self._backing_off(now):
            try:
                self.keys = await self._fetch()
            except (httpx.HTTPError, OSError, ValueError, TypeError, KeyError, JoseError) as exc:
                self.error, self.failed_at = _describe(exc), self.clock()
                log.warning("the keys of %s could not be fetched: %s", self.what, self.error)
            else:
                self.kids = frozenset(str(k.kid) for k in self.keys.keys if k.kid)
                self.fetched_at, self.error, self.failed_at = self.clock(), None, None
                return
        if required:
            raise UpstreamUnavailable(f"The keys of {self.what} could not be fetched ({self.error}); its tokens "
                                      "cannot be verified now. Try again shortly; an admin sees this on /_gate/health.")

    async def _fetch(self) -> KeySet:
        doc = await self.get_json(await self.locate())
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise TypeError("the JWKS document has no `keys` list")
        keys = [k for k in doc["keys"] if isinstance(k, dict) and k.get("kty") in KEY_TYPES
                and k.get("use", "sig") == "sig"]
        return KeySet.import_key_set({"keys": keys})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.url} answered {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {FETCH_TIMEOUT.read:g} s"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{exc.__class__.__name__}{': ' + text if text else ''}"
