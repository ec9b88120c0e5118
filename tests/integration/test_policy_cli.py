"""The policy commands as an admin runs them: the real `mlflow-gate` console script, exit codes and output.

`policy audit` reads a real `mlflow server`, directly and through the gate as an admin.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

BIN = Path(sys.executable).parent
GATE = [str(BIN / "mlflow-gate")] if (BIN / "mlflow-gate").exists() else [sys.executable, "-m", "proxy"]

POLICY = textwrap.dedent("""
    admins: [root@corp.test]
    default: none
    teams:
      vision:
        members: [group:vision, group:contractors]
        maintainers: [carol@corp.test]
        experiments: ["vision/"]
        models: ["vision-"]
        protected_aliases: [champion]
      nlp:
        members: [group:nlp]
        experiments: ["nlp/"]
        models: ["nlp-"]
    grants:
      - {to: [everyone], experiments: ["shared/"], permission: edit}
    denies:
      - {to: [group:contractors], experiments: ["vision/secret/"], keep: read}
    users:
      dave@corp.test: {password: "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==", groups: [vision]}
    checks:
      - {user: dave@corp.test, experiment: vision/a, allow: edit}
      - {user: fiona@corp.test, groups: [contractors], experiment: vision/secret/x, deny: edit}
      - {user: fiona@corp.test, groups: [contractors], experiment: vision/secret/x, allow: read}
