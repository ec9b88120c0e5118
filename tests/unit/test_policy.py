"""Policy loading and validation, table-driven: every problem found, with file and location."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.policy import Level, PolicyError, PolicyStore, load_policy, load_policy_text
from tests.support.policies import assert_reported, problems

GOOD = textwrap.dedent("""
    admins: [root@corp.test]
    teams:
      vision: {members: [bob@corp.test], experiments: ["vision/"], models: ["vision-"]}
      nlp: {members: [group:nlp], maintainers: [nora@corp.test], experiments: ["nlp/"]}
    grants:
      - {to: [team:nlp], experiments: ["vision/bench/"], permission: read}
""")


def test_a_good_policy_loads() -> None:
    policy = load_policy_text(GOOD)
    assert set(policy.teams) == {"vision", "nlp"}
    assert policy.default == Level.NONE
    assert policy.owner("experiment", "vision/x").name == "vision"  # type: ignore[union-attr]
    assert policy.owner("experiment", "visionary") is None
    assert policy.owner("model", "vision-a").name == "vision"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "expected"), [
    ("teams:\n  a:\n    members: [bob@corp.test]\n    bogus_key: 1\n", "teams.a.bogus_key (line 4): unknown key 'bogus_key'"),
    ("nonsense: 1\n", "nonsense (line 1): unknown key"),
    ("default: manage\n", "default (line 1): must be one of none | read | edit"),
    ("admins: [bob]\n", "admins[0] (line 1): 'bob' is not a subject"),
    ("grants:\n  - {to: [team:ghost], experiments: [x/], permission: read}\n", "team:ghost names no team"),
    ("grants:\n  - {to: [everyone], experiments: [x/], permission: own}\n", "permission (line 2): must be one of read | edit | manage"),
    ("grants:\n  - {to: [everyone], permission: read}\n", "a grant needs `experiments` or `models`"),
    ("grants:\n  - {experiments: [x/], permission: read}\n", "needs at least one subject"),
    ("teams:\n  a: {experiments: [x/]}\n  b: {experiments: [x/sub/]}\n", "prefix 'x/sub/' overlaps 'x/' owned by team 'a'"),
    ("teams:\n  a: {models: [m-]}\n  b: {models: [m-]}\n", "overlaps"),
    ("teams:\n  a: {experiments: [\"{user}/\"]}\n", "only {user} may be used in a prefix, and only in grants"),
    ("teams:\n  a: {artifact_root: http://x}\n", "must be s3://bucket[/prefix] or file:///absolute/path"),
    ("teams:\n  a: {storage: {endpoint: x}}\n", "unknown key 'endpoint'"),
    ("teams:\n  a: {members: [team:b]}\n  b: {}\n", "team members are users, groups or everyone"),
    ("users:\n  dave@x.test: {password: plain}\n", "must be a hash made by `mlflow-gate hash-password`"),
    ("checks:\n  - {user: bob@x.test, experiment: a, allow: edit, deny: read}\n", "exactly one of `allow"),
    ("checks:\n  - {user: bob@x.test, allow: edit}\n", "exactly one `experiment` or `model`"),
    ("teams: [a, b]\n", "teams (line 1): must be a mapping"),
    ("admins: [\n", "not valid YAML"),
])
def test_each_problem_is_reported_with_its_location(text: str, expected: str) -> None:
    assert_reported(text, expected)


def test_every_problem_is_reported_at_once() -> None:
    found = problems("bogus: 1\ndefault: sometimes\nadmins: [nobody]\nteams:\n  a: {colour: red}\n")
    assert len(found) == 4, found


def test_a_folder_merges_files_and_refuses_a_team_defined_twice(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("teams:\n  a: {experiments: [a/]}\n")
    (tmp_path / "b.yaml").write_text("teams:\n  b: {experiments: [b/]}\ngrants:\n  - {to: [team:a], experiments: [b/x], permission: read}\n")
    policy = load_policy(tmp_path)
    assert set(policy.teams) == {"a", "b"}
    (tmp_path / "c.yaml").write_text("teams:\n  a: {experiments: [c/]}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert any("also defined in" in str(p) for p in info.value.problems)


def test_the_example_policies_are_valid_and_their_checks_hold() -> None:
    from proxy.decide import run_checks

    root = Path(__file__).resolve().parents[2] / "policies"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        policy = load_policy(f)
        assert policy.checks, f"{f.name} should carry checks"
        assert run_checks(policy) == [], f.name


def test_hot_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = PolicyStore(path)
    first = store.current
    path.write_text(GOOD + "bogus: 1\n")
    assert store.refresh() is False
    assert store.current is first
    assert store.error is not None and "bogus" in store.error
    assert store.reloads == {"ok": 0, "failed": 1}
    path.write_text(GOOD.replace("vision/bench/", "vision/benchmarks/"))
    assert store.refresh() is True
    assert store.current is not first and store.error is None
    assert store.refresh() is False          # unchanged files are not reloaded
    path.unlink()
    assert store.refresh() is False and store.current is not first   # a deleted file keeps the policy too


def test_hot_reload_follows_a_kubernetes_configmap_swap(tmp_path: Path) -> None:
    """ConfigMap volumes: files are symlinks into `..data`, itself a symlink swapped atomically."""
    def publish(version: str, text: str) -> None:
        (tmp_path / version).mkdir()
        (tmp_path / version / "policy.yaml").write_text(text)
        (tmp_path / "..data_tmp").symlink_to(version)
        (tmp_path / "..data_tmp").rename(tmp_path / "..data")

    publish("..2026_11_29_01", GOOD)
    (tmp_path / "policy.yaml").symlink_to("..data/policy.yaml")
    store = PolicyStore(tmp_path)
    assert set(store.current.teams) == {"vision", "nlp"}
    publish("..2026_11_29_02", GOOD.replace("nlp:", "speech:").replace("team:nlp", "team:speech"))
    assert store.refresh() is True
    assert set(store.current.teams) == {"vision", "speech"}
