"""Per-team artifact storage, end to end: a moto S3 server with IAM enforced, an `mlflow server` whose only
artifact store is the gate's internal endpoint, and `mlflow-gate serve` in front of it with a policy that gives
team alpha and team beta their own bucket (each reached with the team's own keys), team eta and team theta theirs
(each reached through a role the gate assumes with its own AWS identity; eta's URLs presigned, `storage.direct`),
team gamma a folder, and everything else the default folder store.

One moto server, one mlflow server and one gate for the session (a second gate with broken store settings is
started only by the tests that need it). All bound to 127.0.0.1. The client side (this process) holds no AWS
credentials; only the gate's environment has the teams' keys and its own.

The fixture that starts the pair is named `gate` (it overrides tests/conftest.py's parametrized one here), so the
suites use it as they use the others; a failed test shows what the gate, the mlflow server and moto logged meanwhile.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.artifacts.art_it import (
    ALICE,
    BOB,
    BUCKETS,
    CAROL,
    EXTERNAL_IDS,
    INTERNAL_PREFIX,
    ROLE_BUCKETS,
    ArtGate,
    BadGate,
    Logged,
    Version,
    log_everything,
    render_policy,
    s3_store,
    team_env,
    team_policy,
    uid,
)
from tests.support.client import import_mlflow_client_modules
from tests.support.gate import gate_process, internal_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.moto import ACCOUNT, WEB_ROLE, WEB_SESSION, Moto, start_moto
from tests.support.process import Process, free_port

# The client (this process) must not hold or find any AWS credentials: everything goes through the gate.
for _var in [v for v in os.environ if v.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
    os.environ.pop(_var, None)

HERE = Path(__file__).parent
WRONG_EXTERNAL_ID = "not-the-external-id"   # the second gate's eta: its role refuses to be assumed

# Servers started here, stopped as soon as the last test of this folder is done (see pytest_runtest_teardown):
# session fixtures would otherwise live on while the other integration suites start their own mlflow servers.
_RUNNING: list[Process] = []


# --------------------------------------------------------------------------------------------------------------
# moto


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto with a bucket for alpha, beta, eta and theta, each team's key allowed on its own bucket only, a role for
    eta and theta that the gate's own identity may assume (IAM enforced)."""
    moto = start_moto(tmp_path_factory.mktemp("moto"), {**BUCKETS, **ROLE_BUCKETS}, roles=EXTERNAL_IDS)
    _RUNNING.append(moto.process)
    try:
        yield moto
    finally:
        moto.stop()


# --------------------------------------------------------------------------------------------------------------
# mlflow server + gate


def art_gate_process(root: Path, upstream: str, policy: str, env: dict[str, str], default_root: Path,
                     port: int | None = None) -> Process:
    """`mlflow-gate serve` in ROOT with POLICY and the teams' keys, default artifact store DEFAULT_ROOT; started."""
    process = gate_process(root, write_policy(root, policy), upstream, port=port, env=env,
                           args=["--artifacts-destination", default_root.as_uri()]).start()
    _RUNNING.append(process)
    return process


@pytest.fixture(scope="session")
def gate(s3: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtGate]:
    import_mlflow_client_modules()
    root = tmp_path_factory.mktemp("artifacts")
    default_root, gamma_root = root / "default-artifacts", root / "gamma-root"
    token = internal_token()
    gate_port = free_port()
    # The mlflow server keeps no artifact itself: its artifacts destination is the gate's internal endpoint.
    mlflow = mlflow_process(root, f"sqlite:///{root}/mlflow.db", f"http://127.0.0.1:{gate_port}{INTERNAL_PREFIX}",
                            env={"MLFLOW_TRACKING_TOKEN": token}).start()
    _RUNNING.append(mlflow)
    process: Process | None = None
    try:
        mlflow.wait_ready(timeout=180)
        process = art_gate_process(root / "gate", mlflow.url, render_policy(s3, gamma_root), team_env(s3),
                                   default_root, gate_port)
        g = ArtGate(policy_path=root / "gate" / "policy.yaml", upstream=mlflow.url, backend="sqlite", process=process,
                    s3=s3, root=root, default_root=default_root, gamma_root=gamma_root, mlflow_log=mlflow.log_path,
                    internal_token=token)
        g.wait_ready()
        yield g
    finally:
        if process is not None:
            process.stop()
        mlflow.stop()


