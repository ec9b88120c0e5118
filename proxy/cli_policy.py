"""mlflow-gate policy check | explain | diff | who-can | audit

Exit codes: 0 ok, 1 an invalid policy (or a failed check, a DENY from explain, an unreachable
server), 2 usage (argparse), and for `diff` 3 when some access widens.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .decide import decide, run_checks, with_account_groups
from .identity import Identity
from .policy import EMPTY, Level, Policy, PolicyError, load_policy, load_policy_texts
from .review import diff, diff_markdown, diff_text, who_can, who_can_text

WIDENS = 3


def add_policy_commands(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    pol = sub.add_parser("policy", help="validate, explain and review policy files")
    psub = pol.add_subparsers(dest="policy_command", required=True, parser_class=parser_class)
    pc = psub.add_parser("check", help="validate, then run the file's checks")
    pc.add_argument("path", help="a policy file or a folder of *.yaml")
    pe = psub.add_parser("explain", help="what level a user has on a name, and why")
    pe.add_argument("path", help="a policy file or a folder of *.yaml")
    pe.add_argument("--user", required=True, help="the caller's id")
    pe.add_argument("--group", action="append", default=[], help="a group of the caller (repeat for more); a local "
                                                                  "account's groups from `users:` are added")
    _target(pe)
    pe.add_argument("--action", choices=["read", "edit", "manage"], default="read", help="the level needed")
    pd = psub.add_parser("diff", help="the changes of access from OLD to NEW; exit 3 when some access widens")
    pd.add_argument("paths", nargs="+", metavar="OLD NEW",
                    help="two policy paths; or one path with --git REV; or a git revision and a path")
    pd.add_argument("--git", metavar="REV", help="take OLD from this git revision of the same path (origin/main)")
    pd.add_argument("--format", choices=["text", "json", "markdown"], default="text", help="output")
    pw = psub.add_parser("who-can", help="every subject holding more than none on a name, and the rule")
    pw.add_argument("path", help="a policy file or a folder of *.yaml")
    _target(pw)
    pw.add_argument("--format", choices=["text", "json"], default="text", help="output")
    pa = psub.add_parser("audit", help="an existing server's names that no team owns, per-team counts, "
                                       "suggested prefixes")
    pa.add_argument("path", help="a policy file or a folder of *.yaml")
    pa.add_argument("--upstream", required=True, help="the mlflow server's URL, or a gate's (with "
                                                      "MLFLOW_TRACKING_TOKEN of an admin)")
    pa.add_argument("--format", choices=["text", "json"], default="text", help="output")


def _target(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment", metavar="NAME", help="an experiment name")
    target.add_argument("--model", metavar="NAME", help="a registered model or prompt name")


def policy_main(args: argparse.Namespace) -> int:
    handlers = {"check": policy_check, "explain": policy_explain, "diff": policy_diff, "who-can": policy_who_can,
                "audit": policy_audit}
    return handlers[args.policy_command](args)


def _load(path: str) -> Policy | None:
    """The policy at `path`, or None after printing every problem."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s); the policy was not accepted.")
        return None


def policy_check(args: argparse.Namespace) -> int:
    policy = _load(args.path)
    if policy is None:
        return 1
    failures = run_checks(policy)
    for failure in failures:
        print(failure)
    issuers = f", {len(policy.issuers)} issuers ({', '.join(sorted(policy.issuers))})" if policy.issuers else ""
    print(f"{len(policy.teams)} teams, {len(policy.grants)} grants, {len(policy.denies)} denies, "
          f"{len(policy.users)} local users{issuers}; {len(policy.checks) - len(failures)}/{len(policy.checks)} "
          "checks hold.")
    return 1 if failures else 0


def _kind_name(args: argparse.Namespace) -> tuple[str, str]:
    return ("experiment", args.experiment) if args.experiment is not None else ("model", args.model)


