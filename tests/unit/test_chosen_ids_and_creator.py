"""Ids the client chooses, one answer for refused and missing objects, bounded JSON, and the creator rewrites:
resources.py against a fake upstream, edge.parse_json, rewrite.py as pure functions."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy.call import Call
from proxy.edge import json_depth, parse_json
from proxy.errors import BadRequest, PermissionDenied
from proxy.identity import Identity
from proxy.params import Params, read_params
from proxy.policy import Level, load_policy_text
from proxy.resources import Resolver, Target, authorize, check
from proxy.rewrite import (
    created_with_tags,
    dataset_create,
    dataset_records,
    issue_create,
    trace_end_v2,
    trace_start_v2,
    trace_start_v3,
)
from proxy.routes import Names, RouteTable
from proxy.uris import prompt_name

POLICY = load_policy_text("""
teams:
  alpha: {members: [alice@x.test], experiments: ["alpha/"], models: ["alpha-"]}
  beta: {members: [bob@x.test], experiments: ["beta/"], models: ["beta-"]}
""")
ALICE = Identity("alice@x.test")
MISSING = (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "nope"})


class FakeUpstream:
    """Experiments 1 (alpha/a) and 2 (beta/b); trace tr-a in 1, tr-b in 2; run ra in 1, rb in 2."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def get_json(self, path: str, params: dict[str, Any] | None = None, **_: Any) -> tuple[int, Any]:
        self.calls.append(path)
        params = params or {}
        if path.endswith("/experiments/get"):
            names = {"1": "alpha/a", "2": "beta/b"}
            eid = params["experiment_id"]
            return (200, {"experiment": {"name": names[eid], "tags": []}}) if eid in names else MISSING
        if path.endswith("/runs/get"):
            exp = {"ra": "1", "rb": "2"}.get(params["run_id"])
            return (200, {"run": {"info": {"experiment_id": exp, "user_id": "u"}}}) if exp else MISSING
        if "/logged-models/" in path:
            exp = {"m-a": "1", "m-b": "2"}.get(path.rsplit("/", 1)[1])
            return (200, {"model": {"info": {"experiment_id": exp}}}) if exp else MISSING
        if "/assessments/" in path:
            return (200, {"assessment": {}}) if path.endswith("/tr-a/assessments/a-1") else MISSING
        if "/traces/" in path:
            exp = {"tr-a": "1", "tr-b": "2", "tr-weird": None}
            tid = path.rsplit("/", 1)[1]
            if tid == "tr-500":
                return 500, {}
            if tid == "tr-403":
                return 403, {"error_code": "PERMISSION_DENIED"}
            if tid not in exp:
                return MISSING
            return 200, {"trace": {"trace_info": {"trace_location": {"mlflow_experiment": {"experiment_id": exp[tid]}}}}}
        raise AssertionError(path)


def call_for(method: str, path: str, body: dict[str, Any] | None = None, headers: dict[bytes, bytes] | None = None,
             raw: bytes | None = None) -> Call:
    call = Call({"method": method, "path": path, "headers": []}, None, None)  # type: ignore[arg-type]
    call.policy, call.ident, call.headers = POLICY, ALICE, headers or {}
    call.route, call.path_params = RouteTable().lookup(method, path)
    call.params = read_params(method, call.route.source, b"", raw if raw is not None else json.dumps(body or {}).encode(),
                              call.headers)
    return call


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize(("what", "foreign", "missing"), [
    (Names.EXPERIMENT, "2", "3"), (Names.RUN, "rb", "rx"), (Names.TRACE, "tr-b", "tr-x"),
    (Names.RUN_OWNED, "rb", "rx"), (Names.TRACE, "tr-b", "tr-weird"),
])
def test_a_refused_and_a_missing_object_get_one_message(what: Names, foreign: str, missing: str) -> None:
    resolver = Resolver(FakeUpstream())  # type: ignore[arg-type]
    messages = []
    for value in (foreign, missing):
        with pytest.raises(PermissionDenied) as err:
            run(check(call_for("GET", "/api/2.0/mlflow/runs/get"), resolver, what, value, Level.EDIT))
        messages.append(err.value.message.replace(value, "<ID>"))
        assert "404" not in err.value.message and "answered" not in err.value.message
    assert messages[0] == messages[1], messages


