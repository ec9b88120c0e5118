"""The newer policy keys, table-driven: denies, protected_aliases, limits, revoked_users, storage's
role_arn / external_id / direct / object_tags. Each problem names its file, location (line) and fix."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from proxy.policy import Level, PolicyError, Storage, load_policy, load_policy_text
from tests.support import policies

BASE = textwrap.dedent("""
    teams:
      vision: {members: [group:vision], experiments: ["vision/"], models: ["vision-"],
               artifact_root: "s3://acme-vision/artifacts"}
      nlp: {members: [group:nlp], experiments: ["nlp/"], models: ["nlp-"]}
""")


def problems(text: str) -> list[str]:
    return policies.problems(BASE + text)


# --- good values, and what they become -------------------------------------------------------

def test_denies_are_read_with_their_subjects_prefixes_and_keep() -> None:
    policy = load_policy_text(BASE + textwrap.dedent("""
        denies:
          - to: [group:contractors, team:nlp]
            experiments: ["vision/secret/"]
            models: ["vision-secret-"]
            keep: read
          - {to: [everyone], experiments: ["users/{user}/frozen/"]}
          - {to: [bob@corp.test], models: ["nlp-"], keep: edit}
    """), "p.yaml")
    first, second, third = policy.denies
    assert [str(s) for s in first.to] == ["group:contractors", "team:nlp"]
    assert (first.experiments, first.models, first.keep) == (("vision/secret/",), ("vision-secret-",), Level.READ)
    assert first.where == "p.yaml: denies[0]"
    assert second.keep == Level.NONE and second.experiments == ("users/{user}/frozen/",) and second.models == ()
    assert third.keep == Level.EDIT and [str(s) for s in third.to] == ["user:bob@corp.test"]


def test_protected_aliases_limits_and_revoked_users() -> None:
    policy = load_policy_text(BASE.replace('models: ["vision-"],', 'models: ["vision-"], '
                                           'protected_aliases: [champion, production],') + textwrap.dedent("""
        limits: {requests_per_minute: 600}
        revoked_users: [Mallory@corp.test, "user:ci-bot", system:serviceaccount:ml:old]
    """), "p.yaml")
    assert policy.teams["vision"].protected_aliases == frozenset({"champion", "production"})
    assert policy.teams["nlp"].protected_aliases == frozenset()
    assert policy.limits.requests_per_minute == 600
    assert policy.revoked_users == frozenset({"mallory@corp.test", "ci-bot", "system:serviceaccount:ml:old"})


def test_no_limits_and_no_revocations_by_default() -> None:
    policy = load_policy_text(BASE)
    assert policy.limits.requests_per_minute is None
    assert policy.revoked_users == frozenset() and policy.denies == ()


@pytest.mark.parametrize(("storage", "expected"), [
    ("{role_arn: 'arn:aws:iam::111122223333:role/mlflow-vision', external_id: acme-vision}",
     Storage(role_arn="arn:aws:iam::111122223333:role/mlflow-vision", external_id="acme-vision")),
    ("{direct: true, region: eu-west-1}", Storage(region="eu-west-1", direct=True)),
    ("{object_tags: {team: vision, cost-center: 42}}", Storage(object_tags=(("team", "vision"), ("cost-center", "42")))),
    ("{role_arn: 'arn:aws-us-gov:iam::111122223333:role/path/to/r'}",
     Storage(role_arn="arn:aws-us-gov:iam::111122223333:role/path/to/r")),
    ("{endpoint_url: 'http://127.0.0.1:9000', credentials_env: VISION, direct: false}",
     Storage(endpoint_url="http://127.0.0.1:9000", credentials_env="VISION")),
])
def test_storage_keys(storage: str, expected: Storage) -> None:
    text = BASE.replace('artifact_root: "s3://acme-vision/artifacts"}',
                        f'artifact_root: "s3://acme-vision/artifacts", storage: {storage}}}')
    policy = load_policy_text(text)
    assert policy.teams["vision"].storage == expected
    hash(policy.teams["vision"].storage)   # the artifact stores are keyed by it


# --- every problem, with its location --------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("denies:\n  - {to: [group:x], experiments: [a/], keep: manage}\n",
     "denies[0].keep (line 7): must be one of none | read | edit, got 'manage'"),
    ("denies:\n  - {to: [group:x], experiments: [a/], permission: read}\n",
     "denies[0].permission (line 7): unknown key 'permission'; allowed here: experiments, keep, models, to"),
    ("denies:\n  - {experiments: [a/]}\n", "denies[0].to (line 7): a deny needs at least one subject in `to`"),
    ("denies:\n  - {to: [everyone]}\n", "denies[0] (line 7): a deny needs `experiments` or `models` prefixes"),
    ("denies:\n  - {to: [team:ghost], models: [a-]}\n", "denies[0].to: team:ghost names no team (teams: nlp, vision)"),
    ("denies:\n  - {to: [bob], models: [a-]}\n", "denies[0].to[0] (line 7): 'bob' is not a subject"),
    ("denies:\n  - {to: [everyone], models: [\"{team}-\"]}\n", "only {user} may be used in a prefix"),
    ("denies: {to: [everyone]}\n", "denies (line 6): must be a list of denies"),
    ("limits: {requests_per_minute: 0}\n", "limits.requests_per_minute (line 6): must be a positive whole number"),
    ("limits: {requests_per_minute: 1.5}\n", "must be a positive whole number of requests per caller per minute"),
    ("limits: {requests_per_minute: true}\n", "must be a positive whole number"),
    ("limits: {requests_per_second: 10}\n", ("limits.requests_per_second (line 6): unknown key 'requests_per_second'; "
                                            "allowed here: requests_per_minute")),
    ("limits: 600\n", "limits (line 6): must be a mapping, got int"),
    ("revoked_users: [group:contractors]\n", "revoked_users[0] (line 6): 'group:contractors' is not a user id"),
    ("revoked_users: [everyone]\n", "to cut off a group, use `denies`"),
    ("revoked_users: [\"\"]\n", "revoked_users[0] (line 6): must be a non-empty string"),
])
def test_each_problem_of_the_new_keys(text: str, expected: str) -> None:
    policies.assert_reported(BASE + text, expected)


@pytest.mark.parametrize(("team", "expected"), [
    ('protected_aliases: [champion, "prod alias"]', "protected_aliases[1] (line 3): 'prod alias' is not an alias name"),
    ("protected_aliases: [latest]", "'latest' is reserved by MLflow"),
    ("protected_aliases: [v3]", "'v3' is reserved by MLflow"),
    ("protected_aliases: champion-2024", None),
    ("storage: {role_arn: 'arn:aws:iam::123:role/x'}", "storage.role_arn (line 3): must be an IAM role ARN"),
    ("storage: {role_arn: 'arn:aws:iam::111122223333:user/x'}", "must be an IAM role ARN"),
    ("storage: {external_id: x}", "storage.external_id (line 3): is sent only when assuming `role_arn`"),
    ("storage: {role_arn: 'arn:aws:iam::111122223333:role/x', credentials_env: V}",
     "use either credentials_env (static keys) or role_arn (STS), not both"),
    ("storage: {direct: yes please}", "storage.direct (line 3): must be true or false, got 'yes please'"),
    ("storage: {direct: 1}", "must be true or false, got 1"),
    ("storage: {object_tags: {team: [a]}}", "storage.object_tags.team (line 3): tag values must be strings or numbers"),
    ("storage: {object_tags: [a]}", "storage.object_tags (line 3): must be a mapping, got list"),
    ("storage: {role: x}", ("storage.role (line 3): unknown key 'role'; allowed here: credentials_env, direct, "
                           "endpoint_url, external_id, object_tags, region, role_arn")),
    ("storage: {region: 7}", "storage.region (line 3): must be a non-empty string"),
])
def test_each_problem_of_the_new_team_keys(team: str, expected: str | None) -> None:
    text = f'teams:\n  vision:\n    {team}\n    models: ["vision-"]\n    artifact_root: "s3://b/p"\n'
    if expected is None:
        load_policy_text(text, "p.yaml")
        return
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    found = [str(p) for p in info.value.problems]
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(("team", "expected"), [
    ('{models: [], protected_aliases: [champion]}', "protects aliases of the team's models, but the team owns no"),
    ('{artifact_root: "file:///srv/a", storage: {direct: true}}', "direct apply to an s3:// artifact_root only"),
    ('{storage: {role_arn: "arn:aws:iam::111122223333:role/r", object_tags: {a: b}}}',
     "role_arn, object_tags apply to an s3:// artifact_root only"),
])
def test_settings_that_could_not_take_effect_are_refused(team: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(f"teams:\n  t: {team}\n", "p.yaml")
    assert any(expected in str(p) for p in info.value.problems), info.value.problems


def test_every_problem_of_the_new_keys_is_reported_at_once() -> None:
    found = problems("denies:\n  - {to: [nobody], keep: all}\nlimits: {requests_per_minute: -1}\n"
                     "revoked_users: [team:nlp]\n")
    # the bad subject, the missing prefixes, the bad keep, the limit, the revoked team
    assert len(found) == 5, found


def test_two_files_may_not_set_different_limits(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("limits: {requests_per_minute: 100}\nrevoked_users: [a@x.test]\n")
    (tmp_path / "b.yaml").write_text("limits: {requests_per_minute: 100}\nrevoked_users: [b@x.test]\n"
                                     "denies:\n  - {to: [everyone], experiments: [z/]}\n")
    policy = load_policy(tmp_path)
    assert policy.limits.requests_per_minute == 100 and policy.revoked_users == {"a@x.test", "b@x.test"}
    assert len(policy.denies) == 1 and policy.denies[0].where.endswith("b.yaml: denies[0]")
    (tmp_path / "b.yaml").write_text("limits: {requests_per_minute: 200}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert any("limits.requests_per_minute: conflicts with requests_per_minute 100 in another file" in str(p)
               for p in info.value.problems)


def test_the_policy_modules_keep_functions_short() -> None:
    root = Path(__file__).resolve().parents[2] / "proxy"
    for module in ("policy.py", "policy_load.py", "policy_model.py", "decide.py", "review.py", "limits.py",
                   "policy_audit.py", "cli_policy.py"):
        text = (root / module).read_text()
        assert len(text.splitlines()) <= 450, module
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{module}: {node.name}"  # type: ignore[operator]
