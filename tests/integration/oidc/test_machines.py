"""Machines sign in as themselves (issue 13): Kubernetes service accounts and CI jobs, with the real `mlflow` client,
the real gate and a real `mlflow server`, and the issuers of `machines_gate` (see conftest.py).

- A Kubernetes service account (vision:trainer, a projected token with audience `mlflow-gate`) creates runs and
  registers a model under vision's names, as a plain bearer (MLFLOW_TRACKING_TOKEN) and as the client sends it with
  MLFLOW_TRACKING_AUTH=kubernetes (from a kubeconfig: this machine has no in-pod token path); it is refused under nlp.
- A CI job (GitHub-Actions claims): `main` of acme/vision-train publishes vision models, its pull requests only
  read, a repository of another owner is refused (`require: {repository_owner: acme}`).
- `/_gate/me` and the audit line name the issuer; `revoked_users` applies to machine ids; machine callers mint no
  personal tokens.
- Per issuer: keys rotated without a restart; an unreachable or hanging issuer is a 503 for its own callers only,
  named on the admin health, and recovers without a restart; keys fetched before an outage keep serving; the
  in-cluster issuer is reached over its own CA with the gate's own service-account token (and only it gets it).
- The sign-in step of the example workflow deploy/github/train.yml, run as a runner runs it, gives a token the
  gate takes (tests/unit/test_deploy.py checks the workflow against GitHub's schema).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from tests.integration.gate_it import ROOT, denied, policy_plus, set_policy, uid
from tests.integration.oidc.conftest import GATE_SA_TOKEN, MACHINE_AUDIENCE
from tests.integration.oidc.jwts import assert_unauthenticated, bearer
from tests.oidc.provider import OidcProvider
from tests.support.client import UserClient
from tests.support.gate import Gate
from tests.support.issuer import DISCOVERY, JWKS_PATH, JwtIssuer, github_claims, kubernetes_claims

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

TRAINER = "system:serviceaccount:vision:trainer"
MAIN = "repo:acme/vision-train:ref:refs/heads/main"
PULL_REQUEST = "repo:acme/vision-train:pull_request"
IN_POD_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def k8s_token(cluster: JwtIssuer, namespace: str = "vision", account: str = "trainer", **extra: Any) -> str:
    return cluster.sign(kubernetes_claims(namespace, account, issuer=cluster.issuer, audience=MACHINE_AUDIENCE,
                                          **extra))


def ci_token(github: JwtIssuer, repository: str = "acme/vision-train", **kwargs: Any) -> str:
    return github.sign(github_claims(repository, issuer=github.issuer, audience=MACHINE_AUDIENCE, **kwargs))


def me(gate: Gate, token: str) -> dict[str, Any]:
    r = bearer(gate, token, "/_gate/me")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def train_and_register(client: UserClient, experiment: str, model: str) -> tuple[str, str]:
    """What a training job does: a run with params and metrics, an sklearn model logged and registered."""
    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    with client.acting():
        mlflow.set_experiment(experiment)
        with mlflow.start_run(tags={"mlflow.user": "someone-else"}) as run:
            mlflow.log_param("epochs", 3)
            for step in range(3):
                mlflow.log_metric("loss", 1 / (step + 1), step=step)
            info = mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="model",
                                            registered_model_name=model, pip_requirements=["scikit-learn"])
    assert info.registered_model_version is not None
    return run.info.run_id, str(info.registered_model_version)


def assert_refused_outside(client: UserClient, nlp_experiment: str) -> None:
    with denied():
        client.create_experiment(f"nlp/{uid()}")
    with denied():
        client.create_run(nlp_experiment)
    with denied():
        client.get_experiment(nlp_experiment)
    with denied():
        client.create_registered_model(f"nlp-{uid()}")
    assert nlp_experiment not in {e.experiment_id for e in client.search_experiments(max_results=1000)}


@pytest.fixture(scope="module")
def nlp_experiment(machines_gate: Gate, cluster_issuer: JwtIssuer) -> str:
    """An experiment of team nlp, made by an nlp service account (group k8s:nlp)."""
    tuner = UserClient(machines_gate.url, "system:serviceaccount:nlp:tuner", k8s_token(cluster_issuer, "nlp", "tuner"))
    return str(tuner.create_experiment(f"nlp/tuning-{uid()}"))


@contextlib.contextmanager
def kubeconfig(folder: Path, token: str, namespace: str) -> Iterator[dict[str, str]]:
    """A kubeconfig whose user is `token` (what `kubectl create token` gives), as MLFLOW_TRACKING_AUTH=kubernetes
    reads it when the in-pod token file is absent; yields the client variables that select it.

    The kubernetes package reads KUBECONFIG once, when it is first imported (KUBE_CONFIG_DEFAULT_LOCATION): a job
    process has one. This test process plays several jobs, so the block also points that default at its file."""
    from kubernetes.config import kube_config

    assert not IN_POD_TOKEN.exists(), f"{IN_POD_TOKEN} exists here: the client would send it instead"
    path = folder / f"kubeconfig-{uid()}"     # the client caches the token per file and context for a minute
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "job",
        "clusters": [{"name": "cluster", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "trainer", "user": {"token": token}}],
        "contexts": [{"name": "job", "context": {"cluster": "cluster", "user": "trainer", "namespace": namespace}}],
    }))
    default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield {"MLFLOW_TRACKING_AUTH": "kubernetes", "KUBECONFIG": str(path)}
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = default


# ------------------------------------------------------------------------------------------------ Kubernetes


def test_a_service_account_logs_and_registers_in_its_team_as_a_bearer(
        machines_gate: Gate, cluster_issuer: JwtIssuer, nlp_experiment: str) -> None:
    token = k8s_token(cluster_issuer)
    who = me(machines_gate, token)
    assert (who["id"], who["via"], who["issuer"]) == (TRAINER, "jwt", "cluster")
    assert who["groups"] == ["k8s-sa:trainer", "k8s:vision"] and who["teams"] == {"vision": "member"}

    trainer = UserClient(machines_gate.url, TRAINER, token)
    name, model = f"vision/k8s-{uid()}", f"vision-k8s-{uid()}"
    run_id, version = train_and_register(trainer, name, model)
    run = trainer.get_run(run_id)
    assert run.data.tags["mlflow.user"] == TRAINER and run.data.metrics["loss"] == pytest.approx(1 / 3)
    assert trainer.get_experiment(run.info.experiment_id).name == name
    assert trainer.get_model_version(model, version).tags["mlflow.user"] == TRAINER
    trainer.set_registered_model_alias(model, "candidate", version)
    assert trainer.get_model_version_by_alias(model, "candidate").run_id == run_id
    assert_refused_outside(trainer, nlp_experiment)


def test_mlflow_tracking_auth_kubernetes_works_as_it_is(machines_gate: Gate, cluster_issuer: JwtIssuer,
                                                        nlp_experiment: str, tmp_path: Path) -> None:
    with kubeconfig(tmp_path, k8s_token(cluster_issuer), "vision") as auth:
        trainer = UserClient(machines_gate.url, TRAINER, None, auth=auth)
        name, model = f"vision/k8s-auth-{uid()}", f"vision-k8s-auth-{uid()}"
        run_id, version = train_and_register(trainer, name, model)
        assert trainer.get_run(run_id).data.tags["mlflow.user"] == TRAINER
        with trainer.acting():
            loaded = mlflow.sklearn.load_model(f"models:/{model}/{version}")
        assert loaded.predict(np.zeros((1, 3))).shape == (1,)
        assert_refused_outside(trainer, nlp_experiment)
    # another namespace's account, the same way, is refused under vision
    with kubeconfig(tmp_path, k8s_token(cluster_issuer, "nlp", "tuner"), "nlp") as auth:
        tuner = UserClient(machines_gate.url, "system:serviceaccount:nlp:tuner", None, auth=auth)
        with denied():
            tuner.create_run(trainer.get_experiment_by_name(name).experiment_id)
        with denied():
            tuner.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)


def test_a_service_account_token_for_another_audience_is_refused(machines_gate: Gate,
                                                                  cluster_issuer: JwtIssuer) -> None:
    """The token every pod has by default is for the API server: it must not sign in to the gate."""
    api_token = cluster_issuer.sign(kubernetes_claims("vision", "trainer", issuer=cluster_issuer.issuer,
                                                      audience="https://kubernetes.default.svc.cluster.local"))
    body = assert_unauthenticated(bearer(machines_gate, api_token))
    assert "mlflow-gate" in body["message"]


# ------------------------------------------------------------------------------------------------ CI


def test_main_of_a_repository_publishes_its_teams_models_and_pull_requests_only_read(
        machines_gate: Gate, github_issuer: JwtIssuer, nlp_experiment: str) -> None:
    main = UserClient(machines_gate.url, MAIN, ci_token(github_issuer))
    assert me(machines_gate, main.token or "")["teams"] == {"vision": "member"}
    name, model = f"vision/ci-{uid()}", f"vision-ci-{uid()}"
    run_id, version = train_and_register(main, name, model)
    assert main.get_run(run_id).data.tags["mlflow.user"] == MAIN
    assert_refused_outside(main, nlp_experiment)

    pr_token = ci_token(github_issuer, event="pull_request", ref="refs/pull/7/merge")
    who = me(machines_gate, pr_token)
    assert (who["id"], who["issuer"], who["teams"]) == (PULL_REQUEST, "github", {})
    assert who["groups"] == ["github-actions", "github:acme/vision-train"]
    pr = UserClient(machines_gate.url, PULL_REQUEST, pr_token)
    assert pr.get_run(run_id).info.run_id == run_id
    assert pr.get_model_version(model, version).run_id == run_id
    assert model in {m.name for m in pr.search_registered_models(max_results=1000)}
    experiment_id = pr.get_experiment_by_name(name).experiment_id
    with denied():
        pr.create_run(experiment_id)
    with denied():
        pr.log_metric(run_id, "loss", 0.0)
    with denied():
        pr.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
    with denied():
        pr.set_registered_model_alias(model, "prod", version)

    deploy = me(machines_gate, ci_token(github_issuer, environment="production"))
    assert deploy["id"] == "repo:acme/vision-train:environment:production"
    assert "github-env:production" in deploy["groups"]


def test_a_repository_of_another_owner_is_refused(machines_gate: Gate, github_issuer: JwtIssuer) -> None:
    """GitHub signs tokens for every repository on GitHub, for any audience: `require` keeps acme's only."""
    for token in (ci_token(github_issuer, "evil/vision-train"),
                  ci_token(github_issuer, "acme/vision-train", repository_owner="acme-evil"),
                  ci_token(github_issuer, "acme/vision-train", repository_owner=None)):
        body = assert_unauthenticated(bearer(machines_gate, token))
        assert "repository_owner" in body["message"], body


