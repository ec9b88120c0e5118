"""Class: bad input never gets a bare 500. Every body the gate parses is parsed with bounded depth and size, ids it
looks up must be text it can send on, and every answer carries a request id (the client's X-Request-ID when it is
well-formed), which the upstream receives and the audit line records."""
from __future__ import annotations

import json
import re
import time

import pytest

from proxy.routes import ROUTES, Access, Route, Source
from tests.integration.adversarial.adv_it import Objects
from tests.integration.gate_it import ALICE, BOB, ROOT, World

pytestmark = pytest.mark.integration
DEEP = 100_000


def parsed_body_routes() -> list[tuple[str, str]]:
    """(method, path) of every row whose JSON body the gate reads: to decide on it, filter by it or rewrite it."""
    out = []
    for route in ROUTES:
        if route.source is not Source.PROTO or route.access not in (Access.CHECKED, Access.SIGNED_IN):
            continue
        if route.access is Access.SIGNED_IN and route.search is None and not route.graphql:
            continue
        for method in sorted(route.methods - {"GET"}) or ["GET"]:
            out.append((method, _path(route)))
    return out


def _path(route: Route) -> str:
    path = route.pattern if route.pattern.startswith("/") else "/api/" + route.pattern
    return re.sub(r"\{[^}]+\}", "x", path)


ROUTES_WITH_BODIES = parsed_body_routes()


@pytest.mark.parametrize(("method", "path"), ROUTES_WITH_BODIES, ids=[f"{m} {p}" for m, p in ROUTES_WITH_BODIES])
def test_deeply_nested_json_is_a_400(gate, method: str, path: str) -> None:
    nested = "[" * DEEP + "]" * DEEP
    with gate.http(ALICE) as h:
        for body in ('{"a": ' + nested + "}", json.dumps('{"a": ' + nested + "}"), '{"a": ' + "[" * 40 + "]" * 40 + "}"):
            r = h.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, f"{r.status_code} {r.text[:200]}"
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text
            assert "nested too deeply" in r.json()["message"]
            assert r.headers.get("x-request-id")


def test_the_table_of_parsed_bodies_is_not_empty() -> None:
    assert len(ROUTES_WITH_BODIES) > 80 and ("POST", "/api/2.0/mlflow/runs/log-batch") in ROUTES_WITH_BODIES


@pytest.mark.parametrize(("path", "body"), [
    ("/api/2.0/mlflow/runs/log-metric", '{"run_id": "\\ud800", "key": "k", "value": 1, "timestamp": 1}'),
    ("/api/3.0/mlflow/traces/batchGetInfos", '{"trace_ids": ["tr-\\udfff"]}'),
    ("/api/3.0/mlflow/datasets/create", '{"name": "n", "experiment_ids": ["1"], "tags": "' + "[" * 200 + '"}'),
    ("/api/2.0/mlflow/runs/log-metric", '{"run_id": "r", "value": ' + "1" * 5000 + "}"),
    # 19 digits, past a 64-bit integer: MLflow's lookup failed with a 500, which the gate answered as a 503
    ("/api/2.0/mlflow/runs/search", '{"experiment_ids": ["9999999999999999999"]}'),
])
def test_ids_and_values_the_gate_cannot_use_are_a_400(gate, world: World, path: str, body: str) -> None:
    with gate.http(ALICE) as h:
        r = h.post(path, content=body.replace('"1"]', f'"{world.alpha_exp}"]'),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]}"
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text


def audit_lines(gate, offset: int, request_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in gate.log_since(offset).splitlines()
                 if line.startswith("{") and request_id in line]
        found = [line for line in lines if "allowed" in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("user", [ALICE, BOB])
def test_the_request_id_is_answered_and_audited(gate, world: World, user: str) -> None:
    """alice may read alpha/base (allowed), bob may not (refused): both answers and audit lines carry the id."""
    offset = gate.log_size()
    with gate.http(user) as h:
        r = h.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": world.alpha_exp},
                  headers={"X-Request-ID": f"client-id-{user}"})
        assert r.status_code == (200 if user == ALICE else 403), r.text
        assert r.headers["x-request-id"] == f"client-id-{user}"
        generated = h.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": world.alpha_exp},
                          headers={"X-Request-ID": "not ok " + "x" * 300}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
    lines = audit_lines(gate, offset, f"client-id-{user}")
    assert [(line["who"], line["allowed"], line["request_id"]) for line in lines] == [
        (user, user == ALICE, f"client-id-{user}")], lines
    assert audit_lines(gate, offset, generated), "the generated id is audited too"


