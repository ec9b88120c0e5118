"""Issue 15's rules through a running gate, with the real mlflow client: protected aliases (a member refused, a
maintainer allowed, through every route that sets, moves or drops an alias, prompts included), the request limit
(429 with Retry-After, separate budgets, health and metrics exempt, a limit change on reload), and the per-team
figures on /_gate/metrics after real traffic (team names only, never a user id or a storage root)."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.gate_it import denied, uid
from tests.support.client import env_vars
from tests.support.gate import Gate, start_gate
from tests.support.policies import team

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ROOT_USER, CAROL, BOB, ERIN, NINA = "root@corp.test", "carol@corp.test", "bob@corp.test", "erin@corp.test", \
    "nina@corp.test"


def rules_policy(root: Path, limits: str = "") -> str:
    return """\
admins: [root@corp.test]
teams:
""" + team("vision", "bob@corp.test", maintainers=["carol@corp.test"], experiments=["vision/"], models=["vision-"],
           protected_aliases=["champion"], artifact_root=f"file://{root}/vision-store") \
        + team("nlp", "nina@corp.test", experiments=["nlp/"], models=["nlp-"]) + """grants:
  - {to: [erin@corp.test], models: ["vision-"], permission: edit}
denies:
  - {to: [carol@corp.test], models: ["vision-frozen-"], keep: edit}
