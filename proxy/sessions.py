"""The browser session: a small signed cookie, and the sign-outs that refuse it before it expires.

A session holds the user id, its groups, a random session id, an absolute expiry and where the
sign-in came from:
- a local account (`account`: a stamp of the account's password hash): the policy stays the truth,
  so the account's groups are read from it on every request, and a removed account or a changed
  password ends the session (`accounts.current`);
- the identity provider (`refresh_token`, encrypted): the provider stays the truth, so the gate
  asks it whether that token is still active and revokes it on sign-out (`provider_sessions`).

Sign-out refuses the session id on the replica that signed it out at once (`SignedOut`); other
replicas learn it from the provider (a revoked refresh token), since replicas share no store.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from itsdangerous import BadSignature, URLSafeSerializer

from .identity import Identity

COOKIE = "mlflow_gate_session"
_SALT = "mlflow-gate.session"
_MAX_SIGNED_OUT = 100_000


class SessionError(ValueError):
    pass


@dataclass(frozen=True)
class Session:
    user: str
    groups: frozenset[str]
    expires: float
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    account: str | None = None          # a local account's stamp (accounts.account_stamp)
    refresh_token: str | None = None    # the identity provider's, kept encrypted in the cookie

    @property
    def ident(self) -> Identity:
        return Identity(self.user, self.groups, via="session", expires=self.expires, account=self.account)


def new_session(ident: Identity, lifetime: float, refresh_token: str | None = None) -> Session:
    """The session a sign-in gives: a local account's (ident.account set) or the provider's."""
    return Session(ident.id, ident.groups, time.time() + lifetime, account=ident.account,
                   refresh_token=None if ident.account is not None else refresh_token)


def _fernet(secret_key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hmac.new(secret_key.encode(), b"mlflow-gate session refresh token",
                                                    hashlib.sha256).digest()))


def make_session(secret_key: str, session: Session) -> str:
    payload: dict[str, object] = {"u": session.user, "g": sorted(session.groups), "s": session.sid,
                                  "x": int(session.expires)}
    if session.account is not None:
        payload["a"] = session.account
    if session.refresh_token:
        payload["r"] = _fernet(secret_key).encrypt(session.refresh_token.encode()).decode()
    return URLSafeSerializer(secret_key, salt=_SALT).dumps(payload)


def read_session(secret_key: str, value: str) -> Session:
    try:
        data = URLSafeSerializer(secret_key, salt=_SALT).loads(value)
        refresh = _fernet(secret_key).decrypt(str(data["r"]).encode()).decode() if "r" in data else None
        session = Session(str(data["u"]), frozenset(str(g) for g in data["g"]), float(data["x"]), sid=str(data["s"]),
                          account=str(data["a"]) if "a" in data else None, refresh_token=refresh)
    except (BadSignature, InvalidToken, KeyError, TypeError, ValueError) as exc:
        raise SessionError("the session cookie is invalid; sign in again") from exc
    if session.expires <= time.time():
        raise SessionError("the session has expired; sign in again")
    return session


class SignedOut:
    """Session ids signed out on this replica, kept until the session would have expired anyway."""

    def __init__(self, size: int = _MAX_SIGNED_OUT) -> None:
        self.size = size
        self._until: dict[str, float] = {}

    def add(self, session: Session) -> None:
        now = time.time()
        if len(self._until) >= self.size:
            self._until = {sid: t for sid, t in self._until.items() if t > now}
            while len(self._until) >= self.size:        # still full: the oldest entries go first
                self._until.pop(next(iter(self._until)))
        self._until[session.sid] = session.expires

    def __contains__(self, sid: str) -> bool:
        return sid in self._until


def cookie_header(value: str, *, max_age: int, secure: bool) -> bytes:
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def clear_cookie_header(secure: bool) -> bytes:
    return cookie_header("", max_age=0, secure=secure)
