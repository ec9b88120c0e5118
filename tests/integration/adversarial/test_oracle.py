"""Class: existence oracle. For every way a request names an object (each checked row of the route table, each of
its needs and fields: path, query, body, header, OTLP headers, artifact path, model-version source, prompt URI) and
every kind of object: another team's object is refused, and a missing one gets the same status and the same message
(the id aside), which never passes on what the upstream answered."""
from __future__ import annotations

import json

import pytest

from tests.integration.adversarial.adv_it import Objects, Way, build, normalised, ways
from tests.integration.gate_it import ALICE, BOB, World, uid

pytestmark = pytest.mark.integration
WAYS = ways()


def test_the_table_covers_every_kind_and_place() -> None:
    places = {w.field.split(":")[0] if ":" in w.field else ("query" if w.in_query else "body") for w in WAYS}
    assert {"path", "query", "body", "header"} <= places, places
    assert {w.kind.label for w in WAYS} >= {"experiment", "experiment name", "run", "trace", "logged model",
                                             "dataset", "model name", "artifact path", "source runs:/",
                                             "source models:/", "source models:/name/version",
                                             "source mlflow-artifacts:"}
    assert len(WAYS) > 150, len(WAYS)


@pytest.mark.parametrize("way", WAYS, ids=[w.id for w in WAYS])
def test_foreign_and_missing_objects_get_one_answer(gate, objects: Objects, way: Way) -> None:
    foreign, missing = way.kind.value(objects, "foreign"), way.kind.value(objects, "missing")
    with gate.http(ALICE) as h:
        a = build(way, foreign, objects).send(h)
        b = build(way, missing, objects).send(h)
    assert a.status_code == 403, f"another team's object was not refused: {a.status_code} {a.text[:300]}"
    assert normalised(a, foreign) == normalised(b, missing), (a.text, b.text)
    assert "answered" not in b.text and "404" not in b.text, b.text


@pytest.mark.parametrize(("method", "path", "kind", "template"), [
    ("POST", "/api/2.0/mlflow/experiments/search", "experiment_name", "name = '{}'"),
    ("GET", "/api/2.0/mlflow/registered-models/search", "model", "name = '{}'"),
    ("GET", "/api/2.0/mlflow/model-versions/search", "model", "name = '{}'"),
    ("GET", "/api/2.0/mlflow/registered-models/search", "model", "name LIKE '{}%'"),
])
def test_searches_for_a_foreign_or_a_missing_name_answer_alike(gate, objects: Objects, method: str, path: str,
                                                               kind: str, template: str) -> None:
    """Searches are answered, filtered: by name, another team's object and a missing one give the same page."""
    missing = {"experiment_name": "beta/missing-name", "model": "beta-missing-name"}[kind]
    answers = []
    with gate.http(ALICE) as h:
        for name in (objects.foreign[kind], missing):
            query = {"filter": template.format(name), "max_results": 10}
            r = h.post(path, json=query) if method == "POST" else h.get(path, params=query)
            assert r.status_code == 200, r.text
            answers.append(r.json())
    assert answers[0] == answers[1] and not any(answers[0].values()), answers


def test_a_version_copied_from_a_readable_version_works(gate, objects: Objects) -> None:
    """`models:/NAME/VERSION` is a registered model's version (MLflow copies its lineage), decided on that model's
    name: the caller's own copies; `models:/m-.../1` is not read as the logged model m-...."""
    with gate.http(ALICE) as h:
        r = h.post("/api/2.0/mlflow/model-versions/create",
                   json={"name": objects.own["model"], "source": f"models:/{objects.own['model']}/1"})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"]["source"] == f"models:/{objects.own['model']}/1", r.text
        r = h.post("/api/2.0/mlflow/model-versions/create",
                   json={"name": objects.own["model"], "source": f"{objects.own['source_model']}/1"})
        assert r.status_code == 403, r.text


@pytest.mark.parametrize("kind", ["experiments", "registered_models", "model_versions"])
def test_a_full_page_says_nothing_of_the_unreadable_items_after_it(gate, world: World, kind: str) -> None:
    """A page filled to `max_results` carries a next_page_token only when a readable item follows: otherwise its
    presence tells whether another team has an object matching the filter (`name LIKE '%-merger'` finds a
    `beta-...-merger` once the caller owns an `alpha-...-merger` to fill the page with)."""
    n = uid()
    owners = ((gate.client(ALICE), "alpha", world.alpha_run), (gate.client(BOB), "beta", world.beta_run))
    for client, team, run_id in owners:
        if kind == "experiments":
            client.create_experiment(f"{team}/{n}-merger")
        else:
            client.create_registered_model(f"{team}-{n}-merger")
        if kind == "model_versions":
            source = f"{client.get_run(run_id).info.artifact_uri}/notes"
            client.create_model_version(f"{team}-{n}-merger", source, run_id=run_id)
    query = {"filter": f"name LIKE '%{n}-merger%'", "max_results": 1}
    with gate.http(ALICE) as h:
        if kind == "experiments":
            r = h.post("/api/2.0/mlflow/experiments/search", json={**query, "order_by": ["name ASC"]})
        else:
            r = h.get(f"/api/2.0/mlflow/{kind.replace('_', '-')}/search", params={**query, "order_by": "name ASC"})
    assert r.status_code == 200, r.text
    page = r.json()
    assert len(page[kind]) == 1 and "alpha" in json.dumps(page[kind]), page
    assert "next_page_token" not in page, f"the token tells that another team's {kind} match: {page}"
