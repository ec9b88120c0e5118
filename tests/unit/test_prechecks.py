"""MLflow's checks before any lookup (`prechecks.py`): its 400 and message, in its order; a well-formed request
passes untouched."""
from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from proxy.errors import BadRequest
from proxy.params import read_params
from proxy.prechecks import precheck

BULK, INTERVAL = "2.0/mlflow/metrics/get-history-bulk", "2.0/mlflow/metrics/get-history-bulk-interval"
DATASETS, PROMPTLAB = "2.0/mlflow/experiments/search-datasets", "2.0/mlflow/runs/create-promptlab-run"
PROMPTLAB_BODY = {"experiment_id": "1", "prompt_template": "t", "prompt_parameters": [{"key": "x", "value": "y"}],
                  "model_route": "chat", "model_input": "i", "mlflow_version": "3.17.2"}


def query(pairs: list[tuple[str, object]], source: str = "query"):  # type: ignore[no-untyped-def]
    return read_params("GET", source, urlencode(pairs).encode(), None)


def body(data: dict[str, object]):  # type: ignore[no-untyped-def]
    return read_params("POST", "proto", b"", json.dumps(data).encode())


@pytest.mark.parametrize(("pattern", "params", "message"), [
    (BULK, [("metric_key", "k")], "GetMetricHistoryBulk request must specify at least one run_id."),
    (BULK, [("run_id", f"id_{i}") for i in range(101)] + [("metric_key", "k")],
     "GetMetricHistoryBulk request cannot specify more than 100 run_ids. Received 101 run_ids."),
    (BULK, [("run_id", "123")], "GetMetricHistoryBulk request must specify a metric_key."),
    (INTERVAL, [("run_ids", f"id_{i}") for i in range(101)] + [("metric_key", "k")],
     "GetMetricHistoryBulkInterval request must specify at most 100 run_ids. Received 101 run_ids."),
    (INTERVAL, [("run_ids", "1"), ("max_results", 5)], "Missing value for required parameter 'metric_key'."),
    (INTERVAL, [("run_ids", "1"), ("metric_key", "")], "Missing value for required parameter 'metric_key'."),
    (INTERVAL, [("run_ids", "1"), ("metric_key", "k"), ("max_results", 0)], "max_results must be between 1 and 2500."),
    (INTERVAL, [("run_ids", "1"), ("metric_key", "k"), ("max_results", 2501)],
     "max_results must be between 1 and 2500."),
    (INTERVAL, [("run_ids", "1"), ("metric_key", "k"), ("start_step", 1), ("end_step", 0)],
     "end_step must be greater than start_step. Found start_step=1 and end_step=0."),
    (INTERVAL, [("run_ids", "1"), ("metric_key", "k"), ("end_step", 3)],
     "If either start step or end step are specified, both must be specified."),
])
def test_query_requests_mlflow_refuses(pattern: str, params: list[tuple[str, object]], message: str) -> None:
    with pytest.raises(BadRequest) as err:
        precheck(pattern, query(params, "query" if pattern == BULK else "proto"))
    assert err.value.message.startswith(message)


@pytest.mark.parametrize(("pattern", "data", "message"), [
    (DATASETS, {"experiment_ids": [str(i) for i in range(21)]},
     "SearchDatasets request cannot specify more than 20 experiment_ids. Received 21 experiment_ids."),
    (DATASETS, {"experiment_ids": []}, "SearchDatasets request must specify at least one experiment_id."),
    (PROMPTLAB, {}, "CreatePromptlabRun request must specify experiment_id."),
    (PROMPTLAB, {"experiment_id": "123"}, "CreatePromptlabRun request must specify prompt_template."),
    (PROMPTLAB, {**PROMPTLAB_BODY, "prompt_parameters": []}, "CreatePromptlabRun request must specify prompt_parameters."),
    (PROMPTLAB, {k: v for k, v in PROMPTLAB_BODY.items() if k != "mlflow_version"},
     "CreatePromptlabRun request must specify mlflow_version."),
])
def test_body_requests_mlflow_refuses(pattern: str, data: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as err:
        precheck(pattern, body(data))
    assert err.value.message == message


@pytest.mark.parametrize(("pattern", "params"), [
    (BULK, query([("run_id", "a"), ("run_id", "b"), ("metric_key", "k")])),
    (BULK, query([("run_id", "a"), ("metric_key", "")])),      # MLflow's bulk handler only wants it given
    (INTERVAL, query([("run_ids", "a"), ("metric_key", "k"), ("max_results", 2500), ("start_step", 0),
                      ("end_step", 0)], "proto")),
    (DATASETS, body({"experiment_ids": [str(i) for i in range(20)]})),
    (PROMPTLAB, body(PROMPTLAB_BODY)),
    ("2.0/mlflow/runs/get", body({})),                 # no entry: MLflow checks it after the gate's decision
])
def test_well_formed_requests_pass(pattern: str, params) -> None:  # type: ignore[no-untyped-def]
    precheck(pattern, params)
