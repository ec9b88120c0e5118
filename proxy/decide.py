"""The decision: what level a caller holds on a name, and whether that is enough. Pure functions."""
from __future__ import annotations

from dataclasses import dataclass

from .identity import Identity
from .policy import Grant, Level, Policy, Subject

_MAX_CONTEXTS = 10_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    kind: str               # experiment | model
    name: str
    needed: Level
    have: Level
    reason: str             # the rule that gave `have`

    def as_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "kind": self.kind, "name": self.name, "needed": str(self.needed),
                "have": str(self.have), "reason": self.reason}


@dataclass(frozen=True)
class Context:
    """What a policy says about one caller, computed once per (id, groups) and policy."""
    admin: bool
    roles: dict[str, Level]                           # team -> EDIT (member) | MANAGE (maintainer)
    grants: tuple[tuple[Grant, tuple[str, ...], tuple[str, ...]], ...]   # grant, experiment prefixes, model prefixes


def _matches(subject: Subject, ident: Identity, uid: str, teams: dict[str, Level]) -> bool:
    if subject.kind == "everyone":
        return True
    if subject.kind == "user":
        return subject.value == uid
    if subject.kind == "group":
        return subject.value in ident.groups
    return subject.value in teams


def context_for(policy: Policy, ident: Identity) -> Context:
    key = (ident.id, ident.groups)
    ctx = policy.contexts.get(key)
    if ctx is not None:
        return ctx
    uid = ident.id.lower()
    admin = any(_matches(s, ident, uid, {}) for s in policy.admins if s.kind != "team")
    roles: dict[str, Level] = {}
    subjects = [Subject("everyone"), Subject("user", uid)] + [Subject("group", g) for g in ident.groups]
    for subject in subjects:
        for team, level in policy.roles_by_subject.get(subject, {}).items():
            if level > roles.get(team, Level.NONE):
                roles[team] = level
    if any(s.kind == "team" and s.value in roles for s in policy.admins):
        admin = True
    grants = tuple(
        (g, tuple(p.replace("{user}", ident.id) for p in g.experiments),
         tuple(p.replace("{user}", ident.id) for p in g.models))
        for g in policy.grants if any(_matches(s, ident, uid, roles) for s in g.to))
    ctx = Context(admin, roles, grants)
    if len(policy.contexts) >= _MAX_CONTEXTS:
        policy.contexts.clear()
    policy.contexts[key] = ctx
    return ctx


def level_on(policy: Policy, ident: Identity, kind: str, name: str) -> tuple[Level, str]:
    """The highest level any rule gives `ident` on `name`, with the rule that gave it."""
    ctx = context_for(policy, ident)
    if ctx.admin:
        return Level.MANAGE, "admin"
    best, reason = Level.NONE, "no rule gives access"
    owner = policy.owner(kind, name)
    if owner is not None:
        role = ctx.roles.get(owner.name)
        if role is not None:
            best = role
            reason = f"{'maintainer' if role == Level.MANAGE else 'member'} of team {owner.name}"
        else:
            reason = "owned by another team, no grant"
    for grant, exps, models in ctx.grants:
        if grant.permission > best and any(name.startswith(p) for p in (exps if kind == "experiment" else models)):
            best, reason = grant.permission, f"grant {grant.where}"
    if owner is None and policy.default > best:
        best, reason = policy.default, f"default: {policy.default} (no team owns it)"
    return best, reason


def decide(policy: Policy, ident: Identity, kind: str, name: str, needed: Level) -> Decision:
    have, reason = level_on(policy, ident, kind, name)
    return Decision(have >= needed, kind, name, needed, have, reason)


def readable_prefixes(policy: Policy, ident: Identity, kind: str) -> list[str] | None:
    """Every name prefix `ident` may read, or None when that is not a finite list (admin, or a
    `default` that lets unowned names be read)."""
    ctx = context_for(policy, ident)
    if ctx.admin or policy.default >= Level.READ:
        return None
    prefixes = [p for team in ctx.roles for p in policy.teams[team].prefixes(kind)]
    prefixes += [p for _, exps, models in ctx.grants for p in (exps if kind == "experiment" else models)]
    return sorted(set(prefixes))


def is_admin(policy: Policy, ident: Identity) -> bool:
    return context_for(policy, ident).admin


def teams_of(policy: Policy, ident: Identity) -> dict[str, Level]:
    return dict(context_for(policy, ident).roles)


def run_checks(policy: Policy) -> list[str]:
    """The `checks` of a policy that do not hold, each as a sentence."""
    failures = []
    for check in policy.checks:
        ident = Identity(check.user, check.groups, via="check")
        have, reason = level_on(policy, ident, check.kind, check.name)
        holds = have >= check.level if check.allow else have < check.level
        if not holds:
            expect = f"allow {check.level}" if check.allow else f"deny {check.level}"
            failures.append(f"{check.where}: expected {expect} for {check.user} on {check.kind} {check.name!r}, "
                            f"but the level is {have} ({reason})")
    return failures