@pytest.fixture(scope="session")
def bad_gate(gate: ArtGate, s3: Moto) -> Iterator[BadGate]:
    root = gate.root / "bad-gate"
    dead = free_port()  # nothing listens there
    wrong_secret = "WrongSecret" + secrets.token_hex(12)
    delta_secret = "DeltaSecret" + secrets.token_hex(12)
    delta = team_policy("delta", ["dave@corp.test"], **s3_store("team-delta", f"http://127.0.0.1:{dead}", "DELTA"))
    env = team_env(s3, WRONGBETA_AWS_ACCESS_KEY_ID=s3.keys["beta"][0], WRONGBETA_AWS_SECRET_ACCESS_KEY=wrong_secret,
                   DELTA_AWS_ACCESS_KEY_ID="AKIADELTA0000000000", DELTA_AWS_SECRET_ACCESS_KEY=delta_secret)
    policy = render_policy(s3, gate.gamma_root, beta_env="WRONGBETA", extra_teams={"delta": delta},
                           eta_external_id=WRONG_EXTERNAL_ID)
    process = art_gate_process(root, gate.upstream, policy, env, gate.default_root)
    g = dataclasses.replace(gate, policy_path=root / "policy.yaml", process=process, root=root)
    try:
        g.wait_ready(statuses=(200, 503))  # 503: a store is down, and the gate is up
        yield BadGate(g, wrong_secret, delta_secret)
    finally:
        g.stop()


@pytest.fixture(scope="session")
def web_identity_gate(gate: ArtGate, s3: Moto) -> Iterator[ArtGate]:
    """A third gate on the same upstream whose own AWS identity is a web identity token file, as on EKS (IRSA): no
    AWS key in its environment, AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE for botocore's default chain."""
    root = gate.root / "web-identity-gate"
    root.mkdir()
    (token := root / "token").write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bWxmbG93In0.c2ln")
    env = {k: v for k, v in team_env(s3).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/{WEB_ROLE}", AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
               AWS_ROLE_SESSION_NAME=WEB_SESSION)
    process = art_gate_process(root, gate.upstream, render_policy(s3, gate.gamma_root), env, gate.default_root)
    g = dataclasses.replace(gate, policy_path=root / "policy.yaml", process=process, root=root)
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


# --------------------------------------------------------------------------------------------------------------
# what each team logged (once per session)


def _logged_by(user: str, team: str) -> Any:
    """The session fixture `TEAM_log`: what USER logged through the gate in a new experiment `TEAM/art-...`."""
    @pytest.fixture(scope="session", name=f"{team}_log")
    def fixture(gate: ArtGate) -> Logged:
        return log_everything(gate, user, team, f"{team}/art-{uid()}")

    return fixture


alpha_log = _logged_by(ALICE, "alpha")
beta_log = _logged_by(BOB, "beta")
gamma_log = _logged_by(CAROL, "gamma")
shared_log = _logged_by(ALICE, "shared")


@pytest.fixture(scope="session")
def alpha_version(gate: ArtGate, alpha_log: Logged) -> Version:
    """`alpha-x` version 1, registered by alice from her logged model."""
    import mlflow

    with gate.as_user(ALICE):
        mv = mlflow.register_model(alpha_log.model_uri, "alpha-x")
    assert str(mv.version) == "1", mv
    return Version("alpha-x", str(mv.version), alpha_log)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import json

    from tests.integration.artifacts.art_it import FIGURES

    if FIGURES:
        terminalreporter.section("artifacts: measured figures")
        for title, data in FIGURES:
            terminalreporter.write_line(f"{title}: {json.dumps(data, default=str)}")


def _in_this_folder(item: pytest.Item | None) -> bool:
    return item is not None and HERE in Path(str(item.path)).parents


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        if _in_this_folder(item) and not _in_this_folder(nextitem):
            while _RUNNING:  # gates first (last started), then mlflow, then moto; idempotent with the fixtures
                _RUNNING.pop().stop()