def test_the_identity_providers_issuer_for_machines_uses_discovery(machines_gate: Gate,
                                                                   machine_op: OidcProvider) -> None:
    token = machine_op.client_credentials_token()
    who = me(machines_gate, token)
    assert (who["id"], who["issuer"], who["teams"]) == ("op:ci-bot", "op", {"bots": "member"})
    bot = UserClient(machines_gate.url, "op:ci-bot", token)
    exp = bot.create_experiment(f"bots/nightly-{uid()}")
    assert bot.create_run(exp).info.user_id == "op:ci-bot"
    with denied():
        bot.create_experiment(f"vision/{uid()}")


# ------------------------------------------------------------------------------------------------ naming the issuer


def test_the_audit_line_names_the_issuer(machines_gate: Gate, cluster_issuer: JwtIssuer,
                                         github_issuer: JwtIssuer) -> None:
    offset = machines_gate.log_size()
    assert bearer(machines_gate, k8s_token(cluster_issuer)).status_code == 200
    assert bearer(machines_gate, ci_token(github_issuer), "/api/2.0/mlflow/experiments/create", "POST",
                  json={"name": f"nlp/{uid()}"}).status_code == 403
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 2:
        time.sleep(0.2)
        lines = [json.loads(line) for line in machines_gate.log_since(offset).splitlines()
                 if line.startswith("{") and '"allowed"' in line]
        lines = [entry for entry in lines if entry.get("who") in (TRAINER, MAIN)]
    by_who = {entry["who"]: entry for entry in lines}
    assert by_who[TRAINER]["issuer"] == "cluster" and by_who[TRAINER]["allowed"] is True
    assert by_who[MAIN]["issuer"] == "github" and by_who[MAIN]["allowed"] is False