""" + limits


@pytest.fixture(scope="module")
def rules_gate(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("rules-gate")
    gate = start_gate(root, mlflow_server.url, rules_policy(root), backend=mlflow_server.backend,
                      args=["--artifacts-destination", f"file://{root}/default-store"])
    try:
        yield gate
    finally:
        gate.stop()


def vision_model(gate: Gate, versions: int = 2, prefix: str = "vision-clf-") -> str:
    """A model of team vision with `versions` versions, made by its maintainer from a run of a vision experiment."""
    carol = gate.client(CAROL)
    n = uid()
    run_id = carol.create_run(carol.create_experiment(f"vision/alias-{n}")).info.run_id
    carol.log_text(run_id, "artifact_path: model\nflavors: {}\n", "model/MLmodel")
    name = f"{prefix}{n}"
    carol.create_registered_model(name)
    for _ in range(versions):
        carol.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return name


def alias_version(gate: Gate, name: str, alias: str) -> str | None:
    try:
        return str(gate.client(ROOT_USER).get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


# --- protected aliases ---------------------------------------------------------------------------------------

def test_a_member_cannot_set_move_or_delete_a_protected_alias_and_a_maintainer_can(rules_gate: Gate) -> None:
    gate, name = rules_gate, vision_model(rules_gate)
    bob, carol, erin = gate.client(BOB), gate.client(CAROL), gate.client(ERIN)
    with denied():
        bob.set_registered_model_alias(name, "champion", 1)                   # set
    try:
        bob.set_registered_model_alias(name, "champion", 1)
    except mlflow.exceptions.MlflowException as exc:
        assert "alias 'champion' (team vision)" in str(exc) and "is protected" in str(exc)
        assert "needs manage on the model; you have edit" in str(exc)
    with denied():
        erin.set_registered_model_alias(name, "champion", 1)                  # a grant of edit is edit
    with denied():
        bob.set_registered_model_alias(name, "CHAMPION", 1)                   # the same alias to some databases
    bob.set_registered_model_alias(name, "staging", 1)                        # any other alias: edit
    assert alias_version(gate, name, "staging") == "1"

    carol.set_registered_model_alias(name, "champion", 1)                     # the maintainer sets it
    with denied():
        bob.set_registered_model_alias(name, "champion", 2)                   # move
    with denied():
        bob.delete_registered_model_alias(name, "champion")                   # delete
    assert alias_version(gate, name, "champion") == "1"
    carol.set_registered_model_alias(name, "champion", 2)                     # the maintainer moves it
    assert alias_version(gate, name, "champion") == "2"
    assert bob.get_model_version_by_alias(name, "champion").version == "2"    # reading it needs read only
    carol.delete_registered_model_alias(name, "champion")                     # and deletes it
    assert alias_version(gate, name, "champion") is None
    bob.delete_registered_model_alias(name, "staging")


def test_a_maintainer_capped_to_edit_by_a_deny_cannot_move_a_protected_alias(rules_gate: Gate) -> None:
    gate, name = rules_gate, vision_model(rules_gate, versions=1, prefix="vision-frozen-")
    carol = gate.client(CAROL)
    with denied():
        carol.set_registered_model_alias(name, "champion", 1)
    carol.set_registered_model_alias(name, "staging", 1)
    gate.client(ROOT_USER).set_registered_model_alias(name, "champion", 1)   # an admin is never capped
    assert alias_version(gate, name, "champion") == "1"


def test_the_ui_route_refuses_a_member_too(rules_gate: Gate) -> None:
    gate, name = rules_gate, vision_model(rules_gate, versions=1)
    with gate.http(BOB) as bob:
        r = bob.post("/ajax-api/2.0/mlflow/registered-models/alias", json={"name": name, "alias": "champion",
                                                                            "version": "1"})
        assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", r.text
        r = bob.request("DELETE", "/ajax-api/2.0/mlflow/registered-models/alias",
                        json={"name": name, "alias": "Champion"})
        assert r.status_code == 403, r.text
    with gate.http(CAROL) as carol:
        r = carol.post("/ajax-api/2.0/mlflow/registered-models/alias",
                       json={"name": name, "alias": "champion", "version": "1"})
        assert r.status_code == 200, r.text


def test_routes_that_drop_or_carry_an_alias_need_manage(rules_gate: Gate) -> None:
    """Deleting the version an alias points to drops the alias; deleting or renaming the model drops or carries
    it: a member may do none of these, the maintainer all."""
    gate, name = rules_gate, vision_model(rules_gate)
    bob, carol = gate.client(BOB), gate.client(CAROL)
    carol.set_registered_model_alias(name, "champion", 1)
    with denied():
        bob.delete_model_version(name, "1")
    with denied():
        bob.rename_registered_model(name, f"{name}-renamed")
    with denied():
        bob.delete_registered_model(name)
    assert alias_version(gate, name, "champion") == "1"
    carol.delete_model_version(name, "1")                                     # MLflow drops the alias with it
    assert alias_version(gate, name, "champion") is None
    carol.set_registered_model_alias(name, "champion", 2)
    carol.rename_registered_model(name, f"{name}-renamed")                    # the alias travels with the name
    assert alias_version(gate, f"{name}-renamed", "champion") == "2"
    with denied():
        bob.set_registered_model_alias(f"{name}-renamed", "champion", 2)     # and stays protected there
    carol.delete_registered_model(f"{name}-renamed")


def test_graphql_has_no_way_to_move_an_alias(rules_gate: Gate) -> None:
    gate, name = rules_gate, vision_model(rules_gate, versions=1)
    gate.client(CAROL).set_registered_model_alias(name, "champion", 1)
    with gate.http(BOB) as bob:
        document = ('mutation { setRegisteredModelAlias(input: {name: "NAME", alias: "champion", version: "2"}) '
                    '{ __typename } }').replace("NAME", name)
        r = bob.post("/graphql", json={"query": document})
        answer = r.json()
        assert r.status_code in (200, 400, 403) and ("errors" in answer or "error_code" in answer), r.text
    assert alias_version(gate, name, "champion") == "1"


def test_prompt_aliases_are_protected_too(rules_gate: Gate) -> None:
    name = f"vision-prompt-{uid()}"
    with rules_gate.as_user(BOB):
        mlflow.genai.register_prompt(name=name, template="Hello {{name}}!")
        mlflow.genai.register_prompt(name=name, template="Hi {{name}}!")
        with denied():
            mlflow.genai.set_prompt_alias(name, alias="champion", version=1)
        mlflow.genai.set_prompt_alias(name, alias="candidate", version=2)
    with rules_gate.as_user(CAROL):
        mlflow.genai.set_prompt_alias(name, alias="champion", version=1)
    with rules_gate.as_user(BOB):
        assert mlflow.genai.load_prompt(f"prompts:/{name}@champion", cache_ttl_seconds=0).template == "Hello {{name}}!"
        with denied():
            mlflow.genai.set_prompt_alias(name, alias="champion", version=2)
        with denied():
            mlflow.genai.delete_prompt_alias(name, alias="champion")
        with denied():
            mlflow.MlflowClient().delete_prompt_version(name, "1")           # it holds the alias: manage
        with denied():
            mlflow.MlflowClient().delete_prompt(name)
    with rules_gate.as_user(CAROL):
        mlflow.genai.set_prompt_alias(name, alias="champion", version=2)
        mlflow.genai.delete_prompt_alias(name, alias="champion")
    with rules_gate.as_user(BOB):
        mlflow.genai.delete_prompt_alias(name, alias="candidate")


# --- limits.requests_per_minute -----------------------------------------------------------------------------

def use_policy(gate: Gate, text: str) -> None:
    """Write the gate's policy and wait until the gate has reloaded it."""
    gate.set_policy(text, ROOT_USER)


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def spend(client: httpx.Client, budget: int) -> tuple[int, httpx.Response]:
    """Send requests until one is refused (at most budget + 5): how many were answered, and the refusal."""
    for sent in range(budget + 5):
        r = client.get(SEARCH)
        if r.status_code != 200:
            return sent, r
    raise AssertionError(f"{budget + 5} requests in a row were allowed with a budget of {budget}")