def v3(trace_id: str, experiment: str, **info: Any) -> dict[str, Any]:
    return {"trace": {"trace_info": {"trace_id": trace_id, "trace_location": {
        "mlflow_experiment": {"experiment_id": experiment}}, **info}}}


@pytest.mark.parametrize(("body", "allowed"), [
    (v3("tr-new", "1"), True),                       # a new id: a create
    (v3("tr-a", "1"), True),                         # its own trace, where it is
    (v3("tr-b", "1"), False),                        # another team's trace
    (v3("tr-a", "2"), False),                        # into an experiment alice may not edit
    (v3("tr-a", "1", assessments=[{"assessment_id": "a-1"}]), True),     # the trace's own assessment
    (v3("tr-a", "1", assessments=[{"assessment_id": "a-2"}]), False),    # any other
    (v3("tr-new", "1", assessments=[{"overrides": "a-1"}]), False),      # not of the new trace
    (v3("tr-new", "1", assessments=[{"feedback": {}}]), True),
])
def test_a_trace_start_is_new_or_stays_where_it_is(body: dict[str, Any], allowed: bool) -> None:
    call = call_for("POST", "/api/3.0/mlflow/traces", body)
    resolver = Resolver(FakeUpstream())  # type: ignore[arg-type]
    if allowed:
        run(authorize(call, resolver))
    else:
        with pytest.raises(PermissionDenied):
            run(authorize(call, resolver))


@pytest.mark.parametrize(("trace_id", "error"), [
    ("tr-500", "UpstreamUnavailable"), ("tr-403", "Unresolvable"), ("tr/../x", "BadRequest"), ("", "BadRequest"),
    ("tr-\u00e9", "BadRequest"),
])
def test_only_a_definite_not_found_makes_a_chosen_id_new(trace_id: str, error: str) -> None:
    resolver = Resolver(FakeUpstream())  # type: ignore[arg-type]
    with pytest.raises(Exception) as err:
        run(resolver.existing_trace(trace_id))
    assert type(err.value).__name__ == error


def test_otlp_trace_ids_and_the_run_header_are_needs() -> None:
    from tests.unit.test_otlp import export

    raw = export(bytes(16)).SerializeToString()
    headers = {b"content-type": b"application/x-protobuf", b"x-mlflow-experiment-id": b"1", b"x-mlflow-run-id": b"rb"}
    resolver = Resolver(FakeUpstream())  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        run(authorize(call_for("POST", "/v1/traces", raw=raw, headers=headers), resolver))
    headers[b"x-mlflow-run-id"] = b"ra"
    run(authorize(call_for("POST", "/v1/traces", raw=raw, headers=headers), resolver))


@pytest.mark.parametrize(("uri", "name"), [
    ("prompts:/alpha-p/1", "alpha-p"), ("prompts:/alpha-p@prod", "alpha-p"), ("prompts:/a@b/2", "a@b"),
    ("prompts:/alpha-p", "alpha-p"), ("prompts:/x;y/1", "x;y"),
])
def test_prompt_uris_name_the_prompt_mlflow_loads(uri: str, name: str) -> None:
    assert prompt_name(uri) == name


@pytest.mark.parametrize("uri", ["prompts:/x?y/1", "prompts://host/x/1", "models:/x/1", "prompts:/",
                                 "prompts:/a/b/c"])
def test_prompt_uris_mlflow_would_read_differently_are_refused(uri: str) -> None:
    with pytest.raises(BadRequest):
        prompt_name(uri)


@pytest.mark.parametrize(("uri", "target"), [
    ("models:/m-a", Target("experiment", "alpha/a", Level.READ)),
    ("models:/m-b", Target("experiment", "beta/b", Level.READ)),
    ("models:/m-a/1", Target("model", "m-a", Level.READ)),          # MLflow: version 1 of registered model m-a
    ("models:/beta-x/3", Target("model", "beta-x", Level.READ)),
    ("models:/beta-x/Production", Target("model", "beta-x", Level.READ)),
    ("models:/m-a@champion", Target("model", "m-a", Level.READ)),
])
def test_model_version_sources_name_what_mlflow_copies(uri: str, target: Target) -> None:
    assert run(Resolver(FakeUpstream()).targets(Names.SOURCE_URI, uri, ALICE, Level.READ)) == [target]  # type: ignore[arg-type]