def test_revoked_users_refuses_machine_ids(machines_gate: Gate, cluster_issuer: JwtIssuer,
                                           github_issuer: JwtIssuer) -> None:
    trainer, main, other = k8s_token(cluster_issuer), ci_token(github_issuer), k8s_token(cluster_issuer, "vision", "x")
    for token in (trainer, main, other):
        assert bearer(machines_gate, token).status_code == 200       # verified and cached before the revocation
    with policy_plus(machines_gate, f'revoked_users: ["{TRAINER}", "user:{MAIN}"]\n'):
        for token, who in ((trainer, TRAINER), (main, MAIN)):
            body = assert_unauthenticated(bearer(machines_gate, token))
            assert who in body["message"] and "revoked" in body["message"]
        assert_unauthenticated(bearer(machines_gate, k8s_token(cluster_issuer)))   # a new token of the same account
        assert bearer(machines_gate, other).status_code == 200
    assert bearer(machines_gate, trainer).status_code == 200


def test_machine_callers_cannot_mint_personal_tokens(machines_gate: Gate, cluster_issuer: JwtIssuer) -> None:
    r = bearer(machines_gate, k8s_token(cluster_issuer), "/_gate/tokens", "POST", json={"expires_in": "90d"})
    assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", r.text
    assert "token" not in r.json()


