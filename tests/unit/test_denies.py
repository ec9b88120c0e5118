"""Denies in decisions, table-driven: they cap teams, grants and default (never admins), name the deny
that capped in the reason, and keep search push-down correct (a deny inside a readable prefix)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.decide import decide, level_on, readable_prefixes, run_checks, with_account_groups
from proxy.identity import Identity
from proxy.merge import Cursor, Lane, Merge
from proxy.plan import Stream, plan
from proxy.policy import Level, load_policy_text
from tests.support.policies import team

POLICY = load_policy_text("""
admins: [root@corp.test, group:ops]
default: edit
teams:
""" + team("vision", "bob@corp.test", "group:vision", "group:contractors", maintainers=["carol@corp.test"],
           experiments=["vision/"], models=["vision-"])
    + team("nlp", "nina@corp.test", experiments=["nlp/"]) + """grants:
  - {to: [everyone], experiments: ["shared/"], permission: edit}
  - {to: [everyone], experiments: ["users/{user}/"], permission: manage}
  - {to: [team:nlp], experiments: ["vision/bench/"], permission: read}
denies:
  - {to: [group:contractors], experiments: ["vision/secret/"], models: ["vision-secret-"], keep: read}
  - {to: [group:contractors], experiments: ["vision/secret/keys/"]}
  - {to: [team:nlp], experiments: ["vision/bench/private/"]}
  - {to: [everyone], experiments: ["users/{user}/frozen/"], keep: read}
  - {to: [everyone], experiments: ["legacy/"], keep: read}
  - {to: [group:ops, root@corp.test], experiments: ["vision/"], keep: none}
  - {to: [carol@corp.test], experiments: ["vision/hr/"], keep: edit}
users:
  dave@corp.test: {password: "scrypt$1$2$3$c2FsdA==$aGFzaA==", groups: [contractors]}
""", "p.yaml")


def who(uid: str, *groups: str) -> Identity:
    return Identity(uid, frozenset(groups))


CONTRACTOR = who("fiona@corp.test", "contractors")


@pytest.mark.parametrize(("ident", "kind", "name", "level", "reason"), [
    # a member capped where a deny names one of the member's groups, not elsewhere
    (CONTRACTOR, "experiment", "vision/a", Level.EDIT, "member of team vision"),
    (CONTRACTOR, "experiment", "vision/secret/x", Level.READ,
     "member of team vision, capped to read by deny p.yaml: denies[0]"),
    (CONTRACTOR, "model", "vision-secret-clf", Level.READ, "capped to read by deny p.yaml: denies[0]"),
    (CONTRACTOR, "model", "vision-clf", Level.EDIT, "member of team vision"),
    # two denies: the lower keep wins, and the reason names both
    (CONTRACTOR, "experiment", "vision/secret/keys/aws", Level.NONE,
     "capped to read by deny p.yaml: denies[0], capped to none by deny p.yaml: denies[1]"),
    # the same caller without the group is not capped
    (who("fiona@corp.test", "vision"), "experiment", "vision/secret/x", Level.EDIT, "member of team vision"),
    # a deny caps a grant (through team:) ...
    (who("nina@corp.test"), "experiment", "vision/bench/run", Level.READ, "grant p.yaml: grants[2]"),
    (who("nina@corp.test"), "experiment", "vision/bench/private/x", Level.NONE,
     "grant p.yaml: grants[2], capped to none by deny p.yaml: denies[2]"),
    # ... and `default` (unowned names), and a {user} grant through a {user} deny
    (who("zed@corp.test"), "experiment", "legacy/x", Level.READ,
     "default: edit (no team owns it), capped to read by deny p.yaml: denies[4]"),
    (who("zed@corp.test"), "experiment", "users/zed@corp.test/frozen/1", Level.READ, "capped to read by deny"),
    (who("zed@corp.test"), "experiment", "users/zed@corp.test/live/1", Level.MANAGE, "grant p.yaml: grants[1]"),
    # keep above what the caller has: no change
    (who("bob@corp.test"), "experiment", "vision/hr/x", Level.EDIT, "member of team vision"),
    (who("carol@corp.test"), "experiment", "vision/hr/x", Level.EDIT,
     "maintainer of team vision, capped to edit by deny p.yaml: denies[6]"),
    # admins are never capped, even by a deny that names them
    (who("root@corp.test"), "experiment", "vision/secret/keys/x", Level.MANAGE, "admin"),
    (who("x@corp.test", "ops", "contractors"), "experiment", "vision/secret/x", Level.MANAGE, "admin"),
])
def test_denies_cap_the_level(ident: Identity, kind: str, name: str, level: Level, reason: str) -> None:
    have, why = level_on(POLICY, ident, kind, name)
    assert (have, reason in why) == (level, True), why


def test_the_decision_says_which_deny_refused() -> None:
    d = decide(POLICY, CONTRACTOR, "experiment", "vision/secret/x", Level.EDIT)
    assert not d.allowed and d.have == Level.READ and "deny p.yaml: denies[0]" in d.reason
    assert d.as_json()["reason"] == d.reason


def test_a_local_account_gets_its_groups_from_users() -> None:
    dave = with_account_groups(POLICY, who("Dave@corp.test"))
    assert dave.groups == {"contractors"}
    assert level_on(POLICY, dave, "experiment", "vision/secret/x")[0] == Level.READ
    other = who("eve@corp.test", "x")
    assert with_account_groups(POLICY, other) is other


def test_checks_see_a_local_accounts_groups_and_denies() -> None:
    policy = load_policy_text(POLICY_TEXT_WITH_CHECKS, "c.yaml")
    assert run_checks(policy) == []


POLICY_TEXT_WITH_CHECKS = """
teams:
  vision: {members: [group:vision], experiments: ["vision/"]}
