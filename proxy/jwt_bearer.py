"""Bearer JWTs, verified against the keys of the one issuer they are routed to; asymmetric algorithms only.

`JwtVerifier` checks one issuer's tokens: the signature against that issuer's JWKS (`jwks.Jwks`)
and nothing else, then `iss`, `aud` and `exp` (required) and `nbf`. The credential chain picks the
verifier by the token's unverified `iss` (`peek`); since only that issuer's keys can verify it, a
token signed by one issuer that claims another's `iss` fails, whatever its `kid`. Verified tokens
are cached by digest until they expire, and only while their key is still published.

`provider_verifier` is the sign-in provider's (MLFLOW_GATE_OIDC_*: the user claim, else a machine's
`client_id`/`sub`); `issuers.py` makes one per entry of `issuers:`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError

from .cache import LRU
from .errors import Unauthenticated
from .identity import Identity
from .jwks import FETCH_TIMEOUT, Jwks
from .oidc_config import Discovery, OidcSettings

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY = 30

# The caller a verified token's claims name (raising Unauthenticated when they name none).
Identify = Callable[[dict[str, Any]], Identity]


class JwtVerifier:
    def __init__(self, issuer: str, audience: str, jwks: Jwks, identify: Identify) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.jwks = jwks
        self.identify = identify
        self._cache: LRU[str, tuple[Identity, str]] = LRU(50_000)    # digest -> (identity, kid)

    async def __call__(self, token: str, header: dict[str, Any] | None = None, *, digest: str | None = None) -> Identity:
        digest = digest or hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        # a verified token stays good only while its key is still published
        if cached is not None and (cached[0].expires or 0) > time.time() and cached[1] and \
                self.jwks.published(cached[1]):
            return cached[0]
        header = header if header is not None else peek(token)[0]
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"Authentication failed: JWT algorithm {alg!r} is not accepted "
                                  "(asymmetric signatures only).")
        kid = str(header.get("kid") or "")
        keys = await self.jwks.get(kid)
        try:
            claims = jwt.decode(token, keys, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError) as exc:
            raise Unauthenticated(f"Authentication failed: the JWT signature does not verify ({exc}).") from exc
        self._check_claims(claims)
        ident = self.identify(claims)
        self._cache.put(digest, (ident, kid or _only_kid(keys)))
        return ident

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = time.time()
        if str(claims.get("iss", "")).rstrip("/") != self.issuer:
            raise Unauthenticated("Authentication failed: the JWT was issued by another issuer.")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.audience not in auds:
            raise Unauthenticated(f"Authentication failed: the JWT is not meant for this gate "
                                  f"(aud must include {self.audience!r}).")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise Unauthenticated("Authentication failed: the JWT has no expiry (exp).")
        if exp + LEEWAY < now:
            raise Unauthenticated("Authentication failed: the JWT has expired.")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf - LEEWAY > now:
            raise Unauthenticated("Authentication failed: the JWT is not valid yet (nbf).")


def _only_kid(keys: Any) -> str:
    """The key a token without `kid` was verified with (a JWKS of one key)."""
    return str(keys.keys[0].kid) if len(keys.keys) == 1 else ""


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a JWT, unverified: only to choose the issuer whose keys must verify it."""
    try:
        head, body, _ = token.split(".")
        parts = [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in (head, body)]
    except (ValueError, TypeError) as exc:
        raise Unauthenticated("Authentication failed: the bearer token is not a JWT.") from exc
    if not all(isinstance(p, dict) for p in parts):
        raise Unauthenticated("Authentication failed: the bearer token is not a JWT.")
    return parts[0], parts[1]


def provider_verifier(settings: OidcSettings, discovery: Discovery, http: httpx.AsyncClient) -> JwtVerifier:
    """The sign-in provider's bearer JWTs (`aud` = MLFLOW_GATE_OIDC_AUDIENCE), keys from its discovery."""
    if not settings.audience:
        raise ValueError("JWT bearer tokens need MLFLOW_GATE_OIDC_AUDIENCE (the `aud` they must carry)")

    async def locate() -> str:
        return str((await discovery.get())["jwks_uri"])

    async def get_json(url: str) -> Any:
        r = await http.get(url, timeout=FETCH_TIMEOUT)
        r.raise_for_status()
        return r.json()

    jwks = Jwks("the identity provider", locate, get_json, refresh_interval=settings.jwks_refresh_interval)
    return JwtVerifier(settings.issuer, settings.audience, jwks, lambda claims: _provider_identity(settings, claims))


def _provider_identity(settings: OidcSettings, claims: dict[str, Any]) -> Identity:
    uid = claims.get(settings.user_claim)
    if not isinstance(uid, str) or not uid:
        uid = claims.get("client_id") or claims.get("azp") or claims.get("sub")   # machines: client_credentials
    if not isinstance(uid, str) or not uid:
        raise Unauthenticated(f"Authentication failed: the JWT names no user ({settings.user_claim}, "
                              "client_id or sub).")
    groups = claims.get(settings.groups_claim) or []
    if not isinstance(groups, list):
        groups = [groups]
    return Identity(uid, frozenset(str(g) for g in groups), via="jwt", expires=float(claims["exp"]))