# ------------------------------------------------------------------------------------------------ keys and outages


def admin_health(gate: Gate) -> dict[str, Any]:
    r = httpx.get(gate.url + "/_gate/health", headers={"Authorization": f"Bearer {gate.token(ROOT)}"}, timeout=30)
    return r.json()  # type: ignore[no-any-return]


def with_issuer(policy: str, name: str, entry: str) -> str:
    """The policy text with one more entry under `issuers:`."""
    lines = "".join(f"    {line}\n" for line in entry.strip().splitlines())
    return policy.replace("issuers:\n", f"issuers:\n  {name}:\n{lines}", 1)


@contextlib.contextmanager
def extra_issuers(gate: Gate, entries: dict[str, str]) -> Iterator[None]:
    original = gate.policy_path.read_text()
    text = original
    for name, entry in entries.items():
        text = with_issuer(text, name, entry)
    try:
        set_policy(gate, text)
        assert admin_health(gate)["policy"]["error"] is None
        yield
    finally:
        set_policy(gate, original)


@pytest.mark.parametrize("which", ["cluster", "github"])
def test_keys_rotated_at_an_issuer_are_followed_without_a_restart(
        machines_gate: Gate, cluster_issuer: JwtIssuer, github_issuer: JwtIssuer, which: str) -> None:
    issuer = cluster_issuer if which == "cluster" else github_issuer
    mint = (lambda: k8s_token(cluster_issuer)) if which == "cluster" else (lambda: ci_token(github_issuer))
    pid = machines_gate.proc.pid
    used = mint()
    assert bearer(machines_gate, used).status_code == 200
    first = issuer.kids[0]

    issuer.rotate()
    rotated = mint()
    assert bearer(machines_gate, rotated).status_code == 200, "a token of the new key was refused"
    assert bearer(machines_gate, used).status_code == 200           # the old key is still published

    issuer.drop_old()
    issuer.rotate()
    assert bearer(machines_gate, mint()).status_code == 200         # an unknown kid: the gate re-fetched
    body = assert_unauthenticated(bearer(machines_gate, used))      # verified before, its key withdrawn since
    assert first in body["message"]
    assert machines_gate.proc.pid == pid and machines_gate.proc.poll() is None


