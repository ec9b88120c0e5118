"""Denies through a running gate, with the real mlflow client: a contractor of the team reads the secret
project but cannot log to it, and does not even see what a keep-none deny hides; a maintainer is not capped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.policies import team

BIN = Path(sys.executable).parent
GATE = [str(BIN / "mlflow-gate")] if (BIN / "mlflow-gate").exists() else [sys.executable, "-m", "proxy"]
KEY = "denies-e2e-secret-key-0123456789abcdef"
TAG = uuid.uuid4().hex[:6]
TEAM = f"v{TAG}"

POLICY = """
admins: [root@corp.test]
teams:
""" + team(TEAM, f"group:{TEAM}", "group:contractors", maintainers=["carol@corp.test"], experiments=[f"{TEAM}/"],
           models=[f"{TEAM}-"]) + textwrap.dedent(f"""
    denies:
      - to: [group:contractors]
        experiments: ["{TEAM}/secret/"]
        models: ["{TEAM}-secret-"]
        keep: read
      - to: [group:contractors]
        experiments: ["{TEAM}/secret/keys/"]
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, "MLFLOW_GATE_SECRET_KEY": KEY}


def token(user: str, *groups: str) -> str:
    args = [*GATE, "token", "create", "--user", user] + [a for g in groups for a in ("--group", g)]
    r = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=60, check=True)
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def deny_gate(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("deny-gate")
    (root / "policy.yaml").write_text(POLICY)
    port = _free_port()
    log = (root / "gate.log").open("wb")
    proc = subprocess.Popen([*GATE, "serve", "--policy", str(root / "policy.yaml"), "--host", "127.0.0.1",
                             "--port", str(port), "--upstream", mlflow_server.url], stdout=log, stderr=log,
                            env=_env(), cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/_gate/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (root / "gate.log").read_text()
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def client(monkeypatch: pytest.MonkeyPatch, url: str, tok: str) -> Any:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", tok)
    return MlflowClient(tracking_uri=url, registry_uri=url)   # not the process-wide registry URI other tests set


def test_a_denied_contractor_reads_but_cannot_log(deny_gate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    carol = client(monkeypatch, deny_gate, token("carol@corp.test"))
    secret = carol.create_experiment(f"{TEAM}/secret/plan")
    open_exp = carol.create_experiment(f"{TEAM}/open")
    keys = carol.create_experiment(f"{TEAM}/secret/keys/aws")
    run = carol.create_run(secret)
    carol.log_metric(run.info.run_id, "loss", 0.5)          # a maintainer is not capped
    carol.create_registered_model(f"{TEAM}-secret-clf")

    fiona = client(monkeypatch, deny_gate, token("fiona@corp.test", "contractors"))
    assert fiona.get_experiment(secret).name == f"{TEAM}/secret/plan"
    assert [m.value for m in fiona.get_metric_history(run.info.run_id, "loss")] == [0.5]
    with pytest.raises(MlflowException) as refused:
        fiona.log_metric(run.info.run_id, "loss", 0.1)
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert "edit" in str(refused.value) and "read" in str(refused.value)
    with pytest.raises(MlflowException):
        fiona.create_run(secret)
    with pytest.raises(MlflowException):
        fiona.set_registered_model_tag(f"{TEAM}-secret-clf", "stage", "x")
    assert fiona.get_registered_model(f"{TEAM}-secret-clf").name == f"{TEAM}-secret-clf"
    # outside the denied prefix the contractor is a member like any other
    other = fiona.create_run(open_exp)
    fiona.log_metric(other.info.run_id, "loss", 0.2)
    # a keep-none deny: refused, and left out of searches like a missing experiment
    with pytest.raises(MlflowException):
        fiona.get_experiment(keys)
    seen = {e.name for e in fiona.search_experiments(filter_string=f"name LIKE '{TEAM}/%'")}
    assert seen == {f"{TEAM}/secret/plan", f"{TEAM}/open"}
    vision = client(monkeypatch, deny_gate, token("vic@corp.test", TEAM))
    assert {e.name for e in vision.search_experiments(filter_string=f"name LIKE '{TEAM}/%'")} == {
        f"{TEAM}/secret/plan", f"{TEAM}/open", f"{TEAM}/secret/keys/aws"}
    vision.log_metric(run.info.run_id, "loss", 0.3)           # a member not in the denied group logs
