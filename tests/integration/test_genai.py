"""Logged models, traces and datasets through the gate with the real `mlflow` client."""
from __future__ import annotations

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tests.integration.gate_it import ALICE, BOB, ROOT, World, denied, is_denied, uid

pytestmark = pytest.mark.integration
A3 = "/api/3.0/mlflow"


def denied_or_empty(call) -> list:  # type: ignore[no-untyped-def]
    """A search over an unreadable experiment is refused, or answered with nothing from it."""
    try:
        return list(call())
    except Exception as exc:  # noqa: BLE001 - checked below
        assert is_denied(exc), f"unexpected error: {exc!r}"
        return []


def test_logged_models(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    with alice.acting():
        with mlflow.start_run(experiment_id=world.alpha_exp):
            info = mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="model",
                                            pip_requirements=["scikit-learn"])
        loaded = mlflow.sklearn.load_model(info.model_uri)
        assert (loaded.predict(X[:5]) == LogisticRegression().fit(X, y).predict(X[:5])).all()
    model = alice.get_logged_model(info.model_id)
    assert model.experiment_id == world.alpha_exp
    alice.set_logged_model_tags(info.model_id, {"reviewed": "yes"})
    assert alice.get_logged_model(info.model_id).tags["reviewed"] == "yes"
    assert info.model_id in {m.model_id for m in alice.search_logged_models([world.alpha_exp])}

    with denied():
        bob.get_logged_model(info.model_id)
    with denied():
        bob.set_logged_model_tags(info.model_id, {"reviewed": "bob"})
    with denied():
        bob.create_logged_model(world.alpha_exp, name="bob-model")
    found = denied_or_empty(lambda: bob.search_logged_models([world.alpha_exp]))
    assert info.model_id not in {m.model_id for m in found}
    with bob.acting(), denied():
        mlflow.sklearn.load_model(info.model_uri)
    assert alice.get_logged_model(info.model_id).tags["reviewed"] == "yes"