@pytest.mark.parametrize("uri", ["models://host/m-a", "models:/a/b/c", "models:/x/", "models:/m-a?x=1", "models:"])
def test_model_version_sources_mlflow_would_read_differently_are_refused(uri: str) -> None:
    with pytest.raises(BadRequest):
        run(Resolver(FakeUpstream()).targets(Names.SOURCE_URI, uri, ALICE, Level.READ))  # type: ignore[arg-type]


def test_json_is_parsed_with_bounded_depth_and_no_crash() -> None:
    assert parse_json(b'{"a": [[1]]}', "body") == {"a": [[1]]}
    assert json_depth({"a": [[1]], "b": {}}) == 3
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", b"\xff", b"1" * 5000):
        with pytest.raises(BadRequest):
            parse_json(raw, "body")


BOB_ID = Identity("bob@x.test")


def tags(items: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in items}


def test_creations_record_the_caller_whatever_the_client_sent() -> None:
    body = created_with_tags({"name": "m", "tags": [{"key": "mlflow.user", "value": "mallory"}]}, BOB_ID, None)
    assert tags(body["tags"]) == {"mlflow.user": "bob@x.test"}
    assert tags(created_with_tags({"name": "m"}, BOB_ID, None)["tags"]) == {"mlflow.user": "bob@x.test"}
    body = trace_start_v3({"trace": {"traceInfo": {"traceMetadata": {"mlflow.user": "m"}, "tags": {"mlflow.user": "m"}}}},
                          BOB_ID, None)
    assert body["trace"]["traceInfo"]["traceMetadata"] == {"mlflow.user": "bob@x.test"}
    assert body["trace"]["traceInfo"]["tags"] == {"mlflow.user": "bob@x.test"}
    info = trace_start_v3({"trace": {"trace_info": {}}}, BOB_ID, None)["trace"]["trace_info"]
    assert info == {"trace_metadata": {"mlflow.user": "bob@x.test"}, "tags": {"mlflow.user": "bob@x.test"}}
    assert trace_start_v3({}, BOB_ID, None) == {}
    body = trace_start_v2({"request_metadata": [{"key": "mlflow.user", "value": "m"}]}, BOB_ID, None)
    assert tags(body["request_metadata"]) == {"mlflow.user": "bob@x.test"}
    body = trace_end_v2({"tags": [{"key": "mlflow.user", "value": "m"}]}, BOB_ID, None)
    assert tags(body["tags"]) == {"mlflow.user": "bob@x.test"}
    assert json.loads(dataset_create({"name": "d"}, BOB_ID, None)["tags"]) == {"mlflow.user": "bob@x.test"}
    assert dataset_create({"name": "d", "tags": 3}, BOB_ID, None)["tags"] == 3      # left for MLflow to refuse
    records = dataset_records({"records": json.dumps([{"inputs": {}}, {"tags": {"mlflow.user": "m"}}])}, BOB_ID, None)
    assert [r["tags"] for r in json.loads(records["records"])] == [{"mlflow.user": "bob@x.test"}] * 2
    with pytest.raises(BadRequest):
        dataset_records({"records": json.dumps([{"tags": []}])}, BOB_ID, None)
    with pytest.raises(BadRequest):
        dataset_records({"records": "[" * 100 + "]" * 100}, BOB_ID, None)
    assert issue_create({"createdBy": "m"}, BOB_ID, None) == {"created_by": "bob@x.test"}


def test_params_of_an_otlp_export_are_its_trace_ids() -> None:
    from tests.unit.test_otlp import export

    params = read_params("POST", "otlp", b"", export(bytes(16)).SerializeToString(),
                         {b"content-type": b"application/x-protobuf"})
    assert isinstance(params, Params) and params.values("trace_ids") == ["tr-" + "0" * 32]
