"""Making and sending bearer JWTs, forged ones included, for the suites that attack the gate's JWT checks
(test_gate_oidc.py for the sign-in provider, test_machine_forgery.py for every issuer of `issuers:`)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.oidc.provider import OidcProvider
from tests.support.gate import Gate

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    """A JWT put together by hand: any header (alg none, HS256 ...), signed by `sign` (None: no signature)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def hs256(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def forge(key: RSAKey, claims: dict[str, Any], kid: str | None = None, **header: Any) -> str:
    """`claims` signed RS256 with `key`, under `kid` (default: the key's own)."""
    head = {"alg": "RS256", "typ": "at+jwt", "kid": kid or key.kid, **header}
    return jwt.encode(head, claims, key, algorithms=["RS256"])


def op_signing_key(op: OidcProvider) -> RSAKey:
    """The OP's current private signing key, read from its key file (the first key signs)."""
    assert op.workdir is not None
    private = json.loads((op.workdir / "op-keys.json").read_text())["keys"][0]
    return RSAKey.import_key(private)


def bearer(gate: Gate, token: str, path: str = SEARCH, method: str = "GET", **kwargs: Any) -> httpx.Response:
    headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token}"}
    return httpx.request(method, gate.url + path, headers=headers, timeout=30, **kwargs)


def assert_unauthenticated(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 401, f"expected 401, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error_code"] == "UNAUTHENTICATED", body
    return body  # type: ignore[no-any-return]
