"""A machine caller's id and groups, made from its token's claims by the templates of its issuer.

A template is text with placeholders: `{sub}`, and `{a/b}` for the claim `b` inside the claim `a`
(`{kubernetes.io/namespace}`: the claim names may hold dots, so `/` separates them). Rendering is one
pass over the template as the policy wrote it: what a claim holds is inserted as it is and never read
again, so a claim holding `{sub}`, `group:admins`, `../nlp` or a comma stays that literal text in the
id. Only a non-empty string or a whole number renders; anything else (missing, object, list, boolean,
control characters) leaves the placeholder without a value: the id is then refused and the group is
not given. A group template that is one placeholder of a list claim gives one group per string.

`require` names claims a token must carry with one of the listed values (exact, case-sensitive).

An issuer's callers never take another caller's id: an id holding `@` whose template does not begin
with text of the policy's own (`{sub}` of `alice@corp.test`) would read as a person's id and is
refused, and so is the id of a local account of the policy (`local_account_refusal`).

Pure functions over frozen data: the policy loader validates templates with `parse_template`, the
credential chain renders them (`machine_identity`), and `policy check` renders the claims its
`checks` give.
"""
from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ID = 512


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[str | tuple[str, ...], ...]   # literal text, or the path of a claim

    def __str__(self) -> str:
        return self.text

    @property
    def claims(self) -> tuple[str, ...]:
        return tuple("/".join(p) for p in self.parts if isinstance(p, tuple))


def parse_template(text: str, *, literal_ok: bool = False) -> Template:
    """The template written as `text`; ValueError saying what is wrong with it. Without a placeholder it
    gives every caller the same value: refused unless `literal_ok` (a group all of an issuer's callers get)."""
    parts: list[str | tuple[str, ...]] = []
    at = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[at:m.start()])
        path = tuple(m.group(1).split("/"))
        if not all(p.strip() == p and p for p in path):
            raise ValueError(f"{m.group(0)!r} names no claim: write {{claim}} or {{claim/nested}}")
        parts.append(path)
        at = m.end()
    parts.append(text[at:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{" in literal or "}" in literal:
        raise ValueError(f"{text!r} has an unmatched brace: placeholders are {{claim}} or {{claim/nested}}")
    if not literal_ok and not any(isinstance(p, tuple) for p in parts):
        raise ValueError(f"{text!r} has no placeholder: it would give every caller the same value")
    return Template(text, tuple(p for p in parts if p != ""))


def claim(claims: Mapping[str, Any], path: str | tuple[str, ...]) -> Any:
    """The claim at `path` (`a/b` reads `b` inside `a`), or None."""
    value: Any = claims
    for key in (path.split("/") if isinstance(path, str) else path):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if text and not _CONTROL.search(text) else None


def render(template: Template, claims: Mapping[str, Any]) -> str | None:
    """The template with its claims' values, or None when one of them has no usable value."""
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = _scalar(claim(claims, part))
        if value is None:
            return None
        out.append(value)
    return "".join(out)


def render_groups(templates: tuple[Template, ...], claims: Mapping[str, Any]) -> frozenset[str]:
    groups: set[str] = set()
    for t in templates:
        whole = t.parts[0] if len(t.parts) == 1 else None
        value = claim(claims, whole) if isinstance(whole, tuple) else None
        if isinstance(value, list):
            groups.update(v for v in (_scalar(item) for item in value) if v is not None)
            continue
        rendered = render(t, claims)
        if rendered is not None:
            groups.add(rendered)
    return frozenset(groups)


def unmet(require: tuple[tuple[str, tuple[str, ...]], ...], claims: Mapping[str, Any]) -> str | None:
    """The first required claim the token does not carry with an allowed value, or None."""
    for path, allowed in require:
        if claim(claims, path) not in allowed:
            return path
    return None


@dataclass(frozen=True)
class MachineId:
    """What an issuer's templates make of a token's claims: the id and groups, or why there are none."""
    id: str | None
    groups: frozenset[str]
    refused: str | None = None


def machine_identity(user: Template, groups: tuple[Template, ...],
                     require: tuple[tuple[str, tuple[str, ...]], ...], claims: Mapping[str, Any]) -> MachineId:
    missing = unmet(require, claims)
    if missing is not None:
        return MachineId(None, frozenset(), f"its claim {missing!r} is not one the gate's policy requires")
    uid = render(user, claims)
    if uid is None:
        names = ", ".join(user.claims)
        return MachineId(None, frozenset(), f"the caller's id {user.text!r} needs the claim(s) {names} as "
                                            "non-empty text")
    if len(uid) > MAX_ID:
        return MachineId(None, frozenset(), f"the caller's id would be longer than {MAX_ID} characters")
    if "@" in uid and not isinstance(user.parts[0], str):
        return MachineId(None, frozenset(), f"the caller's id {uid[:100]!r} would read as a person's "
                                            "(user@domain): begin the `user` template with a prefix of its own, "
                                            "e.g. \"wi:{email}\"")
    return MachineId(uid, render_groups(groups, claims))


def local_account_refusal(uid: str, accounts: Container[str]) -> str | None:
    """Why a machine id may not be `uid`: it is a local account's (`users:`), whose rights it would take."""
    if uid.lower() in accounts:
        return f"the caller's id {uid!r} is a local account of the policy (`users`); an issuer's callers never " \
               "take another's id: give its `user` template a prefix of its own"
    return None
