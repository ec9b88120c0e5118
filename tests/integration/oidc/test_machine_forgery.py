"""Forged machine tokens against a gate that trusts several issuers (`machines_gate`, conftest.py): every forgery is
a 401.

- The JWT forgery suite of test_gate_oidc.py, repeated for each issuer the gate trusts (its sign-in provider and the
  `issuers:` entries cluster, github and op): alg none, HS256 keyed with the issuer's public key, a valid signature
  over bad claims (iss, aud, exp, nbf), an unknown kid, an unpublished key under a real kid, a tampered payload.
- Issuer confusion: a token signed by one issuer and claiming another's `iss` (under either one's kid) is refused for
  every ordered pair; two JWKS publishing the same kid with different keys each verify only their own tokens.
- Template injection: claims that hold template syntax, subject syntax, separators, lists, objects or control
  characters stay data: the caller's id and groups are the literal text or nothing, never another subject or prefix.
"""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.integration.gate_it import uid
from tests.integration.oidc.conftest import MACHINE_AUDIENCE
from tests.integration.oidc.jwts import (
    assert_alg_none_refused,
    assert_hs256_with_public_key_refused,
    assert_tampering_refused,
    assert_unauthenticated,
    b64url,
    bad_claims,
    bearer,
    forge,
    op_signing_key,
)
from tests.integration.oidc.test_machines import ci_token, k8s_token, me
from tests.oidc.provider import OidcProvider, jwt_parts
from tests.support.gate import Gate
from tests.support.issuer import JwtIssuer, github_claims, kubernetes_claims

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

ISSUERS = ["provider", "cluster", "github", "op"]
CREATE = "/api/2.0/mlflow/experiments/create"


@dataclass
class Issued:
    """One issuer the gate trusts, as a forger sees it."""
    name: str                                   # the entry of `issuers:`; "provider" for the sign-in provider
    valid: Callable[[], str]                    # a real token of this issuer, for the gate
    key: Callable[[], RSAKey]                   # its current private signing key
    jwks: Callable[[], dict[str, Any]]          # what it publishes
    caller: str                                 # the id `valid()` signs in as


@pytest.fixture(scope="module")
def issuers(machines_gate: Gate, oidc_provider: OidcProvider, cluster_issuer: JwtIssuer, github_issuer: JwtIssuer,
            machine_op: OidcProvider) -> dict[str, Issued]:
    return {
        "provider": Issued("provider", lambda: oidc_provider.mint_jwt_access_token("alice@corp.test"),
                           lambda: op_signing_key(oidc_provider), oidc_provider.jwks, "alice@corp.test"),
        "cluster": Issued("cluster", lambda: k8s_token(cluster_issuer), lambda: cluster_issuer.keys[0],
                          cluster_issuer.jwks, "system:serviceaccount:vision:trainer"),
        "github": Issued("github", lambda: ci_token(github_issuer), lambda: github_issuer.keys[0],
                         github_issuer.jwks, "repo:acme/vision-train:ref:refs/heads/main"),
        "op": Issued("op", machine_op.client_credentials_token, lambda: op_signing_key(machine_op), machine_op.jwks,
                     "op:ci-bot"),
    }


@pytest.fixture(params=ISSUERS)
def issued(request: pytest.FixtureRequest, issuers: dict[str, Issued]) -> Issued:
    return issuers[request.param]


def resigned(issued: Issued, change: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c, **header: Any) -> str:
    """A real token's claims, changed, signed again with the issuer's own private key."""
    head, claims = jwt_parts(issued.valid())
    return forge(issued.key(), change({**claims, "jti": uid()}), kid=header.pop("kid", head.get("kid")), **header)


# ------------------------------------------------------------------------------------------------ the forgery suite


def test_control_real_and_re_signed_tokens_are_accepted(machines_gate: Gate, issued: Issued) -> None:
    """The forging harness itself makes tokens the gate accepts, so the refusals below are the checks' doing."""
    for token in (issued.valid(), resigned(issued)):
        who = me(machines_gate, token)
        assert who["id"] == issued.caller and who.get("issuer", "provider") == issued.name, who


def test_alg_none_is_refused(machines_gate: Gate, issued: Issued) -> None:
    assert_alg_none_refused(machines_gate, issued.valid())


def test_hs256_keyed_with_the_issuers_public_key_is_refused(machines_gate: Gate, issued: Issued) -> None:
    assert_hs256_with_public_key_refused(machines_gate, issued.valid(), issued.jwks())


BAD_CLAIMS = bad_claims("mlflow-gate-2",
                        pytest.param(lambda c, now: {**c, "exp": str(now + 600)}, id="exp-as-text"))


