"""The policy: its model, strict loading from YAML files, and the store that hot-reloads it.

Loading reports every problem at once with its file and location; a policy that has problems
is never used. `PolicyStore` keeps the last good policy when a changed file fails validation.
"""
from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mlflow_gate.policy")


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

    def prefixes(self, kind: str) -> tuple[str, ...]:
        return self.experiments if kind == "experiment" else self.models


@dataclass(frozen=True)
class Grant:
    to: tuple[Subject, ...]
    experiments: tuple[str, ...]
    models: tuple[str, ...]
    permission: Level
    where: str

    def prefixes(self, kind: str) -> tuple[str, ...]:
        return self.experiments if kind == "experiment" else self.models


@dataclass(frozen=True)
class LocalUser:
    id: str
    password: str
    groups: frozenset[str]


@dataclass(frozen=True)
class Check:
    user: str
    groups: frozenset[str]
    kind: str
    name: str
    level: Level
    allow: bool
    where: str


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
    users: dict[str, LocalUser] = field(default_factory=dict)
    revoked_tokens: frozenset[str] = frozenset()
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


EMPTY = Policy()

# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------

TOP_KEYS = {"admins", "default", "teams", "grants", "users", "revoked_tokens", "checks"}
TEAM_KEYS = {"members", "maintainers", "experiments", "models", "artifact_root", "storage", "tags"}
STORAGE_KEYS = {"endpoint_url", "region", "credentials_env", "role_arn", "external_id", "direct", "object_tags"}
_STORAGE_TEXT = ("endpoint_url", "region", "credentials_env", "role_arn", "external_id")
GRANT_KEYS = {"to", "experiments", "models", "permission"}
USER_KEYS = {"password", "groups"}
CHECK_KEYS = {"user", "groups", "experiment", "model", "allow", "deny"}


