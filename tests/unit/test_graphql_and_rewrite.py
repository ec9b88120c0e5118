"""GraphQL documents analysed per root field; request rewrites on creation."""
from __future__ import annotations

import pytest

from proxy.errors import BadRequest, PermissionDenied
from proxy.graphql import analyse, filter_model_versions, model_names
from proxy.identity import Identity
from proxy.policy import Team
from proxy.rewrite import experiment_create, run_create, run_log_batch, run_set_tag

UI_GET_RUN = """query GetRun($data: MlflowGetRunInput!) { mlflowGetRun(input: $data) { run { info { runUuid }
  experiment { name } modelVersions { name version source } } } }"""


def test_the_ui_get_run_query_needs_read_on_the_run_and_filters_model_versions() -> None:
    needs = analyse(UI_GET_RUN, {"data": {"runId": "r1"}})
    assert needs.ids == (("run", "r1"),)
    assert needs.filter_model_versions


def test_literal_inputs_aliases_fragments_and_several_fields() -> None:
    doc = """query { a: mlflowGetExperiment(input: {experimentId: "3"}) { experiment { name } }
      ...F }
      fragment F on Query { mlflowSearchRuns(input: {experimentIds: ["4", "5"]}) { runs { info { runUuid } } } }"""
    assert analyse(doc, None).ids == (("experiment", "3"), ("experiment", "4"), ("experiment", "5"))


@pytest.mark.parametrize("doc", ["query { mlflowDeleteEverything { ok } }", "mutation { somethingNew(input: {}) }"])
def test_unknown_root_fields_are_refused(doc: str) -> None:
    with pytest.raises(PermissionDenied):
        analyse(doc, None)


@pytest.mark.parametrize("doc", ["query { mlflowGetRun(input: {}) { run { info { runUuid } } } }", "query {", ""])
def test_missing_ids_and_bad_documents_are_400(doc: str) -> None:
    with pytest.raises(BadRequest):
        analyse(doc, None)


@pytest.mark.parametrize("doc", [
    'query { mlflowGetRun(input: {runId: "r"}) { run { mv: modelVersions { name } } } }',
    'query { mlflowGetRun(input: {runId: "r"}) { run { modelVersions { version } } } }',
    'query { mlflowGetRun(input: {runId: "r"}) { run { modelVersions { n: name } } } }',
])
def test_model_versions_must_select_their_name_unaliased(doc: str) -> None:
    with pytest.raises(PermissionDenied):
        analyse(doc, None)


def test_model_version_filtering() -> None:
    data = {"data": {"mlflowGetRun": {"run": {"modelVersions": [{"name": "a-1"}, {"name": "b-1"}]}}}}
    assert model_names(data) == {"a-1", "b-1"}
    assert filter_model_versions(data, {"a-1"})["data"]["mlflowGetRun"]["run"]["modelVersions"] == [{"name": "a-1"}]


BOB = Identity("bob@x.test")
TEAM = Team("vision", tags=(("cost-center", "cv-42"),))


def test_experiment_create_drops_the_client_location_and_adds_team_tags() -> None:
    body = experiment_create({"name": "vision/a", "artifactLocation": "file:///etc",
                              "tags": [{"key": "cost-center", "value": "mine"}]}, BOB, TEAM)
    assert "artifact_location" not in body and "artifactLocation" not in body
    assert body["tags"] == [{"key": "cost-center", "value": "mine"}]
    assert experiment_create({"name": "vision/b"}, BOB, TEAM)["tags"] == [{"key": "cost-center", "value": "cv-42"}]


def test_run_create_sets_the_authenticated_user() -> None:
    body = run_create({"experiment_id": "1", "userId": "mallory",
                       "tags": [{"key": "mlflow.user", "value": "mallory"}, {"key": "x", "value": "1"}]}, BOB, TEAM)
    assert body["user_id"] == "bob@x.test" and "userId" not in body
    tags = {t["key"]: t["value"] for t in body["tags"]}
    assert tags == {"mlflow.user": "bob@x.test", "x": "1", "cost-center": "cv-42"}


def test_mlflow_user_cannot_be_set_to_someone_else_later() -> None:
    assert run_set_tag({"run_id": "r", "key": "mlflow.user", "value": "mallory"}, BOB, None)["value"] == "bob@x.test"
    assert run_set_tag({"run_id": "r", "key": "other", "value": "v"}, BOB, None)["value"] == "v"
    body = run_log_batch({"run_id": "r", "tags": [{"key": "mlflow.user", "value": "m"}]}, BOB, None)
    assert body["tags"][0]["value"] == "bob@x.test"