def policy_explain(args: argparse.Namespace) -> int:
    policy = _load(args.path)
    if policy is None:
        return 1
    kind, name = _kind_name(args)
    given = Identity(args.user, frozenset(args.group), via="explain")
    ident = with_account_groups(policy, given)
    d = decide(policy, ident, kind, name, Level.parse(args.action))
    verdict = "ALLOW" if d.allowed else "DENY"
    print(f"{verdict}: {args.user} has {d.have} on {kind} {name!r} ({d.reason}); {args.action} needs {d.needed}.")
    if ident.groups != given.groups:
        print(f"(groups {', '.join(sorted(ident.groups - given.groups))} come from the local account in `users:`)")
    print(json.dumps({**d.as_json(), "user": args.user, "groups": sorted(ident.groups)}))
    return 0 if d.allowed else 1


def policy_who_can(args: argparse.Namespace) -> int:
    policy = _load(args.path)
    if policy is None:
        return 1
    kind, name = _kind_name(args)
    answer = who_can(policy, kind, name)
    print(json.dumps(answer.as_json(), indent=2) if args.format == "json" else who_can_text(answer))
    return 0


def policy_diff(args: argparse.Namespace) -> int:
    if len(args.paths) != (1 if args.git else 2):
        print("mlflow-gate policy diff: give OLD and NEW (files or folders), or --git REV and one path "
              "(the policy as it is now; its REV version is the old one)", file=sys.stderr)
        return 2
    new_path = args.paths[-1]
    try:
        old_label, old = _old_policy(args.paths[0] if not args.git else None, args.git, new_path)
        new = load_policy(new_path)
    except _Invalid as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except PolicyError as exc:
        print(f"the new policy ({new_path}) is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    result = diff(old, new)
    if args.format == "json":
        print(json.dumps(result.as_json(), indent=2))
    elif args.format == "markdown":
        print(diff_markdown(result, f"{old_label} → {new_path}"))
    else:
        print(diff_text(result))
    return WIDENS if result.widens else 0


class _Invalid(Exception):
    pass


def _old_policy(old: str | None, rev: str | None, new_path: str) -> tuple[str, Policy]:
    """The old side of a diff: a path, or `new_path` at a git revision (empty if it did not exist there)."""
    source: list[tuple[str, str]] | None = None
    if old is not None and Path(old).exists():
        label = old
    else:
        rev = rev or old or ""
        label = f"{rev}:{new_path}"
        try:
            source = git_policy_texts(rev, Path(new_path))
        except ValueError as exc:
            what = f"OLD {old!r} is neither a file or folder nor a git revision" if old else f"--git {rev}"
            raise _Invalid(f"mlflow-gate policy diff: {what}: {exc}") from exc
    try:
        if source is None:
            return label, load_policy(label)
        return label, load_policy_texts(source) if source else EMPTY
    except PolicyError as exc:
        lines = [f"the old policy ({label}) is invalid:"] + [f"  {p}" for p in exc.problems]
        raise _Invalid("\n".join(lines)) from exc


def _git(cwd: Path, *argv: str) -> str:
    try:
        proc = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"git could not run: {exc}") from exc
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip() or f"git {' '.join(argv)} failed")
    return proc.stdout


def git_policy_texts(rev: str, path: Path) -> list[tuple[str, str]]:
    """The policy file(s) at `path` as they were at git revision `rev` (none when `path` did not exist)."""
    path = path.resolve()
    where = path if path.is_dir() else path.parent
    top = Path(_git(where, "rev-parse", "--show-toplevel").strip())
    _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    rel = path.relative_to(top).as_posix()
    listing = _git(top, "ls-tree", rev, "--", rel + ("/" if path.is_dir() else "")).splitlines()
    files = []
    for line in listing:
        meta, _, name = line.partition("\t")
        if meta.split()[1] == "blob" and name.endswith((".yaml", ".yml")) and (
                name == rel or name.rpartition("/")[0] == rel):
            files.append(name)
    return [(_git(top, "show", f"{rev}:{name}"), f"{rev}:{name}") for name in sorted(files)]


def policy_audit(args: argparse.Namespace) -> int:
    from .policy_audit import AuditError, audit, audit_text, fetch_names

    policy = _load(args.path)
    if policy is None:
        return 1
    try:
        names = fetch_names(args.upstream)
    except AuditError as exc:
        print(f"mlflow-gate policy audit: {exc}", file=sys.stderr)
        return 1
    report = audit(policy, names)
    print(json.dumps(report.as_json(), indent=2) if args.format == "json" else audit_text(report))
    return 0
