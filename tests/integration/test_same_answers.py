"""Where the policy allows a request, the gate answers what MLflow answers: the same request is sent
direct and through the gate, and status and error code must agree (`same_answer.SameRequest`), as a
member of the team that owns the objects and as an admin.

Missing objects the caller may see, malformed values, missing fields: MLflow's own answer, not the
gate's (the message too where MLflow's is the point). Ids the caller cannot resolve are refused by
design: a member's request naming a missing experiment is not listed here, an admin's is.
The cases of issue 11 (MLflow's own REST suite through the gate) are marked with their item.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gate_it import ALICE, ROOT, World, uid
from same_answer import SameRequest

pytestmark = pytest.mark.integration

A, A3, AJAX = "/api/2.0/mlflow", "/api/3.0/mlflow", "/ajax-api/2.0/mlflow"
METRIC = {"key": "k", "value": 1, "timestamp": 0}
MISSING_EXPERIMENT = "999999"
USERS = {"member": ALICE, "admin": ROOT}


def promptlab(experiment_id: str) -> dict[str, Any]:
    """A valid create-promptlab-run body, as MLflow's UI sends it."""
    return {"experiment_id": experiment_id, "run_name": "promptlab", "prompt_template": "Say {{ x }}",
            "prompt_parameters": [{"key": "x", "value": "hi"}], "model_route": "chat",
            "model_parameters": [{"key": "temperature", "value": "0.1"}], "model_input": "Say hi",
            "model_output": "hi", "model_output_parameters": [{"key": "latency", "value": "100"}],
            "mlflow_version": "3.17.2", "user_id": "someone-else", "start_time": 456}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    kwargs: Callable[[World], dict[str, Any]]
    users: tuple[str, ...] = ("member", "admin")
    message: bool = False          # MLflow's message is the point: it must be the same too


