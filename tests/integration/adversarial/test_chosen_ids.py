"""Class: a write keyed by an id the client chooses is authorized on the object that id already names.

MLflow merges a trace start (`POST /api/3.0/mlflow/traces`) into an existing trace of that id, wherever it is, and
moves it (with its spans and assessments) into the request's experiment; an OTLP export appends spans to the trace
its trace id names; assessments a trace start carries are merged by assessment id. A new id is a create (edit on
the target experiment); an existing one must already be where the request writes."""
from __future__ import annotations

import base64
import gzip
import json
import zlib

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.adversarial.adv_it import Objects, hex32, normalised, otlp_export
from tests.integration.gate_it import ALICE, BOB, World

pytestmark = pytest.mark.integration
V3 = "/api/3.0/mlflow/traces"


def start_body(trace_id: str, experiment_id: str, **info: object) -> dict:
    return {"trace": {"trace_info": {
        "trace_id": trace_id, "request_time": "2025-01-01T00:00:00Z", "execution_duration": "1s", "state": "OK",
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}},
        "trace_metadata": {}, "tags": {}, **info}}}


def trace_info(http: httpx.Client, trace_id: str) -> dict:
    r = http.get(f"{V3}/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()["trace"]["trace_info"]


def export(http: httpx.Client, experiment_id: str, content: bytes, **headers: str) -> httpx.Response:
    return http.post("/v1/traces", content=content, headers={
        "Content-Type": "application/x-protobuf", "X-MLflow-Experiment-Id": experiment_id, **headers})


def span_names(http: httpx.Client, trace_id: str) -> list[str]:
    r = http.get("/api/3.0/mlflow/traces/batchGet", params={"trace_ids": trace_id})
    assert r.status_code == 200, r.text
    return sorted(s["name"] for t in r.json()["traces"] for s in t["spans"])


def test_a_trace_start_cannot_take_another_teams_trace(gate, world: World, objects: Objects) -> None:
    victim = objects.foreign["trace"]
    with gate.http(ALICE) as alice, gate.http(BOB) as bob:
        before = trace_info(bob, victim)
        r = alice.post(V3, json=start_body(victim, world.alpha_exp))
        assert r.status_code == 403, r.text
        assert "beta-secret" not in r.text
        after = trace_info(bob, victim)
        assert after["trace_location"] == before["trace_location"]
        assert after["trace_location"]["mlflow_experiment"]["experiment_id"] == world.beta_exp
        found = alice.post(f"{V3}/search", json={"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {
            "experiment_id": world.alpha_exp}}], "max_results": 500})
        assert victim not in found.text


def test_a_trace_start_with_a_new_id_or_its_own_trace_works(gate, world: World) -> None:
    trace_id = f"tr-{hex32()}"
    with gate.http(ALICE) as alice:
        r = alice.post(V3, json=start_body(trace_id, world.alpha_exp))
        assert r.status_code == 200, r.text
        r = alice.post(V3, json=start_body(trace_id, world.alpha_exp, request_preview="again"))  # MLflow's merge
        assert r.status_code == 200, r.text
        assert trace_info(alice, trace_id)["request_preview"] == "again"
        # ... but not into another experiment, even one alice may edit: a trace never moves
        r = alice.post(V3, json=start_body(trace_id, world.shared_exp))
        assert r.status_code == 403, r.text
        assert trace_info(alice, trace_id)["trace_location"]["mlflow_experiment"]["experiment_id"] == world.alpha_exp
        r = alice.post(V3, json=start_body(f"tr-{hex32()}", world.beta_exp))
        assert r.status_code == 403, r.text


@pytest.mark.parametrize("field", ["assessment_id", "overrides"])
def test_a_trace_start_cannot_merge_another_teams_assessment(gate, world: World, objects: Objects, field: str) -> None:
    victim_trace, victim = objects.foreign["trace"], objects.foreign["assessment"]
    own = f"tr-{hex32()}"
    assessment = {"assessment_name": "quality", "source": {"source_type": "HUMAN", "source_id": "mallory"},
                  "feedback": {"value": 0.0}, field: victim}
    with gate.http(ALICE) as alice, gate.http(BOB) as bob:
        assert alice.post(V3, json=start_body(own, world.alpha_exp)).status_code == 200
        for trace_id in (own, f"tr-{hex32()}"):     # an existing trace of alice's (merge) and a new one
            r = alice.post(V3, json=start_body(trace_id, world.alpha_exp, assessments=[assessment]))
            assert r.status_code == 403, r.text
        r = bob.get(f"{V3}/{victim_trace}/assessments/{victim}")
        assert r.status_code == 200, r.text
        kept = r.json()["assessment"]
        assert (kept["trace_id"], kept["feedback"]["value"], kept.get("valid", True)) == (victim_trace, 1.0, True)
        # assessments without ids (what the client sends for feedback logged during a trace) are fine
        fine = {k: v for k, v in assessment.items() if k != field}
        r = alice.post(V3, json=start_body(f"tr-{hex32()}", world.alpha_exp, assessments=[fine]))
        assert r.status_code == 200, r.text


