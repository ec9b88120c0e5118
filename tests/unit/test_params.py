"""Parameters read as MLflow reads them, and the path checks that keep gate and MLflow agreeing."""
from __future__ import annotations

import json

import pytest

from proxy.artifact_server import artifact_experiment
from proxy.errors import BadRequest, PermissionDenied
from proxy.gate import check_path
from proxy.params import read_params


def test_get_with_a_query_reads_the_query_only() -> None:
    p = read_params("GET", "proto", b"run_id=abc", json.dumps({"run_id": "other"}).encode())
    assert p.values("run_id") == ["abc"]


def test_get_without_a_query_reads_the_json_body() -> None:
    p = read_params("GET", "proto", b"", json.dumps({"run_id": "from-body"}).encode())
    assert p.values("run_id") == ["from-body"]


def test_query_only_routes_ignore_the_body() -> None:
    p = read_params("GET", "query", b"", json.dumps({"run_id": "from-body"}).encode())
    assert p.values("run_id") == []


def test_camel_case_is_read() -> None:
    p = read_params("POST", "proto", b"", json.dumps({"runId": "abc"}).encode())
    assert p.values("run_id") == ["abc"]


@pytest.mark.parametrize("body", [
    {"run_id": "a", "runId": "b"},
    {"metrics": [{"key": "m", "model_id": "x", "modelId": "y"}]},
    {"trace": {"trace_info": {"trace_location": {"mlflow_experiment": {"experiment_id": "1", "experimentId": "2"}}}}},
])
def test_a_field_under_both_spellings_is_refused_at_any_depth(body: dict) -> None:
    with pytest.raises(BadRequest, match="both"):
        read_params("POST", "proto", b"", json.dumps(body).encode())


def test_double_encoded_json_is_decoded_twice() -> None:
    p = read_params("POST", "proto", b"", json.dumps(json.dumps({"experiment_id": "7"})).encode())
    assert p.values("experiment_id") == ["7"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"[1]"'])
def test_bodies_mlflow_would_misread_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        read_params("POST", "proto", b"", body)


def test_repeated_scalar_in_the_query_is_refused() -> None:
    p = read_params("GET", "proto", b"experiment_id=1&experiment_id=2", None)
    with pytest.raises(BadRequest, match="given 2 times"):
        p.scalar("experiment_id")


def test_dotted_paths_walk_lists() -> None:
    body = {"locations": [{"mlflow_experiment": {"experiment_id": "1"}}, {"mlflowExperiment": {"experimentId": "2"}}]}
    p = read_params("POST", "proto", b"", json.dumps(body).encode())
    assert p.values("locations[].mlflow_experiment.experiment_id") == ["1", "2"]


@pytest.mark.parametrize(("path", "raw"), [
    ("/api/2.0/mlflow/runs/get", b"/api/2.0/mlflow/runs%2Fget"),
    ("/api/2.0/mlflow/../x", b"/api/2.0/mlflow/%2e%2e/x"),
    ("/api/2.0/mlflow/experiments/../runs/get", b"/api/2.0/mlflow/experiments/../runs/get"),
    ("/api/2.0/mlflow/./runs/get", b"/api/2.0/mlflow/./runs/get"),
    ("/api//2.0/mlflow/runs/get", b"/api//2.0/mlflow/runs/get"),
    ("/api/2.0/mlflow-artifacts/artifacts/1\\..\\2", b"/api/2.0/mlflow-artifacts/artifacts/1%5c..%5c2"),
    ("/api/2.0/mlflow-artifacts/artifacts/1/%2e%2e/2", b"/api/2.0/mlflow-artifacts/artifacts/1/%252e%252e/2"),
])
def test_ambiguous_paths_are_refused(path: str, raw: bytes) -> None:
    with pytest.raises(BadRequest):
        check_path(path, raw)


def test_plain_paths_pass() -> None:
    assert check_path("/api/2.0/mlflow/runs/get", b"/api/2.0/mlflow/runs/get")
    assert check_path("/api/2.0/mlflow-artifacts/artifacts/1/r/a b.txt", b"/api/2.0/mlflow-artifacts/artifacts/1/r/a%20b.txt")


@pytest.mark.parametrize("path", ["", "/1/x", "abc/x", "workspaces/w/1/x", "١/x"])
def test_artifact_paths_outside_an_experiment_are_denied(path: str) -> None:
    with pytest.raises(PermissionDenied):
        artifact_experiment(path)


@pytest.mark.parametrize("path", ["1/../2/x", "1//x", "1/./x", "1/x/.."])
def test_artifact_paths_with_dot_segments_are_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        artifact_experiment(path)


def test_artifact_path_names_its_experiment() -> None:
    assert artifact_experiment("12/0123abcd/artifacts/model/MLmodel") == "12"
    assert artifact_experiment("3") == "3"


def test_a_percent_sign_in_a_file_name_passes_but_double_encoding_does_not() -> None:
    assert check_path("/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/100% done.txt",
                      b"/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/100%25%20done.txt")
    with pytest.raises(BadRequest):
        check_path("/api/2.0/mlflow-artifacts/artifacts/1/r/%2F..", b"/api/2.0/mlflow-artifacts/artifacts/1/r/%252F..")


@pytest.mark.parametrize(("field", "body", "ids"), [
    ("run_id", {"run_id": "abc"}, ["abc"]),
    ("run_id", {"runId": "abc"}, ["abc"]),
    ("run_id", {"run_id": None}, []),
    ("run_id", {"run_id": ""}, []),
    ("experiment_ids", {"experiment_ids": ["1", "", "2"]}, ["1", "2"]),
    ("metrics[].model_id", {"metrics": [{"model_id": "m-1"}, {"key": "k"}]}, ["m-1"]),
    ("trace.trace_info.trace_id", {"trace": {"trace_info": {"trace_id": "tr-1"}}}, ["tr-1"]),
])
def test_ids_are_strings_or_lists_of_strings(field: str, body: dict, ids: list[str]) -> None:
    assert read_params("POST", "proto", b"", json.dumps(body).encode()).ids(field) == ids


@pytest.mark.parametrize(("field", "body", "shown"), [
    ("run_id", {"run_id": 31}, "Invalid value 31 for parameter 'run_id' supplied:  Hint: Value was of type 'int'."),
    ("run_id", {"run_id": ["a"]}, "Invalid value [\"a\"] for parameter 'run_id' supplied:  Hint: Value was of type"),
    ("run_id", {"run_id": {"b": 1, "a": 2}}, "Invalid value {\"a\":2,\"b\":1} for parameter 'run_id'"),
    ("experiment_ids", {"experiment_ids": "1"}, "Invalid value \"1\" for parameter 'experiment_ids'"),
    ("experiment_ids", {"experiment_ids": [1]}, "Invalid value [1] for parameter 'experiment_ids'"),
    ("metrics[].model_id", {"metrics": [{"model_id": 5}]}, "parameter 'metrics.model_id'"),
])
def test_an_id_of_another_type_gets_mlflows_400_before_any_lookup(field: str, body: dict, shown: str) -> None:
    params = read_params("POST", "proto", b"", json.dumps(body).encode())
    with pytest.raises(BadRequest) as refused:
        params.ids(field)
    assert shown in refused.value.message
    assert refused.value.message.endswith(" See the API docs for more information about request parameters.")
    assert params.values(field)            # the untyped reader (for non-id fields) still reads them


def test_query_ids_are_always_strings() -> None:
    assert read_params("GET", "proto", b"run_id=31", None).ids("run_id") == ["31"]
