"""What a policy change does to access, and who holds access to a name: `policy diff` and `policy who-can`.

Both work on access, not on text. Every subject the policies name (admins, team members and
maintainers, `to` of grants and denies, `team:` references, local accounts) and `everyone`
becomes a what-if caller who matches that subject and nothing else; its level is computed by
the same `decide.level_in` the gate uses, at every prefix either policy names (and at `""`,
the names no prefix covers). Pure functions over policies.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from .decide import Context, build_context, level_in
from .identity import Identity
from .policy import EVERYONE, KINDS, Level, Policy, Rule, Subject

TEMPLATE_ID = "{user}"   # the what-if caller of a group, a team or everyone: `{user}` prefixes stay as written
_ORDER = {"everyone": 0, "team": 1, "group": 2, "user": 3}


def subjects_of(policy: Policy) -> set[Subject]:
    """Every subject a rule of `policy` names, its local accounts, and `everyone`."""
    out = {EVERYONE, *policy.admins}
    for team in policy.teams.values():
        out.update(team.members, team.maintainers)
    for rule in _rules(policy):
        out.update(rule.to)
    out.update(Subject("user", uid) for uid in policy.users)
    return out


def _rules(policy: Policy) -> list[Rule]:
    return [*policy.grants, *policy.denies]


def _sort_key(subject: Subject) -> tuple[int, str]:
    return _ORDER[subject.kind], subject.value


def caller(policy: Policy, subject: Subject) -> Context:
    """The what-if caller of `subject` under `policy` (a local account has its groups from `users:`)."""
    if subject.kind == "user":
        return build_context(policy, Identity(subject.value, policy.account_groups(subject.value), via="review"))
    if subject.kind == "group":
        return build_context(policy, Identity(TEMPLATE_ID, frozenset({subject.value}), via="review"))
    roles = {subject.value: Level.EDIT} if subject.kind == "team" and subject.value in policy.teams else {}
    return build_context(policy, Identity(TEMPLATE_ID, via="review"), roles)


def _uid(subject: Subject) -> str:
    return subject.value if subject.kind == "user" else TEMPLATE_ID


def _rule_prefixes(policy: Policy, ctx: Context, kind: str) -> set[str]:
    """The prefixes (as written, `{user}` kept) of the rules that reach this caller."""
    out = {p for team in ctx.roles if team in policy.teams for p in policy.teams[team].prefixes(kind)}
    out.update(p for g, _, _ in ctx.grants for p in g.prefixes(kind))
    out.update(p for d, _, _ in ctx.denies for p in d.prefixes(kind))
    return out


def _all_prefixes(policies: Iterable[Policy], kind: str) -> list[str]:
    out = {""}
    for policy in policies:
        out.update(p for t in policy.teams.values() for p in t.prefixes(kind))
        out.update(p for rule in _rules(policy) for p in rule.prefixes(kind))
    return sorted(out)


def _under(points: list[str], prefixes: Iterable[str]) -> list[str]:
    """The points that start with one of `prefixes` (each prefix is a point itself)."""
    out: set[str] = set()
    for prefix in prefixes:
        i = bisect.bisect_left(points, prefix)
        while i < len(points) and points[i].startswith(prefix):
            out.add(points[i])
            i += 1
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# policy diff
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    subject: str
    kind: str
    prefix: str            # "" : names that no prefix of either policy covers (every name, for an admin)
    before: Level
    after: Level
    note: str = ""         # "admin" when the change is a subject becoming (or ceasing to be) an admin

    @property
    def widens(self) -> bool:
        return self.after > self.before

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"subject": self.subject, "kind": self.kind, "prefix": self.prefix,
                                  "before": str(self.before), "after": str(self.after)}
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Other:
    """A change that is not a level on a prefix: revocations, protected aliases, local accounts, limits."""
    what: str
    widens: bool

    def as_json(self) -> dict[str, object]:
        return {"what": self.what, "widens": self.widens}


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    other: list[Other] = field(default_factory=list)

    @property
    def widens(self) -> bool:
        return any(c.widens for c in self.changes) or any(o.widens for o in self.other)

    def as_json(self) -> dict[str, object]:
        return {"changes": [c.as_json() for c in self.changes], "other": [o.as_json() for o in self.other],
                "widens": self.widens}


def diff(old: Policy, new: Policy) -> Diff:
    """Every change of access from `old` to `new`, by subject, kind and prefix."""
    run = _DiffRun(old, new)
    out = Diff()
    for kind in KINDS:
        points = _all_prefixes((old, new), kind)
        base = run.levels_at(EVERYONE, kind, points)
        out.changes += [Change(str(EVERYONE), kind, p, b, a) for p, (b, a) in base.items() if b != a]
        for subject in run.subjects:
            if subject != EVERYONE:
                out.changes += run.subject_changes(subject, kind, points, base)
    out.other = _other_changes(old, new)
    return out


class _DiffRun:
    """One diff's what-if callers (built once per subject and policy) and the levels of team subjects."""

    def __init__(self, old: Policy, new: Policy) -> None:
        self.old, self.new = old, new
        self.subjects = sorted(subjects_of(old) | subjects_of(new), key=_sort_key)
        self.contexts = {s: (caller(old, s), caller(new, s)) for s in self.subjects}
        self._teams: dict[tuple[str, str], dict[str, tuple[Level, Level]]] = {}

    def levels(self, subject: Subject, kind: str, name: str) -> tuple[Level, Level]:
        ctxs = self.contexts[subject]
        return level_in(self.old, ctxs[0], kind, name)[0], level_in(self.new, ctxs[1], kind, name)[0]

    def own_prefixes(self, subject: Subject, kind: str) -> set[str]:
        ctxs = self.contexts[subject]
        return _rule_prefixes(self.old, ctxs[0], kind) | _rule_prefixes(self.new, ctxs[1], kind)

    def levels_at(self, subject: Subject, kind: str, points: list[str]) -> dict[str, tuple[Level, Level]]:
        uid = _uid(subject)
        return {p: self.levels(subject, kind, p.replace("{user}", uid)) for p in points}

    def team_levels(self, team: str, kind: str, points: list[str]) -> dict[str, tuple[Level, Level]]:
        key = (team, kind)
        if key not in self._teams:
            subject = Subject("team", team)
            self._teams[key] = self.levels_at(subject, kind, _under(points, self.own_prefixes(subject, kind)))
        return self._teams[key]

    def subject_changes(self, subject: Subject, kind: str, points: list[str],
                        base: dict[str, tuple[Level, Level]]) -> list[Change]:
        old_ctx, new_ctx = self.contexts[subject]
        if old_ctx.admin and new_ctx.admin:
            return []
        if old_ctx.admin or new_ctx.admin:
            return self.admin_changes(subject, kind, points)
        # Off its own rules' prefixes a caller holds what everyone holds; and a change that everyone,
        # or a team the subject is in under both policies, makes the same way says nothing new.
        teams = [t for t in set(old_ctx.roles) & set(new_ctx.roles)
                 if Subject("team", t) in self.contexts and Subject("team", t) != subject]
        parents = [base] + [self.team_levels(t, kind, points) for t in sorted(teams)]
        uid = _uid(subject)
        seen: dict[str, tuple[Level, Level]] = {}
        out: dict[str, Change] = {}
        for point in _under(points, self.own_prefixes(subject, kind)):   # sorted: enclosing points come first
            name = point.replace("{user}", uid)
            pair = seen[point] = self.levels(subject, kind, name)
            enclosing = next((seen[q] for q in reversed(seen) if q != point and point.startswith(q)), None)
            if pair[0] == pair[1] or pair == enclosing or any(parent.get(point) == pair for parent in parents):
                continue
            out.setdefault(name, Change(str(subject), kind, name, *pair))
        return list(out.values())

    def admin_changes(self, subject: Subject, kind: str, points: list[str]) -> list[Change]:
        """One line for every name (`""`), and one per prefix where the non-admin side held something else."""
        was_admin = self.contexts[subject][0].admin
        levels = {name: pair[1] if was_admin else pair[0]
                  for name, pair in self.levels_at(subject, kind, points).items()}
        floor = levels[""]
        uid = _uid(subject)
        out = []
        for point, level in levels.items():
            if point == "" or level not in (floor, Level.MANAGE):
                before, after = (Level.MANAGE, level) if was_admin else (level, Level.MANAGE)
                out.append(Change(str(subject), kind, point.replace("{user}", uid), before, after, "admin"))
        return out


