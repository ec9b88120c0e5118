"""The test OpenID provider (tests/oidc/op.mjs) and its Python driver (tests/oidc/provider.py), against each other.

These prove the tools the gate's OIDC tests stand on: discovery, JWT access tokens that validate against the JWKS,
code flow with enforced PKCE, device approval, browser sign-in and sign-out through a relying party, live users,
and key rotation (live, by the command line, and across a restart).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.oidc.provider import (
    OP_DIR,
    OP_SCRIPT,
    TEST_REDIRECT,
    OidcDriverError,
    OidcProvider,
    jwt_parts,
    pkce_pair,
)

pytestmark = pytest.mark.integration


def keyset(op: OidcProvider) -> KeySet:
    return KeySet.import_key_set(op.jwks())  # type: ignore[arg-type]


def validate(op: OidcProvider, token: str, audience: str) -> dict[str, Any]:
    """What a resource server does: signature against the published JWKS, then iss, aud and exp."""
    decoded = jwt.decode(token, keyset(op), algorithms=["RS256"])
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": op.issuer}, aud={"essential": True, "value": audience},
                          exp={"essential": True}).validate(decoded.claims)
    return dict(decoded.claims)


# ---------------------------------------------------------------------------------------------------- metadata


def test_discovery_names_the_endpoints_and_grants_the_gate_needs(oidc_provider: OidcProvider) -> None:
    doc = httpx.get(oidc_provider.discovery_url).json()
    issuer = oidc_provider.issuer
    assert issuer.startswith("http://127.0.0.1:") and doc["issuer"] == issuer
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint",
                "device_authorization_endpoint", "introspection_endpoint", "revocation_endpoint"):
        assert doc[key].startswith(issuer + "/"), key
    assert {"authorization_code", "refresh_token", "client_credentials",
            "urn:ietf:params:oauth:grant-type:device_code"} <= set(doc["grant_types_supported"])
    assert "S256" in doc["code_challenge_methods_supported"]
    assert {"openid", "email", "groups"} <= set(doc["scopes_supported"])
    keys = oidc_provider.jwks()["keys"]
    assert keys and all(k["kty"] == "RSA" and "d" not in k for k in keys)
    assert oidc_provider.current_kids() == [k["kid"] for k in keys]


def test_dev_pages_reach_for_nothing_off_loopback(oidc_provider: OidcProvider) -> None:
    _, challenge = pkce_pair()
    with httpx.Client(follow_redirects=True) as browser:
        page = browser.get(oidc_provider.authorization_endpoint, params={
            "response_type": "code", "client_id": "mlflow-gate", "redirect_uri": TEST_REDIRECT, "scope": "openid",
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "s"})
    assert page.status_code == 200 and 'name="login"' in page.text
    assert "googleapis" not in page.text and "https://" not in page.text


# ---------------------------------------------------------------------------------------------------- tokens


def test_client_credentials_token_is_a_jwt_for_the_resource(oidc_provider: OidcProvider, oidc_gate_url: str) -> None:
    token = oidc_provider.client_credentials_token()
    header, _ = jwt_parts(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256" and header["kid"] in oidc_provider.current_kids()
    claims = validate(oidc_provider, token, oidc_gate_url)
    assert claims["sub"] == claims["client_id"] == "ci-bot"
    assert claims["aud"] == oidc_gate_url and "email" not in claims and claims["groups"] == []
    with pytest.raises(JoseError):
        validate(oidc_provider, token, "http://127.0.0.1:1")                        # another audience
    assert oidc_provider.token_request({"grant_type": "client_credentials"}, "ci-bot", "wrong").status_code == 401
    # The gate's own client may not use client_credentials.
    denied = oidc_provider.token_request({"grant_type": "client_credentials"}, "mlflow-gate", "gate-secret")
    assert denied.status_code == 400 and "grant type is not allowed" in denied.json()["error_description"]


def test_code_flow_with_pkce_gives_user_tokens_with_email_and_groups(
        oidc_provider: OidcProvider, oidc_gate_url: str, oidc_groups: dict[str, list[str]]) -> None:
    tokens = oidc_provider.authorization_code_tokens("alice@corp.test")
    at = validate(oidc_provider, tokens["access_token"], oidc_gate_url)
    assert at["sub"] == at["email"] == "alice@corp.test" and at["groups"] == oidc_groups["alice@corp.test"]
    assert at["client_id"] == "mlflow-gate"
    id_token = jwt.decode(tokens["id_token"], keyset(oidc_provider)).claims
    assert id_token["aud"] == "mlflow-gate" and id_token["iss"] == oidc_provider.issuer
    assert id_token["email"] == "alice@corp.test" and id_token["email_verified"] is True
    assert id_token["groups"] == ["alpha"]
    refreshed = oidc_provider.refresh(tokens["refresh_token"])
    assert validate(oidc_provider, refreshed["access_token"], oidc_gate_url)["email"] == "alice@corp.test"
    # mint_jwt_access_token is the same flow; a login without "@" has no email, and no groups unless mapped.
    nomail = validate(oidc_provider, oidc_provider.mint_jwt_access_token("robot"), oidc_gate_url)
    assert nomail["sub"] == "robot" and "email" not in nomail and nomail["groups"] == []


def test_pkce_is_enforced(oidc_provider: OidcProvider) -> None:
    without = oidc_provider.authorize("alice@corp.test", code_challenge=None)
    assert without["error"] == "invalid_request" and "PKCE" in without["error_description"]
    verifier, challenge = pkce_pair()
    back = oidc_provider.authorize("alice@corp.test", code_challenge=challenge)
    assert "code" in back
    exchange = {"grant_type": "authorization_code", "code": back["code"], "redirect_uri": TEST_REDIRECT}
    wrong = oidc_provider.token_request({**exchange, "code_verifier": pkce_pair()[0]}, "mlflow-gate", "gate-secret")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    right = oidc_provider.token_request({**exchange, "code_verifier": verifier}, "mlflow-gate", "gate-secret")
    assert right.status_code == 200 and right.json()["access_token"]
    replay = oidc_provider.token_request({**exchange, "code_verifier": verifier}, "mlflow-gate", "gate-secret")
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"      # a code is single-use
    with pytest.raises(OidcDriverError, match="redirect_uri"):     # the OP shows an error page, no redirect
        oidc_provider.authorize("alice@corp.test", code_challenge=challenge,
                                redirect_uri="http://127.0.0.1:9/not-registered")


# ---------------------------------------------------------------------------------------------------- device grant


def test_device_grant_approved_headlessly(oidc_provider: OidcProvider, oidc_gate_url: str) -> None:
    start = oidc_provider.device_authorization()
    assert start["verification_uri_complete"].startswith(oidc_provider.issuer + "/device?user_code=")
    pending = oidc_provider.device_token(start["device_code"])
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    page = oidc_provider.device_approve(start["verification_uri_complete"], "bob@corp.test")
    assert page.status_code == 200 and "Sign-in Success" in page.text
    tokens = oidc_provider.device_token(start["device_code"]).json()
    at = validate(oidc_provider, tokens["access_token"], oidc_gate_url)
    assert at["email"] == "bob@corp.test" and at["groups"] == ["beta"] and at["client_id"] == "mlflow-cli"
    assert tokens["refresh_token"] and tokens["id_token"]
    refreshed = oidc_provider.refresh(tokens["refresh_token"], client_id="mlflow-cli", secret=None)
    assert validate(oidc_provider, refreshed["access_token"], oidc_gate_url)["email"] == "bob@corp.test"


def test_device_grant_aborted(oidc_provider: OidcProvider) -> None:
    start = oidc_provider.device_authorization()
    oidc_provider.device_approve(start["verification_uri_complete"], "bob@corp.test", approve=False)
    answer = oidc_provider.device_token(start["device_code"])
    assert answer.status_code == 400 and answer.json()["error"] == "access_denied"


# ---------------------------------------------------------------------------------------------------- browser


class ToyRelyingParty:
    """A minimal confidential client (mlflow-gate) the way the gate works: /_gate/login?next=, /_gate/callback with
    state + PKCE + nonce, a session cookie, /_gate/logout to the OP's end_session endpoint, /_gate/signed-out."""

    def __init__(self, op: OidcProvider, port: int) -> None:
        self.op, self.url = op, f"http://127.0.0.1:{port}"
        self.pending: dict[str, tuple[str, str, str]] = {}       # state -> (verifier, nonce, next)
        self.sessions: dict[str, str] = {}                       # cookie -> email
        rp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: str = "", location: str | None = None,
                      cookie: str | None = None) -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                if cookie is not None:
                    self.send_header("Set-Cookie", f"rp_session={cookie}; Path=/; HttpOnly")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                jar = SimpleCookie(self.headers.get("Cookie", ""))
                session = jar["rp_session"].value if "rp_session" in jar else ""
                if url.path == "/_gate/login":
                    verifier, challenge = pkce_pair()
                    state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
                    rp.pending[state] = (verifier, nonce, q.get("next", "/"))
                    self.reply(302, location=rp.op.authorization_endpoint + "?" + urlencode({
                        "response_type": "code", "client_id": "mlflow-gate", "scope": "openid email profile groups",
                        "redirect_uri": rp.url + "/_gate/callback", "state": state, "nonce": nonce,
                        "code_challenge": challenge, "code_challenge_method": "S256"}))
                elif url.path == "/_gate/callback":
                    verifier, nonce, nxt = rp.pending.pop(q.get("state", ""), ("", "", ""))
                    if not verifier or "code" not in q:
                        return self.reply(400, f"bad callback: {q}")
                    tokens = rp.op.token_request({
                        "grant_type": "authorization_code", "code": q["code"], "code_verifier": verifier,
                        "redirect_uri": rp.url + "/_gate/callback"}, "mlflow-gate", "gate-secret").json()
                    claims = jwt.decode(tokens["id_token"], keyset(rp.op)).claims
                    if claims.get("nonce") != nonce:
                        return self.reply(400, "nonce mismatch")
                    cookie = secrets.token_urlsafe(12)
                    rp.sessions[cookie] = json.dumps({"email": claims["email"], "groups": claims["groups"]})
                    self.reply(302, location=nxt, cookie=cookie)
                elif url.path == "/_gate/logout":
                    rp.sessions.pop(session, None)
                    self.reply(302, cookie="", location=rp.op.discovery["end_session_endpoint"] + "?" + urlencode({
                        "client_id": "mlflow-gate", "post_logout_redirect_uri": rp.url + "/_gate/signed-out"}))
                elif url.path == "/_gate/signed-out":
                    self.reply(200, "signed out")
                elif session in rp.sessions:
                    self.reply(200, rp.sessions[session])
                else:
                    self.reply(302, location=f"/_gate/login?next={url.path}")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relying_party(oidc_provider: OidcProvider, oidc_gate_url: str) -> Iterator[ToyRelyingParty]:
    """The toy RP on the gate's reserved port (no gate runs in this module), registered at the session OP."""
    rp = ToyRelyingParty(oidc_provider, int(urlsplit(oidc_gate_url).port or 0))
    try:
        yield rp
    finally:
        rp.close()


