"""/_gate/admin on a Starlette test client (the browser test is tests/integration/test_admin_page.py), and the ring
of the last refusals the audit feeds it."""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from proxy import admin
from proxy.audit import Audit, Denials
from proxy.authn import Authenticator
from proxy.decide import Decision
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from proxy.tokens import mint_token
from tests.support.policies import team

KEY = "admin-page-test-key-0123456789abcdef"
POLICY = load_policy_text("""
admins: [root@corp.test]
teams:
""" + team("vision", "bob@corp.test", "group:vision", maintainers=["carol@corp.test"], experiments=["vision/"],
           models=["vision-"], protected_aliases=["champion"]) + """grants:
  - {to: [team:vision], experiments: ["shared/<b>"], permission: read}
denies:
  - {to: [group:contractors], experiments: ["vision/secret/"], keep: read}
limits: {requests_per_minute: 600}
revoked_users: [mallory@corp.test]
""", "p.yaml")


@pytest.fixture()
def page() -> Iterator[tuple[TestClient, Denials]]:
    app = Starlette(routes=admin.routes())
    denials = Denials(size=3)
    app.state.services = SimpleNamespace(store=SimpleNamespace(current=POLICY), denials=denials,
                                         authn=Authenticator(KEY))
    with TestClient(app) as client:
        yield client, denials


def auth(user: str, accept: str = "application/json") -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(KEY, user)}", "accept": accept}


@pytest.mark.parametrize("accept", ["application/json", "text/html", "*/*"])
def test_others_get_the_admin_routes_403_whatever_they_accept(page: tuple[TestClient, Denials], accept: str) -> None:
    client, _ = page
    for user in ("carol@corp.test", "bob@corp.test"):
        r = client.get("/_gate/admin?kind=model&name=vision-clf", headers=auth(user, accept))
        assert r.status_code == 403 and r.headers["content-type"] == "application/json"
        assert r.json() == {"error_code": "PERMISSION_DENIED",
                            "message": "Permission denied: /_gate/admin is for admins only."}


def test_no_credential_is_401_json_or_the_sign_in_redirect(page: tuple[TestClient, Denials]) -> None:
    client, _ = page
    r = client.get("/_gate/admin", headers={"accept": "application/json"})
    assert r.status_code == 401
    r = client.get("/_gate/admin", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("/_gate/login?next=/_gate/admin")


def test_an_admin_sees_the_policy_who_can_and_the_last_refusals(page: tuple[TestClient, Denials]) -> None:
    client, denials = page
    audit = Audit(None, sink=lambda line: None, denials=denials)
    audit.record(Identity("bob@corp.test", frozenset()), "POST", "/api/2.0/mlflow/registered-models/alias", False,
                 "Permission denied: alias 'champion' (team vision) of model 'vision-clf' is protected",
                 [Decision(False, "model", "vision-clf", Level.MANAGE, Level.EDIT, "member of team vision")], 403)
    audit.record(Identity("bob@corp.test", frozenset()), "GET", "/api/2.0/mlflow/runs/get", True, "policy")
    r = client.get("/_gate/admin?kind=experiment&name=vision/secret/plan", headers=auth("root@corp.test"))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    data = r.json()
    team = data["policy"]["teams"][0]
    assert team == {"name": "vision", "members": ["user:bob@corp.test", "group:vision"],
                    "maintainers": ["user:carol@corp.test"], "experiments": ["vision/"], "models": ["vision-"],
                    "protected_aliases": ["champion"]}
    assert data["policy"]["limits"]["requests_per_minute"] == 600
    assert data["policy"]["denies"][0]["keep"] == "read" and data["policy"]["grants"][0]["permission"] == "read"
    holders = {h["subject"]: (h["level"], h["rule"]) for h in data["who_can"]["holders"]}
    assert holders["user:carol@corp.test"] == ("manage", "maintainer of team vision")
    assert holders["group:vision"] == ("edit", "member of team vision")
    assert [c["subject"] for c in data["who_can"]["capped"]] == []          # contractors are not members here
    assert [(d["who"], d["method"], d["status"]) for d in data["denials"]] == [("bob@corp.test", "POST", 403)]
    assert data["denials"][0]["resources"][0]["needed"] == "manage"


def test_the_page_escapes_what_it_shows_and_has_no_script(page: tuple[TestClient, Denials]) -> None:
    client, denials = page
    Audit(None, sink=lambda line: None, denials=denials).record(
        None, "GET", "/api/<script>alert(1)</script>", False, "Authentication failed: <img src=x>.", None, 401)
    r = client.get("/_gate/admin", params={"name": '"><script>alert(1)</script>', "kind": "model"},
                   headers=auth("root@corp.test", "text/html"))
    assert r.status_code == 200
    scripts = r.text.count("<script")        # the gate's own script file only: nothing the page shows runs
    assert scripts == r.text.count('<script src="/_gate/static/gate.js" defer></script>') == 1
    assert "<img" not in r.text and "shared/&lt;b&gt;" in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "(no credential)" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "script-src 'self';" in r.headers["content-security-policy"]        # no inline script, no other origin
    assert '<form method="get" action="/_gate/admin">' in r.text and "protected aliases" in r.text


def test_a_bad_kind_is_a_400_that_says_what_to_fix(page: tuple[TestClient, Denials]) -> None:
    client, _ = page
    r = client.get("/_gate/admin?kind=run&name=x", headers=auth("root@corp.test"))
    assert r.status_code == 400 and "kind must be one of experiment, model" in r.json()["message"]
    r = client.get("/_gate/admin?kind=run&name=x", headers=auth("root@corp.test", "text/html"))
    assert r.status_code == 400 and "kind must be one of experiment, model" in r.text


def test_the_ring_keeps_the_newest_refusals_only() -> None:
    denials = Denials(size=3)
    audit = Audit(None, sink=lambda line: None, denials=denials)
    for i in range(5):
        audit.record(Identity(f"u{i}@corp.test", frozenset()), "GET", f"/p{i}", False, "no", None, 403)
        audit.record(Identity(f"u{i}@corp.test", frozenset()), "GET", f"/ok{i}", True, "policy")
    assert [d.path for d in denials.latest()] == ["/p4", "/p3", "/p2"]
    assert [d.path for d in denials.latest(1)] == ["/p4"] and denials.size == 3
