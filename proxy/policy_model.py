"""The policy as data: levels, subjects, teams, grants, denies, and the indexes decisions use.

Frozen dataclasses only; reading YAML into them is `policy_load`, merging files and hot reload
is `policy`.
"""
from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .claims import Template


class Level(enum.IntEnum):
    NONE = 0
    READ = 1
    EDIT = 2
    MANAGE = 3

    @classmethod
    def parse(cls, text: object) -> Level:
        return cls[str(text).upper()]

    def __str__(self) -> str:
        return self.name.lower()


KINDS = ("experiment", "model")


@dataclass(frozen=True)
class Subject:
    kind: str   # user | group | team | everyone
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Subject:
        text = text.strip()
        if text == "everyone":
            return cls("everyone")
        for prefix, kind in (("user:", "user"), ("group:", "group"), ("team:", "team")):
            if text.startswith(prefix) and len(text) > len(prefix):
                value = text[len(prefix):]
                return cls(kind, value.lower() if kind == "user" else value)
        if "@" in text and " " not in text and not text.startswith("@") and not text.endswith("@"):
            return cls("user", text.lower())
        raise ValueError(f"{text!r} is not a subject: use user@domain, user:ID, group:NAME, team:NAME or everyone")

    def __str__(self) -> str:
        return "everyone" if self.kind == "everyone" else f"{self.kind}:{self.value}"


EVERYONE = Subject("everyone")


@dataclass(frozen=True)
class Storage:
    endpoint_url: str | None = None
    region: str | None = None
    credentials_env: str | None = None
    role_arn: str | None = None          # assumed through STS with the gate's own AWS identity
    external_id: str | None = None       # sent with role_arn
    direct: bool = False                 # presigned URLs: bytes go straight to the bucket
    object_tags: tuple[tuple[str, str], ...] = ()   # S3 object tags set on every upload


@dataclass(frozen=True)
class Team:
    name: str
    members: tuple[Subject, ...] = ()
    maintainers: tuple[Subject, ...] = ()
    experiments: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    artifact_root: str | None = None
    storage: Storage = Storage()
    tags: tuple[tuple[str, str], ...] = ()
    protected_aliases: frozenset[str] = frozenset()   # setting, moving, deleting them needs manage

    def prefixes(self, kind: str) -> tuple[str, ...]:
        return self.experiments if kind == "experiment" else self.models

    def protects(self, alias: str) -> bool:
        """Whether `alias` is one of `protected_aliases`, compared as a database might (see `alias_key`)."""
        key = alias_key(alias)
        return any(alias_key(a) == key for a in self.protected_aliases)


def alias_key(alias: str) -> str:
    """An alias as the most lenient database would compare it: MySQL's default collations ignore case and
    accents, so there `Champion` or `chámpion` would overwrite `champion`; and MLflow's alias check
    (`^[\\w\\-]*$`) lets a trailing newline through. Protection errs on the side of more aliases."""
    decomposed = unicodedata.normalize("NFKD", alias.strip())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True)
class Rule:
    """What grants and denies share: the subjects they are about and the prefixes they cover."""
    to: tuple[Subject, ...]
    experiments: tuple[str, ...]
    models: tuple[str, ...]

    def prefixes(self, kind: str) -> tuple[str, ...]:
        return self.experiments if kind == "experiment" else self.models


@dataclass(frozen=True)
class Grant(Rule):
    permission: Level
    where: str


@dataclass(frozen=True)
class Deny(Rule):
    """Caps what `to` keeps on the prefixes at `keep`, whatever teams, grants and `default` give."""
    keep: Level
    where: str


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None   # per caller and replica; None: no limit


@dataclass(frozen=True)
class LocalUser:
    id: str
    password: str
    groups: frozenset[str]


@dataclass(frozen=True)
class Issuer:
    """A trusted JWT issuer for machine callers (`issuers:`): tokens it signs for `audience` name the caller
    by the `user` and `groups` templates. `ca_file` / `token_file`: how the gate reaches its discovery and
    keys (a private CA; a bearer token the gate reads from a file, e.g. its own service-account token)."""
    name: str
    issuer: str                                         # `iss`, without a trailing slash
    audience: str
    user: Template
    groups: tuple[Template, ...] = ()
    jwks_uri: str | None = None                         # else from the issuer's discovery document
    require: tuple[tuple[str, tuple[str, ...]], ...] = ()   # claim path -> allowed values
    ca_file: str | None = None
    token_file: str | None = None
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class Check:
    user: str
    groups: frozenset[str]
    kind: str
    name: str
    level: Level
    allow: bool
    where: str
    issuer: str | None = None                           # a machine caller: `claims` rendered by this issuer
    claims: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Problem:
    file: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Policy:
    admins: tuple[Subject, ...] = ()
    default: Level = Level.NONE
    teams: dict[str, Team] = field(default_factory=dict)
    grants: tuple[Grant, ...] = ()
    denies: tuple[Deny, ...] = ()
    users: dict[str, LocalUser] = field(default_factory=dict)
    revoked_tokens: frozenset[str] = frozenset()
    revoked_users: frozenset[str] = frozenset()   # lower-cased user ids
    limits: Limits = Limits()
    issuers: dict[str, Issuer] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    sources: tuple[str, ...] = ()
    # indexes built once by `index()`: prefix -> team per kind, and the prefix lengths to try
    owners: dict[str, dict[str, str]] = field(default_factory=dict)
    owner_lengths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # subject -> teams it is a member / maintainer of, so a caller's teams are a few lookups
    roles_by_subject: dict[Subject, dict[str, Level]] = field(default_factory=dict)
    # per-caller contexts, filled lazily by decide.context_for (bounded there)
    contexts: dict[tuple[str, frozenset[str]], Any] = field(default_factory=dict, compare=False, repr=False)

    def owner(self, kind: str, name: str) -> Team | None:
        table = self.owners.get(kind, {})
        for n in self.owner_lengths.get(kind, ()):
            team = table.get(name[:n])
            if team is not None:
                return self.teams[team]
        return None

    def account_groups(self, user: str) -> frozenset[str]:
        """The groups the policy's `users:` gives a local account (none for other ids)."""
        account = self.users.get(user.lower())
        return account.groups if account is not None else frozenset()


def index(policy: Policy) -> Policy:
    """Fill the lookup tables of a freshly built policy (they are part of its value)."""
    for team in policy.teams.values():
        for subject, level in [(s, Level.EDIT) for s in team.members] + [(s, Level.MANAGE) for s in team.maintainers]:
            roles = policy.roles_by_subject.setdefault(subject, {})
            roles[team.name] = max(level, roles.get(team.name, Level.NONE))
    for kind in KINDS:
        table = {p: t.name for t in policy.teams.values() for p in t.prefixes(kind)}
        policy.owners[kind] = table
        policy.owner_lengths[kind] = tuple(sorted({len(p) for p in table}, reverse=True))
    return policy


EMPTY = index(Policy())