def test_requests_over_the_budget_get_429_with_retry_after(rules_gate: Gate) -> None:
    gate = rules_gate
    root = gate.policy_path.parent
    use_policy(gate, rules_policy(root, "limits: {requests_per_minute: 20}\n"))
    try:
        with gate.http(BOB) as bob, gate.http(NINA) as nina:
            start = time.monotonic()
            answered, refused = spend(bob, 20)
            assert 20 <= answered <= 21 + (time.monotonic() - start) / 3, answered   # the burst, plus 1 per 3 s
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
            assert "20 a minute to this gate replica" in refused.json()["message"]
            assert 1 <= int(refused.headers["retry-after"]) <= 3          # one request every 3 s
            # a separate budget for another caller; health and metrics are never counted
            assert nina.get(SEARCH).status_code == 200
            for path in ("/health", "/_gate/health", "/_gate/me"):
                assert bob.get(path).status_code == 200, path
            assert bob.get("/_gate/metrics").status_code != 429      # 200, or 403 where metrics are for admins
            # the real mlflow client, refused, waits for Retry-After and is then answered
            for _ in range(3):     # (unless a slot opened between the last refusal and its call: then again)
                spend(bob, 20)
                before, began = rate_limited(gate), time.monotonic()
                assert gate.client(BOB).search_experiments(max_results=1) is not None
                waited = time.monotonic() - began
                if rate_limited(gate) > before:
                    assert waited >= 0.9, waited
                    break
            else:
                raise AssertionError("the mlflow client was never refused right after the budget was spent")
        # a new limit on reload is a new budget: bob may send again at once
        use_policy(gate, rules_policy(root, "limits: {requests_per_minute: 1000}\n"))
        with gate.http(BOB) as bob:
            assert [bob.get(SEARCH).status_code for _ in range(30)] == [200] * 30
    finally:
        use_policy(gate, rules_policy(root))
    with gate.http(BOB) as bob:
        assert all(bob.get(SEARCH).status_code == 200 for _ in range(40))    # no limit without `limits`


# --- per-team figures on /_gate/metrics ---------------------------------------------------------------------

def rate_limited(gate: Gate) -> float:
    found = re.search(r'mlflow_gate_decisions_total\{allowed="false",reason="rate limited"\} (\S+)', metrics_text(gate))
    return float(found.group(1)) if found else 0.0


def metrics_text(gate: Gate) -> str:
    with gate.http(ROOT_USER) as root:       # an admin may read /_gate/metrics wherever it is served
        r = root.get("/_gate/metrics")
    assert r.status_code == 200, r.text
    return r.text


def team_samples(gate: Gate) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics_text(gate)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("mlflow_gate_team_")}


def grew(before: dict, after: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, tuple(sorted(labels.items())))
    return float(after.get(key, 0) - before.get(key, 0))


def test_per_team_figures_after_real_traffic(rules_gate: Gate, tmp_path: Path) -> None:
    gate = rules_gate
    before = team_samples(gate)
    bob, nina = gate.client(BOB), gate.client(NINA)
    vision_exp = bob.create_experiment(f"vision/metrics-{uid()}")
    run_id = bob.create_run(vision_exp).info.run_id
    bob.log_metric(run_id, "loss", 0.5)
    payload = "x" * 10_000
    bob.log_text(run_id, payload, "notes/big.txt")                              # into vision's own store
    assert Path(bob.download_artifacts(run_id, "notes/big.txt", str(tmp_path))).read_text() == payload
    nlp_exp = nina.create_experiment(f"nlp/metrics-{uid()}")
    nina.log_text(nina.create_run(nlp_exp).info.run_id, "y" * 3000, "n.txt")   # into the default store
    with denied():
        nina.get_experiment(vision_exp)                                        # a refusal on vision's name
    after = team_samples(gate)

    assert grew(before, after, "mlflow_gate_team_requests_total", team="vision") >= 5
    assert grew(before, after, "mlflow_gate_team_requests_total", team="nlp") >= 3
    assert grew(before, after, "mlflow_gate_team_decisions_total", team="vision", allowed="true") >= 5
    assert grew(before, after, "mlflow_gate_team_decisions_total", team="vision", allowed="false") == 1
    assert grew(before, after, "mlflow_gate_team_decisions_total", team="nlp", allowed="false") == 0
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="vision", direction="in") == 10_000
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="vision", direction="out") == 10_000
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="nlp", direction="in") == 3000
    teams = {v for (_, labels) in after for k, v in labels if k == "team"}
    assert teams <= {"vision", "nlp", "(no team)"}, teams
    text = metrics_text(gate)
    assert not re.search(r"corp\.test|file://|vision-store|default-store", text)   # no user ids, no storage roots


def test_multipart_parts_count_as_the_owning_teams_bytes(rules_gate: Gate, tmp_path: Path) -> None:
    """The mlflow client's proxied multipart upload: its parts reach the gate's part endpoint (not the MLflow
    request path), and each part's bytes count under the team owning the experiment, once."""
    gate, size = rules_gate, 11 * MiB
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(size))
    bob = gate.client(BOB)
    run_id = bob.create_run(bob.create_experiment(f"vision/mpu-{uid()}")).info.run_id
    before = team_samples(gate)
    with env_vars(MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true", MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(5 * MiB),
                  MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=str(5 * MiB)):
        bob.log_artifact(run_id, str(local), "big")
    after = team_samples(gate)
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="vision", direction="in") == size
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="nlp", direction="in") == 0
    assert grew(before, after, "mlflow_gate_team_artifact_bytes_total", team="(no team)", direction="in") == 0
    store = gate.policy_path.parent / "vision-store"
    assert [p.stat().st_size for p in store.rglob("big.bin")] == [size]     # landed whole in vision's own store
