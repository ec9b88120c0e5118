"""`policy diff` and `policy who-can` on access, table-driven; subjects reached by several rules at once."""
from __future__ import annotations

import json
import textwrap

import pytest

from proxy.policy import Level, Policy, load_policy_text
from proxy.review import MARKER, diff, diff_markdown, diff_text, who_can, who_can_text
from tests.support.policies import team

BASE = ("""
admins: [group:ops]
default: none
teams:
""" + team("vision", "group:vision", "bob@corp.test", maintainers=["carol@corp.test"], experiments=["vision/"],
           models=["vision-"])
    + team("nlp", "group:nlp", experiments=["nlp/"], models=["nlp-"]) + """users:
  dave@corp.test: {password: "scrypt$1$2$3$c2FsdA==$aGFzaA==", groups: [vision]}
grants:
  - {to: [everyone], experiments: ["shared/"], permission: edit}
  - {to: [everyone], experiments: ["users/{user}/"], models: ["users/{user}/"], permission: manage}
""")


def policy(extra: str = "", base: str = BASE, grants: str = "") -> Policy:
    """`base`, more grants (lines of the `grants:` list), then more top-level keys."""
    return load_policy_text(base + grants + textwrap.dedent(extra), "p.yaml")


def changes(old: Policy, new: Policy) -> set[tuple[str, str, str, str, str]]:
    return {(c.subject, c.kind, c.prefix, str(c.before), str(c.after)) for c in diff(old, new).changes}


@pytest.mark.parametrize(("grants", "extra", "expected"), [
    # nothing changes
    ("", "", set()),
    # bob: member of vision AND a grant AND a deny on the same prefixes (three rules, one subject)
    ("  - {to: [bob@corp.test], experiments: [\"nlp/shared/\"], permission: read}\n",
     "denies:\n  - {to: [bob@corp.test], experiments: [\"vision/secret/\", \"nlp/shared/x/\"]}\n",
     {("user:bob@corp.test", "experiment", "nlp/shared/", "none", "read"),
      ("user:bob@corp.test", "experiment", "vision/secret/", "edit", "none")}),
    # a deny on a group that is also a team's members: that group's line (and the local account in it)
    ("", "denies:\n  - {to: [group:vision], experiments: [\"vision/\"], keep: read}\n",
     {("group:vision", "experiment", "vision/", "edit", "read"),
      ("user:dave@corp.test", "experiment", "vision/", "edit", "read")}),   # a local account in group:vision
    # a deny on everyone caps a maintainer, members, a local account (by its groups) and a {user} area
    ("", "denies:\n  - {to: [everyone], experiments: [\"vision/\", \"users/{user}/\"], keep: read}\n",
     {("user:carol@corp.test", "experiment", "vision/", "manage", "read"),
      ("group:vision", "experiment", "vision/", "edit", "read"),
      ("user:bob@corp.test", "experiment", "vision/", "edit", "read"),
      ("user:dave@corp.test", "experiment", "vision/", "edit", "read"),
      ("everyone", "experiment", "users/{user}/", "manage", "read")}),
    # a grant to team:nlp: one team line, not one per member (they are implied)
    ("  - {to: [team:nlp], experiments: [\"vision/bench/\"], permission: read}\n", "",
     {("team:nlp", "experiment", "vision/bench/", "none", "read")}),
    # a team grant and a deny on one of its member groups inside it: the team line, and the group's own
    ("  - {to: [team:nlp], experiments: [\"vision/bench/\"], permission: read}\n",
     "denies:\n  - {to: [group:nlp], experiments: [\"vision/bench/raw/\"]}\n",
     {("team:nlp", "experiment", "vision/bench/", "none", "read")}),
    # {user} grant for a group: its members' own areas
    ("  - {to: [group:nlp], models: [\"team-nlp/{user}/\"], permission: edit}\n", "",
     {("group:nlp", "model", "team-nlp/{user}/", "none", "edit")}),
    # a user named by a grant and a team and a {user} grant at once
    ("  - {to: [bob@corp.test, group:vision], experiments: [\"users/{user}/\", \"nlp/\"], permission: read}\n", "",
     {("user:bob@corp.test", "experiment", "nlp/", "none", "read"), ("group:vision", "experiment", "nlp/", "none", "read"),
      ("user:dave@corp.test", "experiment", "nlp/", "none", "read")}),
    # default: every unowned name, for everyone; owned names are untouched
    ("", "default: read\n", {("everyone", "experiment", "", "none", "read"), ("everyone", "model", "", "none", "read")}),
    # a new admin: every name, and the prefixes where it held something else
    ("", "admins: [group:ops, carol@corp.test]\n",
     {("user:carol@corp.test", "experiment", "", "none", "manage"),
      ("user:carol@corp.test", "experiment", "shared/", "edit", "manage"),
      ("user:carol@corp.test", "model", "", "none", "manage")}),
    # a deny naming an admin changes nothing
    ("", "denies:\n  - {to: [group:ops], experiments: [\"vision/\"]}\n", set()),
])
def test_diff(grants: str, extra: str, expected: set[tuple[str, str, str, str, str]]) -> None:
    old, new = policy(), policy(extra, grants=grants)
    assert changes(old, new) == expected
    assert changes(new, old) == {(s, k, p, a, b) for s, k, p, b, a in expected}


