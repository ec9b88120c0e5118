"""The credential chain: who is calling, proven by one of the credentials SPEC.md lists.

Order: `Authorization` (Bearer personal token, Bearer JWT of the identity provider or of an
issuer in the policy's `issuers:`, Basic with a personal token or a local account's password), then
the session cookie. A credential that is present but
invalid raises Unauthenticated; no credential at all gives None. Verified tokens are cached by
their value so the hot path pays for a signature once.

Whatever proved it, an identity then has to be in force (`admit`): a user listed in
`revoked_users` is refused, and a local account's credential follows the account as the policy
has it now (`accounts.current`). Sessions are also refused once signed out (`sessions.SignedOut`)
or ended at the identity provider (`provider_sessions`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any

from . import accounts
from .cache import LRU
from .claims import local_account_refusal
from .errors import Unauthenticated
from .identity import Identity
from .issuers import Issuers
from .jwt_bearer import JwtVerifier, peek
from .policy import Policy
from .provider_sessions import ProviderSessions
from .sessions import COOKIE, SessionError, SignedOut, read_session
from .tokens import PREFIX, ForeignToken, TokenError, read_token

# How to get a token this gate accepts, for a token signed with another secret key.
FOREIGN_FIX = ("Mint a new one on /_gate/tokens, or with `mlflow-gate token create` using this gate's secret key: "
               "the gate's MLFLOW_GATE_SECRET_KEY or MLFLOW_GATE_SECRET_KEY_FILE, else the key file of the user "
               "running the gate (~/.local/state/mlflow-gate/secret-key).")


class Authenticator:
    def __init__(self, secret_key: str, *, jwt: JwtVerifier | None = None,
                 provider: ProviderSessions | None = None, issuers: Issuers | None = None) -> None:
        self.secret_key = secret_key
        self.jwt = jwt                  # the identity provider's bearer JWTs
        self.issuers = issuers          # the policy's `issuers:` (machine callers)
        self.provider = provider
        self.passwords = accounts.Passwords(secret_key)
        self.signed_out = SignedOut()
        self._tokens: LRU[str, Identity] = LRU(50_000)
        self._routes: LRU[str, JwtVerifier] = LRU(50_000)     # JWT digest -> the issuer it was routed to

    async def identify(self, headers: dict[bytes, bytes], policy: Policy, client: str | None = None) -> Identity | None:
        """The caller proven by the request's credential (`client`: its address, for throttling), or None."""
        auth = headers.get(b"authorization")
        if auth:
            return self.admit(await self._authorization(auth.decode("latin-1").strip(), policy, client), policy)
        cookie = headers.get(b"cookie")
        if cookie:
            value = read_cookie(cookie.decode("latin-1"), COOKIE)
            if value is not None:
                return self.admit(await self.session(value), policy)
        return None

    def admit(self, ident: Identity, policy: Policy) -> Identity:
        """An authenticated identity, if it is still in force under `policy`."""
        if ident.id.lower() in policy.revoked_users:
            raise Unauthenticated(f"Authentication failed: user {ident.id} is revoked by the gate's policy "
                                  "(revoked_users); ask an admin.")
        taken = local_account_refusal(ident.id, policy.users) if ident.issuer is not None else None
        if taken is not None:
            raise Unauthenticated(f"Authentication failed: the token of issuer {ident.issuer} is verified, but {taken}.")
        return accounts.current(policy, ident, self.secret_key)

    async def local_account(self, user: str, password: str, policy: Policy, client: str | None) -> Identity:
        return self.admit(await self.passwords.check(user, password, policy, client), policy)

    async def session(self, value: str) -> Identity:
        try:
            session = read_session(self.secret_key, value)
        except SessionError as exc:
            raise Unauthenticated(f"Authentication failed: {exc}.") from exc
        if session.sid in self.signed_out:
            raise Unauthenticated("Authentication failed: this session was signed out; sign in again.")
        if session.refresh_token and self.provider is not None \
                and not await self.provider.active(session.sid, session.refresh_token):
            raise Unauthenticated("Authentication failed: the identity provider ended this session; sign in again.")
        return session.ident

    async def sign_out(self, value: str) -> None:
        """Refuse this session from now on: here at once, on other replicas through the provider."""
        try:
            session = read_session(self.secret_key, value)
        except SessionError:
            return
        self.signed_out.add(session)
        if session.refresh_token and self.provider is not None:
            await self.provider.revoke(session.sid, session.refresh_token)

    async def _authorization(self, value: str, policy: Policy, client: str | None) -> Identity:
        scheme, _, cred = value.partition(" ")
        scheme, cred = scheme.lower(), cred.strip()
        if not cred:
            raise Unauthenticated("Authentication failed: the Authorization header has no credential.")
        if scheme == "bearer":
            if cred.startswith(PREFIX):
                return self.personal_token(cred, policy, via="token")
            if cred.count(".") == 2 and (self.jwt is not None or (self.issuers is not None and policy.issuers)):
                return await self.bearer_jwt(cred, policy)
            raise Unauthenticated("Authentication failed: the bearer token is neither a personal token of this gate"
                                  " nor a JWT of an issuer it trusts (no identity provider or `issuers` are "
                                  "configured).")
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Unauthenticated("Authentication failed: the Basic credential is not valid base64.") from exc
            if password.startswith(PREFIX):
                return self.personal_token(password, policy, via="basic")
            return await self.passwords.check(user, password, policy, client)
        raise Unauthenticated(f"Authentication failed: the {scheme!r} scheme is not accepted; "
                              "use Bearer <token> or Basic with a token as password.")

    async def bearer_jwt(self, token: str, policy: Policy) -> Identity:
        """A JWT, verified by the one trusted issuer its `iss` names: only that issuer's keys can verify it.
        The issuer a token was routed to is remembered by digest (while that issuer is still trusted), so a
        token seen before costs a hash and two lookups."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        verifier, header = self._routes.get(digest), None
        if verifier is None or not (verifier is self.jwt or (self.issuers and self.issuers.trusts(policy, verifier))):
            verifier, header = self._route(token, policy)
            self._routes.put(digest, verifier)
        return await verifier(token, header, digest=digest)

    def _route(self, token: str, policy: Policy) -> tuple[JwtVerifier, dict[str, Any]]:
        header, claims = peek(token)
        iss = claims.get("iss")
        iss = iss.rstrip("/") if isinstance(iss, str) else ""
        if self.jwt is not None and iss == self.jwt.issuer:
            return self.jwt, header
        machine = self.issuers.find(policy, iss) if self.issuers is not None and iss else None
        if machine is not None:
            return machine.verify, header
        raise Unauthenticated(f"Authentication failed: the JWT's issuer {iss[:200]!r} is not one this gate trusts "
                              "(its identity provider, or an entry of the policy's `issuers`).")

    def personal_token(self, token: str, policy: Policy, *, via: str) -> Identity:
        key = token    # held in memory only, like the verified identity it maps to
        ident = self._tokens.get(key)
        if ident is None:
            try:
                claims = read_token(self.secret_key, token)
            except ForeignToken as exc:
                raise Unauthenticated(f"Authentication failed: {exc}. {FOREIGN_FIX}") from exc
            except TokenError as exc:
                raise Unauthenticated(f"Authentication failed: {exc}.") from exc
            ident = Identity(claims.user, frozenset(claims.groups), via=via, token_id=claims.id,
                             expires=claims.expires, account=claims.account)
            self._tokens.put(key, ident)
        if ident.expires is not None and ident.expires <= time.time():
            self._tokens.drop(key)
            raise Unauthenticated("Authentication failed: the personal token has expired; create a new one.")
        if ident.token_id in policy.revoked_tokens:
            raise Unauthenticated(f"Authentication failed: personal token {ident.token_id} has been revoked.")
        return ident

    def close(self) -> None:
        self.passwords.close()


def read_cookie(header: str, name: str) -> str | None:
    try:
        jar = SimpleCookie()
        jar.load(header)
    except CookieError:
        return "" if name in header else None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
