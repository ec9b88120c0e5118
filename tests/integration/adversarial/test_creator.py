"""Class: who created it is the authenticated caller, whatever the client says.

The `mlflow` client records its OS user (`USER`) as the creator of what it makes; an attacker sets `USER=mallory`,
or sends `mlflow.user` (or `created_by`) itself. For every kind of object a caller creates, MLflow must end up
recording the authenticated id, in the field MLflow reads as the creator: tag `mlflow.user` of runs, logged models,
registered models, model versions and prompts (MLflow 3.17 keeps no user for registry objects created over REST),
trace metadata `mlflow.user` (v3 start, v2 start) and trace tag `mlflow.user` (OTLP root spans, tag updates), the
`created_by` MLflow derives for evaluation datasets and their records, an issue's `created_by`, and the person
(`source_id` of a HUMAN source) who gave an assessment: `log_feedback(source=AssessmentSource("HUMAN", "bob"))`
recorded feedback as bob's."""
from __future__ import annotations

import json
from collections.abc import Iterator

import mlflow
import pytest
from mlflow.tracing.utils.environment import resolve_env_metadata

from tests.integration.adversarial.adv_it import hex32, otlp_export
from tests.integration.gate_it import ALICE, World, uid

pytestmark = pytest.mark.integration
MALLORY = "mallory"
A2, A3 = "/api/2.0/mlflow", "/api/3.0/mlflow"