def test_team_membership_and_maintainers_move() -> None:
    old = policy()
    new = load_policy_text(BASE.replace('maintainers: ["carol@corp.test"]', 'maintainers: ["carol@corp.test", "group:nlp"]')
                           .replace('members: ["group:vision", "bob@corp.test"]', 'members: ["group:vision"]'), "p.yaml")
    assert changes(old, new) == {
        ("group:nlp", "experiment", "vision/", "none", "manage"), ("group:nlp", "model", "vision-", "none", "manage"),
        ("user:bob@corp.test", "experiment", "vision/", "edit", "none"),
        ("user:bob@corp.test", "model", "vision-", "edit", "none")}
    d = diff(old, new)
    assert d.widens and diff(new, policy()).widens and not diff(old, old).widens


def test_a_narrowing_only_change_does_not_widen() -> None:
    d = diff(policy(), policy("denies:\n  - {to: [everyone], experiments: [\"shared/\"], keep: read}\n"))
    assert [c.as_json() for c in d.changes] == [
        {"subject": "everyone", "kind": "experiment", "prefix": "shared/", "before": "edit", "after": "read"}]
    assert not d.widens


def test_a_new_team_narrows_default_and_widens_its_members() -> None:
    old = policy("default: read\n")
    new = policy("default: read\n", BASE.replace("teams:\n", "teams:\n  cv:\n    members: [group:cv]\n"
                                                              "    experiments: [\"cv/\"]\n"))
    assert changes(old, new) == {("everyone", "experiment", "cv/", "read", "none"),
                                 ("group:cv", "experiment", "cv/", "read", "edit")}


@pytest.mark.parametrize(("old_extra", "new_extra", "what", "widens"), [
    ("revoked_users: [eve@corp.test]\n", "", "user eve@corp.test is no longer revoked", True),
    ("", "revoked_users: [eve@corp.test]\n", "user eve@corp.test is revoked", False),
    ("revoked_tokens: [t1]\n", "", "personal token t1 is no longer revoked", True),
    ("", "limits: {requests_per_minute: 60}\n", "requests_per_minute: no limit -> 60", False),
])
def test_other_changes(old_extra: str, new_extra: str, what: str, widens: bool) -> None:
    d = diff(policy(old_extra), policy(new_extra))
    assert [(o.what, o.widens) for o in d.other] == [(what, widens)] and d.changes == []
    assert d.widens is widens


def test_protected_aliases_and_local_accounts_are_reported() -> None:
    protected = BASE.replace('models: ["vision-"]', 'models: ["vision-"]\n    protected_aliases: [champion]')
    d = diff(policy(base=protected), policy())
    assert [(o.what, o.widens) for o in d.other] == [
        ("team vision: alias 'champion' is no longer protected (edit may move it)", True)]
    no_dave = BASE.replace('  dave@corp.test: {password: "scrypt$1$2$3$c2FsdA==$aGFzaA==", groups: [vision]}\n', "")
    d = diff(policy(base=no_dave), policy())
    assert ("local account dave@corp.test can sign in", True) in [(o.what, o.widens) for o in d.other]
    assert ("user:dave@corp.test", "experiment", "vision/", "none", "edit") in changes(policy(base=no_dave), policy())


