"""Requests a hostile or careless client could send, straight at the gate with httpx (or a raw socket where httpx
would clean the request up first). Each test names the trick it tries; the gate must refuse it or neutralise it."""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.integration.gate_it import ALICE, BOB, ROOT, World, denied, uid

pytestmark = pytest.mark.integration

A = "/api/2.0/mlflow"
AJAX = "/ajax-api/2.0/mlflow"
SPOOFED_IDENTITY = {
    "X-Forwarded-User": ROOT, "X-Forwarded-Email": ROOT, "X-Forwarded-Preferred-Username": ROOT,
    "X-Forwarded-Groups": "mlflow-admins", "X-Auth-Request-User": ROOT, "X-Auth-Request-Email": ROOT,
    "Remote-User": ROOT, "X-Remote-User": ROOT, "X-Email": ROOT, "X-User": ROOT,
}


def error_code(r: httpx.Response | tuple[int, bytes]) -> str | None:
    text = r.text if isinstance(r, httpx.Response) else r[1].decode(errors="replace")
    try:
        return json.loads(text).get("error_code")
    except (ValueError, AttributeError):
        return None


def raw_request(base_url: str, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, bytes]:
    """Send the request target exactly as given (httpx would normalise dot segments and encodings)."""
    url = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def bearer(gate, user: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {gate.token(user)}"}


# ------------------------------------------------------------------------------------------------- request parsing


def test_duplicate_snake_and_camel_field_is_refused(gate, world: World):
    alice = gate.client(ALICE)
    body = {"run_id": world.alpha_run, "runId": world.alpha_run2, "key": "dup", "value": 1.0, "timestamp": 1,
            "step": 0}
    with gate.http(ALICE) as h:
        r = h.post(f"{A}/runs/log-metric", json=body)
        assert r.status_code == 400, r.text
        assert error_code(r) == "INVALID_PARAMETER_VALUE", r.text
        r = h.post(f"{A}/runs/log-metric", json=body | {"runId": world.beta_run})
        assert r.status_code in (400, 403), r.text
    for run_id in (world.alpha_run, world.alpha_run2):
        assert "dup" not in alice.get_run(run_id).data.metrics
    assert "dup" not in gate.client(BOB).get_run(world.beta_run).data.metrics


def test_camel_case_field_alone_is_authorized(gate, world: World):
    """`runId` is the same field as `run_id` to MLflow, so it must be authorized the same way."""
    with gate.http(ALICE) as h:
        r = h.post(f"{A}/runs/log-metric", json={"runId": world.beta_run, "key": "camel", "value": 1.0,
                                                  "timestamp": 1, "step": 0})
        assert r.status_code == 403, r.text
        r = h.post(f"{A}/runs/search", json={"experimentIds": [world.beta_exp], "maxResults": 10})
        assert r.status_code == 403 or world.beta_run not in r.text, r.text
    assert "camel" not in gate.client(BOB).get_run(world.beta_run).data.metrics


def test_get_with_empty_query_and_json_body(gate, world: World):
    """MLflow reads GET parameters from a JSON body when the query string is empty."""
    headers = {"Content-Type": "application/json"}
    with gate.http(ALICE) as h:
        r = h.request("GET", f"{A}/runs/get", content=json.dumps({"run_id": world.beta_run}), headers=headers)
        assert r.status_code == 403, r.text
        assert "beta-secret" not in r.text
        r = h.request("GET", f"{A}/experiments/get", content=json.dumps({"experiment_id": world.beta_exp}),
                      headers=headers)
        assert r.status_code == 403, r.text
        # the same form for one's own run works, so the body is really what was read
        r = h.request("GET", f"{A}/runs/get", content=json.dumps({"run_id": world.alpha_run}), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["run"]["info"]["run_id"] == world.alpha_run


def test_other_teams_run_id_in_body(gate, world: World):
    with gate.http(ALICE) as h:
        for path, body in [
            ("runs/log-metric", {"run_id": world.beta_run, "key": "intrude", "value": 1.0, "timestamp": 1}),
            ("runs/log-parameter", {"run_id": world.beta_run, "key": "intrude", "value": "1"}),
            ("runs/set-tag", {"run_id": world.beta_run, "key": "intrude", "value": "1"}),
            ("runs/log-batch", {"run_id": world.beta_run, "params": [{"key": "intrude", "value": "1"}]}),
            ("runs/update", {"run_id": world.beta_run, "run_name": "intrude"}),
            ("runs/delete", {"run_id": world.beta_run}),
        ]:
            r = h.post(f"{A}/{path}", json=body)
            assert r.status_code == 403, f"{path}: {r.status_code} {r.text}"
            assert error_code(r) == "PERMISSION_DENIED"
    run = gate.client(BOB).get_run(world.beta_run)
    assert "intrude" not in run.data.metrics and "intrude" not in run.data.params
    assert "intrude" not in run.data.tags and run.info.run_name != "intrude"
    assert run.info.lifecycle_stage == "active"


def test_unresolvable_ids_are_denied(gate, world: World):
    missing_run = "0123456789abcdef0123456789abcdef"
    with gate.http(ALICE) as h:
        checks = [
            h.get(f"{A}/runs/get", params={"run_id": missing_run}),
            h.post(f"{A}/runs/log-metric", json={"run_id": missing_run, "key": "k", "value": 1.0, "timestamp": 1}),
            h.get(f"{A}/metrics/get-history", params={"run_id": missing_run, "metric_key": "k"}),
            h.get(f"{A}/experiments/get", params={"experiment_id": "987654321"}),
            h.get(f"{A}/logged-models/m-0123456789abcdef0123456789abcdef"),
            h.get("/api/3.0/mlflow/traces/tr-0123456789abcdef0123456789abcdef"),
        ]
    for r in checks:
        assert r.status_code == 403, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        assert error_code(r) == "PERMISSION_DENIED", r.text


def test_ajax_api_twins_are_treated_like_api(gate, world: World):
    cases = [
        ("GET", "experiments/get", {"experiment_id": world.beta_exp}),
        ("GET", "experiments/get", {"experiment_id": world.alpha_exp}),
        ("GET", "runs/get", {"run_id": world.beta_run}),
        ("GET", "runs/get", {"run_id": world.alpha_run}),
        ("GET", "metrics/get-history", {"run_id": world.beta_run, "metric_key": "loss"}),
        ("GET", "artifacts/list", {"run_id": world.beta_run}),
        ("POST", "runs/log-metric", {"run_id": world.beta_run, "key": "twin", "value": 1.0, "timestamp": 1}),
        ("POST", "runs/search", {"experiment_ids": [world.beta_exp], "max_results": 10}),
        ("POST", "experiments/create", {"name": f"beta/twin-{uid()}"}),
    ]
    with gate.http(ALICE) as h:
        for method, path, params in cases:
            answers = []
            for prefix in (A, AJAX):
                if method == "GET":
                    r = h.get(f"{prefix}/{path}", params=params)
                else:
                    r = h.post(f"{prefix}/{path}", json=params)
                answers.append(r)
            api, ajax = answers
            where = f"{method} {path} {params}"
            assert api.status_code == ajax.status_code, f"{where}: api {api.status_code}, ajax {ajax.status_code}"
            assert error_code(api) == error_code(ajax), where
            if api.status_code == 200:
                assert api.json() == ajax.json(), where
            assert "beta-secret" not in api.text + ajax.text, where
        # the artifact service twins too
        target = f"{world.beta_exp}/{world.beta_run}/artifacts/notes/readme.txt"
        for prefix in ("/api/2.0/mlflow-artifacts/artifacts", "/ajax-api/2.0/mlflow-artifacts/artifacts"):
            r = h.get(f"{prefix}/{target}")
            assert r.status_code == 403, f"{prefix}: {r.status_code} {r.text}"
    assert "twin" not in gate.client(BOB).get_run(world.beta_run).data.metrics


@pytest.mark.parametrize("target", [
    "/api/2.0/mlflow/runs%2Fget?run_id={beta_run}",
    "/api/2.0/mlflow/runs%2fget?run_id={beta_run}",
    "/ajax-api/2.0/mlflow/runs%2Fget?run_id={beta_run}",
    "/api/2.0/mlflow/experiments/../runs/get?run_id={beta_run}",
    "/api/2.0/mlflow/experiments/%2e%2e/runs/get?run_id={beta_run}",
    "/api/2.0/mlflow/experiments/%2E%2E/runs/get?run_id={beta_run}",
    "/api/2.0/mlflow/./runs/get?run_id={beta_run}",
    "/api/2.0/mlflow//runs/get?run_id={beta_run}",
    "/api/2.0/mlflow/runs/get/?run_id={beta_run}",
    "/api/2.0/mlflow/runs/get;x?run_id={beta_run}",
    "/api/2.0/mlflow-artifacts/artifacts/{alpha_exp}/../{beta_exp}/{beta_run}/artifacts/notes/readme.txt",
    "/api/2.0/mlflow-artifacts/artifacts/{alpha_exp}/%2e%2e/{beta_exp}/{beta_run}/artifacts/notes/readme.txt",
    "/api/2.0/mlflow-artifacts/artifacts/{alpha_exp}%2F..%2F{beta_exp}/{beta_run}/artifacts/notes/readme.txt",
    "/api/2.0/mlflow-artifacts/artifacts/{alpha_exp}/{alpha_run}/artifacts/../../../{beta_exp}/{beta_run}/artifacts/x",
    "/api/2.0/mlflow-artifacts/artifacts?path={alpha_exp}/../{beta_exp}/{beta_run}/artifacts/notes",
    "/api/2.0/mlflow-artifacts/artifacts?path={alpha_exp}%2F..%2F{beta_exp}%2F{beta_run}%2Fartifacts",
])
def test_encoded_and_dot_segment_paths_are_not_forwarded_as_allowed(gate, world: World, target: str):
    target = target.format(**vars(world))
    status, body = raw_request(gate.url, "GET", target, bearer(gate, ALICE))
    assert status in (400, 403, 404), f"{target}: {status} {body[:300]!r}"
    assert b"beta-secret" not in body


def test_every_artifact_route_family_is_authorized(gate, world: World):
    bob = gate.client(BOB)
    # bob's objects of every kind that has its own artifact route
    model = f"beta-art-{uid()}"
    bob.create_registered_model(model)
    bob.create_model_version(model, f"{bob.get_run(world.beta_run).info.artifact_uri}/notes", run_id=world.beta_run)
    logged = bob.create_logged_model(world.beta_exp, name="beta-art").model_id
    with bob.acting():
        mlflow.set_experiment(experiment_id=world.beta_exp)
        with mlflow.start_span(name="beta-art-span") as span:
            span.set_inputs({"q": "beta-secret"})
        trace_id = mlflow.get_last_active_trace_id()
    assert trace_id

    beta = f"{world.beta_exp}/{world.beta_run}/artifacts"
    with gate.http(ALICE) as h:
        refused = [
            h.get("/get-artifact", params={"run_uuid": world.beta_run, "path": "notes/readme.txt"}),
            h.get("/get-artifact", params={"run_id": world.beta_run, "path": "notes/readme.txt"}),
            h.get(f"{A}/artifacts/list", params={"run_id": world.beta_run}),
            h.get(f"{AJAX}/artifacts/list", params={"run_uuid": world.beta_run}),
            h.post(f"{AJAX}/upload-artifact", params={"run_uuid": world.beta_run, "path": "evil.txt"},
                   content=b"evil", headers={"Content-Type": "application/octet-stream"}),
            h.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": beta}),
            h.get(f"/api/2.0/mlflow-artifacts/artifacts/{beta}/notes/readme.txt"),
            h.put(f"/api/2.0/mlflow-artifacts/artifacts/{beta}/notes/evil.txt", content=b"evil"),
            h.delete(f"/api/2.0/mlflow-artifacts/artifacts/{beta}/notes/readme.txt"),
            h.get("/model-versions/get-artifact", params={"name": model, "version": "1", "path": "readme.txt"}),
            h.get(f"{AJAX}/logged-models/{logged}/artifacts/files", params={"artifact_file_path": "MLmodel"}),
            h.get(f"{AJAX}/get-trace-artifact", params={"request_id": trace_id}),
            h.get("/ajax-api/3.0/mlflow/get-trace-artifact", params={"request_id": trace_id}),
        ]
        for r in refused:
            assert r.status_code == 403, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
            assert b"beta-secret" not in r.content
        # The artifact root would list every experiment's folder: refused, or filtered to what alice may read.
        for params in ({}, {"path": ""}, {"path": "/"}, {"path": "."}):
            r = h.get("/api/2.0/mlflow-artifacts/artifacts", params=params)
            if r.status_code == 200:
                assert world.beta_exp not in {f["path"].strip("/") for f in r.json().get("files", [])}, r.text
            else:
                assert r.status_code in (400, 403), f"{params}: {r.status_code} {r.text}"
        # the same routes for alice's own run work
        alpha = f"{world.alpha_exp}/{world.alpha_run}/artifacts"
        r = h.get("/get-artifact", params={"run_uuid": world.alpha_run, "path": "notes/readme.txt"})
        assert (r.status_code, r.text) == (200, "artifact of alpha-secret")
        r = h.get(f"/api/2.0/mlflow-artifacts/artifacts/{alpha}/notes/readme.txt")
        assert (r.status_code, r.text) == (200, "artifact of alpha-secret")
        r = h.get(f"{A}/artifacts/list", params={"run_id": world.alpha_run})
        assert r.status_code == 200 and "notes" in r.text, r.text
    assert {f.path for f in bob.list_artifacts(world.beta_run, "notes")} == {"notes/readme.txt"}


# ------------------------------------------------------------------------------------------------------ credentials


def test_no_credential_is_401(gate, world: World):
    with gate.http() as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 401, r.text
        assert error_code(r) == "UNAUTHENTICATED"
        r = h.post(f"{A}/experiments/search", json={"max_results": 10})
        assert r.status_code == 401, r.text


def test_spoofed_identity_headers_are_ignored(gate, world: World):
    with gate.http(headers=SPOOFED_IDENTITY) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.beta_exp})
        assert r.status_code == 401, r.text
        assert error_code(r) == "UNAUTHENTICATED"
    with gate.http(ALICE, headers=SPOOFED_IDENTITY) as h:
        r = h.get("/_gate/me", headers={"Accept": "application/json"})
        assert r.status_code == 200 and r.json()["id"] == ALICE, r.text
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.beta_exp})
        assert r.status_code == 403, r.text
        r = h.post(f"{A}/runs/create", json={"experiment_id": world.alpha_exp})
        assert r.status_code == 200, r.text
        assert {t["key"]: t["value"] for t in r.json()["run"]["data"]["tags"]}["mlflow.user"] == ALICE


