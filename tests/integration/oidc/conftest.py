"""Fixtures for tests that need a real OpenID provider (tests/oidc/op.mjs, driven by tests/oidc/provider.py).

`oidc_provider` (session) is configured for a gate at `oidc_gate_url`, a loopback URL reserved for it: JWT access
tokens have aud = oidc_gate_url, the mlflow-gate client may redirect to <oidc_gate_url>/_gate/callback and, after
sign-out, to /_gate/signed-out, /_gate/login or /. Start the gate there with
MLFLOW_GATE_OIDC_ISSUER=oidc_provider.issuer, MLFLOW_GATE_OIDC_CLIENT_ID=mlflow-gate,
MLFLOW_GATE_OIDC_CLIENT_SECRET=gate-secret and MLFLOW_GATE_OIDC_AUDIENCE=oidc_gate_url.

`oidc_gate` (session) is that gate: `mlflow-gate serve --upstream <the session's mlflow server>` on oidc_gate_url's
port with those settings, MLFLOW_GATE_PUBLIC_URL=oidc_gate_url, JWKS re-fetched on any unknown kid, and OIDC_POLICY
(teams by the OP's groups, plus a team `ci` for the client_credentials client `ci-bot`). Tests that use it pin
`mlflow_server` to sqlite (`pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)`), which reuses the
session's sqlite server.

Without node or without tests/oidc/node_modules (`npm ci` in tests/oidc), every test here is skipped with the reason.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oidc.provider import OidcProvider, unavailable_reason
from tests.support.client import import_mlflow_client_modules
from tests.support.gate import Gate, start_gate
from tests.support.issuer import JwtIssuer
from tests.support.mlflow_server import MlflowServer
from tests.support.policies import team
from tests.support.process import free_port

# Groups the OP puts in ID tokens and access tokens (login or client id -> groups).
OIDC_GROUPS: dict[str, list[str]] = {
    "alice@corp.test": ["alpha"],
    "bob@corp.test": ["beta"],
    "carol@corp.test": ["beta-team"],
}


def require_oidc() -> None:
    """Skip (with what to do about it) when the test OP cannot run here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def oidc_gate_url() -> str:
    """The URL a gate that uses `oidc_provider` must listen on (the OP's resource and redirect target)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def oidc_groups() -> dict[str, list[str]]:
    """The groups `oidc_provider` gives each login (or client id), unless a test changes them with set_users."""
    return {k: list(v) for k, v in OIDC_GROUPS.items()}


@pytest.fixture(scope="session")
def oidc_provider(oidc_gate_url: str, oidc_groups: dict[str, list[str]]) -> Iterator[OidcProvider]:
    """One OP for the whole session. Tests that change it (keys, users) restore it, or use `fresh_oidc_provider`."""
    require_oidc()
    with OidcProvider().start(
            resource=oidc_gate_url, redirects=[f"{oidc_gate_url}/_gate/callback"],
            post_logout=[f"{oidc_gate_url}/_gate/signed-out", f"{oidc_gate_url}/_gate/login", f"{oidc_gate_url}/"],
            groups=oidc_groups) as op:
        yield op


@pytest.fixture
def fresh_oidc_provider() -> Iterator[OidcProvider]:
    """A private OP for one test (about 1 s to start), for tests that rotate keys or restart it. Not started:
    call `.start(...)` with the configuration the test needs; it is stopped afterwards."""
    require_oidc()
    op = OidcProvider()
    try:
        yield op
    finally:
        op.stop()


# ---------------------------------------------------------------------------------------------------------------
# A gate signed in through the OP (tests/integration/oidc/test_gate_oidc.py, test_browser.py)


# Teams by the OP's groups (OIDC_GROUPS above): alice is in `alpha`, bob in `beta`, carol in `beta-team`;
# the CI job (client_credentials of `ci-bot`, a JWT with no email) is named by its client id.
OIDC_POLICY = """\
admins: [root@corp.test]
default: none
teams:
""" + team("alpha", "group:alpha", maintainers=["mo@corp.test"], experiments=["alpha/"], models=["alpha-"]) \
    + team("beta", "group:beta", "group:beta-team", experiments=["beta/"], models=["beta-"]) \
    + team("ci", "user:ci-bot", experiments=["ci/"], models=["ci-"]) + """grants:
  - to: [team:ci]
    experiments: ["alpha/"]
    permission: read
"""


@pytest.fixture(scope="session")
def oidc_gate(mlflow_server: MlflowServer, oidc_provider: OidcProvider, oidc_gate_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """One gate for the session at `oidc_gate_url`, in front of the session's mlflow server, with `oidc_provider`
    as its identity provider and OIDC_POLICY. `Gate.token()` / `Gate.mint()` still give personal tokens."""
    import_mlflow_client_modules()
    env = {
        "MLFLOW_GATE_OIDC_ISSUER": oidc_provider.issuer,
        "MLFLOW_GATE_OIDC_CLIENT_ID": "mlflow-gate",
        "MLFLOW_GATE_OIDC_CLIENT_SECRET": "gate-secret",
        "MLFLOW_GATE_OIDC_AUDIENCE": oidc_gate_url,
        "MLFLOW_GATE_PUBLIC_URL": oidc_gate_url,
        "MLFLOW_GATE_OIDC_JWKS_REFRESH_INTERVAL": "0",  # JWKS re-fetched on every unknown kid
    }
    with start_gate(tmp_path_factory.mktemp("oidc-gate"), mlflow_server.url, OIDC_POLICY, backend="sqlite-oidc",
                    port=int(oidc_gate_url.rsplit(":", 1)[1]), env=env) as gate:
        yield gate


# ---------------------------------------------------------------------------------------------------------------
# Machine callers (tests/integration/oidc/test_machines.py, test_machine_forgery.py): a gate whose policy trusts
# three more issuers besides its sign-in provider (the session OP):
#   cluster  a Kubernetes-like service-account issuer (tests/support/issuer.py): https with a CA of its own, its
#            discovery and JWKS answer only the gate's own service-account token (token_file), found by discovery
#   github   a GitHub-Actions-like issuer (plain http on loopback), jwks_uri given, repository_owner must be acme
#   op       a second npm oidc-provider, its client_credentials tokens (sub = client_id), found by discovery
# Both small issuers start with a key of kid `key-1`: the same kid in two JWKS, with different keys.

MACHINE_AUDIENCE = "mlflow-gate"
GATE_SA_TOKEN = "gate-service-account-token-0123456789"


def machines_policy(cluster: str, ca_file: str, token_file: str, github: str, op: str, op_audience: str) -> str:
    return f"""\
