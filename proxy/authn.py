"""The credential chain: who is calling, proven by one of the credentials SPEC.md lists.

Order: `Authorization` (Bearer personal token, Bearer provider JWT, Basic with a personal token
or a local account's password), then the session cookie. A credential that is present but
invalid raises Unauthenticated; no credential at all gives None. Verified credentials are cached
by their digest so the hot path pays for a signature or a scrypt hash once.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie

from .cache import LRU
from .errors import Unauthenticated
from .identity import Identity
from .passwords import hash_password, verify_password
from .policy import Policy
from .sessions import COOKIE, SessionError, read_session
from .tokens import PREFIX, TokenError, read_token

_DUMMY_HASH = hash_password("timing-equaliser")

# Verifies a provider JWT (`jwt_bearer.JwtValidator`): token -> Identity, raising Unauthenticated.
JwtValidator = Callable[[str], Awaitable[Identity]]


class Authenticator:
    def __init__(self, secret_key: str, *, jwt: JwtValidator | None = None) -> None:
        self.secret_key = secret_key
        self.jwt = jwt
        self._tokens: LRU[str, Identity] = LRU(50_000)
        self._passwords: LRU[tuple[str, str, frozenset[str]], Identity] = LRU(10_000, ttl=300)

    async def identify(self, headers: dict[bytes, bytes], policy: Policy) -> Identity | None:
        auth = headers.get(b"authorization")
        if auth:
            return await self._authorization(auth.decode("latin-1").strip(), policy)
        cookie = headers.get(b"cookie")
        if cookie:
            value = _cookie(cookie.decode("latin-1"), COOKIE)
            if value is not None:
                try:
                    return read_session(self.secret_key, value)
                except SessionError as exc:
                    raise Unauthenticated(f"Authentication failed: {exc}.") from exc
        return None

    async def _authorization(self, value: str, policy: Policy) -> Identity:
        scheme, _, cred = value.partition(" ")
        scheme, cred = scheme.lower(), cred.strip()
        if not cred:
            raise Unauthenticated("Authentication failed: the Authorization header has no credential.")
        if scheme == "bearer":
            if cred.startswith(PREFIX):
                return self.personal_token(cred, policy, via="token")
            if cred.count(".") == 2 and self.jwt is not None:
                return await self.jwt(cred)
            raise Unauthenticated("Authentication failed: the bearer token is neither a personal token of this gate"
                                  + ("" if self.jwt else " nor a provider JWT (no identity provider is configured)")
                                  + ".")
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Unauthenticated("Authentication failed: the Basic credential is not valid base64.") from exc
            if password.startswith(PREFIX):
                return self.personal_token(password, policy, via="basic")
            return self.local_account(user, password, policy)
        raise Unauthenticated(f"Authentication failed: the {scheme!r} scheme is not accepted; "
                              "use Bearer <token> or Basic with a token as password.")

    def personal_token(self, token: str, policy: Policy, *, via: str) -> Identity:
        key = token    # held in memory only, like the verified identity it maps to
        ident = self._tokens.get(key)
        if ident is None:
            try:
                claims = read_token(self.secret_key, token)
            except TokenError as exc:
                raise Unauthenticated(f"Authentication failed: {exc}.") from exc
            ident = Identity(claims.user, frozenset(claims.groups), via=via, token_id=claims.id,
                             expires=claims.expires)
            self._tokens.put(key, ident)
        if ident.expires is not None and ident.expires <= time.time():
            self._tokens.drop(key)
            raise Unauthenticated("Authentication failed: the personal token has expired; create a new one.")
        if ident.token_id in policy.revoked_tokens:
            raise Unauthenticated(f"Authentication failed: personal token {ident.token_id} has been revoked.")
        return ident

    def local_account(self, user: str, password: str, policy: Policy) -> Identity:
        account = policy.users.get(user.lower())
        if account is None:
            verify_password(password, _DUMMY_HASH)   # same time whether or not the account exists
            raise Unauthenticated("Authentication failed: unknown user or wrong password (Basic credentials take "
                                  "a local account's password, or any user name with a personal token).")
        # The cache key holds the account as the policy has it now: a changed hash or groups miss the cache.
        key = (hashlib.sha256(f"{user}\0{password}".encode()).hexdigest(), account.password, account.groups)
        ident = self._passwords.get(key)
        if ident is not None:
            return ident
        if not verify_password(password, account.password):
            raise Unauthenticated("Authentication failed: unknown user or wrong password (Basic credentials take "
                                  "a local account's password, or any user name with a personal token).")
        ident = Identity(account.id, account.groups, via="password")
        self._passwords.put(key, ident)
        return ident


def _cookie(header: str, name: str) -> str | None:
    try:
        jar = SimpleCookie()
        jar.load(header)
    except CookieError:
        return "" if name in header else None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
