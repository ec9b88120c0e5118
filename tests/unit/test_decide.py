"""Decisions, table-driven: the level each rule gives, and the rule named as the reason."""
from __future__ import annotations

import pytest

from proxy.decide import decide, level_on, run_checks
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from tests.support.policies import team

POLICY = load_policy_text("""
admins: [root@corp.test, group:ops]
default: read
teams:
""" + team("vision", "bob@corp.test", "group:vision", maintainers=["carol@corp.test"], experiments=["vision/"],
           models=["vision-"])
    + team("nlp", "nina@corp.test", experiments=["nlp/"]) + """grants:
  - {to: [everyone], experiments: ["shared/"], permission: edit}
  - {to: [team:nlp], experiments: ["vision/bench/"], permission: read}
  - {to: [everyone], experiments: ["users/{user}/"], models: ["users/{user}/"], permission: manage}
  - {to: [group:auditors], experiments: ["vision/", "nlp/"], permission: read}
""")


def who(uid: str, *groups: str) -> Identity:
    return Identity(uid, frozenset(groups))


@pytest.mark.parametrize(("ident", "kind", "name", "level", "reason"), [
    (who("root@corp.test"), "experiment", "nlp/x", Level.MANAGE, "admin"),
    (who("x@corp.test", "ops"), "experiment", "nlp/x", Level.MANAGE, "admin"),
    (who("bob@corp.test"), "experiment", "vision/a", Level.EDIT, "member of team vision"),
    (who("BOB@corp.test"), "experiment", "vision/a", Level.EDIT, "member of team vision"),
    (who("zed@corp.test", "vision"), "experiment", "vision/a", Level.EDIT, "member of team vision"),
    (who("carol@corp.test"), "experiment", "vision/a", Level.MANAGE, "maintainer of team vision"),
    (who("bob@corp.test"), "experiment", "nlp/a", Level.NONE, "owned by another team, no grant"),
    (who("bob@corp.test"), "model", "vision-a", Level.EDIT, "member of team vision"),
    (who("nina@corp.test"), "model", "vision-a", Level.NONE, "owned by another team, no grant"),
    (who("nina@corp.test"), "experiment", "vision/bench/1", Level.READ, "grant"),
    (who("nina@corp.test"), "experiment", "vision/benchmark", Level.NONE, "owned by another team"),
    (who("bob@corp.test"), "experiment", "shared/x", Level.EDIT, "grant"),
    (who("bob@corp.test"), "experiment", "users/bob@corp.test/x", Level.MANAGE, "grant"),
    (who("bob@corp.test"), "experiment", "users/nina@corp.test/x", Level.READ, "default: read"),
    (who("a@corp.test", "auditors"), "experiment", "nlp/x", Level.READ, "grant"),
    (who("a@corp.test"), "experiment", "nobody/x", Level.READ, "default: read (no team owns it)"),
    (who("a@corp.test"), "experiment", "visio", Level.READ, "default"),
])
def test_levels_and_reasons(ident: Identity, kind: str, name: str, level: Level, reason: str) -> None:
    have, why = level_on(POLICY, ident, kind, name)
    assert have == level
    assert reason in why


@pytest.mark.parametrize(("needed", "allowed"), [(Level.READ, True), (Level.EDIT, True), (Level.MANAGE, False)])
def test_decide_compares_levels(needed: Level, allowed: bool) -> None:
    d = decide(POLICY, who("bob@corp.test"), "experiment", "vision/x", needed)
    assert d.allowed is allowed and d.have == Level.EDIT and d.needed == needed


def test_default_none_denies_unowned_names() -> None:
    policy = load_policy_text("teams:\n  a: {members: [a@x.test], experiments: [a/]}\n")
    assert not decide(policy, who("a@x.test"), "experiment", "other/x", Level.READ).allowed


def test_failing_checks_are_reported() -> None:
    policy = load_policy_text("""
teams:
  a: {members: [a@x.test], experiments: [a/]}
checks:
  - {user: a@x.test, experiment: a/1, allow: manage}
  - {user: a@x.test, experiment: a/1, deny: read}
  - {user: a@x.test, experiment: a/1, allow: edit}
""")
    failures = run_checks(policy)
    assert len(failures) == 2
    assert "expected allow manage" in failures[0] and "expected deny read" in failures[1]


def test_a_thousand_teams_decide_by_prefix() -> None:
    teams = "\n".join(f"  t{i:04d}: {{members: [u{i}@x.test], experiments: [t{i:04d}/], models: [t{i:04d}-]}}"
                      for i in range(1000))
    policy = load_policy_text("teams:\n" + teams)
    ident = who("u500@x.test")
    assert decide(policy, ident, "experiment", "t0500/e", Level.EDIT).allowed
    assert not decide(policy, ident, "experiment", "t0501/e", Level.READ).allowed
    assert decide(policy, ident, "model", "t0500-m", Level.EDIT).allowed


def test_readable_prefixes() -> None:
    from proxy.decide import readable_prefixes

    strict = load_policy_text("""
teams:
  a: {members: [a@x.test], experiments: [a/], models: [a-]}
  b: {members: [b@x.test], experiments: [b/]}
grants:
  - {to: [team:b], experiments: [a/pub/], permission: read}
""")
    assert readable_prefixes(strict, who("a@x.test"), "experiment") == ["a/"]
    assert readable_prefixes(strict, who("a@x.test"), "model") == ["a-"]
    assert readable_prefixes(strict, who("b@x.test"), "experiment") == ["a/pub/", "b/"]
    assert readable_prefixes(strict, who("z@x.test"), "experiment") == []
    assert readable_prefixes(POLICY, who("bob@corp.test"), "experiment") is None      # default: read
    assert readable_prefixes(strict, Identity("root", frozenset()), "experiment") == []