""")


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_check_runs_the_checks_and_lists_every_problem(policy: Path, tmp_path: Path) -> None:
    r = run("policy", "check", str(policy))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 teams, 1 grants, 1 denies, 1 local users; 3/3 checks hold." in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("keep: read", "keep: manage").replace("[champion]", "[latest]")
                   + "limits: {requests_per_minute: 0}\nrevoked_users: [group:x]\n")
    r = run("policy", "check", str(bad))
    assert r.returncode == 1
    for expected in ("denies[0].keep (line 18): must be one of none | read | edit", "protected_aliases[0] (line 10)",
                     "limits.requests_per_minute (line 25)", "revoked_users[0] (line 26)", "4 problem(s)"):
        assert expected in r.stdout, r.stdout
    assert all(line.startswith(str(bad)) for line in r.stdout.splitlines()[:-1])


def test_explain_uses_a_local_accounts_groups_and_shows_the_deny(policy: Path) -> None:
    r = run("policy", "explain", str(policy), "--user", "dave@corp.test", "--experiment", "vision/a", "--action", "edit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ALLOW: dave@corp.test has edit on experiment 'vision/a' (member of team vision)")
    assert "groups vision come from the local account in `users:`" in r.stdout
    r = run("policy", "explain", str(policy), "--user", "fiona@corp.test", "--group", "contractors",
             "--experiment", "vision/secret/x", "--action", "edit")
    assert r.returncode == 1
    assert "DENY: fiona@corp.test has read on experiment 'vision/secret/x' (member of team vision, capped to read " \
           f"by deny {policy}: denies[0]); edit needs edit." in r.stdout
    decision = json.loads(r.stdout.splitlines()[-1])
    assert decision["allowed"] is False and decision["have"] == "read" and "denies[0]" in decision["reason"]


def test_who_can(policy: Path) -> None:
    r = run("policy", "who-can", str(policy), "--experiment", "vision/secret/x", "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["name"], data["kind"]) == ("vision/secret/x", "experiment")
    holders = {h["subject"]: (h["level"], h["rule"]) for h in data["holders"]}
    assert holders["user:root@corp.test"] == ("manage", "admin")
    assert holders["user:carol@corp.test"] == ("manage", "maintainer of team vision")
    assert holders["group:vision"] == ("edit", "member of team vision")
    assert holders["user:dave@corp.test"][0] == "edit"
    assert holders["group:contractors"][0] == "read" and "denies[0]" in holders["group:contractors"][1]
    assert "group:nlp" not in holders and "everyone" not in holders
    r = run("policy", "who-can", str(policy), "--model", "nlp-bert")
    assert r.returncode == 0 and "group:nlp  edit  (member of team nlp)" in r.stdout and "everyone else: none" in r.stdout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("change", "code", "lines"), [
    (lambda t: t, 0, ["No change of access."]),
    (lambda t: t.replace("keep: read", "keep: none"), 0,
     ["- group:contractors  experiment  vision/secret/  read -> none", "1 change(s), 0 widen access."]),
    (lambda t: t.replace("default: none", "default: read"), 3,
     ["+ everyone  experiment  (names no prefix covers)  none -> read", "2 change(s), 2 widen access."]),
    (lambda t: t.replace("members: [group:nlp]", "members: [group:nlp, group:contractors]"), 3,
     ["+ group:contractors  experiment  nlp/  none -> edit", "+ group:contractors  model  nlp-  none -> edit"]),
    (lambda t: t.replace("    protected_aliases: [champion]\n", ""), 3,
     ["+ team vision: alias 'champion' is no longer protected (edit may move it)"]),
])
def test_diff_exit_codes_and_lines(tmp_path: Path, change: Any, code: int, lines: list[str]) -> None:
    old = write(tmp_path / "old.yaml", POLICY)
    new = write(tmp_path / "new.yaml", change(POLICY))
    r = run("policy", "diff", str(old), str(new))
    assert r.returncode == code, r.stdout + r.stderr
    for line in lines:
        assert line in r.stdout.splitlines(), r.stdout


def test_diff_formats(tmp_path: Path) -> None:
    old = write(tmp_path / "old.yaml", POLICY)
    new = write(tmp_path / "new" / "teams.yaml", POLICY.replace("keep: read", "keep: none")
                .replace("admins: [root@corp.test]", "admins: [root@corp.test, group:ops]"))
    r = run("policy", "diff", str(old), str(new.parent), "--format", "json")
    assert r.returncode == 3, r.stderr
    data = json.loads(r.stdout)
    assert data["widens"] is True
    assert {"subject": "group:contractors", "kind": "experiment", "prefix": "vision/secret/", "before": "read",
            "after": "none"} in data["changes"]
    assert {"subject": "group:ops", "kind": "model", "prefix": "", "before": "none", "after": "manage",
            "note": "admin"} in data["changes"]
    r = run("policy", "diff", str(old), str(new.parent), "--format", "markdown")
    assert r.returncode == 3
    assert r.stdout.startswith("<!-- mlflow-gate policy diff -->\n### mlflow-gate policy diff: ")
    assert "| ⬆️ widens | `group:ops` (admin) | experiment | (every name) | none | manage |" in r.stdout
    assert "| ⬇️ | `group:contractors` | experiment | `vision/secret/` | read | none |" in r.stdout


def test_diff_refuses_an_invalid_policy_on_either_side(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", POLICY)
    bad = write(tmp_path / "bad.yaml", POLICY.replace("keep: read", "keep: all"))
    for args in ((str(good), str(bad)), (str(bad), str(good))):
        r = run("policy", "diff", *args)
        assert r.returncode == 1 and "denies[0].keep" in r.stderr and "is invalid" in r.stderr, r.stderr
    r = run("policy", "diff", str(tmp_path / "missing.yaml"), str(good))
    assert r.returncode == 1 and "neither a file or folder nor a git revision" in r.stderr
    r = run("policy", "diff", str(good))
    assert r.returncode == 2 and "give OLD and NEW" in r.stderr
    r = run("policy", "diff", "--format", "yaml", str(good), str(good))
    assert r.returncode == 2


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@corp.test", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def test_diff_against_a_git_revision(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    folder = repo / "policies"
    write(folder / "teams.yaml", POLICY)
    write(folder / "notes.txt", "not a policy")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "policy")
    # the pull request: a grant that widens, in a second file of the folder
    write(folder / "grants.yaml", "grants:\n  - {to: [team:nlp], experiments: [\"vision/bench/\"], permission: read}\n")
    r = run("policy", "diff", "--git", "main", "policies", cwd=repo)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "+ team:nlp  experiment  vision/bench/  none -> read" in r.stdout
    r = run("policy", "diff", "main", "policies", "--format", "markdown", cwd=repo)   # OLD as a revision
    assert r.returncode == 3 and "main:policies → policies" in r.stdout
    r = run("policy", "diff", "--git", "HEAD", str(folder / "teams.yaml"))           # a file, from anywhere
    assert r.returncode == 0 and "No change of access." in r.stdout, r.stderr
    # a policy that did not exist at the revision: everything it gives is new
    write(repo / "other.yaml", POLICY)
    r = run("policy", "diff", "--git", "main", "other.yaml", cwd=repo)
    assert r.returncode == 3 and "+ user:root@corp.test  experiment  (every name)  none -> manage  [admin]" in r.stdout
    r = run("policy", "diff", "--git", "no-such-branch", "policies", cwd=repo)
    assert r.returncode == 1 and "--git no-such-branch" in r.stderr
    # an old revision with an invalid policy
    write(folder / "teams.yaml", POLICY.replace("keep: read", "keep: all"))
    git(repo, "commit", "-q", "-am", "broken")
    write(folder / "teams.yaml", POLICY)
    r = run("policy", "diff", "--git", "HEAD", "policies", cwd=repo)
    assert r.returncode == 1 and "the old policy (HEAD:policies) is invalid" in r.stderr


# --- policy audit against a real mlflow server -------------------------------------------------

AUDIT_POLICY = textwrap.dedent("""
    admins: [root@corp.test]
    teams:
      {a}:
        members: [group:a]
        experiments: ["{a}/"]
        models: ["{a}-"]
      {b}:
        members: [group:b]
        experiments: ["{b}/"]