def _other_changes(old: Policy, new: Policy) -> list[Other]:
    out = [Other(f"user {u} is no longer revoked", True) for u in sorted(old.revoked_users - new.revoked_users)]
    out += [Other(f"user {u} is revoked", False) for u in sorted(new.revoked_users - old.revoked_users)]
    out += [Other(f"personal token {t} is no longer revoked", True)
            for t in sorted(old.revoked_tokens - new.revoked_tokens)]
    out += [Other(f"personal token {t} is revoked", False) for t in sorted(new.revoked_tokens - old.revoked_tokens)]
    out += [Other(f"local account {u} can sign in", True) for u in sorted(set(new.users) - set(old.users))]
    out += [Other(f"local account {u} is removed", False) for u in sorted(set(old.users) - set(new.users))]
    out += [Other(f"local account {u} has a new password", True) for u in sorted(set(old.users) & set(new.users))
            if old.users[u].password != new.users[u].password]
    for name in sorted(set(old.teams) & set(new.teams)):
        was, now = old.teams[name].protected_aliases, new.teams[name].protected_aliases
        out += [Other(f"team {name}: alias {a!r} is no longer protected (edit may move it)", True)
                for a in sorted(was - now)]
        out += [Other(f"team {name}: alias {a!r} is protected (moving it needs manage)", False)
                for a in sorted(now - was)]
    out += _issuer_changes(old, new)
    rpm_old, rpm_new = old.limits.requests_per_minute, new.limits.requests_per_minute
    if rpm_old != rpm_new:
        out.append(Other(f"requests_per_minute: {rpm_old or 'no limit'} -> {rpm_new or 'no limit'}", False))
    return out