@pytest.fixture
def mallory(gate) -> Iterator[mlflow.MlflowClient]:  # type: ignore[no-untyped-def]
    """Alice's client, on a machine whose OS user claims to be mallory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("USER", MALLORY)
        mp.setenv("LOGNAME", MALLORY)
        resolve_env_metadata.cache_clear()          # MLflow's tracing resolves the OS user once per process
        with gate.client(ALICE).acting() as client:
            yield client
        resolve_env_metadata.cache_clear()


def client_trace(world: World, name: str) -> str:
    """A trace of one span in alpha's experiment, logged by MLflow's client (as alice)."""
    mlflow.set_experiment(experiment_id=world.alpha_exp)
    with mlflow.start_span(name=name):
        pass
    trace_id = mlflow.get_last_active_trace_id()
    assert trace_id
    return trace_id


def test_runs(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    with mlflow.start_run(experiment_id=world.alpha_exp) as run:
        pass
    assert mallory.get_run(run.info.run_id).data.tags["mlflow.user"] == ALICE


def test_logged_models(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    fluent = mlflow.initialize_logged_model(name="by-fluent", experiment_id=world.alpha_exp)
    explicit = mallory.create_logged_model(world.alpha_exp, name="explicit", tags={"mlflow.user": MALLORY})
    for model_id in (fluent.model_id, explicit.model_id):
        assert mallory.get_logged_model(model_id).tags["mlflow.user"] == ALICE
    mallory.set_logged_model_tags(explicit.model_id, {"mlflow.user": MALLORY, "note": "x"})
    assert mallory.get_logged_model(explicit.model_id).tags["mlflow.user"] == ALICE


def test_traces_from_the_client(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    trace_id = client_trace(world, "creator")
    info = mallory.get_trace(trace_id).info
    assert info.trace_metadata["mlflow.user"] == ALICE, info.trace_metadata
    assert info.tags["mlflow.user"] == ALICE, info.tags           # what MLflow's UI shows as the trace's user
    with gate.http(ALICE) as h:
        r = h.patch(f"{A3}/traces/{trace_id}/tags", json={"key": "mlflow.user", "value": MALLORY})
        assert r.status_code == 200, r.text
    assert mallory.get_trace(trace_id).info.tags.get("mlflow.user") == ALICE


def test_traces_over_otlp_and_v2(gate, world: World) -> None:
    trace_hex = hex32()
    body = otlp_export([trace_hex], attributes={"mlflow.traceTag.mlflow.user": MALLORY})
    with gate.http(ALICE) as h:
        r = h.post("/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf",
                                                        "X-MLflow-Experiment-Id": world.alpha_exp})
        assert r.status_code == 200, r.text
        info = h.get(f"{A3}/traces/tr-{trace_hex}").json()["trace"]["trace_info"]
        assert info["tags"]["mlflow.user"] == ALICE, info
        r = h.post(f"{A2}/traces", json={"experiment_id": world.alpha_exp, "timestamp_ms": 1,
                                         "request_metadata": [{"key": "mlflow.user", "value": MALLORY}],
                                         "tags": [{"key": "mlflow.user", "value": MALLORY}]})
        assert r.status_code == 200, r.text
        v2 = r.json()["trace_info"]
        assert {m["key"]: m["value"] for m in v2["request_metadata"]}["mlflow.user"] == ALICE, v2
        assert {t["key"]: t["value"] for t in v2["tags"]}["mlflow.user"] == ALICE, v2


def test_registered_models_versions_and_prompts(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    n = uid()
    mallory.create_registered_model(f"alpha-c-{n}")
    mallory.create_registered_model(f"alpha-t-{n}", tags={"mlflow.user": MALLORY})
    for name in (f"alpha-c-{n}", f"alpha-t-{n}"):
        assert mallory.get_registered_model(name).tags["mlflow.user"] == ALICE
    mallory.set_registered_model_tag(f"alpha-c-{n}", "mlflow.user", MALLORY)
    assert mallory.get_registered_model(f"alpha-c-{n}").tags["mlflow.user"] == ALICE
    source = f"{mallory.get_run(world.alpha_run).info.artifact_uri}/notes"
    mallory.create_model_version(f"alpha-c-{n}", source, run_id=world.alpha_run, tags={"mlflow.user": MALLORY})
    assert mallory.get_model_version(f"alpha-c-{n}", "1").tags["mlflow.user"] == ALICE
    mallory.set_model_version_tag(f"alpha-c-{n}", "1", "mlflow.user", MALLORY)
    assert mallory.get_model_version(f"alpha-c-{n}", "1").tags["mlflow.user"] == ALICE

    prompt = f"alpha-cp-{n}"
    mlflow.genai.register_prompt(name=prompt, template="Hi {{x}}", tags={"mlflow.user": MALLORY})
    with gate.http(ALICE) as h:       # the client hides prompts from get_registered_model
        tags = h.get(f"{A2}/registered-models/get", params={"name": prompt}).json()["registered_model"]["tags"]
    assert {t["key"]: t["value"] for t in tags}["mlflow.user"] == ALICE
    assert mlflow.genai.load_prompt(f"prompts:/{prompt}/1", cache_ttl_seconds=0).tags["mlflow.user"] == ALICE


def test_evaluation_datasets_and_records(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    from mlflow.genai import datasets

    ds = datasets.create_dataset(name=f"alpha-cd-{uid()}", experiment_id=[world.alpha_exp])
    ds.merge_records([{"inputs": {"q": "1+1"}, "expectations": {"a": "2"}, "tags": {"mlflow.user": MALLORY}}])
    got = datasets.get_dataset(dataset_id=ds.dataset_id)
    assert got.created_by == ALICE, got.created_by
    with gate.http(ALICE) as h:
        r = h.get(f"{A3}/datasets/{ds.dataset_id}/records")
        assert r.status_code == 200, r.text
        records = json.loads(r.json()["records"])
        assert [rec["created_by"] for rec in records] == [ALICE], records
        r = h.patch(f"{A3}/datasets/{ds.dataset_id}/tags", json={"tags": json.dumps({"mlflow.user": MALLORY})})
        assert r.status_code == 200, r.text
    assert datasets.get_dataset(dataset_id=ds.dataset_id).last_updated_by == ALICE


def test_issues(gate, world: World) -> None:
    with gate.http(ALICE) as h:
        r = h.post(f"{A3}/issues", json={"experiment_id": world.alpha_exp, "name": f"issue-{uid()}",
                                         "description": "d", "created_by": MALLORY})
        assert r.status_code == 200, r.text
        assert r.json()["issue"]["created_by"] == ALICE, r.text


def test_assessments_given_by_a_person(gate, world: World, mallory) -> None:  # type: ignore[no-untyped-def]
    from mlflow.entities import AssessmentSource

    trace_id = client_trace(world, "assessed")
    human = mlflow.log_feedback(trace_id=trace_id, name="q", value=1.0,
                                source=AssessmentSource(source_type="HUMAN", source_id="bob@corp.test"))
    judge = mlflow.log_feedback(trace_id=trace_id, name="j", value=1.0,
                                source=AssessmentSource(source_type="LLM_JUDGE", source_id="my-judge"))
    assert mlflow.get_assessment(trace_id, human.assessment_id).source.source_id == ALICE
    assert mlflow.get_assessment(trace_id, judge.assessment_id).source.source_id == "my-judge"
    started = f"tr-{hex32()}"
    with gate.http(ALICE) as h:
        r = h.post(f"{A3}/traces", json={"trace": {"trace_info": {
            "trace_id": started, "request_time": "2025-01-01T00:00:00Z", "execution_duration": "1s", "state": "OK",
            "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": world.alpha_exp}},
            "assessments": [{"assessment_name": "q", "feedback": {"value": 1.0},
                             "source": {"sourceType": "HUMAN", "sourceId": MALLORY}}]}}})
        assert r.status_code == 200, r.text
        info = h.get(f"{A3}/traces/{started}").json()["trace"]["trace_info"]
    assert [a["source"]["source_id"] for a in info["assessments"]] == [ALICE], info
