"""Request rewrites on creation (GraphQL documents: test_graphql.py)."""
from __future__ import annotations

from proxy.identity import Identity
from proxy.policy import Team
from proxy.rewrite import experiment_create, run_create, run_log_batch, run_set_tag

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
