"""`issuers:` in the policy: strict reading with every problem's location, cross-file rules, `checks` that name a
machine caller by its issuer and claims, and `policy diff` telling that a new issuer widens access."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.cli_policy import policy_check
from proxy.decide import run_checks
from proxy.passwords import hash_password
from proxy.policy import PolicyError, load_policy, load_policy_text, load_policy_texts
from proxy.review import diff

K8S = """\
issuers:
  kubernetes:
    issuer: https://kubernetes.default.svc.cluster.local/
    audience: mlflow-gate
    jwks_uri: https://kubernetes.default.svc/openid/v1/jwks
    ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
    user: "{sub}"
    groups: ["k8s:{kubernetes.io/namespace}", "everyone-in-the-cluster"]
    require: {kubernetes.io/namespace: [ml, nlp]}
"""
TEAMS = """\
teams:
  ml:
    members: ["user:system:serviceaccount:ml:trainer"]
    experiments: ["ml/"]
    models: ["ml-"]
  nlp:
    members: ["group:k8s:nlp"]
    experiments: ["nlp/"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def test_an_issuer_is_read_whole() -> None:
    [issuer] = load_policy_text(K8S).issuers.values()
    assert issuer.name == "kubernetes" and issuer.issuer == "https://kubernetes.default.svc.cluster.local"
    assert issuer.audience == "mlflow-gate" and issuer.jwks_uri == "https://kubernetes.default.svc/openid/v1/jwks"
    assert issuer.user.text == "{sub}" and [g.text for g in issuer.groups] == ["k8s:{kubernetes.io/namespace}",
                                                                            "everyone-in-the-cluster"]
    assert issuer.require == (("kubernetes.io/namespace", ("ml", "nlp")),)
    assert issuer.token_file and issuer.ca_file and issuer.where == "<text>: issuers.kubernetes"


@pytest.mark.parametrize("entry,where,words", [
    ("{audience: a, user: '{sub}'}", "issuers.x.issuer", "https:// URL is required"),
    ("{issuer: http://idp.example.com, audience: a, user: '{sub}'}", "issuers.x.issuer", "must be an https:// URL"),
    ("{issuer: 'https://idp.example.com?x=1', audience: a, user: '{sub}'}", "issuers.x.issuer", "no query"),
    ("{issuer: 'ftp://idp', audience: a, user: '{sub}'}", "issuers.x.issuer", "https://"),
    ("{issuer: https://idp.example.com, user: '{sub}'}", "issuers.x.audience", "is required"),
    ("{issuer: https://idp.example.com, audience: '  ', user: '{sub}'}", "issuers.x.audience", "is required"),
    ("{issuer: https://idp.example.com, audience: a}", "issuers.x.user", "template of claims is required"),
    ("{issuer: https://idp.example.com, audience: a, user: bot}", "issuers.x.user", "no placeholder"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub'}", "issuers.x.user", "unmatched brace"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', groups: ['{}']}", "issuers.x.groups[0]",
     "names no claim"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', groups: [1]}", "issuers.x.groups[0]",
     "non-empty string"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', jwks_uri: 'http://keys.example.com'}",
     "issuers.x.jwks_uri", "https://"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', ca_file: ca.crt}", "issuers.x.ca_file",
     "absolute file path"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', token_file: 3}", "issuers.x.token_file",
     "absolute file path"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', require: {owner: []}}", "issuers.x.require.owner",
     "list the values"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', require: [owner]}", "issuers.x.require",
     "must be a mapping"),
    ("{issuer: https://idp.example.com, audience: a, user: '{sub}', claims: {}}", "issuers.x.claims", "unknown key"),
    ("[https://idp.example.com]", "issuers.x", "must be a mapping"),
])
def test_every_problem_of_an_issuer_is_told_with_its_location(entry: str, where: str, words: str) -> None:
    found = problems(f"issuers:\n  x: {entry}\n")
    assert any(f"p.yaml: {where} (line " in p and words in p for p in found), found


def test_loopback_issuers_may_use_http_and_names_are_checked() -> None:
    ok = load_policy_text("issuers:\n  dev: {issuer: 'http://127.0.0.1:8080', audience: a, user: '{sub}'}\n")
    assert ok.issuers["dev"].issuer == "http://127.0.0.1:8080"
    assert any("issuers.bad name" in p and "an issuer's name" in p
               for p in problems("issuers:\n  bad name: {issuer: 'https://a.example', audience: a, user: '{sub}'}\n"))


def test_one_entry_per_issuer_url_and_per_name_across_files() -> None:
    same_url = "issuers:\n  b: {issuer: 'https://kubernetes.default.svc.cluster.local', audience: x, user: 'b:{sub}'}\n"
    with pytest.raises(PolicyError) as info:
        load_policy_texts([(K8S, "a.yaml"), (same_url, "b.yaml")])
    assert any("b.yaml: issuers.b.issuer" in str(p) and "already trusted as a.yaml: issuers.kubernetes" in str(p)
               for p in info.value.problems), info.value
    with pytest.raises(PolicyError) as info:
        load_policy_texts([(K8S, "a.yaml"), (K8S, "b.yaml")])
    assert any("b.yaml: issuers.kubernetes" in str(p) and "also defined" in str(p) for p in info.value.problems)
    merged = load_policy_texts([(K8S, "a.yaml"), (TEAMS, "b.yaml")])
    assert list(merged.issuers) == ["kubernetes"] and set(merged.teams) == {"ml", "nlp"}