@pytest.mark.parametrize("change", BAD_CLAIMS)
def test_a_valid_signature_over_bad_claims_is_refused(machines_gate: Gate, issued: Issued,
                                                      change: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
    now = int(time.time())
    assert_unauthenticated(bearer(machines_gate, resigned(issued, lambda c: change(c, now))))


def test_an_unknown_kid_is_refused(machines_gate: Gate, issued: Issued) -> None:
    body = assert_unauthenticated(bearer(machines_gate, resigned(issued, kid="k-not-published")))
    assert "k-not-published" in body["message"]
    _, claims = jwt_parts(issued.valid())
    stranger = RSAKey.generate_key(2048)
    assert_unauthenticated(bearer(machines_gate, jwt.encode({"alg": "RS256"}, claims, stranger, algorithms=["RS256"])))


def test_an_unpublished_key_under_the_real_kid_is_refused(machines_gate: Gate, issued: Issued) -> None:
    header, claims = jwt_parts(issued.valid())
    stranger = RSAKey.generate_key(2048)
    assert_unauthenticated(bearer(machines_gate, forge(stranger, {**claims, "jti": uid()}, kid=header["kid"])))


def test_a_tampered_payload_is_refused(machines_gate: Gate, issued: Issued) -> None:
    token = issued.valid()
    _, claims = jwt_parts(token)
    changed = [{**claims, "sub": "system:serviceaccount:nlp:tuner"}, {**claims, "email": "root@corp.test"},
               {**claims, "kubernetes.io": {"namespace": "nlp"}}, {**claims, "repository": "acme/nlp-train"},
               {**claims, "exp": claims["exp"] + 86400}]
    assert_tampering_refused(machines_gate, token, changed, issued.valid())


def test_garbage_bearer_tokens_are_refused(machines_gate: Gate) -> None:
    lists = ".".join([b64url(b"[]"), b64url(b"[]"), "x"])
    iss_list = ".".join([b64url(b"{}"), b64url(json.dumps({"iss": ["a"]}).encode()), "x"])
    for token in ("a.b.c", "x" * 40, "eyJhbGciOiJSUzI1NiJ9..", "..", "a.b", "mgt_not-a-real-token", lists, iss_list):
        assert_unauthenticated(bearer(machines_gate, token))


# ------------------------------------------------------------------------------------------------ issuer confusion


@pytest.mark.parametrize("signer,claimed", list(itertools.permutations(ISSUERS, 2)))
def test_a_token_signed_by_one_issuer_claiming_anothers_iss_is_refused(
        machines_gate: Gate, issuers: dict[str, Issued], signer: str, claimed: str) -> None:
    """The signer's private key over the claimed issuer's real claims, under the claimed issuer's kid and under the
    signer's own: only the claimed issuer's keys may verify them, and they do not."""
    victim_header, victim_claims = jwt_parts(issuers[claimed].valid())
    signer_header, _ = jwt_parts(issuers[signer].valid())
    key = issuers[signer].key()
    for kid in (victim_header["kid"], signer_header["kid"]):
        assert_unauthenticated(bearer(machines_gate, forge(key, {**victim_claims, "jti": uid()}, kid=kid)))


def test_the_same_kid_in_two_jwks_verifies_only_its_own_issuers_tokens(
        machines_gate: Gate, cluster_issuer: JwtIssuer, github_issuer: JwtIssuer) -> None:
    kid = f"shared-{uid()}"
    cluster_issuer.rotate(kid=kid)
    github_issuer.rotate(kid=kid)                                   # another key, published under the same kid
    cluster_token, github_token = k8s_token(cluster_issuer), ci_token(github_issuer)
    assert jwt_parts(cluster_token)[0]["kid"] == jwt_parts(github_token)[0]["kid"] == kid
    assert me(machines_gate, github_token)["issuer"] == "github"
    assert me(machines_gate, cluster_token)["issuer"] == "cluster"
    # each issuer's key over the other's claims, under the shared kid
    cluster_claims = kubernetes_claims("vision", "trainer", issuer=cluster_issuer.issuer, audience=MACHINE_AUDIENCE)
    github = github_claims("acme/vision-train", issuer=github_issuer.issuer, audience=MACHINE_AUDIENCE)
    assert_unauthenticated(bearer(machines_gate, github_issuer.sign(cluster_claims)))
    assert_unauthenticated(bearer(machines_gate, cluster_issuer.sign(github)))
    github_issuer.rotate()                                          # the shared kid no longer signs new tokens
    cluster_issuer.rotate()


# ------------------------------------------------------------------------------------------------ template injection


@pytest.fixture(scope="module")
def vision_experiment(machines_gate: Gate, cluster_issuer: JwtIssuer) -> str:
    r = bearer(machines_gate, k8s_token(cluster_issuer), CREATE, "POST", json={"name": f"vision/held-{uid()}"})
    assert r.status_code == 200, r.text
    return str(r.json()["experiment_id"])


def k8s_with(cluster: JwtIssuer, **claims: Any) -> str:
    base = kubernetes_claims("sandbox", "job", issuer=cluster.issuer, audience=MACHINE_AUDIENCE)
    return cluster.sign({k: v for k, v in {**base, **claims}.items() if v is not ...})


def create(gate: Gate, token: str, name: str) -> int:
    return bearer(gate, token, CREATE, "POST", json={"name": name}).status_code


@pytest.mark.parametrize("claims,caller,groups", [
    pytest.param({"sub": "{kubernetes.io/namespace}"}, "{kubernetes.io/namespace}", ["k8s-sa:job", "k8s:sandbox"],
                 id="template-in-the-sub"),
    pytest.param({"sub": "group:k8s:nlp"}, "group:k8s:nlp", ["k8s-sa:job", "k8s:sandbox"], id="subject-syntax"),
    pytest.param({"kubernetes.io": {"namespace": "sandbox,k8s:nlp", "serviceaccount": {"name": "job"}}},
                 "system:serviceaccount:sandbox:job", ["k8s-sa:job", "k8s:sandbox,k8s:nlp"], id="separator"),
    pytest.param({"kubernetes.io": {"namespace": ["nlp", "vision"], "serviceaccount": {"name": "job"}}},
                 "system:serviceaccount:sandbox:job", ["k8s-sa:job"], id="list-in-a-mixed-template"),
    pytest.param({"kubernetes.io": {"namespace": {"nlp": True}, "serviceaccount": {"name": "job"}}},
                 "system:serviceaccount:sandbox:job", ["k8s-sa:job"], id="object"),
    pytest.param({"kubernetes.io": {"namespace": "sandbox\nk8s:nlp", "serviceaccount": {"name": "job"}}},
                 "system:serviceaccount:sandbox:job", ["k8s-sa:job"], id="newline-in-a-group"),
    pytest.param({"sub": "system:serviceaccount:sandbox:../../nlp"}, "system:serviceaccount:sandbox:../../nlp",
                 ["k8s-sa:job", "k8s:sandbox"], id="dot-segments"),
])
def test_claims_stay_data_in_the_callers_id_and_groups(machines_gate: Gate, cluster_issuer: JwtIssuer,
                                                       vision_experiment: str, claims: dict[str, Any], caller: str,
                                                       groups: list[str]) -> None:
    token = k8s_with(cluster_issuer, **claims)
    who = me(machines_gate, token)
    assert (who["id"], who["groups"], who["teams"], who["admin"]) == (caller, groups, {}, False)
    assert create(machines_gate, token, f"nlp/{uid()}") == 403
    assert create(machines_gate, token, f"vision/{uid()}") == 403
    r = bearer(machines_gate, token, f"/api/2.0/mlflow/experiments/get?experiment_id={vision_experiment}")
    assert r.status_code in (403, 404) and r.json()["error_code"] != "OK", r.text


@pytest.mark.parametrize("sub", ["", "system:serviceaccount:vision:trainer\n", "tab\there", True, None, ...,
                                 {"sub": "system:serviceaccount:vision:trainer"}, ["system:serviceaccount:vision:trainer"]],
                         ids=["empty", "newline", "tab", "boolean", "null", "missing", "object", "list"])
def test_an_id_claim_without_usable_text_is_refused(machines_gate: Gate, cluster_issuer: JwtIssuer, sub: Any) -> None:
    body = assert_unauthenticated(bearer(machines_gate, k8s_with(cluster_issuer, sub=sub)))
    assert "sub" in body["message"]


def test_a_claim_never_reaches_another_callers_prefix(machines_gate: Gate, cluster_issuer: JwtIssuer) -> None:
    """`users/{user}/` is each caller's own: an id holding `/..`, `{user}` or another id stays inside its own."""
    for sub in ("x/../../alice", "{user}", "alice/"):
        token = k8s_with(cluster_issuer, sub=sub)
        assert me(machines_gate, token)["id"] == sub
        assert create(machines_gate, token, f"users/{sub}/{uid()}") == 200
        assert create(machines_gate, token, f"users/alice@corp.test/{uid()}") == 403
        assert create(machines_gate, token, f"users/alice/{uid()}") == 403
        assert create(machines_gate, token, f"users/{{user}}/{uid()}") == (200 if sub == "{user}" else 403)


@pytest.mark.parametrize("sub", ["root@corp.test", "alice@corp.test", "ROOT@corp.test", "x/../../alice@corp.test"])
def test_a_claim_never_makes_a_persons_id(machines_gate: Gate, cluster_issuer: JwtIssuer, sub: str) -> None:
    """`user: "{sub}"` with a `sub` of the admin's (or a team member's) id: refused, not the admin."""
    body = assert_unauthenticated(bearer(machines_gate, k8s_with(cluster_issuer, sub=sub)))
    assert "person's" in body["message"] and "cluster" in body["message"], body


def test_repository_claims_stay_literal(machines_gate: Gate, github_issuer: JwtIssuer, vision_experiment: str) -> None:
    """A repository name is chosen by whoever creates the repository: it can make no group but its own."""
    for repository, group in (("acme/../nlp-train", "github:acme/../nlp-train"),
                              ("acme/vision-train}{sub", "github:acme/vision-train}{sub"),
                              ("acme/vision-train ", "github:acme/vision-train ")):
        token = ci_token(github_issuer, repository)
        who = me(machines_gate, token)
        assert who["groups"] == sorted(["github-actions", group]) and who["teams"] == {}, who
        r = bearer(machines_gate, token, f"/api/2.0/mlflow/experiments/get?experiment_id={vision_experiment}")
        assert r.status_code in (403, 404), r.text
        assert create(machines_gate, token, f"nlp/{uid()}") == 403

