"""One issuer's keys (proxy/jwks.py) with a fake clock and a fake fetch, and how an `issuers:` entry fetches them
(proxy/issuers.py) over a fake transport: discovery, the bearer only for the issuer's own origins."""
from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import certifi
import httpx
import pytest
from joserfc.jwk import RSAKey

from proxy.errors import Unauthenticated, UpstreamUnavailable
from proxy.issuers import Clients, MachineIssuer
from proxy.jwks import MAX_AGE, RETRY_AFTER, STALE_FOR, Jwks
from proxy.policy import load_policy_text

KEYS = [RSAKey.generate_key(2048, parameters={"kid": f"k{i}"}) for i in range(3)]


def public(*keys: RSAKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


class Fake:
    """A clock and an issuer whose JWKS the test sets (or breaks), counting the fetches."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.doc: Any = public(KEYS[0])
        self.fail: Exception | None = None
        self.fetches = 0

    async def locate(self) -> str:
        return "https://issuer.test/jwks"

    async def get_json(self, url: str) -> Any:
        self.fetches += 1
        if self.fail is not None:
            raise self.fail
        return self.doc

    def jwks(self, refresh_interval: float = 5.0) -> Jwks:
        return Jwks("issuer 'x' (https://issuer.test)", self.locate, self.get_json, refresh_interval=refresh_interval,
                    clock=lambda: self.now)


def get(jwks: Jwks, kid: str) -> Any:
    return asyncio.run(jwks.get(kid))


def test_keys_are_cached_and_an_unknown_kid_refetches_at_most_every_interval() -> None:
    fake = Fake()
    jwks = fake.jwks()
    get(jwks, "k0")
    get(jwks, "k0")
    assert fake.fetches == 1
    fake.doc = public(KEYS[1], KEYS[0])
    with pytest.raises(Unauthenticated, match="'k1' is not published by issuer 'x'"):
        get(jwks, "k1")                               # within the interval: no fetch, refused
    assert fake.fetches == 1
    fake.now += 5
    get(jwks, "k1")                                   # rotated: fetched again
    assert fake.fetches == 2 and jwks.published("k0") and jwks.published("k1")
    fake.now += 5
    with pytest.raises(Unauthenticated):
        get(jwks, "k-forged")                         # fetched again, still unknown
    assert fake.fetches == 3


def test_old_keys_are_refreshed_and_a_withdrawn_key_stops_being_published() -> None:
    fake = Fake()
    jwks = fake.jwks()
    get(jwks, "k0")
    fake.doc = public(KEYS[1])
    fake.now += MAX_AGE
    with pytest.raises(Unauthenticated):
        get(jwks, "k0")
    assert fake.fetches == 2 and not jwks.published("k0")


def test_an_unreachable_issuer_keeps_its_keys_for_a_while_then_is_a_503() -> None:
    fake = Fake()
    jwks = fake.jwks()
    get(jwks, "k0")
    fake.fail = httpx.ConnectError("refused")
    fake.now += MAX_AGE
    get(jwks, "k0")                                   # stale but kept
    assert jwks.health()["ok"] is False and "ConnectError" in jwks.health()["error"]
    fake.now += RETRY_AFTER
    with pytest.raises(UpstreamUnavailable, match="issuer 'x'"):
        get(jwks, "k1")                               # an unknown kid cannot be looked up
    fake.now += STALE_FOR
    with pytest.raises(UpstreamUnavailable):
        get(jwks, "k0")                               # too old to keep trusting
    fake.fail = None
    fake.now += RETRY_AFTER
    get(jwks, "k0")
    assert jwks.health()["ok"] is True and "error" not in jwks.health()


def test_after_a_failure_callers_get_the_503_at_once_until_the_retry() -> None:
    fake = Fake()
    fake.fail = httpx.ReadTimeout("slow")
    jwks = fake.jwks()
    with pytest.raises(UpstreamUnavailable, match="no answer within 5 s"):
        get(jwks, "k0")
    with pytest.raises(UpstreamUnavailable):
        get(jwks, "k0")
    assert fake.fetches == 1
    fake.now += RETRY_AFTER
    fake.fail = None
    get(jwks, "k0")
    assert fake.fetches == 2


@pytest.mark.parametrize("doc,words", [
    ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k0"}]}, "MissingKeyError"),
    ({"keys": [{**KEYS[0].as_dict(private=False), "use": "enc"}]}, "MissingKeyError"),
    ({"no": "keys"}, "TypeError"),
    ([], "TypeError"),
])
def test_only_asymmetric_signing_keys_are_taken(doc: Any, words: str) -> None:
    fake = Fake()
    fake.doc = doc
    jwks = fake.jwks()
    with pytest.raises(UpstreamUnavailable, match=words):
        get(jwks, "k0")


def test_probe_fetches_once_and_never_raises() -> None:
    fake = Fake()
    fake.fail = OSError("no token file")
    jwks = fake.jwks()
    asyncio.run(jwks.probe())
    assert jwks.health() == {"ok": False, "keys": [], "error": "OSError: no token file"}
    asyncio.run(jwks.probe())
    assert fake.fetches == 1


# ----------------------------------------------------------------------------------------------- an issuer's fetches


def machine(entry: str, routes: dict[str, Any], seen: list[httpx.Request]) -> MachineIssuer:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = routes.get(str(request.url))
        return httpx.Response(200, json=body) if body is not None else httpx.Response(404)

    spec = load_policy_text(f"issuers:\n  k8s: {entry}\n").issuers["k8s"]
    return MachineIssuer(spec, Clients(httpx.AsyncClient(transport=httpx.MockTransport(answer))), refresh_interval=0)


def test_discovery_then_jwks_and_the_bearer_only_to_the_issuers_own_origin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("gate-sa\n")
    seen: list[httpx.Request] = []
    m = machine(f"{{issuer: 'https://cluster.test', audience: a, user: '{{sub}}', token_file: '{token}'}}", {
        "https://cluster.test/.well-known/openid-configuration": {"issuer": "https://cluster.test",
                                                                  "jwks_uri": "https://elsewhere.test/keys"},
        "https://elsewhere.test/keys": public(KEYS[0]),
    }, seen)
    asyncio.run(m.jwks.get("k0"))
    assert [(str(r.url), r.headers.get("authorization")) for r in seen] == [
        ("https://cluster.test/.well-known/openid-configuration", "Bearer gate-sa"),
        ("https://elsewhere.test/keys", None)]


def test_a_configured_jwks_uri_gets_the_bearer_and_a_token_file_is_read_at_each_fetch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("first")
    seen: list[httpx.Request] = []
    m = machine(f"{{issuer: 'https://cluster.test', audience: a, user: '{{sub}}', token_file: '{token}', "
                "jwks_uri: 'https://kubernetes.default.svc:443/openid/v1/jwks'}", {
                    "https://kubernetes.default.svc/openid/v1/jwks": public(KEYS[0])}, seen)
    asyncio.run(m.jwks.get("k0"))
    token.write_text("rotated")
    with pytest.raises(Unauthenticated):
        asyncio.run(m.jwks.get("k9"))
    assert [r.headers.get("authorization") for r in seen] == ["Bearer first", "Bearer rotated"]


@pytest.mark.parametrize("discovery,words", [
    ({"issuer": "https://other.test", "jwks_uri": "https://cluster.test/keys"}, "names issuer 'https://other.test'"),
    ({"issuer": "https://cluster.test", "jwks_uri": "http://cluster.test/keys"}, "is not an https:// URL"),
    ({"issuer": "https://cluster.test"}, "is not an https:// URL"),
])
def test_a_discovery_document_that_does_not_match_is_refused(discovery: dict[str, Any], words: str) -> None:
    m = machine("{issuer: 'https://cluster.test', audience: a, user: '{sub}'}",
                {"https://cluster.test/.well-known/openid-configuration": discovery}, [])
    with pytest.raises(UpstreamUnavailable, match=words):
        asyncio.run(m.jwks.get("k0"))


def test_a_changed_ca_file_gets_a_client_of_its_own(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The cluster CA is rotated in place (a projected ConfigMap): the next fetch trusts the file as it is now."""
    ca = tmp_path / "ca.crt"
    shutil.copy(certifi.where(), ca)
    clients = Clients(httpx.AsyncClient())
    first = clients.get(str(ca))
    assert clients.get(str(ca)) is first and clients.get(None) is clients.default
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert clients.get(str(ca)) is not first
    asyncio.run(clients.aclose())