def test_tampered_token_is_401(gate, world: World):
    token = gate.token(ALICE)
    i = len(token) // 2
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    with gate.http(headers={"Authorization": f"Bearer {tampered}"}) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 401, r.text
        assert error_code(r) == "UNAUTHENTICATED"
    with denied("UNAUTHENTICATED", 401):  # the mlflow client shows the gate's error
        gate.client(ALICE, token=tampered).get_experiment(world.alpha_exp)


def test_expired_token_is_401(gate, world: World):
    t0 = time.time()
    token = gate.mint(ALICE, expires_in="3s")
    with gate.http(headers={"Authorization": f"Bearer {token}"}) as h:
        if time.time() - t0 < 2:  # still well inside its lifetime: it works
            r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
            assert r.status_code == 200, r.text
        time.sleep(max(0.0, t0 + 4.5 - time.time()))
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 401, r.text
        assert error_code(r) == "UNAUTHENTICATED"


def test_revoked_token_is_401_after_hot_reload(gate, world: World):
    token = gate.mint(ALICE, name=f"to-revoke-{uid()}")
    r = gate.cli("token", "inspect", token)
    assert r.returncode == 0, r.stderr
    token_id = json.loads(r.stdout)["id"]
    url = f"{A}/experiments/get?experiment_id={world.alpha_exp}"
    with gate.http(headers={"Authorization": f"Bearer {token}"}) as h:
        assert h.get(url).status_code == 200
        original = gate.policy_path.read_text()
        try:
            write_atomically(gate.policy_path, original + f"revoked_tokens: [{json.dumps(token_id)}]\n")
            deadline = time.monotonic() + 10
            while (status := h.get(url).status_code) == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 401, f"revoked token still answered {status} after 10 s"
            with gate.http(ALICE) as other:  # the reload kept everything else working
                assert other.get(url).status_code == 200
        finally:
            write_atomically(gate.policy_path, original)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_garbage_session_cookie_is_401(gate, world: World):
    with gate.http(cookies={"mlflow_gate_session": "garbage"}) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 401, r.text
        assert error_code(r) == "UNAUTHENTICATED"