def test_an_unreachable_issuer_is_a_503_for_its_callers_only_and_recovers(
        machines_gate: Gate, oidc_provider: OidcProvider, cluster_issuer: JwtIssuer, github_issuer: JwtIssuer,
        tmp_path: Path) -> None:
    down = JwtIssuer().start(tmp_path)
    port, token = down.port, down.sign({"sub": "job-1", "aud": MACHINE_AUDIENCE, "iss": down.issuer,
                                        "exp": int(time.time()) + 600})
    issuer_url = down.issuer
    down.stop()
    entry = f"issuer: {issuer_url}\naudience: {MACHINE_AUDIENCE}\nuser: 'down:{{sub}}'"
    with extra_issuers(machines_gate, {"down": entry}):
        r = bearer(machines_gate, token)
        assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE", r.text
        assert "issuer 'down'" in r.json()["message"]
        # everyone else is served as before
        assert bearer(machines_gate, k8s_token(cluster_issuer)).status_code == 200
        assert bearer(machines_gate, ci_token(github_issuer)).status_code == 200
        assert bearer(machines_gate, oidc_provider.mint_jwt_access_token("alice@corp.test")).status_code == 200
        anonymous = httpx.get(machines_gate.url + "/_gate/health", timeout=30)
        assert (anonymous.status_code, anonymous.json()) == (200, {"status": "ok"})
        health = admin_health(machines_gate)
        assert health["status"] == "ok"
        assert health["issuers"]["down"]["ok"] is False and "ConnectError" in health["issuers"]["down"]["error"]
        assert health["issuers"]["cluster"]["ok"] is True and health["issuers"]["github"]["ok"] is True

        down.start(tmp_path, port)                  # back, with the same keys: no restart of the gate needed
        try:
            deadline = time.monotonic() + 15
            while (r := bearer(machines_gate, token)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert r.status_code == 200, r.text
            assert me(machines_gate, token)["id"] == "down:job-1"
        finally:
            down.stop()


def test_a_hanging_issuer_times_out_and_its_callers_do_not_each_wait(machines_gate: Gate, github_issuer: JwtIssuer,
                                                                     tmp_path: Path) -> None:
    slow = JwtIssuer()
    slow.outage = "hang"
    slow.start(tmp_path)
    token = slow.sign({"sub": "job-2", "aud": MACHINE_AUDIENCE, "iss": slow.issuer, "exp": int(time.time()) + 600})
    try:
        with extra_issuers(machines_gate, {"slow": f"issuer: {slow.issuer}\naudience: {MACHINE_AUDIENCE}\n"
                                                  "user: 'slow:{sub}'"}):
            # the admin health calls in extra_issuers already met the hang once; past the back-off, the next
            # caller fetches again and meets it
            time.sleep(5.2)
            start = time.monotonic()
            r = bearer(machines_gate, token)
            first = time.monotonic() - start
            assert r.status_code == 503 and "no answer within" in r.json()["message"], r.text
            assert 4 < first < 12, f"the first caller waited {first:.1f} s (fetch timeout 5 s)"
            start = time.monotonic()
            assert bearer(machines_gate, token).status_code == 503
            assert time.monotonic() - start < 2, "a second caller waited on the hanging issuer again"
            assert bearer(machines_gate, ci_token(github_issuer)).status_code == 200
            slow.outage = None
            time.sleep(5.2)                         # the gate retries a failed issuer after 5 s
            assert bearer(machines_gate, token).status_code == 200
    finally:
        slow.stop()


def test_keys_fetched_before_an_outage_keep_serving(machines_gate: Gate, github_issuer: JwtIssuer) -> None:
    assert bearer(machines_gate, ci_token(github_issuer)).status_code == 200
    github_issuer.outage = "down"
    try:
        assert bearer(machines_gate, ci_token(github_issuer, run_id="fresh")).status_code == 200   # known key
        github_issuer.rotate()
        r = bearer(machines_gate, ci_token(github_issuer))                                        # unknown key
        assert r.status_code == 503 and "issuer 'github'" in r.json()["message"], r.text
        assert "answered 503" in admin_health(machines_gate)["issuers"]["github"]["error"]
    finally:
        github_issuer.outage = None
    time.sleep(5.2)
    assert bearer(machines_gate, ci_token(github_issuer)).status_code == 200
    assert admin_health(machines_gate)["issuers"]["github"]["ok"] is True


def test_the_in_cluster_issuer_is_reached_with_the_gates_own_token_and_the_cluster_ca(
        machines_gate: Gate, cluster_issuer: JwtIssuer, github_issuer: JwtIssuer, tmp_path: Path) -> None:
    assert bearer(machines_gate, k8s_token(cluster_issuer)).status_code == 200
    paths = {path for path, _ in cluster_issuer.requests}
    assert {DISCOVERY, JWKS_PATH} <= paths                                     # no jwks_uri: discovery first
    assert {auth for _, auth in cluster_issuer.requests} == {f"Bearer {GATE_SA_TOKEN}"}
    assert {auth for _, auth in github_issuer.requests} == {None}              # no token_file: no bearer
    assert DISCOVERY not in {path for path, _ in github_issuer.requests}      # jwks_uri given: no discovery

    # Another cluster: the wrong CA fails TLS; no token where the API server wants one is its 401.
    other_ca = JwtIssuer(tls=True).start(tmp_path / "other")
    wants_token = JwtIssuer(tls=True, bearer="expected").start(tmp_path / "wants")
    try:
        assert wants_token.ca_file is not None
        entries = {"wrongca": f"issuer: {other_ca.issuer}\naudience: {MACHINE_AUDIENCE}\nuser: '{{sub}}'\n"
                              f"ca_file: {cluster_issuer.ca_file}",
                   "notoken": f"issuer: {wants_token.issuer}\naudience: {MACHINE_AUDIENCE}\nuser: '{{sub}}'\n"
                              f"ca_file: {wants_token.ca_file}"}
        with extra_issuers(machines_gate, entries):
            for issuer, name in ((other_ca, "wrongca"), (wants_token, "notoken")):
                token = issuer.sign(kubernetes_claims("ml", "job", issuer=issuer.issuer))
                r = bearer(machines_gate, token)
                assert r.status_code == 503 and f"issuer '{name}'" in r.json()["message"], r.text
            issuers = admin_health(machines_gate)["issuers"]
            assert "CERTIFICATE_VERIFY_FAILED" in issuers["wrongca"]["error"], issuers["wrongca"]
            assert "answered 401" in issuers["notoken"]["error"], issuers["notoken"]
            assert bearer(machines_gate, k8s_token(cluster_issuer)).status_code == 200
    finally:
        other_ca.stop()
        wants_token.stop()


# ------------------------------------------------------------------------------------------------ the example workflow


WORKFLOW = Path(__file__).resolve().parents[3] / "deploy" / "github" / "train.yml"


def test_the_example_workflows_sign_in_step_gives_a_token_the_gate_takes(
        machines_gate: Gate, github_issuer: JwtIssuer, tmp_path: Path) -> None:
    """The step run as a runner runs it, against a stand-in for the runner's token service that signs with the
    `github` issuer's key for the audience the step asks for."""
    asked: list[tuple[str | None, str]] = []

    class TokenService(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            audience = parse_qs(urlsplit(self.path).query)["audience"][0]
            asked.append((self.headers.get("authorization"), audience))
            body = json.dumps({"value": ci_token(github_issuer, aud=audience)}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    service = ThreadingHTTPServer(("127.0.0.1", 0), TokenService)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    [step] = [s for s in yaml.safe_load(WORKFLOW.read_text())["jobs"]["train"]["steps"]
              if "ACTIONS_ID_TOKEN_REQUEST_URL" in s.get("run", "")]
    github_env = tmp_path / "github-env"
    try:
        r = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True, timeout=60, check=False,
                           env={"PATH": os.environ["PATH"], "GITHUB_ENV": str(github_env),
                                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-request-token",
                                "ACTIONS_ID_TOKEN_REQUEST_URL": f"http://127.0.0.1:{service.server_port}/token"
                                                                "?api-version=2.0"})
    finally:
        service.shutdown()
        service.server_close()
    assert r.returncode == 0, r.stderr
    assert asked == [("bearer runner-request-token", MACHINE_AUDIENCE)]
    [line] = github_env.read_text().splitlines()
    name, _, token = line.partition("=")
    assert name == "MLFLOW_TRACKING_TOKEN" and r.stdout.strip() == f"::add-mask::{token}"
    assert me(machines_gate, token)["id"] == MAIN
