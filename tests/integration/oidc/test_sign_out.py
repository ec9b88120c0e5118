"""Sessions signed in with a real OpenID provider, on two gate replicas that share nothing but the secret key, the
policy and the provider (issue 8, item 4): sign-out ends a copied cookie on the replica that signed out at once and
on the other replica within the session check interval (the provider is asked whether the session's refresh token
is still active); `revoked_users` refuses the provider's JWTs and sessions."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.gate_process import Served, free_port, serve, token
from tests.oidc.provider import OidcProvider

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

ALICE, ROOT = "alice@corp.test", "root@corp.test"
POLICY = """\
admins: [root@corp.test]
teams:
  alpha:
    members: [group:alpha]
    experiments: ["alpha/"]
"""
SESSION = "mlflow_gate_session"


@pytest.fixture
def replicas(mlflow_server, fresh_oidc_provider: OidcProvider,  # type: ignore[no-untyped-def]
             tmp_path: Path) -> Iterator[tuple[OidcProvider, Served, Served]]:
    port_a, port_b = free_port(), free_port()
    url_a = f"http://127.0.0.1:{port_a}"
    op = fresh_oidc_provider.start(resource=url_a, redirects=[f"{url_a}/_gate/callback"],
                                   post_logout=[f"{url_a}/_gate/signed-out"], groups={ALICE: ["alpha"]})
    env = {"MLFLOW_GATE_OIDC_ISSUER": op.issuer, "MLFLOW_GATE_OIDC_CLIENT_ID": "mlflow-gate",
           "MLFLOW_GATE_OIDC_CLIENT_SECRET": "gate-secret", "MLFLOW_GATE_OIDC_AUDIENCE": url_a,
           "MLFLOW_GATE_PUBLIC_URL": url_a, "MLFLOW_GATE_SESSION_CHECK_INTERVAL": "1s"}
    with serve(tmp_path / "a", POLICY, "--upstream", mlflow_server.url, port=port_a, **env) as a, \
            serve(tmp_path / "b", POLICY, "--upstream", mlflow_server.url, port=port_b, **env) as b:
        yield op, a, b


def signed_in_cookie(op: OidcProvider, gate: Served, browser: httpx.Client) -> str:
    page = op.browser_login(browser, f"{gate.url}/_gate/login?next=/_gate/me", ALICE)
    assert page.status_code == 200, page.text[:300]
    value = browser.cookies.get(SESSION, domain="127.0.0.1")
    assert value
    return str(value)


def me(gate: Served, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(gate.url + "/_gate/me", headers={"Accept": "application/json", **headers}, timeout=20)


def test_a_copied_cookie_does_not_survive_sign_out_on_any_replica(replicas) -> None:  # type: ignore[no-untyped-def]
    op, a, b = replicas
    with httpx.Client(timeout=20, headers={"Accept": "text/html"}) as browser:
        copy = {"Cookie": f"{SESSION}={signed_in_cookie(op, a, browser)}"}
        assert me(a, copy).status_code == 200 and me(b, copy).status_code == 200
        out = op.browser_logout(browser, f"{a.url}/_gate/logout")
        assert out.url.path == "/_gate/signed-out", out.url
    r = me(a, copy)
    assert r.status_code == 401 and "signed out" in r.json()["message"], r.text
    deadline, r = time.monotonic() + 15, me(b, copy)
    while r.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.3)
        r = me(b, copy)
    assert r.status_code == 401 and "identity provider ended this session" in r.json()["message"], r.text


def test_revoked_users_refuses_the_providers_jwts_and_sessions(replicas) -> None:  # type: ignore[no-untyped-def]
    op, a, _ = replicas
    jwt = op.mint_jwt_access_token(ALICE)
    with httpx.Client(timeout=20, headers={"Accept": "text/html"}) as browser:
        cookie = signed_in_cookie(op, a, browser)
    creds = {"jwt": {"Authorization": f"Bearer {jwt}"}, "session": {"Cookie": f"{SESSION}={cookie}"}}
    for what, headers in creds.items():
        assert me(a, headers).status_code == 200, what
    root = {"Authorization": f"Bearer {token(ROOT)}"}
    reloads = httpx.get(a.url + "/_gate/health", headers=root, timeout=20).json()["policy"]["reloads"]["ok"]
    (a.root / "policy.yaml").write_text(POLICY + "revoked_users: [alice@corp.test]\n")
    deadline = time.monotonic() + 15
    while httpx.get(a.url + "/_gate/health", headers=root, timeout=20).json()["policy"]["reloads"]["ok"] == reloads:
        assert time.monotonic() < deadline, "the gate did not reload its policy"
        time.sleep(0.2)
    for what, headers in creds.items():
        r = me(a, headers)
        assert r.status_code == 401 and "revoked" in r.json()["message"], (what, r.text)
    with httpx.Client(timeout=20, headers={"Accept": "text/html"}) as browser:   # and cannot sign in again
        page = op.browser_login(browser, f"{a.url}/_gate/login?next=/_gate/me", ALICE)
        assert page.status_code == 403 and "revoked" in page.text