def _issuer_changes(old: Policy, new: Policy) -> list[Other]:
    """A trusted issuer added or changed lets new callers in (or names them differently): it widens."""
    out = [Other(f"issuer {n} ({new.issuers[n].issuer}) is trusted: its tokens for audience "
                 f"{new.issuers[n].audience!r} sign in as {new.issuers[n].user}", True)
           for n in sorted(set(new.issuers) - set(old.issuers))]
    out += [Other(f"issuer {n} is no longer trusted", False) for n in sorted(set(old.issuers) - set(new.issuers))]
    for n in sorted(set(old.issuers) & set(new.issuers)):
        was, now = old.issuers[n], new.issuers[n]
        changed = [f.name for f in fields(was) if f.compare and getattr(was, f.name) != getattr(now, f.name)]
        if changed:
            out.append(Other(f"issuer {n}: {', '.join(changed)} changed", True))
    return out


# ---------------------------------------------------------------------------------------------
# policy who-can
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    subject: str
    level: Level
    rule: str

    def as_json(self) -> dict[str, object]:
        return {"subject": self.subject, "level": str(self.level), "rule": self.rule}


@dataclass
class WhoCan:
    kind: str
    name: str
    holders: list[Holder] = field(default_factory=list)   # more than none, more than everyone holds
    capped: list[Holder] = field(default_factory=list)    # less than everyone holds (denies)

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "holders": [h.as_json() for h in self.holders],
                "capped": [h.as_json() for h in self.capped]}