def test_basic_auth_with_token_as_password(gate, world: World):
    """`MLFLOW_TRACKING_USERNAME`/`PASSWORD` send Basic auth; the password is a personal token."""
    with gate.http(auth=httpx.BasicAuth("anything", gate.token(ALICE))) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 200, r.text
        assert h.get(f"{A}/experiments/get", params={"experiment_id": world.beta_exp}).status_code == 403
    with gate.http(auth=httpx.BasicAuth(ALICE, "not-a-token")) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": world.alpha_exp})
        assert r.status_code == 401, r.text


# ---------------------------------------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("field", ["artifact_location", "artifactLocation"])
def test_client_chosen_artifact_location_is_not_honoured(gate, world: World, field: str):
    name = f"alpha/location-{uid()}"
    wanted = f"mlflow-artifacts:/{world.beta_exp}"  # would put alice's artifacts in bob's experiment folder
    with gate.http(ALICE) as h:
        r = h.post(f"{A}/experiments/create", json={"name": name, field: wanted})
        assert r.status_code == 200, r.text
        eid = r.json()["experiment_id"]
    exp = gate.client(ALICE).get_experiment(eid)
    assert exp.artifact_location == f"mlflow-artifacts:/{eid}"
    # the same through the client, with a local path
    eid = gate.client(ALICE).create_experiment(f"alpha/location-{uid()}", artifact_location="file:///tmp/evil")
    assert gate.client(ALICE).get_experiment(eid).artifact_location == f"mlflow-artifacts:/{eid}"