def test_browser_login_and_logout_through_a_relying_party(oidc_provider: OidcProvider,
                                                          relying_party: ToyRelyingParty) -> None:
    rp = relying_party
    with httpx.Client(timeout=10) as browser:
        page = oidc_provider.browser_login(browser, rp.url + "/_gate/login?next=/experiments/1", "carol@corp.test")
        assert page.status_code == 200 and str(page.url) == rp.url + "/experiments/1"
        assert json.loads(page.text) == {"email": "carol@corp.test", "groups": ["beta-team"]}
        assert browser.get(rp.url + "/").status_code == 200                     # the RP's cookie is in the client

        # The OP session is in the same cookie jar: single sign-on, no form this time.
        with pytest.raises(OidcDriverError, match="did not ask for a login"):
            oidc_provider.browser_login(browser, rp.url + "/_gate/login?next=/", "alice@corp.test")
        again = oidc_provider.browser_login(browser, rp.url + "/_gate/login?next=/again", None)
        assert json.loads(again.text)["email"] == "carol@corp.test"

        out = oidc_provider.browser_logout(browser, rp.url + "/_gate/logout")
        assert out.status_code == 200 and str(out.url) == rp.url + "/_gate/signed-out"
        assert browser.get(rp.url + "/").status_code == 302                     # signed out at the RP
        # ... and at the OP: the next sign-in shows the login form again.
        page = oidc_provider.browser_login(browser, rp.url + "/_gate/login?next=/", "alice@corp.test")
        assert json.loads(page.text)["email"] == "alice@corp.test"


