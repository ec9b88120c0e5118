"""Two mlflow-gate replicas in front of one mlflow server on PostgreSQL (the production "shared server" setup):
credentials and policy changes work across replicas, a replica can die and clients that retry on the other lose
nothing, and 50 clients logging through both replicas lose nothing while the mlflow server restarts.

Also: the MLflow UI's artifact views through gate 2 while gate 1 (the mlflow server's artifacts destination) is down.

Setup in conftest.py / prod_it.py. Figures (load, kill, policy propagation) are printed in pytest's terminal summary.
GATE_LOAD_SECONDS shortens the load test locally (default 60, as in CI); the module takes about 1 min 45 s then.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.production.prod_it import (
    ALICE,
    ALPHA_BUCKET,
    BOB,
    FIGURES,
    CallFailed,
    RetryingClient,
    SharedSetup,
    api,
    bearer,
    create_experiment,
    create_run,
    merged_stats,
    metric_history,
)
from tests.support.client import UserClient
from tests.support.gate import mint_token

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SESSION_COOKIE = "mlflow_gate_session"


def uid() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------------------------------------------
# 1. one identity, two replicas


@pytest.fixture(scope="module")
def alice_session(shared: SharedSetup) -> dict[str, Any]:
    """alice signed in through the OP on gate 1 (a browser-style session), and a personal token she minted on gate 1's
    /_gate/tokens with that session."""
    op = shared.op
    if op is None:
        pytest.skip("the OIDC provider could not start (node / tests/oidc/node_modules missing: "
                    "`npm --prefix tests/oidc ci`)")
    g1 = shared.gates[0]
    with httpx.Client(timeout=20, headers={"Accept": "text/html,application/xhtml+xml"}) as b:
        page = op.browser_login(b, f"{g1.url}/_gate/login?next=/_gate/me", ALICE)
        assert page.status_code == 200, page.text[:500]
        assert page.url.port == int(g1.url.rsplit(":", 1)[1]) and page.url.path == "/_gate/me", page.url
        cookie = next(c.value for c in b.cookies.jar if c.name == SESSION_COOKIE)
        r = b.post(f"{g1.url}/_gate/tokens", json={"name": "replicas", "expires_in": "1d"},
                   headers={"Accept": "application/json", "Origin": g1.url})
        assert r.status_code == 200, r.text
        minted = r.json()
    assert minted["user"] == ALICE, minted
    return {"cookie": cookie, "token": minted["token"], "token_id": minted["id"]}


def test_a_session_from_gate_1_is_valid_on_gate_2(shared: SharedSetup, alice_session: dict[str, Any]) -> None:
    g1, g2 = shared.gates
    cookies = {SESSION_COOKIE: alice_session["cookie"]}
    for g in (g1, g2):
        me = httpx.get(f"{g.url}/_gate/me", cookies=cookies, headers={"Accept": "application/json"}, timeout=20)
        assert me.status_code == 200, (g.name, me.text)
        info = me.json()
        assert info["id"] == ALICE and info["via"] == "session" and "alpha" in info["groups"], info
        # And MLflow's API with the same cookie (a read: no Origin needed).
        r = httpx.get(f"{g.url}/api/2.0/mlflow/experiments/search", params={"max_results": 5}, cookies=cookies,
                      headers={"Accept": "application/json"}, timeout=20)
        assert r.status_code == 200, (g.name, r.text)
    # A tampered cookie is refused by both (they check the shared key, not "some cookie").
    value = alice_session["cookie"]
    bad = {SESSION_COOKIE: value[:-4] + ("BBBB" if value.endswith("AAAA") else "AAAA")}
    for g in (g1, g2):
        r = httpx.get(f"{g.url}/_gate/me", cookies=bad, headers={"Accept": "application/json"}, timeout=20)
        assert r.status_code == 401, (g.name, r.status_code, r.text)


def test_a_provider_jwt_is_valid_on_both_gates(shared: SharedSetup, oidc_op: Any) -> None:
    jwt = oidc_op.mint_jwt_access_token(ALICE)
    for g in shared.gates:
        me = httpx.get(f"{g.url}/_gate/me", headers=bearer(jwt), timeout=20)
        assert me.status_code == 200, (g.name, me.text)
        assert me.json()["id"] == ALICE, me.json()


def test_a_token_minted_on_gate_1_logs_through_gate_2_into_the_team_bucket(
        shared: SharedSetup, alice_session: dict[str, Any]) -> None:
    import mlflow

    g1, g2 = shared.gates
    token = alice_session["token"]
    me = httpx.get(f"{g2.url}/_gate/me", headers=bearer(token), timeout=20).json()
    assert me["id"] == ALICE and me["via"] == "token" and me.get("token_id") == alice_session["token_id"], me

    name = f"alpha/replicas-{uid()}"
    text = f"written through gate 2, {uid()}\n"
    with UserClient(g2.url, ALICE, token).acting():
        exp_id = mlflow.create_experiment(name)
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params({"lr": "0.01", "layers": "3"})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_text(text, "notes/hello.txt")
    run_id = run.info.run_id

    # The bytes are in team alpha's bucket (read with boto3 behind the gates' back).
    key = f"mlflow/{exp_id}/{run_id}/artifacts/notes/hello.txt"
    keys = shared.moto.keys_in(ALPHA_BUCKET, f"mlflow/{exp_id}/")
    assert key in keys, keys
    assert shared.moto.get(ALPHA_BUCKET, key) == text.encode()

    # Everything reads back through the other replica, with the same token.
    with UserClient(g1.url, ALICE, token).acting() as c:
        got = c.get_run(run_id)
        assert got.data.params == {"lr": "0.01", "layers": "3"}
        assert [m.value for m in c.get_metric_history(run_id, "loss")] == [1.0 / (s + 1) for s in range(5)]
        assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt") == text


# --------------------------------------------------------------------------------------------------------------
# 2. one policy folder, two replicas


def test_a_policy_change_in_the_shared_folder_reaches_both_gates(shared: SharedSetup) -> None:
    alice_token = mint_token(ALICE, name="to-revoke")
    bob_token = mint_token(BOB)
    g1, g2 = shared.gates
    token_id = httpx.get(f"{g1.url}/_gate/me", headers=bearer(alice_token), timeout=20).json()["token_id"]
    name = f"alpha/policy-{uid()}"
    create_experiment(g1.url, alice_token, name)

    def status(g_url: str, token: str) -> int:
        return api(g_url, token, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                   params={"experiment_name": name}).status_code

    for g in shared.gates:
        assert status(g.url, alice_token) == 200, g.name
        assert status(g.url, bob_token) == 403, g.name

    def wait_for(what: str, check: Any, timeout: float = 10.0) -> dict[str, float]:
        start = time.monotonic()
        took: dict[str, float] = {}
        while len(took) < len(shared.gates):
            for g in shared.gates:
                if g.name not in took and check(g.url):
                    took[g.name] = round(time.monotonic() - start, 2)
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: after {timeout} s only {took} saw the change")
            time.sleep(0.05)
        return took

    try:
        shared.set_access(grants=[{"to": [BOB], "experiments": ["alpha/"], "permission": "read"}], revoked=[token_id])
        granted = wait_for("bob's read grant on alpha/", lambda u: status(u, bob_token) == 200)
        revoked = wait_for("alice's revoked token", lambda u: status(u, alice_token) == 401)
        r = api(g2.url, alice_token, "GET", "/_gate/me")
        assert r.status_code == 401 and token_id in r.text, r.text
        # Read only: bob still cannot write there.
        r = api(g2.url, bob_token, "POST", "/api/2.0/mlflow/experiments/create", {"name": f"alpha/bob-{uid()}"})
        assert r.status_code == 403, r.text
    finally:
        shared.set_access(revoked=[token_id])
    withdrawn = wait_for("the withdrawn grant", lambda u: status(u, bob_token) == 403)
    FIGURES.append(("policy change reached (seconds after the write)",
                    {"grant": granted, "revocation": revoked, "grant withdrawn": withdrawn}))
    for took in (granted, revoked, withdrawn):
        assert max(took.values()) <= 5.0, took


# --------------------------------------------------------------------------------------------------------------
# 3. a replica dies mid-stream


def alternating(offset: int) -> Callable[[int], int]:
    """Call n goes to gate (n + offset) % 2."""
    return lambda n: (n + offset) % 2


def other_gate(i: int) -> int:
    return 1 - i


def slow_put(url: str, path: str, data: bytes, token: str, *, fast_bytes: int, delay: float) -> tuple[int, bytes]:
    """PUT `data` with a Content-Length: the first `fast_bytes` at once, then 256 KiB every `delay` seconds."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
    step = 256 * 1024

    def body() -> Iterator[bytes]:
        for off in range(0, len(data), step):
            if off >= fast_bytes:
                time.sleep(delay)
            yield data[off:off + step]

    try:
        conn.request("PUT", path, body=body(), headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": "application/octet-stream",
                                                        "Content-Length": str(len(data))})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_killing_gate_1_mid_stream_loses_no_request_retried_on_gate_2(up: SharedSetup) -> None:
    """Six clients alternate gates request by request (log-metric), and one uploads a 16 MiB artifact slowly through
    gate 1; gate 1's process group gets SIGKILL in the middle of it all. Every request that failed on a connection
    error is sent again to gate 2: afterwards every value is there, and the artifact is whole in team alpha's bucket."""
    g1, g2 = up.gates
    token = mint_token(ALICE)
    exp_id = create_experiment(g2.url, token, f"alpha/kill-{uid()}")
    run_id = create_run(g2.url, token, exp_id)
    n_threads, upload_after, kill_after, run_on = 6, 0.5, 2.0, 2.5
    stop = threading.Event()
    logged: list[set[tuple[int, float]]] = [set() for _ in range(n_threads)]
    clients = [RetryingClient([g1.url, g2.url], token, pick=alternating(t), on_error=other_gate, give_up_after=30)
               for t in range(n_threads)]
    errors: list[str] = []
    blob = hashlib.sha256(b"seed").digest() * (16 * 1024 * 1024 // 32)
    art_path = f"/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts/big/blob.bin"
    upload: dict[str, Any] = {}

    def stream(t: int) -> None:
        c, step = clients[t], 0
        try:
            while not stop.is_set():
                value = step + 0.5
                c.call("POST", "/api/2.0/mlflow/runs/log-metric",
                       {"run_id": run_id, "key": f"kill{t}", "value": value, "step": step,
                        "timestamp": int(time.time() * 1000)})
                logged[t].add((step, value))
                step += 1
        except CallFailed as exc:
            errors.append(str(exc))
        finally:
            c.close()

    def uploader() -> None:
        time.sleep(upload_after)
        try:
            upload["gate 1"] = slow_put(g1.url, art_path, blob, token, fast_bytes=10 * 1024 * 1024, delay=0.1)
        except (OSError, http.client.HTTPException) as exc:
            upload["gate 1"] = repr(exc)
            upload["gate 2"] = slow_put(g2.url, art_path, blob, token, fast_bytes=len(blob), delay=0)

    threads = [threading.Thread(target=stream, args=(t,), daemon=True) for t in range(n_threads)]
    threads.append(threading.Thread(target=uploader, daemon=True))
    try:
        for th in threads:
            th.start()
        time.sleep(kill_after)
        before = sum(c.stats.calls for c in clients)
        killed_at = time.monotonic()
        up.gates[0].kill()
        time.sleep(run_on)
        stop.set()
        for th in threads:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in threads), "a client thread hung"
        assert not g1.alive, "gate 1 is still running after SIGKILL"
    finally:
        stop.set()
        up.ensure_up()  # gate 1 back (same port, same arguments) for the next tests
    stats = merged_stats([c.stats for c in clients])
    after = stats["calls"] - before
    key = f"mlflow/{exp_id}/{run_id}/artifacts/big/blob.bin"
    orphans = up.moto.client().list_multipart_uploads(Bucket=ALPHA_BUCKET, Prefix=key).get("Uploads", [])
    FIGURES.append(("gate 1 killed mid-stream", {
        "calls": stats["calls"], "calls after the kill": after, "requests": stats["requests"],
        "connection errors (retried on gate 2)": stats["connection_errors"], "retries": stats["retries"],
        "retried statuses": stats["retried_statuses"],
        "first failure after the kill (s)": round(stats["first_failure"] - killed_at, 3) if "first_failure" in stats
        else None,
        "16 MiB upload": {k: v if isinstance(v, str) else v[0] for k, v in upload.items()},
        "unfinished multipart uploads left by the killed gate": len(orphans)}))
    assert not errors, errors
    assert stats["unretried_failures"] == [], stats["unretried_failures"]
    assert stats["connection_errors"] > 0, "the kill did not hit the stream (no client saw gate 1 go away)"
    assert after > 20, f"only {after} calls went through after the kill"
    for t in range(n_threads):
        have = metric_history(g2.url, token, run_id, f"kill{t}")
        missing = logged[t] - have
        assert not missing, f"client {t}: {len(missing)} of {len(logged[t])} logged values are missing: " \
                            f"{sorted(missing)[:10]}"
    # The upload was cut by the kill (not finished before it) and went through on gate 2; the object is whole.
    assert isinstance(upload.get("gate 1"), str), f"the upload was not interrupted by the kill: {upload}"
    assert upload.get("gate 2", (0,))[0] == 200, upload
    stored = up.moto.get(ALPHA_BUCKET, key)
    assert len(stored) == len(blob) and stored == blob, f"{len(stored)} bytes stored, {len(blob)} sent"
    r = httpx.get(g2.url + art_path, headers=bearer(token), timeout=60)
    assert r.status_code == 200 and r.content == blob, (r.status_code, len(r.content))


