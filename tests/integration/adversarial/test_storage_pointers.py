"""Class: a value MLflow's server reads as *where an object's data is* is MLflow's own, never the client's.

MLflow serves a trace's data and attachments (`get-trace-artifact`, the UI's trace view) from the location in the
trace's tag `mlflow.artifactLocation`, reading it with the server's own access to every store. Its client treats the
tag as immutable, but its server accepts it from a tag update, a v2 trace end, a trace start or an OTLP span
attribute (`mlflow.traceTag.<key>`). A caller who points its own trace there at another team's trace folder reads
that trace's spans, inputs and outputs through its own trace. Every way of setting the tag (and the other tags that
say where or how trace data is stored) is refused, and the other team's data stays unreadable.
(Experiments' `artifact_location` and model-version sources are the same class: test_adversarial.py, test_oracle.py.)"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.adversarial.adv_it import hex32, otlp_export
from tests.integration.gate_it import ALICE, BOB, World

pytestmark = pytest.mark.integration
A2, A3 = "/api/2.0/mlflow", "/api/3.0/mlflow"
SECRET = "beta-secret-span-input"
STORAGE_TAGS = ("mlflow.artifactLocation", "mlflow.trace.spansLocation", "mlflow.trace.archiveLocation")


def _now() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def beta_trace_location(gate, world: World) -> str:  # type: ignore[no-untyped-def]
    """A trace of team beta whose data is a `traces.json` in its artifact folder (how v2 clients log traces)."""
    with gate.http(BOB) as h:
        r = h.post(f"{A2}/traces", json={"experiment_id": world.beta_exp, "timestamp_ms": _now()})
        assert r.status_code == 200, r.text
        info = r.json()["trace_info"]
        location = {t["key"]: t["value"] for t in info["tags"]}["mlflow.artifactLocation"]
        data = {"spans": [{"name": "beta-span", "context": {"trace_id": "x", "span_id": "y"}, "parent_id": None,
                           "start_time": 0, "end_time": 1, "status_code": "OK", "status_message": "",
                           "attributes": {"mlflow.spanInputs": json.dumps(SECRET)}, "events": []}]}
        path = location.split("mlflow-artifacts:/", 1)[1]
        r = h.put(f"/api/2.0/mlflow-artifacts/artifacts/{path}/traces.json", content=json.dumps(data).encode())
        assert r.status_code == 200, r.text
        r = h.get("/ajax-api/2.0/mlflow/get-trace-artifact", params={"request_id": info["request_id"]})
        assert r.status_code == 200 and SECRET in r.text, r.text         # bob reads his own trace's data
    return location


def _v2_trace(h: httpx.Client, experiment_id: str) -> str:
    r = h.post(f"{A2}/traces", json={"experiment_id": experiment_id, "timestamp_ms": _now()})
    assert r.status_code == 200, r.text
    return str(r.json()["trace_info"]["request_id"])


def _tag_v3(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    trace_id = _v2_trace(h, exp)
    return h.patch(f"{A3}/traces/{trace_id}/tags", json={"key": key, "value": value}), trace_id


def _tag_v2(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    trace_id = _v2_trace(h, exp)
    return h.patch(f"{A2}/traces/{trace_id}/tags", json={"key": key, "value": value}), trace_id


def _end_v2(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    trace_id = _v2_trace(h, exp)
    return h.patch(f"{A2}/traces/{trace_id}", json={"timestamp_ms": _now(), "status": "OK",
                                                    "tags": [{"key": key, "value": value}]}), trace_id


def _start_v2(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    r = h.post(f"{A2}/traces", json={"experiment_id": exp, "timestamp_ms": _now(),
                                     "tags": [{"key": key, "value": value}]})
    return r, str(r.json().get("trace_info", {}).get("request_id", "none"))


def _start_v3(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    trace_id = "tr-" + hex32()
    r = h.post(f"{A3}/traces", json={"trace": {"trace_info": {
        "trace_id": trace_id, "request_time": "2025-01-01T00:00:00Z", "execution_duration": "1s", "state": "OK",
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}},
        "trace_metadata": {}, "tags": {key: value}}}})
    return r, trace_id


def _otlp(h: httpx.Client, exp: str, key: str, value: str) -> tuple[httpx.Response, str]:
    trace_hex = hex32()
    r = h.post("/v1/traces", content=otlp_export([trace_hex], attributes={f"mlflow.traceTag.{key}": value}),
               headers={"Content-Type": "application/x-protobuf", "X-MLflow-Experiment-Id": exp})
    return r, f"tr-{trace_hex}"


WAYS: dict[str, Callable[[httpx.Client, str, str, str], tuple[httpx.Response, str]]] = {
    "PATCH 3.0 traces/{id}/tags": _tag_v3, "PATCH 2.0 traces/{id}/tags": _tag_v2, "PATCH 2.0 traces/{id} (end)": _end_v2,
    "POST 2.0 traces (start)": _start_v2, "POST 3.0 traces (start)": _start_v3, "POST /v1/traces (OTLP)": _otlp,
}


@pytest.mark.parametrize("way", list(WAYS))
def test_a_trace_cannot_be_pointed_at_another_teams_trace_data(gate, world: World, beta_trace_location: str,
                                                               way: str) -> None:
    with gate.http(ALICE) as h:
        r, trace_id = WAYS[way](h, world.alpha_exp, "mlflow.artifactLocation", beta_trace_location)
        assert r.status_code == 403, f"{way} set the tag: {r.status_code} {r.text[:300]}"
        assert "mlflow.artifactLocation" in r.json()["message"], r.text
        read = h.get("/ajax-api/2.0/mlflow/get-trace-artifact", params={"request_id": trace_id})
        assert SECRET not in read.text, read.text


@pytest.mark.parametrize("key", STORAGE_TAGS)
@pytest.mark.parametrize("way", ["PATCH 3.0 traces/{id}/tags", "POST /v1/traces (OTLP)"])
def test_every_tag_saying_where_trace_data_is_is_refused(gate, world: World, way: str, key: str) -> None:
    with gate.http(ALICE) as h:
        r, _ = WAYS[way](h, world.alpha_exp, key, "mlflow-artifacts:/0/elsewhere")
    assert r.status_code == 403 and key in r.json()["message"], r.text


def test_other_tags_still_work(gate, world: World) -> None:
    with gate.http(ALICE) as h:
        for way in ("PATCH 3.0 traces/{id}/tags", "PATCH 2.0 traces/{id} (end)", "POST /v1/traces (OTLP)"):
            r, _ = WAYS[way](h, world.alpha_exp, "note", "fine")
            assert r.status_code == 200, (way, r.text)