class _Reader:
    """Walks one file's data, collecting problems with their location (and line, when known)."""

    def __init__(self, file: str, lines: dict[tuple, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, path: tuple, message: str) -> None:
        loc = _dotted(path) or "(top level)"
        line = self.lines.get(path)
        if line is None:
            for n in range(len(path) - 1, -1, -1):
                if path[:n] in self.lines:
                    line = self.lines[path[:n]]
                    break
        self.problems.append(Problem(self.file, f"{loc} (line {line})" if line else loc, message))

    def keys(self, data: dict, allowed: set[str], path: tuple) -> None:
        for key in data:
            if key not in allowed:
                self.problem(path + (key,), f"unknown key {key!r}; allowed here: {', '.join(sorted(allowed))}")

    def mapping(self, value: Any, path: tuple) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def strings(self, value: Any, path: tuple) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(path, f"must be a list of strings, got {type(value).__name__}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.problem(path + (i,), f"must be a non-empty string, got {item!r}")
            else:
                out.append(item)
        return out

    def subjects(self, value: Any, path: tuple) -> list[Subject]:
        out = []
        for i, text in enumerate(self.strings(value, path)):
            try:
                out.append(Subject.parse(text))
            except ValueError as exc:
                self.problem(path + (i,), str(exc))
        return out

    def level(self, value: Any, path: tuple, allowed: tuple[str, ...]) -> Level | None:
        if not isinstance(value, str) or value.lower() not in allowed:
            self.problem(path, f"must be one of {' | '.join(allowed)}, got {value!r}")
            return None
        return Level.parse(value)


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_map(text: str) -> dict[tuple, int]:
    """Path -> 1-based line of every node, from the YAML node tree (for problem locations)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                lines[path + (k,)] = key.start_mark.line + 1
                walk(value, path + (k,))
                lines[path + (k,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


@dataclass
class _Parts:
    """What one file contributes before the files are merged and cross-checked."""
    admins: list[Subject] = field(default_factory=list)
    default: Level | None = None
    teams: dict[str, Team] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    users: dict[str, LocalUser] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    team_refs: list[tuple[str, tuple, str]] = field(default_factory=list)   # (team, path, file)


def _read_file(text: str, file: str, parts: _Parts, problems: list[Problem]) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        problems.append(Problem(file, where, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
        return
    r = _Reader(file, _line_map(text))
    data = r.mapping(data, ())
    r.keys(data, TOP_KEYS, ())

    parts.admins += r.subjects(data.get("admins"), ("admins",))
    if "default" in data:
        level = r.level(data["default"], ("default",), ("none", "read", "edit"))
        if level is not None:
            if parts.default is not None and parts.default != level:
                r.problem(("default",), f"default is {level} here but {parts.default} in another file")
            parts.default = level

    for name, spec in r.mapping(data.get("teams"), ("teams",)).items():
        path = ("teams", name)
        if not isinstance(name, str) or not name or any(c in name for c in " :"):
            r.problem(path, "a team name must be a non-empty string without spaces or ':'")
            continue
        spec = r.mapping(spec, path)
        r.keys(spec, TEAM_KEYS, path)
        team = _read_team(r, name, spec, path, parts)
        if name in parts.teams:
            r.problem(path, f"team {name!r} is defined twice")
        else:
            parts.teams[name] = team

    grants = data.get("grants")
    if grants is not None and not isinstance(grants, list):
        r.problem(("grants",), "must be a list of grants")
        grants = []
    for i, spec in enumerate(grants or []):
        path = ("grants", i)
        spec = r.mapping(spec, path)
        r.keys(spec, GRANT_KEYS, path)
        to = r.subjects(spec.get("to"), path + ("to",))
        if not to:
            r.problem(path + ("to",), "a grant needs at least one subject in `to`")
        _note_team_refs(to, path + ("to",), file, parts)
        exps = _prefixes(r, spec.get("experiments"), path + ("experiments",), allow_user=True)
        models = _prefixes(r, spec.get("models"), path + ("models",), allow_user=True)
        if not exps and not models:
            r.problem(path, "a grant needs `experiments` or `models` prefixes")
        level = r.level(spec.get("permission"), path + ("permission",), ("read", "edit", "manage"))
        if level is not None:
            parts.grants.append(Grant(tuple(to), tuple(exps), tuple(models), level, f"{file}: {_dotted(path)}"))

    for uid, spec in r.mapping(data.get("users"), ("users",)).items():
        path = ("users", uid)
        spec = r.mapping(spec, path)
        r.keys(spec, USER_KEYS, path)
        pw = spec.get("password")
        if not isinstance(pw, str) or not pw.startswith("scrypt$"):
            r.problem(path + ("password",), "must be a hash made by `mlflow-gate hash-password` (scrypt$...)")
            continue
        if str(uid).lower() in parts.users:
            r.problem(path, f"user {uid!r} is defined twice")
        groups = r.strings(spec.get("groups"), path + ("groups",))
        parts.users[str(uid).lower()] = LocalUser(str(uid), pw, frozenset(groups))

    parts.revoked += r.strings(data.get("revoked_tokens"), ("revoked_tokens",))

    checks = data.get("checks")
    if checks is not None and not isinstance(checks, list):
        r.problem(("checks",), "must be a list")
        checks = []
    for i, spec in enumerate(checks or []):
        path = ("checks", i)
        spec = r.mapping(spec, path)
        r.keys(spec, CHECK_KEYS, path)
        check = _read_check(r, spec, path, file)
        if check is not None:
            parts.checks.append(check)
    problems += r.problems


def _read_team(r: _Reader, name: str, spec: dict, path: tuple, parts: _Parts) -> Team:
    members = r.subjects(spec.get("members"), path + ("members",))
    maintainers = r.subjects(spec.get("maintainers"), path + ("maintainers",))
    for subj, where in [(s, "members") for s in members] + [(s, "maintainers") for s in maintainers]:
        if subj.kind == "team":
            r.problem(path + (where,), "team members are users, groups or everyone, not other teams")
    exps = _prefixes(r, spec.get("experiments"), path + ("experiments",), allow_user=False)
    models = _prefixes(r, spec.get("models"), path + ("models",), allow_user=False)
    root = spec.get("artifact_root")
    if root is not None and (not isinstance(root, str) or not root.startswith(("s3://", "file:///"))):
        r.problem(path + ("artifact_root",), "must be s3://bucket[/prefix] or file:///absolute/path")
        root = None
    storage = _read_storage(r, spec.get("storage"), path + ("storage",), root)
    tags = r.mapping(spec.get("tags"), path + ("tags",))
    for key, value in tags.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            r.problem(path + ("tags", key), "tag values must be strings or numbers")
    return Team(name=name, members=tuple(members), maintainers=tuple(maintainers), experiments=tuple(exps),
                models=tuple(models), artifact_root=root, storage=storage,
                tags=tuple((str(k), str(v)) for k, v in tags.items()))


def _read_storage(r: _Reader, value: Any, path: tuple, root: str | None) -> Storage:
    spec = r.mapping(value, path)
    r.keys(spec, STORAGE_KEYS, path)
    text = {k: v for k, v in spec.items() if k in _STORAGE_TEXT and isinstance(v, str) and v}
    for key in set(_STORAGE_TEXT) & set(spec) - set(text):
        r.problem(path + (key,), "must be a non-empty string")
    direct = spec.get("direct", False)
    if not isinstance(direct, bool):
        r.problem(path + ("direct",), f"must be true or false, got {direct!r}")
        direct = False
    tags = r.mapping(spec.get("object_tags"), path + ("object_tags",))
    for key, item in tags.items():
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            r.problem(path + ("object_tags", key), "tag values must be strings or numbers")
    if (text.get("role_arn") or direct or tags) and not (root or "").startswith("s3://"):
        r.problem(path, "role_arn, direct and object_tags apply to an s3:// artifact_root only")
    return Storage(**text, direct=direct, object_tags=tuple((str(k), str(v)) for k, v in tags.items()))


def _prefixes(r: _Reader, value: Any, path: tuple, *, allow_user: bool) -> list[str]:
    out = r.strings(value, path)
    for i, prefix in enumerate(out):
        if "{" in prefix and not (allow_user and prefix.replace("{user}", "").find("{") < 0):
            r.problem(path + (i,), "only {user} may be used in a prefix, and only in grants")
    return out


def _note_team_refs(subjects: list[Subject], path: tuple, file: str, parts: _Parts) -> None:
    parts.team_refs += [(s.value, path, file) for s in subjects if s.kind == "team"]


def _read_check(r: _Reader, spec: dict, path: tuple, file: str) -> Check | None:
    user = spec.get("user")
    if not isinstance(user, str) or not user:
        r.problem(path + ("user",), "a check needs the user id it is about")
        return None
    groups = frozenset(r.strings(spec.get("groups"), path + ("groups",)))
    targets = [k for k in ("experiment", "model") if k in spec]
    outcomes = [k for k in ("allow", "deny") if k in spec]
    if len(targets) != 1 or not isinstance(spec.get(targets[0] if targets else ""), str):
        r.problem(path, "a check names exactly one `experiment` or `model`")
        return None
    if len(outcomes) != 1:
        r.problem(path, "a check has exactly one of `allow: LEVEL` or `deny: LEVEL`")
        return None
    level = r.level(spec[outcomes[0]], path + (outcomes[0],), ("read", "edit", "manage"))
    if level is None:
        return None
    return Check(user, groups, targets[0], spec[targets[0]], level, outcomes[0] == "allow",
                 f"{file}: {_dotted(path)}")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file or a folder of them; raises PolicyError listing every problem."""
    root = Path(path)
    if not root.exists():
        raise PolicyError([Problem(str(root), "(file)", "does not exist")])
    files = _files(root)
    if not files:
        raise PolicyError([Problem(str(root), "(folder)", "holds no *.yaml policy file")])
    texts = []
    for f in files:
        try:
            texts.append((f.read_text(encoding="utf-8"), str(f)))
        except OSError as exc:
            raise PolicyError([Problem(str(f), "(file)", f"cannot be read: {exc}")]) from exc
    return load_policy_texts(texts)


def load_policy_text(text: str, source: str = "<text>") -> Policy:
    return load_policy_texts([(text, source)])


def load_policy_texts(texts: list[tuple[str, str]]) -> Policy:
    parts = _Parts()
    problems: list[Problem] = []
    team_files: dict[str, str] = {}
    for text, file in texts:
        before = dict(parts.teams)
        file_parts = _Parts()
        _read_file(text, file, file_parts, problems)
        for name in file_parts.teams:
            if name in before:
                problems.append(Problem(file, f"teams.{name}", f"team {name!r} is also defined in {team_files[name]}"))
            team_files.setdefault(name, file)
        for uid in file_parts.users:
            if uid in parts.users:
                problems.append(Problem(file, f"users.{uid}", f"user {uid!r} is also defined in another file"))
        parts.admins += file_parts.admins
        if file_parts.default is not None:
            if parts.default is not None and parts.default != file_parts.default:
                problems.append(Problem(file, "default", f"conflicts with default {parts.default} in another file"))
            parts.default = file_parts.default
        parts.teams = {**file_parts.teams, **parts.teams}
        parts.grants += file_parts.grants
        parts.users = {**file_parts.users, **parts.users}
        parts.revoked += file_parts.revoked
        parts.checks += file_parts.checks
        parts.team_refs += file_parts.team_refs

    for team, path, file in parts.team_refs:
        if team not in parts.teams:
            known = ", ".join(sorted(parts.teams)) or "none defined"
            problems.append(Problem(file, _dotted(path), f"team:{team} names no team (teams: {known})"))
    problems += _overlaps(parts.teams, dict(team_files))
    if problems:
        raise PolicyError(problems)
    return index(Policy(admins=tuple(parts.admins), default=parts.default or Level.NONE, teams=parts.teams,
                        grants=tuple(parts.grants), users=parts.users, revoked_tokens=frozenset(parts.revoked),
                        checks=tuple(parts.checks), sources=tuple(f for _, f in texts)))


def _overlaps(teams: dict[str, Team], files: dict[str, str]) -> list[Problem]:
    problems = []
    for kind, key in (("experiment", "experiments"), ("model", "models")):
        owned = sorted((p, t.name) for t in teams.values() for p in t.prefixes(kind))
        for i, (prefix, team) in enumerate(owned):
            for other, other_team in owned[i + 1:]:
                if not other.startswith(prefix):
                    break
                if other_team != team:
                    problems.append(Problem(files.get(other_team, "?"), f"teams.{other_team}.{key}",
                                            f"prefix {other!r} overlaps {prefix!r} owned by team {team!r}: "
                                            "a name may be owned by one team only"))
    return problems


def index(policy: Policy) -> Policy:
    for team in policy.teams.values():
        for subject, level in [(s, Level.EDIT) for s in team.members] + [(s, Level.MANAGE) for s in team.maintainers]:
            roles = policy.roles_by_subject.setdefault(subject, {})
            roles[team.name] = max(level, roles.get(team.name, Level.NONE))
    for kind in KINDS:
        table = {p: t.name for t in policy.teams.values() for p in t.prefixes(kind)}
        policy.owners[kind] = table
        policy.owner_lengths[kind] = tuple(sorted({len(p) for p in table}, reverse=True))
    return policy


# ---------------------------------------------------------------------------------------------
# Hot reload
# ---------------------------------------------------------------------------------------------

class PolicyStore:
    """Holds the policy in force; `refresh()` reloads it when its files change, keeping the last good one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: str | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self._stamp = self._fingerprint()
        self.current = load_policy(self.path)

    def _fingerprint(self) -> tuple:
        try:
            # stat() follows symlinks, so Kubernetes' atomic `..data` swap of a ConfigMap shows as new inodes
            return tuple((str(f), s.st_ino, s.st_mtime_ns, s.st_size) for f in _files(self.path) for s in [f.stat()])
        except OSError:
            return ("missing",)

    def refresh(self) -> bool:
        """Reload if the files changed; returns True when a new policy was taken."""
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.error = str(exc)
            self.reloads["failed"] += 1
            log.error("policy reload failed, the last good policy keeps serving:\n%s", exc)
            return False
        self.current, self.error = policy, None
        self.reloads["ok"] += 1
        log.info("policy reloaded from %s (%d teams)", self.path, len(policy.teams))
        return True