def test_logout_to_an_unregistered_uri_is_refused(oidc_provider: OidcProvider) -> None:
    end = oidc_provider.discovery["end_session_endpoint"] + "?" + urlencode({
        "client_id": "mlflow-gate", "post_logout_redirect_uri": "http://127.0.0.1:9/elsewhere"})
    with httpx.Client() as browser:
        assert browser.get(end).status_code == 400


# ---------------------------------------------------------------------------------------------------- users


def test_users_groups_and_claims_change_live(oidc_provider: OidcProvider, oidc_gate_url: str,
                                             oidc_groups: dict[str, list[str]]) -> None:
    try:
        oidc_provider.set_users(groups={**oidc_groups, "alice@corp.test": ["alpha", "mlflow-admins"],
                                        "ci-bot": ["ci"]},
                                claims={"eve@corp.test": {"email_verified": False}})
        assert validate(oidc_provider, oidc_provider.mint_jwt_access_token("alice@corp.test"),
                        oidc_gate_url)["groups"] == ["alpha", "mlflow-admins"]
        assert validate(oidc_provider, oidc_provider.client_credentials_token(), oidc_gate_url)["groups"] == ["ci"]
        eve = oidc_provider.authorization_code_tokens("eve@corp.test")
        assert jwt_parts(eve["id_token"])[1]["email_verified"] is False
    finally:
        oidc_provider.set_users(groups=oidc_groups, claims={})
    assert validate(oidc_provider, oidc_provider.mint_jwt_access_token("alice@corp.test"),
                    oidc_gate_url)["groups"] == ["alpha"]


