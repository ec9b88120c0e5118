"""Per-team artifact storage, end to end: a moto S3 server with IAM enforced, an `mlflow server` whose only
artifact store is the gate's internal endpoint, and `mlflow-gate serve` in front of it with a policy that gives
team alpha and team beta their own bucket (each reached with the team's own keys), team gamma a folder, and
everything else the default folder store.

One moto server, one mlflow server and one gate for the session (a second gate with broken store settings is
started only by the tests that need it). All bound to 127.0.0.1. The client side (this process) holds no AWS
credentials; only the gate's environment has the teams' keys.

The fixture that starts the pair is named `gate` (it overrides tests/conftest.py's parametrized one here), so the
shared report hook appends the gate's log to every failing test.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest
from art_it import (
    ALICE,
    BOB,
    BUCKETS,
    CAROL,
    INTERNAL_PREFIX,
    S3,
    ArtGate,
    BadGate,
    Logged,
    Version,
    log_everything,
    uid,
)

from tests.conftest import (
    BIN,
    SECRET_KEY,
    child_env,
    free_port,
    gate_base_cmd,
    import_mlflow_client_modules,
    internal_token,
    log_tail,
    start_process,
    stop_process,
    wait_http,
)
from tests.support.moto import create_buckets_and_users, moto_cmd, setup_requests

# The client (this process) must not hold or find any AWS credentials: everything goes through the gate.
for _var in [v for v in os.environ if v.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
    os.environ.pop(_var, None)

# Requests moto answers without checking credentials before IAM is enforced: 2 create_bucket + 3 users x
# (create_user, create_access_key, put_user_policy). The fixture checks afterwards that enforcement is on.
HERE = Path(__file__).parent

# Servers started here, stopped as soon as the last test of this folder is done (see pytest_runtest_teardown):
# session fixtures would otherwise live on while the other integration suites start their own mlflow servers.
_RUNNING: list[subprocess.Popen[bytes]] = []

MOTO_SETUP_REQUESTS = setup_requests(len(BUCKETS))

POLICY = """\
admins: [root@corp.test]
default: none
teams:
  alpha:
    members: [alice@corp.test]
    maintainers: [mo@corp.test]
    experiments: ["alpha/"]
    models: ["alpha-"]
    artifact_root: s3://team-alpha/mlflow
    storage: {{endpoint_url: "{s3}", region: us-east-1, credentials_env: {alpha_env}}}
  beta:
    members: [bob@corp.test]
    experiments: ["beta/"]
    models: ["beta-"]
    artifact_root: s3://team-beta/mlflow
    storage: {{endpoint_url: "{s3}", region: us-east-1, credentials_env: {beta_env}}}
  gamma:
    members: [carol@corp.test]
    experiments: ["gamma/"]
    models: ["gamma-"]
    artifact_root: "{gamma_root}"
{extra_teams}grants:
  - to: [everyone]
    experiments: ["shared/"]
    models: ["shared-"]
    permission: edit