def test_an_assessment_create_with_a_chosen_id_tells_nothing_of_another_teams(gate, world: World,
                                                                              objects: Objects) -> None:
    """`POST traces/{id}/assessments` keeps a client-chosen `assessment_id`: another team's id made MLflow answer
    500 (a duplicate key) where a missing one was created, telling that the id exists. A chosen id is refused
    alike for both; an assessment without one (what the client sends) is created."""
    own_trace = objects.own["trace"]
    body = {"assessment_name": "quality", "source": {"source_type": "HUMAN", "source_id": "alice"},
            "feedback": {"value": 1.0}}
    answers = []
    with gate.http(ALICE) as alice:
        for chosen in (objects.foreign["assessment"], f"a-{hex32()}"):
            r = alice.post(f"{V3}/{own_trace}/assessments", json={"assessment": {**body, "assessment_id": chosen}})
            answers.append(normalised(r, chosen))
        assert answers[0] == answers[1] and answers[0][0] == 403, answers
        r = alice.post(f"{V3}/{own_trace}/assessments", json={"assessment": body})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("encoding", ["protobuf", "json", "gzip", "deflate"])
def test_an_otlp_export_cannot_append_to_another_teams_trace(gate, world: World, objects: Objects,
                                                             encoding: str) -> None:
    victim = objects.foreign["trace"]
    new = hex32()
    body = otlp_export([victim[3:], new], name="mallory-span")
    headers = {}
    if encoding == "json":
        body, headers = otlp_json([victim[3:], new]), {"Content-Type": "application/json"}
    elif encoding in ("gzip", "deflate"):
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        headers = {"Content-Encoding": encoding}
    with gate.http(ALICE) as alice, gate.http(BOB) as bob:
        before = span_names(bob, victim)
        r = export(alice, world.alpha_exp, body, **headers)
        assert r.status_code == 403, r.text
        assert span_names(bob, victim) == before
        assert alice.get(f"{V3}/tr-{new}").status_code == 403      # all or nothing: the new trace was not made


