"""Templates that make a machine caller's id and groups from its token's claims (proxy/claims.py)."""
from __future__ import annotations

from typing import Any

import pytest

from proxy.claims import local_account_refusal, machine_identity, parse_template, render, render_groups, unmet

K8S = {"sub": "system:serviceaccount:ml:trainer",
       "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "trainer"}}}


@pytest.mark.parametrize("text,claims,expected", [
    ("{sub}", K8S, "system:serviceaccount:ml:trainer"),
    ("k8s:{kubernetes.io/namespace}", K8S, "k8s:ml"),
    ("{kubernetes.io/namespace}/{kubernetes.io/serviceaccount/name}", K8S, "ml/trainer"),
    ("run-{run_number}", {"run_number": 17}, "run-17"),
    # a claim's value is inserted once, as text: template, subject and path syntax stay literal
    ("{sub}", {"sub": "{kubernetes.io/namespace}"}, "{kubernetes.io/namespace}"),
    ("gh:{repository}", {"repository": "../nlp", "nlp": "x"}, "gh:../nlp"),
    ("{a}{b}", {"a": "{", "b": "b}"}, "{b}"),
    ("{sub}", {"sub": "group:admins"}, "group:admins"),
    ("{sub}", {"sub": "a, group:b"}, "a, group:b"),
    # no usable value: nothing
    ("{sub}", {}, None),
    ("{sub}", {"sub": ""}, None),
    ("{sub}", {"sub": None}, None),
    ("{sub}", {"sub": True}, None),
    ("{sub}", {"sub": 1.5}, None),
    ("{sub}", {"sub": ["a"]}, None),
    ("{sub}", {"sub": {"a": "b"}}, None),
    ("{sub}", {"sub": "a\nb"}, None),
    ("{sub}", {"sub": "a\x00"}, None),
    ("{a/b}", {"a": "not-an-object"}, None),
    ("{a/b}", {"a/b": "flat claims are not nested ones"}, None),
    ("x-{sub}", {"sub": "ok", "other": None}, "x-ok"),
])
def test_render(text: str, claims: dict[str, Any], expected: str | None) -> None:
    assert render(parse_template(text), claims) == expected


@pytest.mark.parametrize("text,words", [
    ("static", "no placeholder"),
    ("{}", "names no claim"),
    ("{a//b}", "names no claim"),
    ("{ sub}", "names no claim"),
    ("{sub", "unmatched brace"),
    ("sub}", "unmatched brace"),
    ("{{sub}}", "unmatched brace"),
    ("{a{b}c}", "unmatched brace"),
])
def test_bad_templates_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_template(text)


def test_a_group_may_be_literal_and_a_whole_list_claim_gives_one_group_per_string() -> None:
    templates = tuple(parse_template(t, literal_ok=True) for t in ("ci", "{groups}", "team:{groups}", "k8s:{ns}"))
    claims = {"groups": ["a", "b", "", "c\nd", 3, True, {"x": 1}], "ns": "ml"}
    assert render_groups(templates, claims) == {"ci", "a", "b", "3", "k8s:ml"}
    assert render_groups(templates, {}) == {"ci"}


@pytest.mark.parametrize("claims,missing", [
    ({"repository_owner": "acme", "ref": "refs/heads/main"}, None),
    ({"repository_owner": "acme", "ref": "refs/heads/dev"}, None),
    ({"repository_owner": "Acme", "ref": "refs/heads/main"}, "repository_owner"),
    ({"repository_owner": ["acme"], "ref": "refs/heads/main"}, "repository_owner"),
    ({"ref": "refs/heads/main"}, "repository_owner"),
    ({"repository_owner": "acme", "ref": "refs/tags/v1"}, "ref"),
])
def test_required_claims(claims: dict[str, Any], missing: str | None) -> None:
    require = (("repository_owner", ("acme",)), ("ref", ("refs/heads/main", "refs/heads/dev")))
    assert unmet(require, claims) == missing


def test_machine_identity_refuses_with_the_reason() -> None:
    user, groups = parse_template("{sub}"), (parse_template("k8s:{kubernetes.io/namespace}"),)
    made = machine_identity(user, groups, (("kubernetes.io/namespace", ("ml",)),), K8S)
    assert (made.id, made.groups, made.refused) == ("system:serviceaccount:ml:trainer", {"k8s:ml"}, None)
    other = {**K8S, "kubernetes.io": {"namespace": "nlp"}}
    assert "kubernetes.io/namespace" in (machine_identity(user, groups, (("kubernetes.io/namespace", ("ml",)),),
                                                          other).refused or "")
    assert "sub" in (machine_identity(user, groups, (), {"kubernetes.io": {"namespace": "ml"}}).refused or "")
    assert "longer than" in (machine_identity(user, (), (), {"sub": "x" * 600}).refused or "")


@pytest.mark.parametrize("text,sub,refused", [
    ("{sub}", "root@corp.test", True),               # the claim alone would be a person's id
    ("{sub}", "x/../../alice@corp.test", True),
    ("{sub}@corp.test", "root", True),                # the claim still leads the id
    ("{email}", None, True),
    ("wi:{sub}", "sa@project.iam.example", False),    # a prefix of the policy's own: never a person's id
    ("{sub}", "system:serviceaccount:ml:trainer", False),
])
def test_an_id_never_reads_as_a_persons(text: str, sub: str | None, refused: bool) -> None:
    claims = {"sub": sub, "email": "root@corp.test"} if sub else {"email": "root@corp.test"}
    made = machine_identity(parse_template(text), (), (), claims)
    assert (made.id is None, "person's" in (made.refused or "")) == (refused, refused), made


def test_a_local_accounts_id_is_refused_whatever_its_case() -> None:
    assert "local account" in (local_account_refusal("CI-Bot", {"ci-bot"}) or "")
    assert local_account_refusal("op:ci-bot", {"ci-bot"}) is None
