"""Personal tokens: signed with the secret key, carrying an id, the user, groups and expiry.

A token is `mgt_` + an itsdangerous-signed payload. It is revoked by listing its id under
`revoked_tokens` (or its user under `revoked_users`) in the policy; expiry is checked on every use.
A token a local account minted carries the account's stamp: it works while the account does
(`accounts.current`).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

PREFIX = "mgt_"
_SALT = "mlflow-gate.personal-token"


class TokenError(ValueError):
    pass


class ForeignToken(TokenError):
    """A token whose signature does not verify with this key: signed with another secret key, or altered."""


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
        raise ForeignToken("the personal token's signature does not match this secret key: it was signed with "
                           "another key (or altered)") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("the personal token is malformed") from exc
    if claims.expires <= (time.time() if now is None else now):
        raise TokenError(f"the personal token expired at {claims.as_json()['expires_at']}")
    return claims