def test_ui_artifact_views_on_gate_2_do_not_depend_on_gate_1(up: SharedSetup, tmp_path: Path) -> None:
    """The MLflow UI's artifact views (run files, their listing, logged-model files, model-version files) through gate 2
    while gate 1 is down. The gate forwards these routes to the mlflow server, which reads through its artifacts
    destination, gate 1's internal endpoint; gate 2 has the stores and the policy to answer them itself.
    (The mlflow client's own reads use the mlflow-artifacts API, which gate 2 serves alone: the control below.)"""
    g2 = up.gates[1]
    token = mint_token(ALICE)
    text = f"shown in the UI {uid()}\n"
    weights = f"weights {uid()}\n"
    c = UserClient(g2.url, ALICE, token)
    exp_id = c.create_experiment(f"alpha/ui-{uid()}")
    run_id = c.create_run(exp_id).info.run_id
    (tmp_path / "hello.txt").write_text(text)
    c.log_artifact(run_id, str(tmp_path / "hello.txt"), "notes")
    model = c.create_logged_model(exp_id, name="m", source_run_id=run_id)
    (tmp_path / "weights.txt").write_text(weights)
    c.log_model_artifact(model.model_id, str(tmp_path / "weights.txt"))
    name = f"alpha-ui-{uid()}"
    c.create_registered_model(name)
    c.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id)
    views = {
        "run file": ("/get-artifact", {"path": "notes/hello.txt", "run_uuid": run_id}, text),
        "run listing": ("/ajax-api/2.0/mlflow/artifacts/list", {"run_id": run_id}, '"notes"'),
        "logged-model file": (f"/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files",
                              {"artifact_file_path": "weights.txt"}, weights),
        "model-version file": ("/model-versions/get-artifact", {"path": "weights.txt", "name": name, "version": "1"},
                               weights),
    }

    def look(url: str) -> dict[str, tuple[int, str]]:
        out = {}
        for what, (path, params, _) in views.items():
            r = httpx.get(url + path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            out[what] = (r.status_code, r.text)
        return out

    with_gate_1 = look(g2.url)
    for what, (_, _, expected) in views.items():
        assert with_gate_1[what][0] == 200 and expected in with_gate_1[what][1], (what, with_gate_1[what])
    up.gates[0].kill()
    try:
        without_gate_1 = look(g2.url)
        control = httpx.get(f"{g2.url}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts/notes/hello.txt",
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)
    finally:
        up.ensure_up()
    assert control.status_code == 200 and control.text == text, (control.status_code, control.text[:300])
    problems = {what: f"{status}: {body[:220]}" for what, (status, body) in without_gate_1.items()
                if status != 200 or views[what][2] not in body}
    leaks = [what for what, (_, body) in without_gate_1.items() if "/_gate/internal" in body]
    assert not problems, (f"with gate 1 down, gate 2 fails the UI's artifact views (internal endpoint named to the "
                          f"client in {leaks}): {json.dumps(problems, indent=1)}")


# --------------------------------------------------------------------------------------------------------------
# 4. load through both replicas while the mlflow server restarts


def test_fifty_clients_through_both_gates_lose_nothing_while_mlflow_restarts(up: SharedSetup) -> None:
    import psycopg2

    seconds = float(os.environ.get("GATE_LOAD_SECONDS", "60"))
    restart_at = min(20.0, seconds / 3)
    n_clients = 50
    token = mint_token(ALICE, name="load")
    urls = [g.url for g in up.gates]
    exp_id = create_experiment(urls[0], token, f"alpha/load-{uid()}")
    run_ids = [create_run(urls[i % 2], token, exp_id) for i in range(n_clients)]
    logged: list[list[tuple[int, float]]] = [[] for _ in range(n_clients)]
    clients = [RetryingClient([urls[i % 2]], token, give_up_after=150) for i in range(n_clients)]
    errors: list[str] = []
    restart: dict[str, Any] = {}
    start = time.monotonic()
    deadline = start + seconds

    def work(i: int) -> None:
        c, step = clients[i], 0
        try:
            while time.monotonic() < deadline:
                value = step * 2 + 0.25
                c.call("POST", "/api/2.0/mlflow/runs/log-metric",
                       {"run_id": run_ids[i], "key": f"load{i:02d}", "value": value, "step": step,
                        "timestamp": int(time.time() * 1000)})
                logged[i].append((step, value))
                step += 1
        except CallFailed as exc:
            errors.append(f"client {i}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a client must never die silently
            errors.append(f"client {i}: {exc!r}")
        finally:
            c.close()

    def restarter() -> None:
        time.sleep(max(0.0, start + restart_at - time.monotonic()))
        restart["sigterm_at"] = round(time.monotonic() - start, 2)
        try:
            stopped, ready = up.restart_mlflow()
            restart.update(stop_seconds=round(stopped, 2), start_seconds=round(ready, 2),
                           healthy_again_at=round(time.monotonic() - start, 2))
        except Exception as exc:  # noqa: BLE001
            restart["error"] = repr(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_clients)]
    rt = threading.Thread(target=restarter, daemon=True)
    for th in threads:
        th.start()
    rt.start()
    rt.join(timeout=seconds + 240)
    for th in threads:
        th.join(timeout=max(5.0, deadline - time.monotonic()) + 200)
    wall = time.monotonic() - start
    assert not rt.is_alive(), "the mlflow restart hung"
    assert not any(th.is_alive() for th in threads), "a client thread hung"

    stats = merged_stats([c.stats for c in clients])
    fig = {k: v for k, v in stats.items() if k not in ("unretried_failures", "first_failure", "last_failure")}
    fig.update(clients=n_clients, seconds=round(wall, 1), calls_per_second=round(stats["calls"] / wall, 1),
               restart=restart, unretried=len(stats["unretried_failures"]) + len(errors))
    if "first_failure" in stats:
        fig["outage_seen_from"] = round(stats["first_failure"] - start, 2)
        fig["outage_seen_until"] = round(stats["last_failure"] - start, 2)
    FIGURES.append((f"load: {n_clients} clients x {seconds:.0f} s, mlflow restarted at {restart_at:.0f} s", fig))

    assert "error" not in restart, restart
    assert not errors, errors[:10]
    assert stats["unretried_failures"] == [], stats["unretried_failures"][:10]
    assert stats["retries"] > 0, "no client saw the mlflow restart: the test proved nothing"

    assert up.pg is not None
    with psycopg2.connect(host="127.0.0.1", port=up.pg.port, user="postgres", dbname="mlflow") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT run_uuid, key, step, value FROM metrics WHERE run_uuid = ANY(%s)", (run_ids,))
        rows = cur.fetchall()
    conn.close()
    stored: dict[tuple[str, str], set[tuple[int, float]]] = {}
    for run_uuid, key, step, value in rows:
        stored.setdefault((run_uuid, key), set()).add((int(step), float(value)))
    missing = {}
    for i in range(n_clients):
        have = stored.get((run_ids[i], f"load{i:02d}"), set())
        lost = [p for p in logged[i] if p not in have]
        if lost:
            missing[i] = (len(lost), lost[:5])
    total_logged = sum(len(x) for x in logged)
    FIGURES[-1][1].update(rows_in_postgres=len(rows), values_logged=total_logged,
                          duplicates=len(rows) - len({(r[0], r[1], r[2], r[3]) for r in rows}))
    assert not missing, f"logged values missing from PostgreSQL (client: (count, first)): {missing}"
    assert len({(r[0], r[1], r[2], r[3]) for r in rows}) == total_logged, "PostgreSQL holds values nobody logged"