denies:
  - {to: [group:contractors], experiments: ["vision/"], keep: read}
users:
  dave@corp.test: {password: "scrypt$1$2$3$c2FsdA==$aGFzaA==", groups: [vision, contractors]}
checks:
  - {user: dave@corp.test, experiment: vision/a, allow: read}
  - {user: dave@corp.test, experiment: vision/a, deny: edit}
  - {user: erin@corp.test, groups: [vision], experiment: vision/a, allow: edit}
"""


@pytest.mark.parametrize(("ident", "kind", "expected"), [
    # a deny inside a readable prefix keeps the prefix (the item check hides the denied names)
    (CONTRACTOR, "experiment", ["shared/", "users/fiona@corp.test/", "vision/"]),
    # a keep-none deny over a whole readable prefix removes it
    (who("nina@corp.test"), "experiment", ["nlp/", "shared/", "users/nina@corp.test/", "vision/bench/"]),
])
def test_readable_prefixes_with_denies(ident: Identity, kind: str, expected: list[str]) -> None:
    policy = load_policy_text(POLICY_TEXT.replace("default: edit", "default: none"), "p.yaml")
    assert readable_prefixes(policy, ident, kind) == expected


POLICY_TEXT = """
default: edit
teams:
  vision: {members: [group:contractors], experiments: ["vision/"]}
  nlp: {members: [nina@corp.test], experiments: ["nlp/"]}
grants:
  - {to: [everyone], experiments: ["shared/"], permission: edit}
  - {to: [everyone], experiments: ["users/{user}/"], permission: manage}
  - {to: [team:nlp], experiments: ["vision/bench/", "vision/old/"], permission: read}
denies:
  - {to: [group:contractors], experiments: ["vision/secret/"]}
  - {to: [team:nlp], experiments: ["vision/old/"]}
"""


def test_a_single_readable_prefix_with_a_deny_inside_still_hides_the_denied_items() -> None:
    """The push-down filter covers the whole prefix; the item-by-item check drops what a deny hides."""
    policy = load_policy_text("""
teams:
  vision: {members: [group:contractors], experiments: ["vision/"]}
denies:
  - {to: [group:contractors], experiments: ["vision/secret/"]}
""", "p.yaml")
    prefixes = readable_prefixes(policy, CONTRACTOR, "experiment")
    assert prefixes == ["vision/"]
    streams = plan(prefixes, None)
    assert streams == [Stream("vision/", "name LIKE 'vision/%'")]
    upstream = [{"name": n} for n in ("vision/a", "vision/secret/x", "vision/b", "vision/secret/y", "vision/c")]

    async def fetch(stream: Stream, token: str | None, size: int) -> dict[str, Any]:
        start = int(token or 0)
        page = upstream[start:start + size]
        more = start + size < len(upstream)
        return {"experiments": page, **({"next_page_token": str(start + size)} if more else {})}

    def keep(stream: Stream, item: dict[str, Any]) -> bool:
        return decide(policy, CONTRACTOR, "experiment", item["name"], Level.READ).allowed

    def page(cursor: Cursor) -> tuple[list[str], Merge]:
        merge = Merge([Lane(streams[0], cursor)], fetch, keep, None, "experiments", 1000, 2)
        return [e["name"] for e in asyncio.run(merge.page())], merge

    first, merge = page(Cursor())
    assert first == ["vision/a", "vision/b"] and asyncio.run(merge.more())
    second, merge = page(merge.lanes[0].cursor)
    assert second == ["vision/c"] and not asyncio.run(merge.more())


def test_contexts_stay_cached_per_caller() -> None:
    policy = load_policy_text(POLICY_TEXT, "p.yaml")
    level_on(policy, CONTRACTOR, "experiment", "vision/a")
    ctx = policy.contexts[(CONTRACTOR.id, CONTRACTOR.groups)]
    level_on(policy, CONTRACTOR, "experiment", "vision/secret/b")
    assert policy.contexts[(CONTRACTOR.id, CONTRACTOR.groups)] is ctx
    assert [d.where for d, _, _ in ctx.denies] == ["p.yaml: denies[0]"]
