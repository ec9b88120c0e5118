"""What a caller may do, as rows: each team role and grant with the prefixes and the level it gives, `default`
for names no team owns, and the denies that cap them. The /_gate/me page and JSON and the MLflow UI's account
permissions (`ui.py`) are made of these rows; requests are still decided name by name (`decide.py`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .decide import context_for
from .identity import Identity
from .policy import Level, Policy

KINDS = ("experiment", "model")


@dataclass(frozen=True)
class Row:
    kind: str           # experiment | model
    prefix: str         # names starting with it; "" with `unowned`: the names no team owns
    level: Level        # what the row gives; for a cap, the most the caller keeps there
    source: str         # admin | team vision (member) | grant <where> | default | deny <where>
    cap: bool = False   # a deny: lowers whatever the other rows give on these names
    unowned: bool = False

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "prefix": self.prefix, "level": str(self.level),
                                  "source": self.source}
        if self.cap:
            out["cap"] = True
        if self.unowned:
            out["unowned"] = True
        return out


def rows(policy: Policy, ident: Identity) -> list[Row]:
    """The caller's access, row by row, in the order a person reads it: teams, grants, default, denies."""
    ctx = context_for(policy, ident)
    if ctx.admin:
        return [Row(kind, "", Level.MANAGE, "admin") for kind in KINDS]
    out: list[Row] = []
    for team, role in sorted(ctx.roles.items()):
        if team in policy.teams:
            source = f"team {team} ({'maintainer' if role == Level.MANAGE else 'member'})"
            out += [Row(kind, p, role, source) for kind in KINDS for p in policy.teams[team].prefixes(kind)]
    for grant, exps, models in ctx.grants:
        out += [Row(kind, p, grant.permission, f"grant ({_short(grant.where)})")
                for kind, prefixes in zip(KINDS, (exps, models), strict=True) for p in prefixes]
    if policy.default > Level.NONE:
        out += [Row(kind, "", policy.default, "default", unowned=True) for kind in KINDS]
    for deny, exps, models in ctx.denies:
        out += [Row(kind, p, deny.keep, f"deny ({_short(deny.where)})", cap=True)
                for kind, prefixes in zip(KINDS, (exps, models), strict=True) for p in prefixes]
    return out


def teams(policy: Policy, ident: Identity) -> dict[str, str]:
    """The caller's teams and role in each (member | maintainer)."""
    return {team: "maintainer" if level == Level.MANAGE else "member"
            for team, level in sorted(context_for(policy, ident).roles.items())}


def _short(where: str) -> str:
    """A rule's place for people who are not admins: the policy file's name (not its path) and the key."""
    file, sep, key = where.partition(": ")
    return f"{os.path.basename(file)}{sep}{key}"