def test_graphql_is_authorized_per_object(gate, world: World):
    run_query = "query q($id: String) { mlflowGetRun(input: {runId: $id}) " \
                "{ run { info { runId experimentId } data { params { key value } } experiment { name } } } }"
    with gate.http(ALICE) as h:
        r = h.post("/graphql", json={"query": run_query, "variables": {"id": world.alpha_run}})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["mlflowGetRun"]["run"]["info"]["runId"] == world.alpha_run

        for body in [
            {"query": run_query, "variables": {"id": world.beta_run}},
            {"query": f'query {{ mlflowGetRun(input: {{runId: "{world.beta_run}"}}) '
                      "{ run { data { params { key value } } } } }"},
            {"query": f'query {{ mlflowGetExperiment(input: {{experimentId: "{world.beta_exp}"}}) '
                      "{ experiment { name } } }"},
            {"query": f'query {{ mlflowSearchRuns(input: {{experimentIds: ["{world.beta_exp}"]}}) '
                      "{ runs { info { runId } data { params { key value } } } } }"},
            {"query": f'query {{ mlflowListArtifacts(input: {{runId: "{world.beta_run}"}}) '
                      "{ files { path } } }"},
        ]:
            r = h.post("/graphql", json=body)
            assert r.status_code in (200, 403), r.text
            # (a denial may repeat the id the caller sent, but nothing of the run or its experiment)
            assert "beta-secret" not in r.text and "beta/base" not in r.text, r.text
            if r.status_code == 200:
                data = r.json().get("data") or {}
                assert all(v is None or v == {"runs": []} or v == {"runs": None} for v in data.values()), r.text
        # GET with the query in the query string
        r = h.get("/graphql", params={"query": f'query {{ mlflowGetRun(input: {{runId: "{world.beta_run}"}}) '
                                               "{ run { data { params { key value } } } } }"})
        assert r.status_code in (200, 403, 405), r.text
        assert "beta-secret" not in r.text