def otlp_json(trace_hex_ids: list[str]) -> bytes:
    """The same export in OTLP's JSON encoding (ids in hex)."""
    data = json_format.MessageToDict(parsed(otlp_export(trace_hex_ids, name="mallory-span")))
    for span in data["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(data).encode()


def parsed(body: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


@pytest.mark.parametrize("encoding", ["protobuf", "json", "gzip"])
def test_an_otlp_export_with_new_trace_ids_is_a_create(gate, world: World, encoding: str) -> None:
    new = hex32()
    body, headers = otlp_export([new], name="own-span"), {}
    if encoding == "json":
        body, headers = otlp_json([new]), {"Content-Type": "application/json"}
    elif encoding == "gzip":
        body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
    with gate.http(ALICE) as alice:
        r = export(alice, world.alpha_exp, body, **headers)
        assert r.status_code == 200, r.text
        info = trace_info(alice, f"tr-{new}")
        assert info["trace_location"]["mlflow_experiment"]["experiment_id"] == world.alpha_exp
        assert r.headers.get("content-type", "").startswith("application/x-protobuf")
        # a second batch of spans for the same (now existing, own) trace is appended
        r = export(alice, world.alpha_exp, otlp_export([new], root=False, name="child-span"))
        assert r.status_code == 200, r.text
        assert len(span_names(alice, f"tr-{new}")) == 2


def test_otlp_spans_join_an_existing_trace_only_where_the_caller_may_edit(gate, world: World) -> None:
    """Distributed tracing: a service may add spans to a trace in an experiment it can edit (shared/), never to one
    it can only read (alpha/public/ for team beta)."""
    shared, public = hex32(), hex32()
    with gate.http(BOB) as bob, gate.http(ALICE) as alice:
        assert export(bob, world.shared_exp, otlp_export([shared])).status_code == 200
        assert export(alice, world.public_exp, otlp_export([public])).status_code == 200
        r = export(alice, world.alpha_exp, otlp_export([shared], root=False, name="alice-joins"))
        assert r.status_code == 200, r.text
        assert "alice-joins" in span_names(bob, f"tr-{shared}")
        r = export(bob, world.beta_exp, otlp_export([public], root=False, name="bob-joins"))
        assert r.status_code == 403, r.text
        assert "bob-joins" not in span_names(alice, f"tr-{public}")


def test_otlp_cannot_link_traces_to_another_teams_run(gate, world: World) -> None:
    new = hex32()
    with gate.http(ALICE) as alice:
        r = export(alice, world.alpha_exp, otlp_export([new]), **{"X-MLflow-Run-Id": world.beta_run})
        assert r.status_code == 403, r.text
        assert alice.get(f"{V3}/tr-{new}").status_code == 403      # nothing was stored
        own = export(alice, world.alpha_exp, otlp_export([hex32()]), **{"X-MLflow-Run-Id": world.alpha_run})
        assert own.status_code == 200, own.text


@pytest.mark.parametrize("case", ["content-type", "garbage", "too-many-traces", "bomb", "no-trace-id"])
def test_otlp_bodies_are_bounded_and_must_parse(gate, world: World, case: str) -> None:
    headers: dict[str, str] = {}
    if case == "content-type":
        body, headers, status = otlp_export([hex32()]), {"Content-Type": "text/plain"}, 400
    elif case == "garbage":
        body, status = b"\xff\x00not protobuf" * 10, 400
    elif case == "too-many-traces":
        body, status = otlp_export([hex32() for _ in range(1001)]), 413
    elif case == "bomb":
        body, headers, status = gzip.compress(b"\0" * (65 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413
    else:
        message = parsed(otlp_export([hex32()]))
        message.resource_spans[0].scope_spans[0].spans[0].trace_id = b""
        body, status = message.SerializeToString(), 400
    with gate.http(ALICE) as alice:
        r = export(alice, world.alpha_exp, body, **headers)
    assert r.status_code == status, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text


def test_link_to_run_takes_traces_not_stored_yet_and_no_other_teams(gate, world: World, objects: Objects) -> None:
    """Issue 11 item 5: a client links the traces it has just made, whose spans may still be on their way. A trace
    id the upstream does not know yet is linked to a run the caller may edit (the answer says no more than a trace
    start with that id would); another team's stored trace, and another team's run, are refused."""
    link = "/api/2.0/mlflow/traces/link-to-run"
    pending = f"tr-{hex32()}"
    with gate.http(ALICE) as alice:
        r = alice.post(link, json={"trace_ids": [pending], "run_id": world.alpha_run2})
        assert r.status_code == 200, r.text
        r = alice.post(link, json={"trace_ids": [objects.foreign["trace"]], "run_id": world.alpha_run2})
        assert r.status_code == 403, r.text
        r = alice.post(link, json={"trace_ids": [objects.own["trace"], pending], "run_id": world.alpha_run2})
        assert r.status_code == 200, r.text
        for trace in (f"tr-{hex32()}", objects.own["trace"]):
            r = alice.post(link, json={"trace_ids": [trace], "run_id": world.beta_run})
            assert r.status_code == 403 and "run" in r.json()["message"], r.text
        # the pending trace arrives in the caller's experiment: linked, and it is the caller's
        r = alice.post(V3, json=start_body(pending, world.alpha_exp))
        assert r.status_code == 200, r.text


def test_a_span_linked_to_a_run_at_once_is_linked(gate, world: World) -> None:
    """The client's own flow: `mlflow.start_span` exports in the background; `link_traces_to_run` right after."""
    import mlflow

    client = gate.client(ALICE)
    with client.acting():
        mlflow.set_experiment(experiment_id=world.alpha_exp)
        with mlflow.start_span(name="linked-at-once"):
            pass
        trace_id = mlflow.get_last_active_trace_id()
        assert trace_id
        mlflow.MlflowClient().link_traces_to_run([trace_id], world.alpha_run2)
        mlflow.flush_trace_async_logging()
        found = mlflow.search_traces(locations=[world.alpha_exp], run_id=world.alpha_run2, return_type="list")
    assert trace_id in {t.info.trace_id for t in found}


@pytest.mark.parametrize("header", ["X-MLflow-Experiment-Id", "X-MLflow-Run-Id"])
def test_an_id_header_given_twice_is_refused(gate, world: World, header: str) -> None:
    """The gate and MLflow could each read a different copy (the first, the last, either spelling): one id header,
    given once, is the only form accepted, whichever copy names the other team."""
    own, foreign = ((world.alpha_exp, world.beta_exp) if header.endswith("Experiment-Id")
                    else (world.alpha_run, world.beta_run))
    trace_hex = hex32()
    with gate.http(ALICE) as alice:
        for pair in ((own, foreign), (foreign, own)):
            headers = [("Content-Type", "application/x-protobuf"), (header, pair[0]), (header.lower(), pair[1])]
            if header.endswith("Run-Id"):
                headers.append(("X-MLflow-Experiment-Id", world.alpha_exp))
            r = alice.post("/v1/traces", content=otlp_export([trace_hex]), headers=headers)
            assert r.status_code == 400, r.text
            assert "given twice" in r.json()["message"], r.text
        r = alice.get(f"{V3}/tr-{trace_hex}")
        assert r.status_code == 403, r.text          # nothing was written: the trace does not exist
