"""The credential chain with the policy's `issuers:` (proxy/authn.py, proxy/issuers.py), in process, the issuers'
keys served by a fake transport: routing by `iss` to one issuer's keys, trust that follows the policy as it is
reloaded, and revocation."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from proxy.authn import Authenticator
from proxy.errors import Unauthenticated
from proxy.issuers import Issuers
from proxy.passwords import hash_password
from proxy.policy import Policy, load_policy_text
from tests.support.issuer import JwtIssuer, kubernetes_claims

A, B = "https://a.test", "https://b.test"


@pytest.fixture(scope="module")
def signers() -> dict[str, JwtIssuer]:
    return {A: JwtIssuer(), B: JwtIssuer()}       # never started: the fake transport serves their keys


def policy(*entries: str, extra: str = "") -> Policy:
    return load_policy_text("issuers:\n" + "".join(f"  {e}\n" for e in entries) + extra)


ENTRY_A = f"a: {{issuer: '{A}', audience: gate, jwks_uri: '{A}/keys', user: 'a:{{sub}}'}}"
ENTRY_B = f"b: {{issuer: '{B}', audience: gate, jwks_uri: '{B}/keys', user: 'b:{{sub}}'}}"


class Chain:
    def __init__(self, signers: dict[str, JwtIssuer]) -> None:
        self.fetches: list[str] = []

        def answer(request: httpx.Request) -> httpx.Response:
            self.fetches.append(str(request.url))
            return httpx.Response(200, json=signers[f"https://{request.url.host}"].jwks())

        self.authn = Authenticator("k" * 32, issuers=Issuers(httpx.AsyncClient(transport=httpx.MockTransport(answer)),
                                                            refresh_interval=0))

    def identify(self, token: str, p: Policy) -> Any:
        return asyncio.run(self.authn.identify({b"authorization": f"Bearer {token}".encode()}, p))


def token(signers: dict[str, JwtIssuer], signer: str, iss: str, sub: str = "job", **header: Any) -> str:
    return signers[signer].sign(kubernetes_claims("ml", sub, issuer=iss, audience="gate"), **header)


def test_a_token_is_verified_only_by_the_issuer_its_iss_names(signers: dict[str, JwtIssuer]) -> None:
    chain, p = Chain(signers), policy(ENTRY_A, ENTRY_B)
    ident = chain.identify(token(signers, A, A), p)
    assert (ident.id, ident.issuer, ident.via) == ("a:system:serviceaccount:ml:job", "a", "jwt")
    assert chain.identify(token(signers, B, B), p).issuer == "b"
    assert signers[A].kids == signers[B].kids          # the same kid in both JWKS, different keys
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        chain.identify(token(signers, A, B), p)
    with pytest.raises(Unauthenticated, match="not one this gate trusts"):
        chain.identify(token(signers, A, "https://c.test"), p)


def test_trust_follows_the_policy_as_it_is_reloaded(signers: dict[str, JwtIssuer]) -> None:
    chain = Chain(signers)
    seen = token(signers, A, A)
    assert chain.identify(seen, policy(ENTRY_A)).issuer == "a"
    assert chain.identify(seen, policy(ENTRY_A, ENTRY_B)).issuer == "a"     # reloaded, entry a unchanged
    assert chain.fetches == [f"{A}/keys"]                                   # its keys and cache kept
    with pytest.raises(Unauthenticated, match="not one this gate trusts"):
        chain.identify(seen, policy(ENTRY_B))                               # entry a removed: refused at once
    with pytest.raises(Unauthenticated, match="aud must include 'other'"):
        chain.identify(seen, policy(ENTRY_A.replace("audience: gate", "audience: other")))   # changed: verified anew
    renamed = ENTRY_A.replace("user: 'a:{sub}'", "user: 'new:{sub}'")
    assert chain.identify(seen, policy(renamed)).id == "new:system:serviceaccount:ml:job"


def test_revoked_users_refuses_a_machine_id_verified_before(signers: dict[str, JwtIssuer]) -> None:
    chain, seen = Chain(signers), token(signers, A, A)
    chain.identify(seen, policy(ENTRY_A))
    with pytest.raises(Unauthenticated, match="revoked"):
        chain.identify(seen, policy(ENTRY_A, extra="revoked_users: ['a:system:serviceaccount:ml:job']\n"))
    assert chain.identify(token(signers, A, A, sub="other"), policy(ENTRY_A, extra="revoked_users: "
                                                                    "['a:system:serviceaccount:ml:job']\n"))


def test_a_jwt_with_no_issuer_configured_says_so(signers: dict[str, JwtIssuer]) -> None:
    with pytest.raises(Unauthenticated, match="no identity provider or `issuers`"):
        Chain(signers).identify(token(signers, A, A), policy())


def test_a_machine_never_takes_a_local_accounts_id(signers: dict[str, JwtIssuer]) -> None:
    """An issuer whose ids have no prefix (`{sub}`) and a `sub` naming a local account: refused, even when
    the token was verified before the account was added."""
    bare = ENTRY_A.replace("user: 'a:{sub}'", "user: '{sub}'")
    chain, seen = Chain(signers), signers[A].sign({**kubernetes_claims("ml", "job", issuer=A, audience="gate"),
                                                   "sub": "deployer"})
    assert chain.identify(seen, policy(bare)).id == "deployer"
    account = "users: {Deployer: {password: '" + hash_password("pw-of-the-account") + "'}}\n"
    with pytest.raises(Unauthenticated, match="local account"):
        chain.identify(seen, policy(bare, extra=account))