# ------------------------------------------------------------------------------------- what the upstream receives


def forwarded(echo_gate, **kwargs) -> list[dict]:  # type: ignore[no-untyped-def]
    """Send one admin request through the echo gate; return what the upstream received for it."""
    echo_gate.records.clear()
    headers = {"Authorization": f"Bearer {echo_gate.gate.token(ROOT)}", **kwargs.pop("headers", {})}
    with httpx.Client(base_url=echo_gate.gate.url, timeout=30) as h:
        r = h.get(f"{A}/experiments/get", params={"experiment_id": "1"}, headers=headers, **kwargs)
    assert r.status_code == 200, r.text
    seen = [rec for rec in echo_gate.records if "experiments/get" in rec["path"]]
    assert seen, f"the request never reached the upstream: {echo_gate.records}"
    return seen


def header_values(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def test_spoofed_x_forwarded_for_is_not_passed_through(echo_gate):
    for rec in forwarded(echo_gate, headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
                                             "Forwarded": "for=6.6.6.6"}):
        xff = header_values(rec, "X-Forwarded-For")
        assert xff, f"the gate does not mark the request as forwarded: {rec['headers']}"
        assert xff != ["6.6.6.6"], f"the client's X-Forwarded-For went through as sent: {rec['headers']}"
        assert header_values(rec, "X-Real-IP") != ["6.6.6.6"]


