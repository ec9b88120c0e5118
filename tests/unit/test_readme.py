"""The README's quick start as a newcomer copies it (issue 12, item 8): every command runs the venv's own tools,
running the gate installs only what serving needs (mlflow as the `embedded` extra, the test tools as `test`), the
gate alone installs without mlflow, every link points at a file of this repository, and what it says bob may use
is what the example policy says."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from proxy.denials import usable
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from proxy.routes import Names

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def _commands(section: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [part.strip() for block in blocks for line in block.splitlines() for part in line.split("&&")
            if part.strip()]


def test_the_quick_start_runs_the_venv_s_tools_only() -> None:
    commands = _commands(_quick_start())
    assert commands[0] == "python3 -m venv .venv", commands
    for command in commands[1:]:
        words = re.sub(r"\$\((.*?)\)", r"\1", command).split()
        tool = words[0] if words[0] != "export" else words[1].split("=", 1)[1]
        if tool.startswith("http"):             # export MLFLOW_TRACKING_URI=http://...
            continue
        assert tool.startswith(".venv/bin/"), f"{command!r} runs {tool!r}, not the venv's"


def test_serving_installs_the_embedded_extra_and_the_tests_add_theirs() -> None:
    commands = _commands(_quick_start())
    installs = [c for c in commands if " install " in c]
    assert installs[0] == ".venv/bin/pip install -e '.[embedded]'", installs
    assert any(c == ".venv/bin/pip install -e '.[test]'" for c in installs), installs
    serve = commands.index(".venv/bin/mlflow-gate serve")
    assert commands.index(".venv/bin/pip install -e '.[test]'") > serve, "the tests' install comes after serving"


def test_the_gate_alone_installs_without_mlflow() -> None:
    project = PYPROJECT["project"]
    assert not [d for d in project["dependencies"] if re.match(r"mlflow\b(?!-)", d)], project["dependencies"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("mlflow>=") for d in extras["embedded"])
    assert "mlflow-gate[embedded]" in extras["test"]


def test_the_gate_imports_nothing_from_mlflow() -> None:
    found = []
    for path in sorted((REPO / "proxy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "mlflow"]
    assert not found, found


def test_every_link_of_the_readme_is_a_file_of_the_repository() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert "docs/policy.md" in local and "deploy/README.md" in local
    assert not [link for link in local if not (REPO / link).exists()], local
    assert "SPEC.md" not in README


def test_what_the_quick_start_says_bob_may_use_is_the_example_policy_s() -> None:
    policy = load_policy_text((REPO / "policies" / "example.yaml").read_text())
    bob = Identity("bob@example.com", frozenset())
    said = re.search(r"`nlp/hello` is refused with the names he\s+may use \(([^)]*)\)", _quick_start())
    assert said, "the quick start no longer says what bob may use"
    names = sorted(re.findall(r"`([^`]+)`", said.group(1)))
    reads = usable(policy, bob, Names.NEW_EXPERIMENT, "nlp/hello", Level.EDIT)
    assert sorted(re.findall(r"'([^']+)'", reads)) == names, reads
