"""Request rewrites on creation (GraphQL documents: test_graphql.py)."""
from __future__ import annotations

import pytest

from proxy.errors import BadRequest
from proxy.identity import Identity
from proxy.params import Params
from proxy.policy import Team
from proxy.rewrite import check_types, experiment_create, promptlab_run, run_create, run_log_batch, run_set_tag
from proxy.routes import Rewrite

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


def test_fields_a_rewrite_replaces_keep_mlflows_types() -> None:
    """Input MLflow refuses stays refused: the rewrite would otherwise replace (tags) or drop (artifact_location)
    the invalid value and make the request valid."""
    def params(body: dict) -> Params:
        return Params(body=body)

    for rewrite, body, field in ((Rewrite.EXPERIMENT_CREATE, {"name": "x", "tags": "5"}, "tags"),
                                 (Rewrite.EXPERIMENT_CREATE, {"name": "x", "artifactLocation": 9.0}, "artifact_location"),
                                 (Rewrite.CREATED_WITH_TAGS, {"name": "x", "tags": {"k": "v"}}, "tags"),
                                 (Rewrite.TRACE_START_V2, {"experiment_id": "1", "request_metadata": "m"},
                                  "request_metadata")):
        with pytest.raises(BadRequest, match=f"for parameter '{field}' supplied"):
            check_types(rewrite, params(body))
    # MLflow does not type these: the rewrite replaces them as before
    check_types(Rewrite.RUN_CREATE, params({"experiment_id": "1", "tags": "5", "user_id": 5}))
    check_types(Rewrite.EXPERIMENT_CREATE, params({"name": "x", "artifact_location": "s3://b", "tags": []}))
    check_types(Rewrite.EXPERIMENT_CREATE, Params(query=[("name", "x")]))


def test_promptlab_runs_get_the_caller_as_user_id_and_no_tags() -> None:
    body = promptlab_run({"experiment_id": "1", "userId": "mallory", "prompt_template": "t"}, BOB, TEAM)
    assert body == {"experiment_id": "1", "prompt_template": "t", "user_id": BOB.id}
