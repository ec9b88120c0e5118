"""The decision: what level a caller holds on a name, and whether that is enough. Pure functions."""
from __future__ import annotations

from dataclasses import dataclass

from .claims import local_account_refusal, machine_identity
from .identity import Identity
from .policy import Check, Deny, Grant, Level, Policy, Rule, Subject

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


Scoped = tuple[tuple[str, ...], tuple[str, ...]]   # experiment prefixes, model prefixes ({user} filled in)


@dataclass(frozen=True)
class Context:
    """What a policy says about one caller, computed once per (id, groups) and policy."""
    admin: bool
    roles: dict[str, Level]                           # team -> EDIT (member) | MANAGE (maintainer)
    grants: tuple[tuple[Grant, tuple[str, ...], tuple[str, ...]], ...]   # grant, experiment prefixes, model prefixes
    denies: tuple[tuple[Deny, tuple[str, ...], tuple[str, ...]], ...] = ()   # the denies that match the caller


def _matches(subject: Subject, ident: Identity, uid: str, teams: dict[str, Level]) -> bool:
    if subject.kind == "everyone":
        return True
    if subject.kind == "user":
        return subject.value == uid
    if subject.kind == "group":
        return subject.value in ident.groups
    return subject.value in teams


def _scoped(rule: Rule, uid: str) -> Scoped:
    return (tuple(p.replace("{user}", uid) for p in rule.experiments),
            tuple(p.replace("{user}", uid) for p in rule.models))


def build_context(policy: Policy, ident: Identity, roles: dict[str, Level] | None = None) -> Context:
    """The caller's admin flag, team roles, and the grants and denies that name it (uncached).

    `roles` seeds team roles the caller holds whatever the policy's members say (what-if
    callers of `policy diff` and `who-can`: "a member of team T")."""
    uid = ident.id.lower()
    admin = any(_matches(s, ident, uid, {}) for s in policy.admins if s.kind != "team")
    roles = dict(roles or {})
    subjects = [Subject("everyone"), Subject("user", uid)] + [Subject("group", g) for g in ident.groups]
    for subject in subjects:
        for team, level in policy.roles_by_subject.get(subject, {}).items():
            if level > roles.get(team, Level.NONE):
                roles[team] = level
    if any(s.kind == "team" and s.value in roles for s in policy.admins):
        admin = True
    grants = tuple((g, *_scoped(g, ident.id)) for g in policy.grants if any(_matches(s, ident, uid, roles) for s in g.to))
    denies = tuple((d, *_scoped(d, ident.id)) for d in policy.denies if any(_matches(s, ident, uid, roles) for s in d.to))
    return Context(admin, roles, grants, denies)


def context_for(policy: Policy, ident: Identity) -> Context:
    key = (ident.id, ident.groups)
    ctx = policy.contexts.get(key)
    if ctx is not None:
        return ctx
    ctx = build_context(policy, ident)
    if len(policy.contexts) >= _MAX_CONTEXTS:
        policy.contexts.clear()
    policy.contexts[key] = ctx
    return ctx


def level_on(policy: Policy, ident: Identity, kind: str, name: str) -> tuple[Level, str]:
    """The highest level any rule gives `ident` on `name`, capped by the denies, with the rules that decided it."""
    return level_in(policy, context_for(policy, ident), kind, name)


def level_in(policy: Policy, ctx: Context, kind: str, name: str) -> tuple[Level, str]:
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
    for deny, exps, models in ctx.denies:
        if deny.keep < best and any(name.startswith(p) for p in (exps if kind == "experiment" else models)):
            best, reason = deny.keep, f"{reason}, capped to {deny.keep} by deny {deny.where}"
    return best, reason


def decide(policy: Policy, ident: Identity, kind: str, name: str, needed: Level) -> Decision:
    have, reason = level_on(policy, ident, kind, name)
    return Decision(have >= needed, kind, name, needed, have, reason)


def prefixes_at(policy: Policy, ident: Identity, kind: str, level: Level) -> list[str]:
    """The prefixes of `kind` names (experiment | model) under which teams and grants give `ident` at least
    `level`, leaving out those wholly under a deny that caps below it (a narrower deny inside one still lowers
    some names: the item-by-item decision has the last word). Names no team owns get `default` on top."""
    ctx = context_for(policy, ident)
    prefixes = [p for team, role in ctx.roles.items() if role >= level and team in policy.teams
                for p in policy.teams[team].prefixes(kind)]
    prefixes += [p for grant, exps, models in ctx.grants if grant.permission >= level
                 for p in (exps if kind == "experiment" else models)]
    blocked = [p for deny, exps, models in ctx.denies if deny.keep < level
               for p in (exps if kind == "experiment" else models)]
    return sorted({p for p in prefixes if not any(p.startswith(b) for b in blocked)})


def readable_prefixes(policy: Policy, ident: Identity, kind: str) -> list[str] | None:
    """Prefixes that cover every name `ident` may read (`prefixes_at` read: a superset), or None when that is not
    a finite list (admin, or a `default` that lets unowned names be read)."""
    if context_for(policy, ident).admin or policy.default >= Level.READ:
        return None
    return prefixes_at(policy, ident, kind, Level.READ)


def is_admin(policy: Policy, ident: Identity) -> bool:
    return context_for(policy, ident).admin


def teams_of(policy: Policy, ident: Identity) -> dict[str, Level]:
    return dict(context_for(policy, ident).roles)


def with_account_groups(policy: Policy, ident: Identity) -> Identity:
    """`ident` with the groups the policy's `users:` gives its local account, as a password sign-in has them."""
    extra = policy.account_groups(ident.id)
    return ident if extra <= ident.groups else Identity(ident.id, ident.groups | extra, via=ident.via)


def run_checks(policy: Policy) -> list[str]:
    """The `checks` of a policy that do not hold, each as a sentence."""
    failures = []
    for check in policy.checks:
        ident, refused = check_caller(policy, check)
        have, reason = level_on(policy, ident, check.kind, check.name) if ident else (Level.NONE, refused or "")
        holds = have >= check.level if check.allow else have < check.level
        if not holds:
            expect = f"allow {check.level}" if check.allow else f"deny {check.level}"
            who = ident.id if ident else f"the caller of issuer {check.issuer}"
            failures.append(f"{check.where}: expected {expect} for {who} on {check.kind} {check.name!r}, "
                            f"but the level is {have} ({reason})")
    return failures


def check_caller(policy: Policy, check: Check) -> tuple[Identity | None, str | None]:
    """The caller a check is about: its user and groups, or what its issuer makes of its claims (None and
    why, when the issuer would refuse them)."""
    if check.issuer is None:
        return with_account_groups(policy, Identity(check.user, check.groups, via="check")), None
    spec = policy.issuers[check.issuer]
    made = machine_identity(spec.user, spec.groups, spec.require, check.claims)
    refused = made.refused if made.id is None else local_account_refusal(made.id, policy.users)
    if made.id is None or refused is not None:
        return None, f"issuer {check.issuer} refuses these claims: {refused}"
    return Identity(made.id, made.groups, via="check", issuer=check.issuer), None