def test_renderings() -> None:
    old, new = policy(), policy("denies:\n  - {to: [group:vision], experiments: [\"vision/a|b\"]}\n"
                                "admins: [group:ops, carol@corp.test]\n")
    d = diff(old, new)
    text = diff_text(d)
    assert "+ user:carol@corp.test  experiment  (every name)  none -> manage  [admin]" in text
    assert "- group:vision  experiment  vision/a|b  edit -> none" in text
    assert text.endswith("widen access.")
    md = diff_markdown(d, "main → PR")
    assert md.startswith(MARKER) and "### mlflow-gate policy diff: main → PR" in md
    assert "| ⬆️ widens | `user:carol@corp.test` (admin) | experiment | (every name) | none | manage |" in md
    assert "`vision/a&#124;b`" in md    # a | in a name cannot break the table
    data = json.loads(json.dumps(d.as_json()))
    assert set(data) >= {"changes", "widens"} and data["widens"] is True
    assert all(set(c) >= {"subject", "kind", "prefix", "before", "after"} for c in data["changes"])
    assert diff_text(diff(old, old)) == "No change of access."
    assert diff_markdown(diff(old, old)).endswith("No change of access.")


WHO = (BASE + textwrap.dedent("""
    denies:
      - {to: [group:contractors], experiments: ["vision/secret/"], keep: read}
      - {to: [bob@corp.test], experiments: ["vision/secret/"]}
""")).replace("grants:\n", "grants:\n  - {to: [team:nlp], experiments: [\"vision/secret/shared/\"], permission: read}\n")


@pytest.mark.parametrize(("kind", "name", "holders", "capped"), [
    ("experiment", "vision/secret/x",
     [("group:ops", "manage", "admin"), ("user:carol@corp.test", "manage", "maintainer of team vision"),
      ("team:vision", "edit", "member of team vision"), ("group:vision", "edit", "member of team vision"),
      ("user:dave@corp.test", "edit", "member of team vision")], []),
    ("experiment", "vision/secret/shared/y",
     [("group:ops", "manage", "admin"), ("user:carol@corp.test", "manage", "maintainer of team vision"),
      ("team:vision", "edit", "member of team vision"), ("group:vision", "edit", "member of team vision"),
      ("user:dave@corp.test", "edit", "member of team vision"), ("team:nlp", "read", "grant p.yaml: grants[0]"),
      ("group:nlp", "read", "grant p.yaml: grants[0]")], []),
    ("experiment", "shared/x", [("group:ops", "manage", "admin"), ("everyone", "edit", "grant p.yaml: grants[1]")], []),
    ("experiment", "users/erin@corp.test/x",
     [("group:ops", "manage", "admin"), ("user:erin@corp.test", "manage", "grant p.yaml: grants[2]")], []),
    ("model", "nobody-owns", [("group:ops", "manage", "admin")], []),
])
def test_who_can(kind: str, name: str, holders: list[tuple[str, str, str]], capped: list[tuple[str, str, str]]) -> None:
    answer = who_can(load_policy_text(WHO, "p.yaml"), kind, name)
    assert [(h.subject, str(h.level), h.rule) for h in answer.holders] == holders
    assert [(h.subject, str(h.level), h.rule) for h in answer.capped] == capped
    assert answer.as_json()["name"] == name and answer.as_json()["kind"] == kind


def test_who_can_shows_the_deny_that_caps() -> None:
    p = load_policy_text(WHO.replace("default: none", "default: none") .replace(
        "{to: [everyone], experiments: [\"shared/\"], permission: edit}",
        "{to: [everyone], experiments: [\"shared/\", \"vision/secret/\"], permission: edit}"), "p.yaml")
    answer = who_can(p, "experiment", "vision/secret/x")
    assert ("everyone", Level.EDIT) == (answer.holders[1].subject, answer.holders[1].level) or any(
        h.subject == "everyone" for h in answer.holders)
    capped = {h.subject: (h.level, h.rule) for h in answer.capped}
    assert capped["user:bob@corp.test"][0] == Level.NONE and "deny p.yaml: denies[1]" in capped["user:bob@corp.test"][1]
    assert capped["group:contractors"][0] == Level.READ
    text = who_can_text(answer)
    assert "capped below everyone's level by denies:" in text and "user:bob@corp.test  none" in text