""")


def seed(url: str, headers: dict[str, str], experiments: list[str], models: list[str]) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for name in experiments:
            r = c.post("/api/2.0/mlflow/experiments/create", json={"name": name})
            assert r.status_code == 200, r.text
        for name in models:
            r = c.post("/api/2.0/mlflow/registered-models/create", json={"name": name})
            assert r.status_code == 200, r.text


def test_audit_of_an_existing_server(mlflow_server: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"au{tag}", f"bu{tag}"
    owned_exps = [f"{a}/x", f"{a}/y", f"{b}/z"]
    unowned_exps = [f"iris{tag}-test", f"iris{tag}-prod", f"cv{tag}/resnet", f"cv{tag}/vit", f"lonely{tag}"]
    owned_models = [f"{a}-clf"]
    unowned_models = [f"churn{tag}_v1", f"churn{tag}_v2", f"{b}-not-owned"]   # team b owns no model prefix
    seed(mlflow_server.url, {}, owned_exps + unowned_exps, owned_models + unowned_models)
    policy = write(tmp_path / "p.yaml", AUDIT_POLICY.format(a=a, b=b))
    r = run("policy", "audit", str(policy), "--upstream", mlflow_server.url, "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    exps, models = report["experiments"], report["models"]
    assert report["default"] == "none"
    assert exps["by_team"][a] == 2 and exps["by_team"][b] == 1 and models["by_team"] == {a: 1, b: 0}
    assert set(unowned_exps) <= set(exps["unowned"]) and "Default" in exps["unowned"]
    assert not set(owned_exps) & set(exps["unowned"])
    assert set(unowned_models) <= set(models["unowned"])
    suggested = {s["prefix"]: s["names"] for s in exps["suggested_prefixes"]}
    assert suggested[f"iris{tag}-"] == sorted([f"iris{tag}-prod", f"iris{tag}-test"])
    assert suggested[f"cv{tag}/"] == [f"cv{tag}/resnet", f"cv{tag}/vit"]
    assert suggested[f"lonely{tag}"] == [f"lonely{tag}"]
    assert {s["prefix"]: s["names"] for s in models["suggested_prefixes"]}[f"churn{tag}_"] == \
        [f"churn{tag}_v1", f"churn{tag}_v2"]
    r = run("policy", "audit", str(policy), "--upstream", mlflow_server.url)
    assert r.returncode == 0
    assert f"by team: {a} 2, {b} 1" in r.stdout and f"'iris{tag}-'  2 name(s)" in r.stdout


def test_audit_through_the_gate_needs_an_admin(gate: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    policy = write(tmp_path / "p.yaml", AUDIT_POLICY.format(a=f"au{tag}", b=f"bu{tag}"))
    root = {"authorization": f"Bearer {gate.token('root@corp.test')}"}
    seed(gate.url, root, [f"brown{tag}/one", f"brown{tag}/two"], [f"brown{tag}-m"])
    r = gate_cmd(policy, gate.url, gate.token("root@corp.test"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {f"brown{tag}/one", f"brown{tag}/two"} <= set(report["experiments"]["unowned"])
    assert f"brown{tag}-m" in report["models"]["unowned"]
    # without a credential the gate refuses; a non-admin would see only its own names: both are refused
    r = gate_cmd(policy, gate.url, None)
    assert r.returncode == 1 and "answered 401: set MLFLOW_TRACKING_TOKEN to an admin's personal token" in r.stderr
    r = gate_cmd(policy, gate.url, gate.token("bob@corp.test"))
    assert r.returncode == 1 and "'bob@corp.test' is not an admin there" in r.stderr
    r = gate_cmd(policy, "http://127.0.0.1:9", None)
    assert r.returncode == 1 and "cannot reach" in r.stderr


def gate_cmd(policy: Path, url: str, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    if token:
        env["MLFLOW_TRACKING_TOKEN"] = token
    return subprocess.run([*GATE, "policy", "audit", str(policy), "--upstream", url, "--format", "json"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env, check=False)