def test_identity_headers_are_stripped_before_the_upstream(echo_gate):
    for rec in forwarded(echo_gate, headers=SPOOFED_IDENTITY):
        leaked = {k for k, v in rec["headers"] if k.lower() in {h.lower() for h in SPOOFED_IDENTITY}
                  and v in (ROOT, "mlflow-admins")}
        assert not leaked, f"identity headers reached the upstream: {leaked}"


def test_hop_by_hop_headers_are_stripped(echo_gate):
    headers = {"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "1", "Proxy-Authorization": "Basic eDp5",
               "TE": "trailers", "Upgrade": "h2c", "Keep-Alive": "timeout=5"}
    for rec in forwarded(echo_gate, headers=headers):
        names = {k.lower() for k, _ in rec["headers"]}
        leaked = names & {"x-hop-secret", "proxy-authorization", "te", "upgrade", "keep-alive"}
        assert not leaked, f"hop-by-hop headers reached the upstream: {sorted(leaked)}; all: {rec['headers']}"


def test_upstream_gets_a_host_it_accepts(echo_gate):
    for rec in forwarded(echo_gate, headers={"Host": "gate.corp.test"}):
        hosts = header_values(rec, "Host")
        assert len(hosts) == 1, rec["headers"]
        assert urllib.parse.urlsplit(f"http://{hosts[0]}").hostname in {"127.0.0.1", "localhost"}, hosts


def test_a_forwarded_answer_carries_each_of_date_and_server_once(gate, world: World):
    with gate.http("alice") as alice:
        r = alice.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": world.alpha_exp})
    assert r.status_code == 200, r.text
    for name in ("date", "server", "content-type"):
        assert len(r.headers.get_list(name)) <= 1, (name, r.headers.get_list(name))
