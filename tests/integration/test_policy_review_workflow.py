"""The example pull-request workflow (deploy/github/policy-review.yml): valid for GitHub Actions, and its
`policy check` / `policy diff` steps run as written against a real git history with the real command."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from proxy.review import MARKER

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "deploy" / "github" / "policy-review.yml"
BIN = Path(sys.executable).parent

POLICY = textwrap.dedent("""
    admins: [group:mlflow-admins]
    teams:
      vision: {members: [group:vision], experiments: ["vision/"], models: ["vision-"]}
      nlp: {members: [group:nlp], experiments: ["nlp/"], models: ["nlp-"]}
    checks:
      - {user: bob@corp.test, groups: [vision], experiment: vision/a, allow: edit}
""")


def steps() -> dict[str, dict]:
    data = yaml.safe_load(WORKFLOW.read_text())
    return {s.get("id") or s.get("name") or s.get("uses"): s for s in data["jobs"]["review"]["steps"]}


def test_the_workflow_is_valid_for_github_actions() -> None:
    exe = BIN / "check-jsonschema"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "check_jsonschema"]
    r = subprocess.run([*cmd, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for name, step in steps().items():
        if "run" in step:
            syntax = subprocess.run(["bash", "-n", "-c", step["run"]], capture_output=True, text=True, check=False)
            assert syntax.returncode == 0, (name, syntax.stderr)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@corp.test", *args], cwd=repo, check=True,
                   capture_output=True)


def base_repo(tmp_path: Path) -> Path:
    """A policy repository whose main branch is also origin/main (what checkout with fetch-depth 0 leaves)."""
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    (repo / "policies" / "teams.yaml").write_text(POLICY)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    return repo


def run_step(step: dict, repo: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "POLICY": "policies", "BASE_REF": "main",
           "GITHUB_OUTPUT": str(output)}
    # GitHub runs `run:` with `bash -e {0}`
    return subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("change", "code"), [
    (lambda t: t.replace("members: [group:nlp]", "members: [group:nlp, group:interns]"), "3"),
    (lambda t: t + "denies:\n  - {to: [group:nlp], experiments: [\"nlp/frozen/\"], keep: read}\n", "0"),
])
def test_the_check_and_diff_steps_on_a_pull_request(tmp_path: Path, change: object, code: str) -> None:
    repo = base_repo(tmp_path)
    git(repo, "checkout", "-q", "-b", "pr")
    (repo / "policies" / "teams.yaml").write_text(change(POLICY))  # type: ignore[operator]
    git(repo, "commit", "-q", "-am", "change")
    output = tmp_path / "github-output"
    s = steps()
    check = run_step(s["check"], repo, output)
    assert check.returncode == 0 and "1/1 checks hold" in check.stdout, check.stdout + check.stderr
    diff = run_step(s["diff"], repo, output)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert output.read_text().strip() == f"code={code}"
    comment = (repo / "policy-diff.md").read_text()
    assert comment.splitlines()[0] == MARKER     # how the comment step finds its comment again
    assert ("widen access: a second reviewer should approve" in comment) == (code == "3")


def test_the_diff_step_fails_on_an_invalid_policy(tmp_path: Path) -> None:
    repo = base_repo(tmp_path)
    (repo / "policies" / "teams.yaml").write_text(POLICY.replace("group:nlp]", "nlp-people]"))
    output = tmp_path / "github-output"
    s = steps()
    assert run_step(s["check"], repo, output).returncode == 1
    diff = run_step(s["diff"], repo, output)
    assert diff.returncode != 0 and output.read_text().strip() == "code=1"
