"""The policy: loading files and folders, cross-file checks, and the store that hot-reloads it.

Loading reports every problem at once with its file and location; a policy that has problems
is never used. `PolicyStore` keeps the last good policy when a changed file fails validation.
The model is in `policy_model`, the strict reading of one file in `policy_load`; both are
re-exported here, so `from proxy.policy import Level, Policy, load_policy, ...` is the API.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .policy_load import Parts, dotted, read_file
from .policy_model import (
    EMPTY,
    EVERYONE,
    KINDS,
    Check,
    Deny,
    Grant,
    Issuer,
    Level,
    Limits,
    LocalUser,
    Policy,
    PolicyError,
    Problem,
    Rule,
    Storage,
    Subject,
    Team,
    index,
)

__all__ = ["EMPTY", "EVERYONE", "KINDS", "Check", "Deny", "Grant", "Issuer", "Level", "Limits", "LocalUser", "Policy",
           "PolicyError", "PolicyStore", "Problem", "Rule", "Storage", "Subject", "Team", "index", "load_policy",
           "load_policy_text", "load_policy_texts", "policy_files"]

log = logging.getLogger("mlflow_gate.policy")


def policy_files(path: Path) -> list[Path]:
    """The files a policy path stands for: the file itself, or every *.yaml / *.yml in the folder."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file or a folder of them; raises PolicyError listing every problem."""
    root = Path(path)
    if not root.exists():
        raise PolicyError([Problem(str(root), "(file)", "does not exist")])
    files = policy_files(root)
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
    """One policy from (text, file name) pairs: each file read strictly, then merged and cross-checked."""
    files = [read_file(text, source) for text, source in texts]
    problems = [p for parts in files for p in parts.problems]
    problems += _conflicts(files)
    teams: dict[str, Team] = {}
    team_files: dict[str, str] = {}
    for parts in files:
        for name, team in parts.teams.items():
            teams.setdefault(name, team)
            team_files.setdefault(name, parts.file)
    for parts in files:
        for ref, path in parts.team_refs:
            if ref not in teams:
                known = ", ".join(sorted(teams)) or "none defined"
                problems.append(Problem(parts.file, dotted(path), f"team:{ref} names no team (teams: {known})"))
    problems += _overlaps(teams, team_files)
    issuers, issuer_problems = _issuers(files)
    problems += issuer_problems
    if problems:
        raise PolicyError(problems)
    users = {uid: u for parts in reversed(files) for uid, u in parts.users.items()}
    return index(Policy(
        admins=tuple(s for p in files for s in p.admins),
        default=next((p.default for p in files if p.default is not None), Level.NONE),
        teams=teams, grants=tuple(g for p in files for g in p.grants), denies=tuple(d for p in files for d in p.denies),
        users=users, revoked_tokens=frozenset(t for p in files for t in p.revoked),
        revoked_users=frozenset(u for p in files for u in p.revoked_users),
        limits=Limits(next((p.requests_per_minute for p in files if p.requests_per_minute is not None), None)),
        issuers=issuers, checks=tuple(c for p in files for c in p.checks), sources=tuple(f for _, f in texts)))


def _conflicts(files: list[Parts]) -> list[Problem]:
    """What two files of one folder may not both say: the same team or user, different defaults or limits."""
    problems: list[Problem] = []
    seen_teams: dict[str, str] = {}
    seen_users: set[str] = set()
    default: Level | None = None
    rpm: int | None = None
    for parts in files:
        for name in parts.teams:
            if name in seen_teams:
                problems.append(Problem(parts.file, f"teams.{name}",
                                        f"team {name!r} is also defined in {seen_teams[name]}"))
            seen_teams.setdefault(name, parts.file)
        for uid in parts.users:
            if uid in seen_users:
                problems.append(Problem(parts.file, f"users.{uid}", f"user {uid!r} is also defined in another file"))
        seen_users |= set(parts.users)
        if parts.default is not None:
            if default is not None and default != parts.default:
                problems.append(Problem(parts.file, "default", f"conflicts with default {default} in another file"))
            default = default if default is not None else parts.default
        if parts.requests_per_minute is not None:
            if rpm is not None and rpm != parts.requests_per_minute:
                problems.append(Problem(parts.file, "limits.requests_per_minute",
                                        f"conflicts with requests_per_minute {rpm} in another file"))
            rpm = rpm if rpm is not None else parts.requests_per_minute
    return problems


def _issuers(files: list[Parts]) -> tuple[dict[str, Issuer], list[Problem]]:
    """Every file's issuers: one entry per name and per `iss`, and every issuer a check names defined."""
    issuers: dict[str, Issuer] = {}
    problems = []
    for parts in files:
        for name, issuer in parts.issuers.items():
            same = next((i for i in issuers.values() if i.issuer == issuer.issuer), None)
            if name in issuers:
                problems.append(Problem(parts.file, f"issuers.{name}", f"issuer {name!r} is also defined at "
                                                                       f"{issuers[name].where}"))
            elif same is not None:
                problems.append(Problem(parts.file, f"issuers.{name}.issuer",
                                        f"{issuer.issuer} is already trusted as {same.where}: one entry per issuer, "
                                        "or its tokens could be read with either entry's templates"))
            else:
                issuers[name] = issuer
    for parts in files:
        for ref, path in parts.issuer_refs:
            if ref not in issuers:
                known = ", ".join(sorted(issuers)) or "none defined"
                problems.append(Problem(parts.file, dotted(path), f"names no entry of `issuers` (issuers: {known})"))
    return issuers, problems


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
            return tuple((str(f), s.st_ino, s.st_mtime_ns, s.st_size) for f in policy_files(self.path) for s in [f.stat()])
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