# ---------------------------------------------------------------------------------------------------- keys


def test_live_key_rotation(fresh_oidc_provider: OidcProvider) -> None:
    resource = "http://127.0.0.1:9"
    op = fresh_oidc_provider.start(resource=resource, groups={"alice@corp.test": ["alpha"]})
    [first] = op.current_kids()
    old_token = op.client_credentials_token()
    old_user_token = op.mint_jwt_access_token("alice@corp.test")
    assert jwt_parts(old_token)[0]["kid"] == first

    kids = op.rotate_keys()                                       # no restart
    assert len(kids) == 2 and kids[1] == first and op.current_kids() == kids
    new_token = op.client_credentials_token()
    assert jwt_parts(new_token)[0]["kid"] == kids[0]
    assert jwt_parts(op.mint_jwt_access_token("alice@corp.test"))[0]["kid"] == kids[0]
    for token in (old_token, old_user_token, new_token):          # the old key is still published
        validate(op, token, resource)

    assert op.drop_old_keys() == [kids[0]] == op.current_kids()
    validate(op, new_token, resource)
    for token in (old_token, old_user_token):
        with pytest.raises(JoseError):
            validate(op, token, resource)


def test_key_rotation_by_command_line_and_restart(fresh_oidc_provider: OidcProvider) -> None:
    op = fresh_oidc_provider.start(resource="http://127.0.0.1:9")
    [first] = op.current_kids()
    port, issuer = op.port, op.issuer
    assert op.workdir is not None
    env = {**os.environ, "OP_KEYS": str(op.workdir / "op-keys.json")}
    cli = subprocess.run(["node", str(OP_SCRIPT), "rotate"], cwd=OP_DIR, env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    kids = cli.stdout.strip().split(",")
    assert len(kids) == 2 and kids[1] == first
    deadline = time.monotonic() + 5                               # the running OP watches its key file
    while op.current_kids() != kids:
        assert time.monotonic() < deadline, f"the OP did not pick up the rotated key file:\n{op.log()}"
        time.sleep(0.05)
    assert jwt_parts(op.client_credentials_token())[0]["kid"] == kids[0]

    refresh_token = op.authorization_code_tokens("alice@corp.test")["refresh_token"]
    op.restart()                                                  # same port, same key file, state lost
    assert (op.port, op.issuer) == (port, issuer) and op.current_kids() == kids
    lost = op.token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                            "mlflow-gate", "gate-secret")
    assert lost.status_code == 400 and lost.json()["error"] == "invalid_grant"

    op.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{issuer}/jwks", timeout=2)