admins: [root@corp.test]
default: none
teams:
  vision:
    members: [alice@corp.test, "user:system:serviceaccount:vision:trainer",
              "user:repo:acme/vision-train:ref:refs/heads/main"]
    experiments: ["vision/"]
    models: ["vision-"]
  nlp:
    members: [group:k8s:nlp, "user:repo:acme/nlp-train:ref:refs/heads/main"]
    experiments: ["nlp/"]
    models: ["nlp-"]
  bots:
    members: ["user:op:ci-bot"]
    experiments: ["bots/"]
grants:
  # every workflow run of the repository (pull requests too) reads the team's names; only main writes
  - to: ["group:github:acme/vision-train"]
    experiments: ["vision/"]
    models: ["vision-"]
    permission: read
  - to: [everyone]
    experiments: ["shared/", "users/{{user}}/"]
    permission: edit
issuers:
  cluster:
    issuer: {cluster}
    audience: {MACHINE_AUDIENCE}
    ca_file: {ca_file}
    token_file: {token_file}
    user: "{{sub}}"
    groups: ["k8s:{{kubernetes.io/namespace}}", "k8s-sa:{{kubernetes.io/serviceaccount/name}}"]
  github:
    issuer: {github}
    audience: {MACHINE_AUDIENCE}
    jwks_uri: {github}/openid/v1/jwks
    user: "{{sub}}"
    groups: ["github:{{repository}}", "github-env:{{environment}}", "github-actions"]
    require: {{repository_owner: acme}}
  op:
    issuer: {op}
    audience: {op_audience}
    user: "op:{{sub}}"
checks:
  - issuer: cluster
    claims: {{sub: "system:serviceaccount:vision:trainer", kubernetes.io: {{namespace: vision}}}}
    model: vision-resnet
    allow: edit
  - issuer: cluster
    claims: {{sub: "system:serviceaccount:nlp:tuner", kubernetes.io: {{namespace: nlp}}}}
    experiment: vision/resnet
    deny: read
  - issuer: github
    claims: {{sub: "repo:acme/vision-train:pull_request", repository: acme/vision-train, repository_owner: acme}}
    model: vision-resnet
    deny: edit
"""


@pytest.fixture(scope="session")
def cluster_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtIssuer]:
    with JwtIssuer(tls=True, bearer=GATE_SA_TOKEN).start(tmp_path_factory.mktemp("cluster-issuer")) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def github_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtIssuer]:
    with JwtIssuer().start(tmp_path_factory.mktemp("github-issuer")) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def machines_gate_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def machine_op(machines_gate_url: str) -> Iterator[OidcProvider]:
    """A second OP, trusted as the issuer `op` (not as the sign-in provider): audience = the machines gate's URL."""
    require_oidc()
    with OidcProvider().start(resource=machines_gate_url) as op:
        yield op


@pytest.fixture(scope="session")
def machines_gate(mlflow_server: MlflowServer, oidc_provider: OidcProvider, oidc_gate_url: str,
                  cluster_issuer: JwtIssuer, github_issuer: JwtIssuer, machine_op: OidcProvider,
                  machines_gate_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """A gate with the session OP as sign-in provider (bearer JWTs of aud `oidc_gate_url`) and `machines_policy`."""
    import_mlflow_client_modules()
    root = tmp_path_factory.mktemp("machines-gate")
    token_file = root / "serviceaccount" / "token"
    token_file.parent.mkdir()
    token_file.write_text(GATE_SA_TOKEN + "\n")
    assert cluster_issuer.ca_file is not None
    policy = machines_policy(cluster_issuer.issuer, str(cluster_issuer.ca_file), str(token_file),
                             github_issuer.issuer, machine_op.issuer, machines_gate_url)
    env = {
        "MLFLOW_GATE_OIDC_ISSUER": oidc_provider.issuer,
        "MLFLOW_GATE_OIDC_CLIENT_ID": "mlflow-gate",
        "MLFLOW_GATE_OIDC_CLIENT_SECRET": "gate-secret",
        "MLFLOW_GATE_OIDC_AUDIENCE": oidc_gate_url,
        "MLFLOW_GATE_JWKS_REFRESH_INTERVAL": "0",   # an issuer's JWKS re-fetched on every unknown kid
    }
    with start_gate(root, mlflow_server.url, policy, backend="sqlite-machines",
                    port=int(machines_gate_url.rsplit(":", 1)[1]), env=env) as gate:
        yield gate
