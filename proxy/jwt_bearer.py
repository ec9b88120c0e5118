"""Bearer JWTs from the identity provider: verified against its JWKS, asymmetric algorithms only.

`iss`, `aud` (MLFLOW_GATE_OIDC_AUDIENCE) and `exp` are required, `nbf` is honoured. Keys are cached;
a token signed with an unknown `kid` makes the gate re-fetch the JWKS once (at most every few
seconds), so a key rotation at the provider needs no restart. Verified tokens are cached by digest
until they expire.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .cache import LRU
from .errors import Unauthenticated, UpstreamUnavailable
from .identity import Identity
from .oidc_config import Discovery, OidcSettings

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY = 30


class JwtValidator:
    def __init__(self, settings: OidcSettings, discovery: Discovery, http: httpx.AsyncClient) -> None:
        if not settings.audience:
            raise ValueError("JWT bearer tokens need MLFLOW_GATE_OIDC_AUDIENCE (the `aud` they must carry)")
        self.settings = settings
        self.discovery = discovery
        self.http = http
        self.keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self._cache: LRU[str, tuple[Identity, str]] = LRU(50_000)    # digest -> (identity, kid)
        self._kids: frozenset[str] = frozenset()

    async def __call__(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        # a verified token stays good only while its key is still published
        if cached is not None and (cached[0].expires or 0) > time.time() and (not cached[1] or cached[1] in self._kids):
            return cached[0]
        header = _header(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"Authentication failed: JWT algorithm {alg!r} is not accepted "
                                  "(asymmetric signatures only).")
        keys = await self._keys(str(header.get("kid") or ""))
        try:
            decoded = jwt.decode(token, keys, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            raise Unauthenticated(f"Authentication failed: the JWT signature does not verify ({exc}).") from exc
        claims = decoded.claims
        self._check_claims(claims)
        ident = self._identity(claims)
        self._cache.put(digest, (ident, str(header.get("kid") or "")))
        return ident

    async def _keys(self, kid: str) -> KeySet:
        async with self._lock:
            known = self.keys is not None and (not kid or any(k.kid == kid for k in self.keys.keys))
            stale = time.monotonic() - self._fetched >= self.settings.jwks_refresh_interval
            if self.keys is None or (not known and stale):
                self.keys = await self._fetch()
                self._fetched = time.monotonic()
                self._kids = frozenset(str(k.kid) for k in self.keys.keys if k.kid)
            if kid and not any(k.kid == kid for k in self.keys.keys):
                raise Unauthenticated(f"Authentication failed: the JWT's key {kid!r} is not published by the "
                                      "identity provider.")
            return self.keys

    async def _fetch(self) -> KeySet:
        try:
            doc = await self.discovery.get()
            r = await self.http.get(doc["jwks_uri"], timeout=10)
            r.raise_for_status()
            keys = [k for k in r.json().get("keys", []) if k.get("kty") in ("RSA", "EC", "OKP")]
            return KeySet.import_key_set({"keys": keys})
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise UpstreamUnavailable(f"The identity provider's keys could not be fetched: {exc.__class__.__name__}."
                                      ) from exc

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = time.time()
        if str(claims.get("iss", "")).rstrip("/") != self.settings.issuer:
            raise Unauthenticated("Authentication failed: the JWT was issued by another issuer.")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.settings.audience not in auds:
            raise Unauthenticated(f"Authentication failed: the JWT is not meant for this gate "
                                  f"(aud must include {self.settings.audience!r}).")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            raise Unauthenticated("Authentication failed: the JWT has no expiry (exp).")
        if exp + LEEWAY < now:
            raise Unauthenticated("Authentication failed: the JWT has expired.")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf - LEEWAY > now:
            raise Unauthenticated("Authentication failed: the JWT is not valid yet (nbf).")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        uid = claims.get(self.settings.user_claim)
        if not isinstance(uid, str) or not uid:
            uid = claims.get("client_id") or claims.get("azp") or claims.get("sub")   # machines: client_credentials
        if not isinstance(uid, str) or not uid:
            raise Unauthenticated(f"Authentication failed: the JWT names no user ({self.settings.user_claim}, "
                                  "client_id or sub).")
        groups = claims.get(self.settings.groups_claim) or []
        if not isinstance(groups, list):
            groups = [groups]
        return Identity(uid, frozenset(str(g) for g in groups), via="jwt", expires=float(claims["exp"]))


def _header(token: str) -> dict[str, Any]:
    import base64

    try:
        head = token.split(".")[0]
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, IndexError) as exc:
        raise Unauthenticated("Authentication failed: the bearer token is not a JWT.") from exc
    if not isinstance(data, dict):
        raise Unauthenticated("Authentication failed: the bearer token is not a JWT.")
    return data