def test_checks_name_machine_callers_by_their_issuer_and_claims() -> None:
    checks = """\
checks:
  - {user: "system:serviceaccount:ml:trainer", experiment: ml/a, allow: edit}
  - issuer: kubernetes
    claims: {sub: "system:serviceaccount:ml:trainer", kubernetes.io: {namespace: ml}}
    model: ml-resnet
    allow: edit
  - issuer: kubernetes
    claims: {sub: "system:serviceaccount:nlp:x", kubernetes.io: {namespace: nlp}}
    experiment: nlp/a
    allow: edit
  - issuer: kubernetes
    claims: {sub: "system:serviceaccount:nlp:y", kubernetes.io: {namespace: nlp}}
    experiment: ml/a
    allow: edit
  - issuer: kubernetes
    claims: {sub: "system:serviceaccount:web:x", kubernetes.io: {namespace: web}}
    experiment: ml/a
    allow: read
"""
    failures = run_checks(load_policy_texts([(K8S, "a.yaml"), (TEAMS + checks, "b.yaml")]))
    assert len(failures) == 2, failures
    assert "checks[3]" in failures[0] and "system:serviceaccount:nlp:y" in failures[0]   # nlp's member, not ml's
    assert "checks[4]" in failures[1] and "issuer kubernetes refuses these claims" in failures[1] \
        and "kubernetes.io/namespace" in failures[1]


def test_a_check_whose_claims_would_take_a_persons_or_a_local_accounts_id_fails() -> None:
    users = f"users:\n  deployer: {{password: '{hash_password('pw-of-the-account')}', groups: [ml]}}\n"
    checks = """\
checks:
  - {issuer: kubernetes, claims: {sub: deployer, kubernetes.io: {namespace: ml}}, experiment: ml/a, allow: read}
  - {issuer: kubernetes, claims: {sub: a@corp.test, kubernetes.io: {namespace: ml}}, experiment: ml/a, allow: read}
"""
    failures = run_checks(load_policy_texts([(K8S, "a.yaml"), (TEAMS + users + checks, "b.yaml")]))
    assert len(failures) == 2, failures
    assert "checks[0]" in failures[0] and "local account" in failures[0]
    assert "checks[1]" in failures[1] and "person's" in failures[1]


@pytest.mark.parametrize("check,words", [
    ("{issuer: nowhere, claims: {sub: x}, experiment: a, allow: read}", "names no entry of `issuers`"),
    ("{issuer: kubernetes, experiment: a, allow: read}", "the claims of the machine caller's token"),
    ("{issuer: kubernetes, claims: {sub: x}, user: a@b.c, experiment: a, allow: read}", "not both"),
    ("{claims: {sub: x}, experiment: a, allow: read}", "`claims` go with `issuer`"),
    ("{experiment: a, allow: read}", "or `issuer` and `claims`"),
])
def test_bad_machine_checks(check: str, words: str) -> None:
    found = problems(K8S + f"checks:\n  - {check}\n")
    assert any(words in p for p in found), found


def test_policy_check_validates_issuers_and_runs_machine_checks(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("issuers:\n  k8s: {issuer: 'http://cluster', audience: '', user: '{sub'}\n")
    assert policy_check(argparse.Namespace(path=str(bad))) == 1
    out = capsys.readouterr().out
    for where in ("issuers.k8s.issuer", "issuers.k8s.audience", "issuers.k8s.user"):
        assert where in out, out
    good = tmp_path / "good.yaml"
    good.write_text(K8S + TEAMS + "checks:\n  - {issuer: kubernetes, claims: {sub: 'system:serviceaccount:nlp:a', "
                    "kubernetes.io: {namespace: nlp}}, experiment: nlp/x, allow: edit}\n")
    assert policy_check(argparse.Namespace(path=str(good))) == 0
    assert "1/1 checks hold" in capsys.readouterr().out


def test_policy_diff_tells_a_new_or_changed_issuer_widens_access() -> None:
    old = load_policy_text(TEAMS)
    new = load_policy_text(TEAMS + K8S)
    d = diff(old, new)
    assert d.widens and any("issuer kubernetes" in o.what and o.widens for o in d.other)
    changed = load_policy_text(TEAMS + K8S.replace("audience: mlflow-gate", "audience: other"))
    assert [o.what for o in diff(new, changed).other] == ["issuer kubernetes: audience changed"]
    assert not diff(new, old).widens and diff(new, old).other[0].what == "issuer kubernetes is no longer trusted"
    moved = load_policy_text("# a comment moves every line\n" + TEAMS + K8S)
    assert diff(new, moved).other == []


POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.mark.parametrize("name", sorted(p.name for p in POLICIES.glob("*.yaml")))
def test_the_example_policies_load_and_their_checks_hold(name: str) -> None:
    """The files README and docs/policy.md tell readers to copy (machines.yaml: its machine checks)."""
    policy = load_policy(POLICIES / name)
    assert policy.checks and run_checks(policy) == []