"""


# --------------------------------------------------------------------------------------------------------------
# moto


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    from botocore.exceptions import ClientError

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "moto.log"
    proc = start_process(moto_cmd(BIN, port), log_path,
                         child_env(INITIAL_NO_AUTH_ACTION_COUNT=str(MOTO_SETUP_REQUESTS)), cwd=root)
    _RUNNING.append(proc)
    try:
        wait_http(url + "/moto-api/", proc, log_path, "moto_server", timeout=30)
        setup_s3, keys = create_buckets_and_users(url, BUCKETS)  # alpha, beta, then admin
        s3 = S3(url, keys, log_path)
        # IAM must be enforced from here on: the setup key is unknown to IAM, alpha's key is refused on beta's bucket.
        for who, bucket, code in [("setup", BUCKETS["alpha"], "InvalidAccessKeyId"),
                                  ("alpha", BUCKETS["beta"], "AccessDenied"),
                                  ("beta", BUCKETS["alpha"], "AccessDenied")]:
            c = setup_s3 if who == "setup" else s3.client(who)
            try:
                c.list_objects_v2(Bucket=bucket)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == code, exc.response
            else:
                raise AssertionError(f"moto does not enforce IAM: {who} listed {bucket}")
        yield s3
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------------------------------------------
# mlflow server + gate


def gate_env(s3: S3, **extra: str) -> dict[str, str]:
    return child_env(MLFLOW_GATE_SECRET_KEY=SECRET_KEY,
                     ALPHA_AWS_ACCESS_KEY_ID=s3.keys["alpha"][0], ALPHA_AWS_SECRET_ACCESS_KEY=s3.keys["alpha"][1],
                     BETA_AWS_ACCESS_KEY_ID=s3.keys["beta"][0], BETA_AWS_SECRET_ACCESS_KEY=s3.keys["beta"][1],
                     **extra)


def render_policy(s3: S3, gamma_root: Path, alpha_env: str = "ALPHA", beta_env: str = "BETA",
                  extra_teams: str = "") -> str:
    return POLICY.format(s3=s3.url, gamma_root=gamma_root.as_uri(), alpha_env=alpha_env, beta_env=beta_env,
                         extra_teams=extra_teams)


def launch_gate(root: Path, upstream: str, port: int, policy: str, env: dict[str, str],
                default_root: Path) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(policy)
    cmd = [*gate_base_cmd(), "serve", "--policy", str(root / "policy.yaml"), "--host", "127.0.0.1", "--port", str(port),
           "--upstream", upstream, "--artifacts-destination", default_root.as_uri()]
    return start_process(cmd, root / "gate.log", env, cwd=root)


def wait_gate(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    """Until /_gate/health answers JSON (200, or 503 when a store is down: both mean the gate is up)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow-gate exited with code {proc.returncode}; log tail ({log_path}):\n"
                               f"{log_tail(log_path)}")
        try:
            r = httpx.get(url + "/_gate/health", timeout=5)
            if r.status_code in (200, 503) and r.headers.get("content-type", "").startswith("application/json"):
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"mlflow-gate not ready after {timeout:.0f} s (last: {last}); log tail:\n{log_tail(log_path)}")