def who_can(policy: Policy, kind: str, name: str) -> WhoCan:
    """Every subject holding more than `none` on `name`, with its level and the rule that gives it.

    Subjects holding exactly what `everyone` holds are covered by the `everyone` line; subjects a
    deny keeps below it are listed under `capped`. A name in someone's `{user}` area names that user.
    """
    out = WhoCan(kind, name)
    floor, floor_rule = level_in(policy, caller(policy, EVERYONE), kind, name)
    if floor > Level.NONE:
        out.holders.append(Holder(str(EVERYONE), floor, floor_rule))
    subjects = subjects_of(policy) | {Subject("user", u) for u in _template_users(policy, kind, name)}
    subjects |= {Subject("team", t) for t in policy.teams}
    for subject in sorted(subjects - {EVERYONE}, key=_sort_key):
        level, rule = level_in(policy, caller(policy, subject), kind, name)
        if level > floor:
            out.holders.append(Holder(str(subject), level, rule))
        elif level < floor:
            out.capped.append(Holder(str(subject), level, rule))
    out.holders.sort(key=lambda h: -h.level)
    return out


def _template_users(policy: Policy, kind: str, name: str) -> set[str]:
    """The user ids that `{user}` prefixes would have to stand for to cover `name`."""
    out = set()
    for rule in _rules(policy):
        for prefix in rule.prefixes(kind):
            head, sep, tail = prefix.partition("{user}")
            if not sep or not tail or "{user}" in tail:
                continue   # a prefix ending in {user} covers names of many ids: no one user stands out
            match = re.match(re.escape(head) + "(.+?)" + re.escape(tail), name)
            if match:
                out.add(match.group(1).lower())
    return out


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

MARKER = "<!-- mlflow-gate policy diff -->"   # lets a CI job find and update its own comment


def shown_prefix(change: Change) -> str:
    if change.prefix:
        return change.prefix
    return "(every name)" if change.note == "admin" else "(names no prefix covers)"


def diff_text(d: Diff) -> str:
    lines = []
    for c in d.changes:
        sign = "+" if c.widens else "-"
        note = f"  [{c.note}]" if c.note else ""
        lines.append(f"{sign} {c.subject}  {c.kind}  {shown_prefix(c)}  {c.before} -> {c.after}{note}")
    lines += [f"{'+' if o.widens else '-'} {o.what}" for o in d.other]
    widening = sum(c.widens for c in d.changes) + sum(o.widens for o in d.other)
    total = len(d.changes) + len(d.other)
    lines.append(f"{total} change(s), {widening} widen access." if total else "No change of access.")
    return "\n".join(lines)


def _md(text: str) -> str:
    """`text` as inline code in a table cell."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', '&#124;')}{fence}"


def diff_markdown(d: Diff, title: str = "") -> str:
    widening = sum(c.widens for c in d.changes) + sum(o.widens for o in d.other)
    lines = [MARKER, f"### mlflow-gate policy diff{': ' + title if title else ''}", ""]
    if not d.changes and not d.other:
        return "\n".join(lines + ["No change of access."])
    lines.append(f"**{widening} of {len(d.changes) + len(d.other)} change(s) widen access: a second reviewer "
                 "should approve.**" if widening else
                 f"{len(d.changes) + len(d.other)} change(s); none widens access.")
    if d.changes:
        lines += ["", "| | subject | kind | prefix | before | after |", "|---|---|---|---|---|---|"]
        for c in d.changes:
            mark = "⬆️ widens" if c.widens else "⬇️"
            prefix = _md(c.prefix) if c.prefix else shown_prefix(c)
            note = " (admin)" if c.note else ""
            lines.append(f"| {mark} | {_md(c.subject)}{note} | {c.kind} | {prefix} | {c.before} | {c.after} |")
    if d.other:
        lines += ["", "Other changes:", ""]
        lines += [f"- {'⬆️ widens: ' if o.widens else ''}{o.what.replace('|', '&#124;')}" for o in d.other]
    return "\n".join(lines)


def who_can_text(w: WhoCan) -> str:
    lines = [f"{w.kind} {w.name!r}:"]
    lines += [f"  {h.subject}  {h.level}  ({h.rule})" for h in w.holders]
    if not any(h.subject == str(EVERYONE) for h in w.holders):
        lines.append("  everyone else: none")
    if w.capped:
        lines.append("capped below everyone's level by denies:")
        lines += [f"  {h.subject}  {h.level}  ({h.rule})" for h in w.capped]
    return "\n".join(lines)
