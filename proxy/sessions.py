"""The browser session: a small signed cookie holding identity, groups and an absolute expiry."""
from __future__ import annotations

import time

from itsdangerous import BadSignature, URLSafeSerializer

from .identity import Identity

COOKIE = "mlflow_gate_session"
_SALT = "mlflow-gate.session"


class SessionError(ValueError):
    pass


def make_session(secret_key: str, ident: Identity, lifetime: float) -> str:
    payload = {"u": ident.id, "g": sorted(ident.groups), "v": ident.via, "x": int(time.time() + lifetime)}
    return URLSafeSerializer(secret_key, salt=_SALT).dumps(payload)


def read_session(secret_key: str, value: str) -> Identity:
    try:
        data = URLSafeSerializer(secret_key, salt=_SALT).loads(value)
        ident = Identity(str(data["u"]), frozenset(str(g) for g in data["g"]), via="session",
                         expires=float(data["x"]))
    except (BadSignature, KeyError, TypeError, ValueError) as exc:
        raise SessionError("the session cookie is invalid; sign in again") from exc
    if ident.expires is not None and ident.expires <= time.time():
        raise SessionError("the session has expired; sign in again")
    return ident


def cookie_header(value: str, *, max_age: int, secure: bool) -> bytes:
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def clear_cookie_header(secure: bool) -> bytes:
    return cookie_header("", max_age=0, secure=secure)