CASES: list[Case] = [
    # lookups MLflow answers itself
    Case("get a missing run", "GET", f"{A}/runs/get", lambda w: {"params": {"run_id": "0" * 32}}, ("admin",)),
    Case("get a missing experiment", "GET", f"{A}/experiments/get",
         lambda w: {"params": {"experiment_id": MISSING_EXPERIMENT}}, ("admin",)),
    Case("get a missing model", "GET", f"{A}/registered-models/get",
         lambda w: {"params": {"name": "alpha-no-such-model"}}),
    Case("get a missing version", "GET", f"{A}/model-versions/get",
         lambda w: {"params": {"name": "alpha-no-such-model", "version": "1"}}),
    Case("get a missing experiment by name", "GET", f"{A}/experiments/get-by-name",
         lambda w: {"params": {"experiment_name": "alpha/no-such-experiment"}}),
    # item 1: the creation rewrite's team lookup must not refuse what the caller may do
    Case("runs/create in a missing experiment", "POST", f"{A}/runs/create",
         lambda w: {"json": {"experiment_id": MISSING_EXPERIMENT}}, ("admin",), message=True),
    Case("create-promptlab-run in a missing experiment", "POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run",
         lambda w: {"json": promptlab(MISSING_EXPERIMENT)}, ("admin",), message=True),
    Case("runs/create", "POST", f"{A}/runs/create", lambda w: {"json": {"experiment_id": w.alpha_exp}}),
    # item 2: create-promptlab-run cannot take tags
    Case("create-promptlab-run", "POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run",
         lambda w: {"json": promptlab(w.alpha_exp)}),
    Case("create-promptlab-run without a template", "POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run",
         lambda w: {"json": {**promptlab(w.alpha_exp), "prompt_template": ""}}, message=True),
    # item 3: input MLflow refuses stays refused when the gate rewrites the field
    Case("experiments/create with tags '5'", "POST", f"{A}/experiments/create",
         lambda w: {"json": {"name": f"alpha/bad-tags-{uid()}", "tags": "5"}}, message=True),
    Case("experiments/create with artifact_location 9.0", "POST", f"{A}/experiments/create",
         lambda w: {"json": {"name": f"alpha/bad-location-{uid()}", "artifact_location": 9.0,
                             "tags": [{"key": "k", "value": "v"}]}}, message=True),
    Case("experiments/create with name 123", "POST", f"{A}/experiments/create", lambda w: {"json": {"name": 123}},
         message=True),
    Case("experiments/create without a name", "POST", f"{A}/experiments/create", lambda w: {"json": {}},
         message=True),
    Case("registered-models/create with tags '5'", "POST", f"{A}/registered-models/create",
         lambda w: {"json": {"name": f"alpha-bad-tags-{uid()}", "tags": "5"}}, message=True),
    Case("model-versions/create with tags '5'", "POST", f"{A}/model-versions/create",
         lambda w: {"json": {"name": f"alpha-bad-tags-{uid()}", "source": "runs:/" + "0" * 32 + "/model",
                             "tags": "5"}}, message=True),
    Case("logged-models create with tags '5'", "POST", f"{A}/logged-models",
         lambda w: {"json": {"experiment_id": w.alpha_exp, "tags": "5"}}, message=True),
    Case("v2 trace start with tags '5'", "POST", f"{A}/traces",
         lambda w: {"json": {"experiment_id": w.alpha_exp, "timestamp_ms": 1, "tags": "5"}}, message=True),
    # item 4: searches of datasets and issues without experiment ids (the answer is filtered: see below)
    Case("datasets/search without experiment ids", "POST", f"{A3}/datasets/search", lambda w: {"json": {}}),
    Case("datasets/search without parameters", "GET", f"{A3}/datasets/search", lambda w: {}),
    Case("issues/search without an experiment id", "POST", f"{A3}/issues/search", lambda w: {"json": {}}),
    Case("scorers/list without an experiment id", "GET", f"{A3}/scorers/list", lambda w: {}),
    Case("datasets/search of an experiment", "POST", f"{A3}/datasets/search",
         lambda w: {"json": {"experiment_ids": [w.alpha_exp], "max_results": 5}}),
    # item 5: a trace the client has just made may not be stored yet
    Case("link-to-run of a trace not stored yet", "POST", f"{A}/traces/link-to-run",
         lambda w: {"json": {"trace_ids": [f"tr-{uid()}{uid()}{uid()}{uid()}"], "run_id": w.alpha_run2}}),
    # item 6: types and required fields are MLflow's to answer, before any id is resolved
    Case("log-metric with run_id 31", "POST", f"{A}/runs/log-metric", lambda w: {"json": {"run_id": 31, **METRIC}},
         message=True),
    Case("log-parameter with run_id 31", "POST", f"{A}/runs/log-parameter",
         lambda w: {"json": {"run_id": 31, "key": "p", "value": "v"}}, message=True),
    Case("runs/update with run_id 31", "POST", f"{A}/runs/update", lambda w: {"json": {"run_id": 31}}, message=True),
    Case("runs/create with experiment_id 5", "POST", f"{A}/runs/create", lambda w: {"json": {"experiment_id": 5}},
         message=True),
    Case("log-metric with run_id a list", "POST", f"{A}/runs/log-metric",
         lambda w: {"json": {"run_id": [w.alpha_run], **METRIC}}, message=True),
    Case("log-metric with run_id an object", "POST", f"{A}/runs/log-metric",
         lambda w: {"json": {"run_id": {"id": w.alpha_run}, **METRIC}}, message=True),
    Case("runs/search with experiment_ids a string", "POST", f"{A}/runs/search",
         lambda w: {"json": {"experiment_ids": w.alpha_exp}}, message=True),
    Case("link-to-run with trace_ids a string", "POST", f"{A}/traces/link-to-run",
         lambda w: {"json": {"trace_ids": "tr-x", "run_id": "0" * 32}}, message=True),
    Case("log-metric without run_id", "POST", f"{A}/runs/log-metric", lambda w: {"json": METRIC}, message=True),
    Case("log-metric with run_id null", "POST", f"{A}/runs/log-metric", lambda w: {"json": {"run_id": None, **METRIC}},
         message=True),
    Case("runs/get without run_id", "GET", f"{A}/runs/get", lambda w: {"params": {}}, message=True),
    Case("experiments/get with experiment_id abc", "GET", f"{A}/experiments/get",
         lambda w: {"params": {"experiment_id": "abc"}}, message=True),
    # item 6, from MLflow's *_rejects_invalid_requests tests: a request MLflow refuses before any lookup is
    # refused with its 400 even when its ids cannot be resolved (`prechecks.py`)
    Case("get-history-bulk with 101 unknown run ids", "GET", f"{AJAX}/metrics/get-history-bulk",
         lambda w: {"params": {"run_id": [f"id_{i}" for i in range(101)], "metric_key": "k"}}, message=True),
    Case("get-history-bulk without metric_key", "GET", f"{AJAX}/metrics/get-history-bulk",
         lambda w: {"params": {"run_id": ["123"]}}, message=True),
    Case("get-history-bulk-interval with 101 unknown run ids", "GET", f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": [f"id_{i}" for i in range(101)], "metric_key": "k"}}, message=True),
    Case("get-history-bulk-interval with max_results 0", "GET", f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": ["123"], "metric_key": "k", "max_results": 0}}, message=True),
    Case("get-history-bulk-interval without metric_key", "GET", f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": ["123"], "max_results": 5}}, message=True),
    Case("get-history-bulk-interval with an empty metric_key", "GET", f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": ["123"], "metric_key": ""}}, message=True),
    Case("get-history-bulk-interval with start_step after end_step", "GET",
         f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": ["123"], "metric_key": "k", "start_step": 1, "end_step": 0}}, message=True),
    Case("get-history-bulk-interval with start_step alone", "GET", f"{AJAX}/metrics/get-history-bulk-interval",
         lambda w: {"params": {"run_ids": ["123"], "metric_key": "k", "start_step": 1}}, message=True),
    Case("search-datasets with 21 unknown experiment ids", "POST", f"{AJAX}/experiments/search-datasets",
         lambda w: {"json": {"experiment_ids": [f"id_{i}" for i in range(21)]}}, message=True),
    Case("create-promptlab-run in an unknown experiment without a template", "POST",
         f"{AJAX}/runs/create-promptlab-run", lambda w: {"json": {"experiment_id": "123"}}, message=True),
    Case("create-promptlab-run in an unknown experiment without mlflow_version", "POST",
         f"{AJAX}/runs/create-promptlab-run",
         lambda w: {"json": {k: v for k, v in promptlab("123").items() if k != "mlflow_version"}}, message=True),
    Case("log-batch with metrics a string", "POST", f"{A}/runs/log-batch",
         lambda w: {"json": {"run_id": w.alpha_run, "metrics": "foo"}}, message=True),
]
PARAMS = [(case, who) for case in CASES for who in case.users]


@pytest.fixture
def as_user(gate) -> Iterator[Callable[[str], SameRequest]]:  # type: ignore[no-untyped-def]
    opened: list[SameRequest] = []

    def make(user: str) -> SameRequest:
        opened.append(SameRequest(gate.upstream, gate.url, gate.token(user)))
        return opened[-1]

    yield make
    for same in opened:
        same.close()


@pytest.mark.parametrize(("case", "who"), PARAMS, ids=[f"{who}-{case.name}" for case, who in PARAMS])
def test_same_status_and_error_code(as_user, world: World, case: Case, who: str) -> None:  # type: ignore[no-untyped-def]
    as_user(USERS[who]).check(case.method, case.path, message=case.message, **case.kwargs(world))


def test_bad_metric_value_on_own_run(as_user, world: World) -> None:  # type: ignore[no-untyped-def]
    direct, _ = as_user(ALICE).check("POST", f"{A}/runs/log-metric", message=True,
                                     json={"run_id": world.alpha_run, "key": "k", "value": "x", "timestamp": 0})
    assert (direct.status, direct.error_code) == (400, "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize("who", ["member", "admin"])
def test_promptlab_runs_record_the_caller(as_user, world: World, who: str) -> None:  # type: ignore[no-untyped-def]
    """Item 2: the run is created, and its creator is the caller, not the `user_id` the client sent."""
    direct, gated = as_user(USERS[who]).check("POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run",
                                              json=promptlab(world.alpha_exp))
    assert direct.status == 200 and direct.body["run"]["info"]["user_id"] == "someone-else"
    assert gated.body["run"]["info"]["user_id"] == USERS[who]
    assert {"key": "mlflow.runSourceType", "value": "PROMPT_ENGINEERING"} in gated.body["run"]["data"]["tags"]


def test_refused_creations_create_nothing(gate, as_user) -> None:  # type: ignore[no-untyped-def]
    """Item 3: an invalid `tags` or `artifact_location` is refused, and no experiment is made."""
    name = f"alpha/refused-{uid()}"
    for body in ({"name": name, "tags": "5"}, {"name": name, "artifact_location": 9.0}):
        direct, gated = as_user(ALICE).check("POST", f"{A}/experiments/create", json=body)
        assert direct.status == gated.status == 400
    with gate.http(ROOT) as h:
        r = h.get(f"{A}/experiments/get-by-name", params={"experiment_name": name})
    assert r.status_code == 404, r.text