def test_the_upstream_receives_the_request_id(echo_gate) -> None:  # type: ignore[no-untyped-def]
    import httpx

    headers = {"Authorization": f"Bearer {echo_gate.gate.token(ROOT)}"}
    with httpx.Client(base_url=echo_gate.gate.url, timeout=30, headers=headers) as h:
        for sent, expect in (("abc-123", "abc-123"), ("bad id", None)):
            echo_gate.records.clear()
            r = h.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "1"},
                      headers={"X-Request-ID": sent})
            assert r.status_code == 200, r.text
            upstream = [v for rec in echo_gate.records if "experiments/get" in rec["path"]
                        for k, v in rec["headers"] if k.lower() == "x-request-id"]
            assert upstream == [r.headers["x-request-id"]], (upstream, r.headers)
            assert expect is None or upstream == [expect]


@pytest.mark.parametrize("version", ["99999999999999999999", "-99999999999999999999"])
def test_a_model_version_number_past_64_bits_is_a_400(gate, objects: Objects, version: str) -> None:
    """MLflow's store failed on it with a 500 ("Python int too large to convert to SQLite INTEGER"), and the
    gate's file view answered a misleading 503."""
    model = objects.own["model"]
    with gate.http(ALICE) as h:
        answers = [h.get(f"/api/2.0/mlflow/model-versions/{verb}", params={"name": model, "version": version})
                   for verb in ("get", "get-download-uri")]
        answers.append(h.get("/model-versions/get-artifact", params={"name": model, "version": version, "path": "x"}))
        answers.append(h.post("/api/2.0/mlflow/registered-models/alias",
                              json={"name": model, "alias": "champion", "version": version}))
        answers.append(h.patch("/api/2.0/mlflow/model-versions/update",
                               json={"name": model, "version": version, "description": "d"}))
    for r in answers:
        assert r.status_code == 400, f"{r.request.url}: {r.status_code} {r.text[:300]}"
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "version" in r.json()["message"], r.text


PATH_PARAMS = [    # every route naming a file inside an object by a query parameter: (path, object's own params, the file's)
    ("/get-artifact", lambda o, w: {"run_uuid": w.alpha_run}, "path"),
    ("/api/2.0/mlflow/artifacts/list", lambda o, w: {"run_id": w.alpha_run}, "path"),
    ("/model-versions/get-artifact", lambda o, w: {"name": o["model"], "version": "1"}, "path"),
    ("/ajax-api/2.0/mlflow/logged-models/{lm}/artifacts/files", lambda o, w: {}, "artifact_file_path"),
    ("/api/2.0/mlflow/logged-models/{lm}/artifacts/directories", lambda o, w: {}, "artifact_directory_path"),
    ("/ajax-api/2.0/mlflow/get-trace-artifact", lambda o, w: {"request_id": o["trace"]}, "path"),
    ("/api/2.0/mlflow-artifacts/artifacts", lambda o, w: {}, "path"),
]
ESCAPES = ["../../../{beta_exp}/{beta_run}/artifacts/notes/readme.txt", "notes/../../../../{beta_exp}",
           "..%2f..%2f{beta_exp}", "/etc/passwd", "notes\\..\\..\\x"]


@pytest.mark.parametrize(("path", "params", "field"), PATH_PARAMS, ids=[p[0] for p in PATH_PARAMS])
def test_a_file_path_cannot_leave_its_object(gate, world: World, objects: Objects, path: str, params, field: str) -> None:  # type: ignore[no-untyped-def]
    """`..`, encoded separators and absolute paths are refused (by the gate, or by MLflow where it validates them
    itself) and never reach another team's files. Backslashes: the gate refuses them where it serves the files;
    on the routes it forwards (a logged model's directories, a trace's data) MLflow reads one as a plain character
    of a name inside the object."""
    with gate.http(ALICE) as h:
        for escape in ESCAPES:
            value = escape.format(beta_exp=world.beta_exp, beta_run=world.beta_run)
            if field == "path" and "mlflow-artifacts" in path:
                value = f"{world.alpha_exp}/{value}"
            r = h.get(path.format(lm=objects.own["logged_model"]), params={**params(objects.own, world), field: value})
            if "\\" in value and r.status_code == 200:
                continue      # forwarded, and an ordinary character to MLflow on POSIX: a name inside the object
            assert r.status_code in (400, 403), f"{value}: {r.status_code} {r.text[:300]}"
            assert r.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"), r.text
            assert "beta" not in r.text.replace(value, ""), r.text
