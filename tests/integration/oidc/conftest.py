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
from tests.support.mlflow_server import MlflowServer
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
    op = OidcProvider().start(
        resource=oidc_gate_url, redirects=[f"{oidc_gate_url}/_gate/callback"],
        post_logout=[f"{oidc_gate_url}/_gate/signed-out", f"{oidc_gate_url}/_gate/login", f"{oidc_gate_url}/"],
        groups=oidc_groups)
    try:
        yield op
    finally:
        op.stop()


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
  alpha:
    members: [group:alpha]
    maintainers: [mo@corp.test]
    experiments: ["alpha/"]
    models: ["alpha-"]
  beta:
    members: [group:beta, group:beta-team]
    experiments: ["beta/"]
    models: ["beta-"]
  ci:
    members: [user:ci-bot]
    experiments: ["ci/"]
    models: ["ci-"]
grants:
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
    gate = start_gate(tmp_path_factory.mktemp("oidc-gate"), mlflow_server.url, OIDC_POLICY, backend="sqlite-oidc",
                      port=int(oidc_gate_url.rsplit(":", 1)[1]), env=env)
    try:
        yield gate
    finally:
        gate.stop()
