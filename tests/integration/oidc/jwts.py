"""Making and sending bearer JWTs, forged ones included, for the suites that attack the gate's JWT checks
(test_gate_oidc.py for the sign-in provider, test_machine_forgery.py for every issuer of `issuers:`)."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.oidc.provider import OidcProvider, jwt_parts
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


def assert_alg_none_refused(gate: Gate, token: str) -> None:
    """`token`'s claims unsigned under alg none (any spelling) are refused."""
    header, claims = jwt_parts(token)
    for alg in ("none", "None", "NONE"):
        assert_unauthenticated(bearer(gate, raw_jwt({**header, "alg": alg}, claims, None)))


def assert_hs256_with_public_key_refused(gate: Gate, token: str, jwks: dict[str, Any]) -> None:
    """`token` re-signed HS256 with its issuer's public key (PEM SPKI, PEM PKCS#1, the JWK) as the secret is refused."""
    header, claims = jwt_parts(token)
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = RSAKey.import_key(jwk).public_key
    for secret in (public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
                   public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
                   json.dumps(jwk).encode()):
        token = raw_jwt({**header, "alg": "HS256"}, claims, functools.partial(hs256, secret))
        assert_unauthenticated(bearer(gate, token))


def assert_tampering_refused(gate: Gate, token: str, changed: Iterable[dict[str, Any]], other: str) -> None:
    """`token` is accepted, and refused once its payload becomes each of `changed` (signature kept), once a byte
    of its signature flips, and under the signature of `other` (another token of its issuer)."""
    assert bearer(gate, token).status_code == 200
    head, payload, signature = token.split(".")
    for claims in changed:
        assert_unauthenticated(bearer(gate, f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"))
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert_unauthenticated(bearer(gate, f"{head}.{payload}.{flipped}"))
    assert_unauthenticated(bearer(gate, f"{head}.{payload}.{other.split('.')[2]}"))


def bad_claims(audience: str, *more: Any) -> list[Any]:
    """Changes of a token's claims `(claims, now) -> claims` the gate refuses under a valid signature, as
    pytest params; `audience` is the gate's, `more` are params of the caller's own."""
    return [
        pytest.param(lambda c, now: {**c, "iss": "http://evil.test"}, id="wrong-iss"),
        pytest.param(lambda c, now: {**c, "iss": c["iss"] + "/other"}, id="iss-below-the-issuer"),
        pytest.param(lambda c, now: {**c, "aud": "http://127.0.0.1:1"}, id="wrong-aud"),
        pytest.param(lambda c, now: {**c, "aud": ["http://127.0.0.1:1", audience]}, id="aud-list-without-gate"),
        pytest.param(lambda c, now: {k: v for k, v in c.items() if k != "aud"}, id="no-aud"),
        pytest.param(lambda c, now: {**c, "iat": now - 900, "exp": now - 300}, id="expired"),
        pytest.param(lambda c, now: {k: v for k, v in c.items() if k != "exp"}, id="no-exp"),
        *more,
        pytest.param(lambda c, now: {**c, "nbf": now + 600}, id="nbf-in-the-future"),
    ]
