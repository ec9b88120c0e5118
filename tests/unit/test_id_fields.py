"""Class: every field of a checked route's request that names an object is one of its row's needs.

The fields come from MLflow's own request messages (`get_endpoints()` of the installed server, the same
table its Flask app is built from): every field whose name says it names something (`*_id`, `*_ids`,
`*_uuid`, `*_uri`, `*name`, `source`, `path`, `*_location`, `alias`), nested ones included. Each must be
read by a `Need` of the route's row, or be listed in `NOT_OBJECTS` with the reason no check is due. A new
MLflow field (or route) that names something fails here until it is classified, so an id the gate does
not look at is a decision, never an oversight.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.routes import CHECKED, RouteTable
from proxy.upstream_version import sample_path

_NAMING = re.compile(r"(^|_)(id|ids|uuid|uri|name|names|source|path|location|alias)$")
_SCOPED = "looked up by MLflow within the object the row checks (experiment, run, model, dataset or trace)"
_OWN = "a name of the object being created or changed, decided on by the row (or free text MLflow keeps)"
_SPAN = "inside one trace the row checks (MLflow's store keys it by that trace)"
_REWRITTEN = "who made it: replaced with the caller by rewrite.py"
_DATABRICKS = "a Databricks-only location or job: the open-source server ignores it"
# Field paths (nested with '.', lists with '[]') by their last segment, for every route ...
NOT_OBJECTS: dict[str, str] = {
    "name": _OWN, "run_name": _OWN, "assessment_name": _OWN, "issue_name": _OWN, "metric_name": _OWN,
    "dataset_name": _OWN, "field_name": _OWN, "alias": _SCOPED, "span_id": _SPAN, "parent_span_id": _SPAN,
    "client_request_id": _OWN, "user_id": _REWRITTEN, "source_id": "an assessment's author: a HUMAN one is "
    "replaced with the caller (rewrite.py), a judge's or code's names the judge", "full_table_name": _DATABRICKS,
    "deployment_job_id": _DATABRICKS,
}
# ... and for one route ("METHOD pattern field").
NOT_OBJECTS_IN: dict[str, str] = {
    "GET 2.0/mlflow/artifacts/list path": "a path inside the checked run (validated by the gate's view)",
    "GET 2.0/mlflow/logged-models/{model_id}/artifacts/directories artifact_directory_path":
        "a path inside the checked logged model",
    "POST 2.0/mlflow/artifacts/presigned-download-url path": "a path inside the checked run (the gate's view)",
    "POST 2.0/mlflow/artifacts/presigned-upload-url path": "a path inside the checked run or model (the gate's view)",
    "POST 2.0/mlflow-artifacts/mpu/create/{artifact_path} path": "the URL's artifact path is the need",
    "POST 2.0/mlflow-artifacts/mpu/complete/{artifact_path} path": "the URL's artifact path is the need",
    "POST 2.0/mlflow-artifacts/mpu/abort/{artifact_path} path": "the URL's artifact path is the need",
    "POST 2.0/mlflow-artifacts/mpu/complete/{artifact_path} upload_id": "the store binds it to the checked path",
    "POST 2.0/mlflow-artifacts/mpu/abort/{artifact_path} upload_id": "the store binds it to the checked path",
    "POST 2.0/mlflow/experiments/create artifact_location": "refused unless admin (gate.py; test_adversarial.py)",
    "POST 2.0/mlflow/runs/log-batch metrics[].run_id": "MLflow logs every metric to the request's run_id",
    "POST 2.0/mlflow/runs/log-inputs datasets[].dataset.source": "a description of where the data came from",
    "POST 3.0/mlflow/datasets/create source": "a description of where the data came from",
    "POST 2.0/mlflow/traces/delete-traces request_ids": "MLflow deletes only traces of the checked experiment",
    "POST 3.0/mlflow/traces/delete-traces request_ids": "MLflow deletes only traces of the checked experiment",
    "DELETE 3.0/mlflow/datasets/{dataset_id}/records dataset_record_ids": "records of the checked dataset only",
    "GET 3.0/mlflow/traces/{trace_id}/assessments/{assessment_id} assessment_id": _SPAN,
    "DELETE 3.0/mlflow/traces/{trace_id}/assessments/{assessment_id} assessment_id": _SPAN,
    "PATCH 3.0/mlflow/traces/{trace_id}/assessments/{assessment_id} assessment.assessment_id":
        "MLflow updates the URL's assessment", "PATCH 3.0/mlflow/traces/{trace_id}/assessments/{assessment_id} "
    "assessment.trace_id": "MLflow updates the URL's trace",
    "POST 3.0/mlflow/traces/{trace_id}/assessments assessment.trace_id": "MLflow sets the URL's trace",
    "POST 3.0/mlflow/traces trace.trace_info.assessments[].trace_id": "MLflow sets the started trace's id",
    "POST 3.0/mlflow/traces trace.spans[].trace_id": "a trace start keeps trace_info only (spans are dropped)",
    "POST 3.0/mlflow/traces trace.spans[].links[].trace_id": "a trace start keeps trace_info only",
    "GET 3.0/mlflow/traces/batchGet experiment_ids": "narrows the checked trace_ids",
    "POST 3.0/mlflow/traces/batchGetInfos experiment_ids": "narrows the checked trace_ids",
    "POST 3.0/mlflow/review-queues/create schema_ids": "MLflow requires label schemas of the checked experiment",
    "GET 3.0/mlflow/review-queues/list item_id": "narrows the checked experiment's queues",
}


def _fields(descriptor: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    for f in descriptor.fields:
        path = prefix + f.name
        if f.message_type is not None and depth < 4:
            yield from _fields(f.message_type, path + ("[]." if f.is_repeated else "."), depth + 1)
        elif _NAMING.search(f.name):
            yield path


def _checked_fields() -> list[tuple[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.handlers import get_endpoints
        endpoints = get_endpoints(get_handler=lambda request_class: request_class)
    table, out = RouteTable(), set()
    for path, request_class, methods in endpoints:
        if not path.startswith("/api/") or not hasattr(request_class, "DESCRIPTOR"):
            continue
        pattern = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)[len("/api/"):]
        for method in methods:
            found = table.match(method, sample_path("/api/" + pattern))
            if found is None or found[0].access != CHECKED:
                continue
            read = {f.split(":")[-1] for need in found[0].needs for f in need.fields}
            out |= {(f"{method} {pattern}", f) for f in _fields(request_class.DESCRIPTOR) if f not in read}
    return sorted(out)


UNREAD = _checked_fields()


def test_mlflow_requests_have_fields_that_name_objects() -> None:
    assert len(UNREAD) > 30, "found too few fields; has MLflow's endpoint table changed?"


@pytest.mark.parametrize(("route", "field"), UNREAD, ids=[f"{r} {f}" for r, f in UNREAD])
def test_a_field_naming_an_object_is_a_need_or_says_why_not(route: str, field: str) -> None:
    assert f"{route} {field}" in NOT_OBJECTS_IN or field.rsplit(".", 1)[-1] in NOT_OBJECTS, (
        f"{route}: field {field!r} may name an object and no need of the row reads it: add a Need to its row "
        "in proxy/routes.py, or say in NOT_OBJECTS why none is due")


def test_every_exception_is_still_a_field_of_its_route() -> None:
    unread = {f"{r} {f}" for r, f in UNREAD}
    assert not set(NOT_OBJECTS_IN) - unread, set(NOT_OBJECTS_IN) - unread
