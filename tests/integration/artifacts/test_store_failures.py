"""A team store that refuses the gate's credentials (beta, wrong secret) or is down (delta, closed port): artifact
calls for that team answer 503 TEMPORARILY_UNAVAILABLE naming the team's store and never a secret; health shows
the store as not ok; other teams keep working. A second gate on the same upstream carries the broken policy."""
from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from mlflow.exceptions import MlflowException

from tests.integration.artifacts.art_it import ALICE, BOB, BUCKETS, ArtGate, BadGate, Logged, uid

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow-artifacts"
DAVE = "dave@corp.test"


def secrets_of(bad: BadGate) -> list[str]:
    s3 = bad.gate.s3
    return [bad.wrong_secret, bad.delta_secret, s3.keys["alpha"][1], s3.keys["beta"][1], s3.keys["admin"][1],
            bad.gate.env["MLFLOW_GATE_SECRET_KEY"]]


def assert_unavailable(bad: BadGate, r: httpx.Response, team: str) -> None:
    assert r.status_code == 503, (r.status_code, r.text[:500])
    body = r.json()
    assert body.get("error_code") == "TEMPORARILY_UNAVAILABLE", body
    message = body.get("message", "")
    assert team in message, f"the message does not name team {team}'s store: {message!r}"
    for secret in secrets_of(bad):
        assert secret not in r.text, "a secret is in the answer"


def wait_store_state(bad: BadGate, team: str, ok: bool, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = bad.gate.health().json()
        if body.get("stores", {}).get(team, {}).get("ok") is ok:
            return body
        time.sleep(0.5)
    raise AssertionError(f"store of {team} never showed ok={ok}: {body}")


def new_run(g: ArtGate, user: str, exp_name: str) -> tuple[str, str]:
    """As USER through G: a new experiment EXP_NAME and a run in it; their ids."""
    with g.as_user(user) as c:
        exp_id = c.create_experiment(exp_name)
        return exp_id, c.create_run(exp_id).info.run_id


def test_health_shows_broken_stores(bad_gate: BadGate) -> None:
    body = wait_store_state(bad_gate, "beta", False)
    stores = body["stores"]
    assert isinstance(stores["beta"].get("detail"), str) and stores["beta"]["detail"], stores
    assert wait_store_state(bad_gate, "delta", False)["stores"]["delta"]["ok"] is False
    assert stores["alpha"]["ok"] is True, stores
    text = json.dumps(body)
    for secret in secrets_of(bad_gate):
        assert secret not in text, "/_gate/health shows a secret"


def test_refused_credentials_give_503(bad_gate: BadGate, beta_log: Logged) -> None:
    g = bad_gate.gate
    exp_id, run_id = new_run(g, BOB, f"beta/broken-{uid()}")  # through the broken gate (the tracking store is fine)
    with g.http(BOB) as h:
        assert_unavailable(bad_gate, h.put(f"{API}/artifacts/{exp_id}/{run_id}/artifacts/x.txt", content=b"x"), "beta")
        # artifacts that exist (logged through the good gate) cannot be read either
        assert_unavailable(bad_gate, h.get(f"{API}/artifacts/{beta_log.run_prefix}/notes/hello.txt"), "beta")
        assert_unavailable(bad_gate, h.get(f"{API}/artifacts", params={"path": beta_log.run_prefix}), "beta")
        assert_unavailable(bad_gate, h.post(f"{API}/mpu/create/{exp_id}/{run_id}/artifacts",
                                            json={"path": "big.bin", "num_parts": 2}), "beta")
    assert not [k for k in g.s3.keys_in(BUCKETS["beta"], "") if k.startswith(f"mlflow/{exp_id}/")]


def test_mlflow_client_sees_temporarily_unavailable(bad_gate: BadGate) -> None:
    g = bad_gate.gate
    with g.as_user(BOB) as bob:
        exp_id = bob.create_experiment(f"beta/broken-client-{uid()}")
        run_id = bob.create_run(exp_id).info.run_id
        with pytest.raises(MlflowException) as exc:
            bob.log_text(run_id, "never stored", "x.txt")
    text = str(exc.value)
    assert "503" in text or "TEMPORARILY_UNAVAILABLE" in text, text
    for secret in secrets_of(bad_gate):
        assert secret not in text


def test_store_down_gives_503(bad_gate: BadGate) -> None:
    g = bad_gate.gate
    exp_id, run_id = new_run(g, DAVE, f"delta/down-{uid()}")
    with g.http(DAVE) as h:
        t0 = time.monotonic()
        assert_unavailable(bad_gate, h.put(f"{API}/artifacts/{exp_id}/{run_id}/artifacts/x.txt", content=b"x"),
                           "delta")
        assert_unavailable(bad_gate, h.get(f"{API}/artifacts", params={"path": f"{exp_id}/{run_id}/artifacts"}),
                           "delta")
        assert time.monotonic() - t0 < 60, "a store that is down should fail fast"


def test_other_teams_keep_working(bad_gate: BadGate, alpha_log: Logged) -> None:
    g = bad_gate.gate
    with g.as_user(ALICE) as alice:
        run_id = alice.create_run(alpha_log.exp_id).info.run_id
    with g.http(ALICE) as h:
        r = h.get(f"{API}/artifacts/{alpha_log.run_prefix}/notes/hello.txt")
        assert r.status_code == 200 and r.content == alpha_log.files["notes/hello.txt"], (r.status_code, r.text[:300])
        r = h.put(f"{API}/artifacts/{alpha_log.exp_id}/{run_id}/artifacts/second-gate.txt", content=b"second gate")
        assert r.status_code == 200, r.text
    key = f"mlflow/{alpha_log.exp_id}/{run_id}/artifacts/second-gate.txt"
    assert g.s3.get(BUCKETS["alpha"], key, who="alpha") == b"second gate"


def test_logs_hold_no_secrets(bad_gate: BadGate) -> None:
    """After all of the above (refused keys, a store that is down): no secret in the gates' or mlflow's logs."""
    g = bad_gate.gate
    logs = [g.log_path, g.root.parent / "gate" / "gate.log", g.mlflow_log]
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets_of(bad_gate):
            assert secret not in text, f"a secret is in {path}"