@pytest.fixture(scope="session")
def gate(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtGate]:
    import_mlflow_client_modules()
    root = tmp_path_factory.mktemp("artifacts")
    default_root, gamma_root = root / "default-artifacts", root / "gamma-root"
    token = internal_token()
    gate_port, mlflow_port = free_port(), free_port()
    gate_url = f"http://127.0.0.1:{gate_port}"
    mlflow_log = root / "mlflow-server.log"
    (root / "mlflow").mkdir()
    # The mlflow server keeps no artifact itself: its artifacts destination is the gate's internal endpoint.
    mlflow_proc = start_process(
        [str(BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", gate_url + INTERNAL_PREFIX],
        mlflow_log, child_env(MLFLOW_TRACKING_TOKEN=token), cwd=root / "mlflow")
    _RUNNING.append(mlflow_proc)
    gate_proc: subprocess.Popen[bytes] | None = None
    try:
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_http(mlflow_url + "/health", mlflow_proc, mlflow_log, "mlflow server", timeout=180)
        env = gate_env(s3)
        gate_proc = launch_gate(root / "gate", mlflow_url, gate_port, render_policy(s3, gamma_root), env,
                                default_root)
        _RUNNING.append(gate_proc)
        g = ArtGate(url=gate_url, policy_path=root / "gate" / "policy.yaml", log_path=root / "gate" / "gate.log",
                    upstream=mlflow_url, backend="sqlite", proc=gate_proc, s3=s3, root=root,
                    default_root=default_root, gamma_root=gamma_root, mlflow_log=mlflow_log, internal_token=token,
                    env=env)
        wait_http(gate_url + "/_gate/health", gate_proc, g.log_path, "mlflow-gate", timeout=60)
        yield g
    finally:
        if gate_proc is not None:
            stop_process(gate_proc)
        stop_process(mlflow_proc)


@pytest.fixture(scope="session")
def bad_gate(gate: ArtGate, s3: S3) -> Iterator[BadGate]:
    root = gate.root / "bad-gate"
    port = free_port()
    dead = free_port()  # nothing listens there
    wrong_secret = "WrongSecret" + secrets.token_hex(12)
    delta_secret = "DeltaSecret" + secrets.token_hex(12)
    delta = (f"  delta:\n    members: [dave@corp.test]\n    experiments: [\"delta/\"]\n    models: [\"delta-\"]\n"
             f"    artifact_root: s3://team-delta/mlflow\n"
             f"    storage: {{endpoint_url: \"http://127.0.0.1:{dead}\", region: us-east-1, credentials_env: DELTA}}\n")
    env = gate_env(s3, WRONGBETA_AWS_ACCESS_KEY_ID=s3.keys["beta"][0], WRONGBETA_AWS_SECRET_ACCESS_KEY=wrong_secret,
                   DELTA_AWS_ACCESS_KEY_ID="AKIADELTA0000000000", DELTA_AWS_SECRET_ACCESS_KEY=delta_secret)
    policy = render_policy(s3, gate.gamma_root, beta_env="WRONGBETA", extra_teams=delta)
    proc = launch_gate(root, gate.upstream, port, policy, env, gate.default_root)
    _RUNNING.append(proc)
    g = ArtGate(url=f"http://127.0.0.1:{port}", policy_path=root / "policy.yaml", log_path=root / "gate.log",
                upstream=gate.upstream, backend="sqlite", proc=proc, s3=s3, root=root,
                default_root=gate.default_root, gamma_root=gate.gamma_root, mlflow_log=gate.mlflow_log,
                internal_token=gate.internal_token, env=env)
    try:
        wait_gate(g.url, proc, g.log_path)
        yield BadGate(g, wrong_secret, delta_secret)
    finally:
        with contextlib.suppress(Exception):
            stop_process(proc)


# --------------------------------------------------------------------------------------------------------------
# what each team logged (once per session)


@pytest.fixture(scope="session")
def alpha_log(gate: ArtGate) -> Logged:
    return log_everything(gate, ALICE, "alpha", f"alpha/art-{uid()}")


@pytest.fixture(scope="session")
def beta_log(gate: ArtGate) -> Logged:
    return log_everything(gate, BOB, "beta", f"beta/art-{uid()}")


@pytest.fixture(scope="session")
def gamma_log(gate: ArtGate) -> Logged:
    return log_everything(gate, CAROL, "gamma", f"gamma/art-{uid()}")


@pytest.fixture(scope="session")
def shared_log(gate: ArtGate) -> Logged:
    return log_everything(gate, ALICE, "shared", f"shared/art-{uid()}")


@pytest.fixture(scope="session")
def alpha_version(gate: ArtGate, alpha_log: Logged) -> Version:
    """`alpha-x` version 1, registered by alice from her logged model."""
    import mlflow

    with gate.as_user(ALICE):
        mv = mlflow.register_model(alpha_log.model_uri, "alpha-x")
    assert str(mv.version) == "1", mv
    return Version("alpha-x", str(mv.version), alpha_log)


# --------------------------------------------------------------------------------------------------------------
# reporting: what the gate (and the mlflow server behind it) logged during a failed test.
# tests/conftest.py has such a hook too, but its `Gate` is the class of the conftest module pytest loaded, not of
# `tests.conftest` that these suites import, so it does not recognise these gates.

_LOG_OFFSETS = pytest.StashKey[dict[str, int]]()


def _logs_of(item: pytest.Item) -> dict[str, Path]:
    funcargs = getattr(item, "funcargs", {})
    logs: dict[str, Path] = {}
    g = funcargs.get("gate")
    if isinstance(g, ArtGate):
        logs["gate"] = g.log_path
        logs["mlflow server"] = g.mlflow_log
    bad = funcargs.get("bad_gate")
    if isinstance(bad, BadGate):
        logs["second gate (broken stores)"] = bad.gate.log_path
    return logs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "setup" and report.passed:
        item.stash[_LOG_OFFSETS] = {name: (p.stat().st_size if p.exists() else 0)
                                    for name, p in _logs_of(item).items()}
    elif call.when == "call" and report.failed:
        offsets = item.stash.get(_LOG_OFFSETS, {})
        for name, p in _logs_of(item).items():
            try:
                with open(p, "rb") as f:
                    f.seek(offsets.get(name, 0))
                    lines = f.read().decode(errors="replace").splitlines()
            except OSError as exc:
                lines = [f"<cannot read {p}: {exc}>"]
            report.sections.append((f"{name} log during the test ({p}), last 80 lines",
                                    "\n".join(lines[-80:]) or "<empty>"))
    return report


def _in_this_folder(item: pytest.Item | None) -> bool:
    return item is not None and HERE in Path(str(item.path)).parents


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        if _in_this_folder(item) and not _in_this_folder(nextitem):
            while _RUNNING:  # gates first (last started), then mlflow, then moto; idempotent with the fixtures
                stop_process(_RUNNING.pop())
