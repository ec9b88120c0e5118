"""Personal tokens: signed with the secret key, carrying an id, the user, groups and expiry.

A token is `mgt_` + an itsdangerous-signed payload. It is revoked by listing its id under
`revoked_tokens` (or its user under `revoked_users`) in the policy; expiry is checked on every use.
A token a local account minted carries the account's stamp: it works while the account does
(`accounts.current`).
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

PREFIX = "mgt_"
_SALT = "mlflow-gate.personal-token"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class TokenClaims:
    id: str
    user: str
    groups: tuple[str, ...]
    expires: float
    name: str = ""
    account: str | None = None      # the minting local account's stamp

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "user": self.user, "groups": list(self.groups), "expires": int(self.expires),
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires)), "name": self.name}


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '45s' or plain seconds -> seconds."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise TokenError(f"{text!r} is not a duration: use a positive number with s, m, h, d or w (e.g. 30d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=_SALT)


def mint_token(secret_key: str, user: str, groups: tuple[str, ...] | list[str] = (), expires_in: float = 30 * 86400,
               name: str = "", account: str | None = None) -> str:
    if not user:
        raise TokenError("a token needs a user id")
    claims: dict[str, object] = {"i": secrets.token_hex(8), "u": user, "g": list(groups),
                                 "e": int(time.time() + expires_in)}
    if name:
        claims["n"] = name
    if account is not None:
        claims["a"] = account
    return PREFIX + _serializer(secret_key).dumps(claims)


def read_token(secret_key: str, token: str, *, now: float | None = None) -> TokenClaims:
    """Verify signature and expiry; raises TokenError saying what is wrong."""
    if not token.startswith(PREFIX):
        raise TokenError("not a personal token")
    try:
        data = _serializer(secret_key).loads(token[len(PREFIX):])
        claims = TokenClaims(str(data["i"]), str(data["u"]), tuple(str(g) for g in data.get("g", ())),
                             float(data["e"]), str(data.get("n", "")), str(data["a"]) if "a" in data else None)
    except BadSignature as exc:
        raise TokenError("the personal token's signature is invalid (tampered, or signed with another key)") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("the personal token is malformed") from exc
    if claims.expires <= (time.time() if now is None else now):
        raise TokenError(f"the personal token expired at {claims.as_json()['expires_at']}")
    return claims