def test_traces(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    marker = uid()

    @mlflow.trace(name=f"alpha-fn-{marker}")
    def answer(question: str) -> str:
        with mlflow.start_span(name="inner") as span:
            span.set_inputs({"q": question})
            span.set_outputs({"a": "42"})
        return "42"

    with alice.acting():
        mlflow.set_experiment(experiment_id=world.alpha_exp)
        assert answer("secret alpha question") == "42"
        trace_id = mlflow.get_last_active_trace_id()
    assert trace_id
    trace = alice.get_trace(trace_id)
    assert trace.info.experiment_id == world.alpha_exp
    assert {s.name for s in trace.data.spans} == {f"alpha-fn-{marker}", "inner"}
    found = alice.search_traces(experiment_ids=[world.alpha_exp], max_results=100)
    assert trace_id in {t.info.trace_id for t in found}
    alice.set_trace_tag(trace_id, "reviewed", "yes")
    assert alice.get_trace(trace_id).info.tags["reviewed"] == "yes"

    with denied():
        bob.get_trace(trace_id)
    with denied():
        bob.set_trace_tag(trace_id, "reviewed", "bob")
    with denied():
        bob.delete_trace_tag(trace_id, "reviewed")
    found = denied_or_empty(lambda: bob.search_traces(experiment_ids=[world.alpha_exp]))
    assert trace_id not in {t.info.trace_id for t in found}
    assert "secret alpha question" not in str([t.to_dict() for t in found])
    assert alice.get_trace(trace_id).info.tags["reviewed"] == "yes"

    # bob cannot write a trace into alpha's experiment (the exporter logs the refusal; nothing is stored).
    @mlflow.trace(name=f"bob-fn-{marker}")
    def bobs() -> int:
        return 1

    with bob.acting():
        mlflow.tracking.fluent._active_experiment_id = world.alpha_exp  # type: ignore[assignment] # as if set_experiment had worked
        try:
            bobs()
        finally:
            mlflow.tracking.fluent._active_experiment_id = None
    names = {t.info.request_metadata.get("mlflow.traceName") or t.data.spans[0].name
             for t in alice.search_traces(experiment_ids=[world.alpha_exp], max_results=500)}
    assert f"bob-fn-{marker}" not in names


def test_run_datasets(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    name = f"alpha-ds-{uid()}"
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with alice.acting(), mlflow.start_run(experiment_id=world.alpha_exp) as run:
        dataset = mlflow.data.from_pandas(df, name=name, targets="y")  # type: ignore[attr-defined]
        mlflow.log_input(dataset, context="training")
    inputs = alice.get_run(run.info.run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == [name]
    with denied():
        bob.get_run(run.info.run_id)

    # The UI's dataset search (ajax-only route).
    body = {"experiment_ids": [world.alpha_exp]}
    with gate.http(ALICE) as http:
        r = http.post("/ajax-api/2.0/mlflow/experiments/search-datasets", json=body)
        assert r.status_code == 200, r.text
        assert name in {d["name"] for d in r.json().get("dataset_summaries", [])}
    with gate.http(BOB) as http:
        r = http.post("/ajax-api/2.0/mlflow/experiments/search-datasets", json=body)
        assert r.status_code == 403 or name not in r.text, r.text


def test_evaluation_datasets(gate, world: World):
    from mlflow.genai import datasets

    alice, bob = gate.client(ALICE), gate.client(BOB)
    name = f"alpha-eval-{uid()}"
    with alice.acting():
        ds = datasets.create_dataset(name=name, experiment_id=[world.alpha_exp], tags={"team": "alpha"})
        ds.merge_records([{"inputs": {"question": "1+1?"}, "expectations": {"answer": "2"}}])
        got = datasets.get_dataset(dataset_id=ds.dataset_id)
        assert got.name == name
        assert len(got.to_df()) == 1
        assert ds.dataset_id in {d.dataset_id for d in datasets.search_datasets(experiment_ids=[world.alpha_exp])}
    with bob.acting():
        with denied():
            datasets.get_dataset(dataset_id=ds.dataset_id)
        with denied():
            datasets.create_dataset(name=f"alpha-eval-bob-{uid()}", experiment_id=[world.alpha_exp])
        with denied():
            ds.merge_records([{"inputs": {"question": "bob?"}, "expectations": {"answer": "bob"}}])
        found = denied_or_empty(lambda: datasets.search_datasets(experiment_ids=[world.alpha_exp]))
        assert ds.dataset_id not in {d.dataset_id for d in found}
        # bob's own evaluation dataset in his team's experiment works
        own = datasets.create_dataset(name=f"beta-eval-{uid()}", experiment_id=[world.beta_exp])
        assert datasets.get_dataset(dataset_id=own.dataset_id).name == own.name
    with alice.acting():
        assert len(datasets.get_dataset(dataset_id=ds.dataset_id).to_df()) == 1


def _all_pages(http, path: str, body: dict, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The ids of every item of a search, page by page (`max_results` 1), each page checked."""
    ids, token = [], None
    while True:
        r = http.post(path, json={**body, "max_results": 1, **({"page_token": token} if token else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page.get(key, [])) <= 1
        ids += [item["dataset_id" if key == "datasets" else "issue_id"] for item in page.get(key, [])]
        token = page.get("next_page_token")
        if not token:
            return ids


def test_dataset_and_issue_searches_without_experiments_are_filtered(gate, world: World):
    """Issue 11 item 4: MLflow searches every experiment when the request names none; the gate answers the
    datasets and issues the caller could read by id, with pages that still fill up."""
    from mlflow.genai import datasets

    made: dict[str, str] = {}
    for user, label, exps in ((ALICE, "alpha", [world.alpha_exp]), (BOB, "beta", [world.beta_exp]),
                              (BOB, "shared", [world.shared_exp]), (ROOT, "both", [world.alpha_exp, world.beta_exp])):
        with gate.client(user).acting():
            made[label] = datasets.create_dataset(name=f"search-{label}-{uid()}", experiment_id=exps).dataset_id
    with gate.http(ALICE) as alice, gate.http(BOB) as bob, gate.http(ROOT) as root:
        issues = {label: h.post(f"{A3}/issues", json={"experiment_id": exp, "name": f"{label}-{uid()}",
                                                      "description": "d"}).json()["issue"]["issue_id"]
                  for label, h, exp in (("alpha", alice, world.alpha_exp), ("beta", bob, world.beta_exp))}
        with httpx.Client(base_url=gate.upstream, timeout=60) as direct:
            everything = set(_all_pages(direct, f"{A3}/datasets/search", {}, "datasets"))
        assert set(made.values()) <= everything
        for h, readable, hidden in ((alice, {"alpha", "shared"}, {"beta", "both"}),
                                    (bob, {"beta", "shared"}, {"alpha", "both"})):
            found = _all_pages(h, f"{A3}/datasets/search", {}, "datasets")
            assert len(found) == len(set(found)) and set(found) <= everything
            assert {made[k] for k in readable} <= set(found) and not {made[k] for k in hidden} & set(found)
            with gate.client(ALICE if h is alice else BOB).acting():        # the client's own call, no arguments
                assert {d.dataset_id for d in datasets.search_datasets()} == set(found)
        assert set(made.values()) <= set(_all_pages(root, f"{A3}/datasets/search", {}, "datasets"))
        found = _all_pages(alice, f"{A3}/issues/search", {}, "issues")
        assert issues["alpha"] in found and issues["beta"] not in found
        assert set(issues.values()) <= set(_all_pages(root, f"{A3}/issues/search", {}, "issues"))
        # a search narrowed to experiments: each must be readable, and the answer is cut the same way
        r = alice.post(f"{A3}/datasets/search", json={"experiment_ids": [world.alpha_exp]})
        assert {d["dataset_id"] for d in r.json()["datasets"]} >= {made["alpha"]}
        assert made["both"] not in {d["dataset_id"] for d in r.json()["datasets"]}
        r = alice.post(f"{A3}/issues/search", json={"experiment_id": world.beta_exp})
        assert (r.status_code, r.json()["error_code"]) == (403, "PERMISSION_DENIED"), r.text



def test_scorer_lists_without_experiments_are_filtered(gate, world: World):
    """MLflow 3.17 lists scorers across experiments when the request names none (or names several with
    `experiment_ids`): the gate answers those of experiments the caller may read."""
    import json

    from mlflow.genai.scorers import RelevanceToQuery

    scorer = json.dumps(RelevanceToQuery().model_dump())         # a built-in: custom code is off by default
    with gate.http(ALICE) as alice, gate.http(BOB) as bob, gate.http(ROOT) as root:
        names = {}
        for label, h, exp in (("alpha", alice, world.alpha_exp), ("beta", bob, world.beta_exp)):
            names[label] = f"{label}-scorer-{uid()}"
            r = h.post(f"{A3}/scorers/register", json={"experiment_id": exp, "name": names[label],
                                                        "serialized_scorer": scorer})
            assert r.status_code == 200, r.text

        def listed(h, **params) -> set[str]:  # type: ignore[no-untyped-def]
            r = h.get(f"{A3}/scorers/list", params=params)
            assert r.status_code == 200, r.text
            return {s["scorer_name"] for s in r.json().get("scorers", [])}

        assert names["alpha"] in listed(alice) and names["beta"] not in listed(alice)
        assert names["beta"] in listed(bob) and names["alpha"] not in listed(bob)
        assert set(names.values()) <= listed(root)
        assert names["alpha"] in listed(alice, experiment_ids=[world.alpha_exp])
        r = alice.get(f"{A3}/scorers/list", params={"experiment_ids": [world.alpha_exp, world.beta_exp]})
        assert r.status_code == 403, r.text
