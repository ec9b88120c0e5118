"""mlflow-gate with a real OpenID provider (tests/oidc/op.mjs) in front of a real `mlflow server`.

Browser sign-in (code + PKCE, state, nonce) driven with httpx, the session cookie and its CSRF guard, sign-out at
the provider, bearer JWT validation against forged and rotated keys, the real `mlflow` client with user and
client_credentials JWTs, personal tokens minted from a browser session, and `mlflow-gate login` (device grant).

The key-rotation test changes the session OP's keys; it is the last test of this module and every other test mints
its own tokens.
"""
from __future__ import annotations

import configparser
import contextlib
import html
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import mlflow
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.integration.gate_it import denied, uid
from tests.integration.oidc.jwts import (
    SEARCH,
    assert_alg_none_refused,
    assert_hs256_with_public_key_refused,
    assert_tampering_refused,
    assert_unauthenticated,
    bad_claims,
    bearer,
    forge,
    op_signing_key,
)
from tests.oidc.provider import OidcProvider, jwt_parts
from tests.support.client import UserClient
from tests.support.gate import Gate, gate_command
from tests.support.process import child_env

# One mlflow server is enough (sign-in does not touch the store): reuse the session's sqlite one.
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

ALICE, BOB, CAROL = "alice@corp.test", "bob@corp.test", "carol@corp.test"
SESSION_COOKIE = "mlflow_gate_session"


# ---------------------------------------------------------------------------------------------------- helpers


class Browser(httpx.Client):
    """An httpx client that behaves like a browser's cookie jar and remembers every response it got."""

    def __init__(self) -> None:
        self.seen: list[httpx.Response] = []
        super().__init__(timeout=20, event_hooks={"response": [self.seen.append]},
                         headers={"Accept": "text/html,application/xhtml+xml"})

    def from_path(self, path: str) -> list[httpx.Response]:
        return [r for r in self.seen if r.request.url.path == path]


@contextlib.contextmanager
def sign_in(op: OidcProvider, gate: Gate, login: str, next_path: str = "/") -> Iterator[Browser]:
    """A fresh browser signed in as `login` through the OP's login form."""
    with Browser() as b:
        page = op.browser_login(b, f"{gate.url}/_gate/login?next={next_path}", login)
        assert page.status_code == 200, page.text[:500]
        assert b.cookies.get(SESSION_COOKIE), "no session cookie after sign-in"
        yield b


def set_cookie_headers(r: httpx.Response, name: str) -> list[str]:
    return [v for v in r.headers.get_list("set-cookie") if v.split("=", 1)[0].strip() == name]


def cookie_attributes(header: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for part in header.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        attrs[k.lower()] = v
    return attrs


def browser_resolve(base: str, location: str) -> str:
    """Resolve a Location header the way a browser does (WHATWG URL): tabs and newlines are removed, leading and
    trailing C0 controls and spaces stripped, and a backslash counts as a slash in http(s) URLs."""
    loc = re.sub(r"[\t\n\r]", "", location).strip("".join(chr(c) for c in range(0x21)))
    return urljoin(base, loc.replace("\\", "/"))


def origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def assert_small_error_page(r: httpx.Response, *, words: str | None = None) -> None:
    assert 400 <= r.status_code < 500, f"expected a 4xx page, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert len(r.content) < 8000 and "Traceback" not in r.text
    assert not set_cookie_headers(r, SESSION_COOKIE) or all(
        cookie_attributes(h).get("max-age") == "0" for h in set_cookie_headers(r, SESSION_COOKIE))
    if words:
        assert words.lower() in r.text.lower(), r.text
















# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def alice_browser(oidc_gate: Gate, oidc_provider: OidcProvider) -> Iterator[Browser]:
    """alice, signed in through the OP; shared by tests that only read or add their own objects."""
    with sign_in(oidc_provider, oidc_gate, ALICE) as b:
        yield b


@pytest.fixture(scope="module")
def bob_experiment(oidc_gate: Gate, oidc_provider: OidcProvider) -> tuple[str, str]:
    """An experiment in team beta's prefix, created by bob with his provider JWT: (id, name)."""
    bob = UserClient(oidc_gate.url, BOB, oidc_provider.mint_jwt_access_token(BOB))
    name = f"beta/oidc-{uid()}"
    return bob.create_experiment(name), name


@pytest.fixture(scope="module")
def other_issuer(oidc_gate_url: str) -> Iterator[OidcProvider]:
    """A second, independent OP with its own keys that issues tokens for the same audience (the gate's URL)."""
    op = OidcProvider().start(resource=oidc_gate_url, groups={ALICE: ["alpha"]})
    try:
        yield op
    finally:
        op.stop()


# ---------------------------------------------------------------------------------------------------- 1. sign-in


def test_browser_sign_in_with_pkce_state_nonce_sets_the_session_and_lands_on_next(
        oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    with Browser() as b:
        start = b.get(f"{oidc_gate.url}/_gate/login?next=/%23/experiments")
        assert start.status_code in (302, 303, 307), start.text[:300]
        location = start.headers["location"]
        assert location.startswith(oidc_provider.authorization_endpoint + "?"), location
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert query["response_type"] == "code" and query["client_id"] == "mlflow-gate"
        assert query["redirect_uri"] == f"{oidc_gate.url}/_gate/callback"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) >= 43
        assert len(query["state"]) >= 16 and len(query["nonce"]) >= 16
        assert "openid" in query["scope"].split()

        page = oidc_provider._follow(b, start, login=ALICE, require_login=True)

        [callback] = b.from_path("/_gate/callback")
        assert parse_qs(callback.request.url.query.decode())["state"] == [query["state"]]
        assert callback.status_code in (302, 303) and callback.headers["location"] == "/#/experiments"
        [cookie] = set_cookie_headers(callback, SESSION_COOKIE)
        attrs = cookie_attributes(cookie)
        assert "httponly" in attrs and attrs.get("samesite", "").lower() == "lax" and attrs.get("path") == "/"
        assert "secure" not in attrs, "the gate is served over http: a Secure cookie would never come back"
        # Landed on the MLflow UI, at the `next` path (the fragment stays with the browser).
        assert page.status_code == 200 and origin(str(page.url)) == oidc_gate.url
        assert page.url.path == "/" and page.url.fragment == "/experiments"
        assert "<html" in page.text.lower()

        me = b.get(f"{oidc_gate.url}/_gate/me", headers={"Accept": "application/json"})
        assert me.status_code == 200, me.text
        info = me.json()
        assert info["id"] == ALICE and info["groups"] == ["alpha"] and info["via"] == "session"
        assert info["teams"] == {"alpha": "member"} and info["admin"] is False
        html_me = b.get(f"{oidc_gate.url}/_gate/me")
        assert html_me.status_code == 200 and "text/html" in html_me.headers["content-type"]
        assert ALICE in html_me.text
        # The session is a credential for API calls too.
        assert b.get(oidc_gate.url + SEARCH, headers={"Accept": "application/json"}).status_code == 200


def test_groups_from_the_provider_make_team_members(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    with sign_in(oidc_provider, oidc_gate, CAROL) as b:         # group beta-team -> member of beta
        info = b.get(f"{oidc_gate.url}/_gate/me", headers={"Accept": "application/json"}).json()
    assert info["id"] == CAROL and info["groups"] == ["beta-team"] and info["teams"] == {"beta": "member"}


def test_forged_or_replayed_state_gives_a_small_4xx_page(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    callback = f"{oidc_gate.url}/_gate/callback"
    with Browser() as b:
        # A sign-in started here (the gate keeps its state), answered with another state.
        start = b.get(f"{oidc_gate.url}/_gate/login?next=/")
        assert start.status_code in (302, 303)
        assert_small_error_page(b.get(callback, params={"code": "x", "state": "forged-state-value"}), words="state")
        assert not b.cookies.get(SESSION_COOKIE)
    with Browser() as b:                                        # no sign-in started at all
        assert_small_error_page(b.get(callback, params={"code": "x", "state": "forged-state-value"}))
        assert_small_error_page(b.get(callback))
        assert_small_error_page(b.get(callback, params={"code": "x"}))

    # A real, completed sign-in: its callback URL (code + state) replayed.
    with sign_in(oidc_provider, oidc_gate, ALICE) as b:
        [done] = b.from_path("/_gate/callback")
        replay_url = str(done.request.url)
        b.cookies.delete(SESSION_COOKIE)
        assert_small_error_page(b.get(replay_url))              # same browser: the state was used up
        assert not b.cookies.get(SESSION_COOKIE)
    with Browser() as b:                                        # another browser (an attacker with the URL)
        assert_small_error_page(b.get(replay_url))
        assert not b.cookies.get(SESSION_COOKIE)


def test_access_denied_at_the_provider_gives_a_small_4xx_page(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    with Browser() as b:
        r = b.get(f"{oidc_gate.url}/_gate/login?next=/")
        while r.is_redirect:                                   # to the OP's login page
            assert r.next_request is not None and r.next_request.url.host == "127.0.0.1"
            r = b.send(r.next_request)
        assert origin(str(r.url)) == oidc_provider.issuer and 'name="login"' in r.text
        abort = re.search(r'href="([^"]*/abort)"', r.text)
        assert abort, "the OP's login page has no cancel link"
        r = b.get(urljoin(str(r.url), abort.group(1)))          # the user cancels
        while r.is_redirect and r.request.url.path != "/_gate/callback":
            assert r.next_request is not None and r.next_request.url.host == "127.0.0.1"
            r = b.send(r.next_request)
        assert r.request.url.path == "/_gate/callback"
        assert parse_qs(r.request.url.query.decode())["error"] == ["access_denied"]
        assert_small_error_page(r, words="cancelled")
        assert not b.cookies.get(SESSION_COOKIE)
    with Browser() as b:                                        # the same answer, hand-made
        assert_small_error_page(b.get(f"{oidc_gate.url}/_gate/callback",
                                      params={"error": "access_denied", "state": "whatever"}))


# `next` values (as the gate's query string receives them) that try to send the browser elsewhere after sign-in.
OPEN_REDIRECTS = [
    "//evil.test", "//evil.test/%2F..", "https://evil.test", "http:evil.test", "https:/evil.test", "/\\evil.test",
    "\\\\evil.test", "\\/evil.test", "/\\/evil.test", "///evil.test", "////evil.test", " //evil.test",
    "/\t/evil.test", "/\n/evil.test", "javascript:alert(document.domain)", "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>", "evil.test", "@evil.test", "//127.0.0.1:1/", "http://127.0.0.1:1/",
    "//user@evil.test", "/%2F%2Fevil.test", "%2F%2Fevil.test", "/%5Cevil.test", "/%09/evil.test", "/%0a/evil.test",
    "%09//evil.test", "/.//evil.test", "/_gate/logout", "/_gate/login?next=//evil.test",
]
RAW_OPEN_REDIRECTS = [                  # already percent-encoded in the query: decoded once by the gate
    "/%2F%2Fevil.test", "%2F%2Fevil.test", "/%5Cevil.test", "%5C%5Cevil.test", "/%09/evil.test",
    "%2F%5Cevil.test", "/%252F%252Fevil.test", "https%3A%2F%2Fevil.test",
]


def test_next_never_leaves_the_gate_after_sign_in(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    gate_origin = oidc_gate.url
    failures: list[str] = []
    with sign_in(oidc_provider, oidc_gate, ALICE) as b:
        cases = [("next=" + quote(v, safe=""), v) for v in OPEN_REDIRECTS] + [("next=" + v, v) for v in
                                                                               RAW_OPEN_REDIRECTS]
        for query, shown in cases:
            b.seen.clear()
            if b.cookies.get(SESSION_COOKIE):        # signed in: the page says so, its links stay on the gate
                here = b.get(f"{gate_origin}/_gate/login?{query}")
                for href in re.findall(r'href="([^"]*)"', here.text):
                    if origin(browser_resolve(str(here.url), html.unescape(href))) != gate_origin:
                        failures.append(f"{shown!r}: the signed-in page links off the gate: {href!r}")
            b.cookies.delete(SESSION_COOKIE)          # signed out of the gate, still signed in at the OP
            r = b.get(f"{gate_origin}/_gate/login?{query}")
            for _ in range(20):                               # single sign-on at the OP: no form, straight back
                if r.request.url.path == "/_gate/callback" or not r.is_redirect:
                    break
                assert r.next_request is not None
                if r.next_request.url.host != "127.0.0.1":
                    failures.append(f"{shown!r}: redirected off loopback before the callback: {r.next_request.url}")
                    break
                r = b.send(r.next_request)
            if r.request.url.path != "/_gate/callback":
                failures.append(f"{shown!r}: the flow ended at {r.url} ({r.status_code}) without a callback")
                continue
            if r.status_code not in (302, 303):
                failures.append(f"{shown!r}: callback answered {r.status_code}")
                continue
            location = r.headers["location"]
            landed = browser_resolve(str(r.request.url), location)
            if origin(landed) != gate_origin or urlsplit(landed).scheme not in ("http", "https"):
                failures.append(f"{shown!r}: lands on {landed!r} (Location {location!r})")
            elif urlsplit(landed).path.startswith("/_gate/log"):
                failures.append(f"{shown!r}: lands on the gate's {urlsplit(landed).path} (a sign-in loop)")
    assert not failures, "open redirects after sign-in:\n" + "\n".join(failures)


def test_page_load_without_a_session_goes_to_sign_in_and_back(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    with Browser() as b:
        r = b.get(f"{oidc_gate.url}/")
        assert r.status_code == 302 and r.headers["location"].startswith("/_gate/login?next=")
        page = oidc_provider.browser_login(b, f"{oidc_gate.url}/", BOB)
        assert page.status_code == 200 and str(page.url) == f"{oidc_gate.url}/"
    # API calls without a credential get JSON, not a redirect.
    api = httpx.get(oidc_gate.url + SEARCH, timeout=10)
    assert_unauthenticated(api)


# ---------------------------------------------------------------------------------------------------- 2. CSRF


def test_cookie_authenticated_writes_need_a_same_origin_origin_or_referer(
        oidc_gate: Gate, alice_browser: Browser) -> None:
    b = alice_browser
    create = f"{oidc_gate.url}/api/2.0/mlflow/experiments/create"
    json_headers = {"Accept": "application/json", "Content-Type": "application/json"}
    refused = {
        "evil origin": {"Origin": "http://evil.test"},
        "evil referer": {"Referer": "http://evil.test/page"},
        "same host, other port": {"Origin": "http://127.0.0.1:1"},
        "origin null": {"Origin": "null"},
        "neither header": {},
        "evil origin, own referer": {"Origin": "http://evil.test", "Referer": f"{oidc_gate.url}/"},
    }
    names = {}
    for what, headers in refused.items():
        names[what] = f"alpha/csrf-{uid()}"
        r = b.post(create, json={"name": names[what]}, headers={**json_headers, **headers})
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text[:300]}"
        assert r.json()["error_code"] == "PERMISSION_DENIED", what

    ok_name = f"alpha/csrf-ok-{uid()}"
    r = b.post(create, json={"name": ok_name}, headers={**json_headers, "Origin": oidc_gate.url})
    assert r.status_code == 200, r.text
    assert r.json()["experiment_id"]
    r = b.post(create, json={"name": ok_name + "-ref"}, headers={**json_headers, "Referer": f"{oidc_gate.url}/#/x"})
    assert r.status_code == 200, r.text

    get = f"{oidc_gate.url}/api/2.0/mlflow/experiments/get-by-name"
    assert b.get(get, params={"experiment_name": ok_name}, headers=json_headers).status_code == 200
    for what, name in names.items():                         # nothing was created by the refused requests
        r = b.get(get, params={"experiment_name": name}, headers=json_headers)
        assert r.status_code == 404, f"{what}: {r.status_code} {r.text[:200]}"


# ---------------------------------------------------------------------------------------------------- 3. sign-out


def test_logout_clears_the_cookie_and_signs_out_at_the_provider(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    with sign_in(oidc_provider, oidc_gate, ALICE) as b:
        r = b.get(f"{oidc_gate.url}/_gate/logout")
        assert r.status_code in (302, 303), r.text[:300]
        [cleared] = set_cookie_headers(r, SESSION_COOKIE)
        assert cookie_attributes(cleared).get("max-age") == "0" and cleared.startswith(f"{SESSION_COOKIE}=;")
        assert not b.cookies.get(SESSION_COOKIE)
        end = r.headers["location"]
        assert end.startswith(oidc_provider.discovery["end_session_endpoint"] + "?"), end
        q = {k: v[0] for k, v in parse_qs(urlsplit(end).query).items()}
        assert q["client_id"] == "mlflow-gate"
        assert q["post_logout_redirect_uri"] == f"{oidc_gate.url}/_gate/signed-out"

        # Answer the OP's "sign out?" page; it sends the browser back to the gate.
        out = oidc_provider.browser_logout(b, f"{oidc_gate.url}/_gate/logout")
        assert out.status_code == 200 and origin(str(out.url)) == oidc_gate.url, (out.url, out.text[:300])
        assert out.url.path == "/_gate/signed-out" and "signed out" in out.text

        me = b.get(f"{oidc_gate.url}/_gate/me", headers={"Accept": "application/json"})
        assert_unauthenticated(me)
        page = b.get(f"{oidc_gate.url}/")
        assert page.status_code == 302 and page.headers["location"] == "/_gate/login?next=%2F"
        # ... and the OP session is gone too: signing in asks for the login form again.
        while page.is_redirect:
            assert page.next_request is not None and page.next_request.url.host == "127.0.0.1"
            page = b.send(page.next_request)
        assert origin(str(page.url)) == oidc_provider.issuer and 'name="login"' in page.text


# ---------------------------------------------------------------------------------------------------- 4. bearer JWTs


def test_real_provider_jwt_is_accepted_and_a_re_signed_copy_too(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    """The control for the forgeries below: the forging harness itself produces tokens the gate accepts."""
    token = oidc_provider.mint_jwt_access_token(ALICE)
    assert bearer(oidc_gate, token).status_code == 200
    me = bearer(oidc_gate, token, "/_gate/me").json()
    assert me["id"] == ALICE and me["via"] == "jwt" and me["groups"] == ["alpha"]
    _, claims = jwt_parts(token)
    copy = forge(op_signing_key(oidc_provider), {**claims, "jti": uid()})
    assert bearer(oidc_gate, copy).status_code == 200


def test_alg_none_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    assert_alg_none_refused(oidc_gate, oidc_provider.mint_jwt_access_token(ALICE))


def test_hs256_signed_with_the_providers_public_key_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    assert_hs256_with_public_key_refused(oidc_gate, oidc_provider.mint_jwt_access_token(ALICE), oidc_provider.jwks())


@pytest.mark.parametrize("change", bad_claims("mlflow-gate"))
def test_validly_signed_jwt_with_bad_claims_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider,
                                                       change: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
    """Signed with the OP's own private key (so only the claim check can refuse it)."""
    _, claims = jwt_parts(oidc_provider.mint_jwt_access_token(ALICE))
    token = forge(op_signing_key(oidc_provider), change({**claims, "jti": uid()}, int(time.time())))
    assert_unauthenticated(bearer(oidc_gate, token))


def test_unknown_kid_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    _, claims = jwt_parts(oidc_provider.mint_jwt_access_token(ALICE))
    key = op_signing_key(oidc_provider)
    body = assert_unauthenticated(bearer(oidc_gate, forge(key, claims, kid="k-not-published")))
    assert "k-not-published" in body["message"]
    # No kid at all, signed by a key the OP never published.
    stranger = RSAKey.generate_key(2048)
    header = {"alg": "RS256", "typ": "at+jwt"}
    assert_unauthenticated(bearer(oidc_gate, jwt.encode(header, claims, stranger, algorithms=["RS256"])))


def test_token_from_a_second_issuer_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider,
                                               other_issuer: OidcProvider) -> None:
    foreign = other_issuer.mint_jwt_access_token(ALICE)
    header, claims = jwt_parts(foreign)
    assert claims["aud"] == oidc_gate.url and claims["email"] == ALICE and claims["iss"] == other_issuer.issuer
    assert header["kid"] not in oidc_provider.current_kids()
    assert_unauthenticated(bearer(oidc_gate, foreign))
    assert_unauthenticated(bearer(oidc_gate, other_issuer.client_credentials_token()))
    # The second issuer's key, claiming to be the first issuer under the first issuer's kid.
    [real_kid] = oidc_provider.current_kids()[:1]
    imposter = forge(op_signing_key(other_issuer), {**claims, "iss": oidc_provider.issuer}, kid=real_kid)
    assert_unauthenticated(bearer(oidc_gate, imposter))


def test_token_signed_with_an_unpublished_key_under_the_real_kid_is_refused(
        oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    header, claims = jwt_parts(oidc_provider.mint_jwt_access_token(ALICE))
    local = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = local.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    key = RSAKey.import_key(pem)
    assert_unauthenticated(bearer(oidc_gate, forge(key, {**claims, "jti": uid()}, kid=header["kid"])))


def test_tampered_payload_is_refused(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.mint_jwt_access_token(ALICE)
    _, claims = jwt_parts(token)
    changed = [{**claims, "email": "root@corp.test"}, {**claims, "groups": ["alpha", "beta"]},
               {**claims, "exp": claims["exp"] + 86400}]
    assert_tampering_refused(oidc_gate, token, changed, oidc_provider.mint_jwt_access_token(BOB))


def test_garbage_bearer_tokens_are_refused(oidc_gate: Gate) -> None:
    for token in ("a.b.c", "x" * 40, "eyJhbGciOiJSUzI1NiJ9..", "..", "a.b", "mgt_not-a-real-token"):
        assert_unauthenticated(bearer(oidc_gate, token))


# ---------------------------------------------------------------------------------------------------- 5. mlflow client


def test_user_jwt_works_with_the_mlflow_client(oidc_gate: Gate, oidc_provider: OidcProvider,
                                               bob_experiment: tuple[str, str]) -> None:
    alice = UserClient(oidc_gate.url, ALICE, oidc_provider.mint_jwt_access_token(ALICE))
    name = f"alpha/oidc-{uid()}"
    exp_id = alice.create_experiment(name)
    assert alice.get_experiment_by_name(name).experiment_id == exp_id
    run = alice.create_run(exp_id)
    alice.log_metric(run.info.run_id, "loss", 0.25)
    got = alice.get_run(run.info.run_id)
    assert got.data.metrics["loss"] == 0.25 and got.data.tags["mlflow.user"] == ALICE
    with denied():
        alice.create_experiment(f"beta/oidc-{uid()}")
    with denied():
        alice.create_run(bob_experiment[0])
    names = {e.name for e in alice.search_experiments(max_results=1000)}
    assert name in names and bob_experiment[1] not in names


def test_client_credentials_jwt_works_for_a_ci_job(oidc_gate: Gate, oidc_provider: OidcProvider,
                                                   bob_experiment: tuple[str, str]) -> None:
    token = oidc_provider.client_credentials_token()
    _, claims = jwt_parts(token)
    assert claims["sub"] == "ci-bot" and "email" not in claims
    ci = UserClient(oidc_gate.url, "ci-bot", token)
    me = bearer(oidc_gate, token, "/_gate/me").json()
    assert me["id"] == "ci-bot" and me["teams"] == {"ci": "member"}

    name = f"ci/nightly-{uid()}"
    with ci.acting():
        mlflow.set_experiment(name)
        with mlflow.start_run(tags={"mlflow.user": "someone-else"}) as active:
            mlflow.log_param("commit", "abc123")
            for step in range(3):
                mlflow.log_metric("accuracy", 0.5 + step / 10, step=step)
            run_id = active.info.run_id
    run = ci.get_run(run_id)
    assert run.data.tags["mlflow.user"] == "ci-bot"
    assert run.data.params["commit"] == "abc123" and run.data.metrics["accuracy"] == pytest.approx(0.7)
    assert ci.get_experiment(run.info.experiment_id).name == name

    # The policy grants team ci read on alpha/: reading works, writing does not; beta is out of reach.
    alice = UserClient(oidc_gate.url, ALICE, oidc_provider.mint_jwt_access_token(ALICE))
    alpha_id = alice.create_experiment(f"alpha/for-ci-{uid()}")
    assert ci.get_experiment(alpha_id).experiment_id == alpha_id
    with denied():
        ci.create_run(alpha_id)
    with denied():
        ci.create_experiment(f"alpha/ci-{uid()}")
    with denied():
        ci.get_experiment(bob_experiment[0])


# ---------------------------------------------------------------------------------------------------- 6. tokens page


def test_personal_tokens_from_the_browser_session(oidc_gate: Gate, oidc_provider: OidcProvider,
                                                  bob_experiment: tuple[str, str]) -> None:
    url = f"{oidc_gate.url}/_gate/tokens"
    with sign_in(oidc_provider, oidc_gate, ALICE) as b:
        assert b.get(url).status_code == 200
        # Cross-site posts (no Origin/Referer, or another site's) mint nothing.
        for headers in ({}, {"Origin": "http://evil.test"}, {"Referer": "http://evil.test/x"}):
            r = b.post(url, data={"name": "evil", "expires_in": "7d"}, headers=headers)
            assert r.status_code == 403 and "mgt_" not in r.text, (headers, r.status_code, r.text[:300])

        page = b.post(url, data={"name": "laptop", "expires_in": "7d"}, headers={"Origin": oidc_gate.url})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:300]
        assert "no-store" in page.headers.get("cache-control", "")
        found = re.search(r"<code id='token'>(mgt_[^<]+)</code>", page.text) or \
            re.search(r'<code id="token">(mgt_[^<]+)</code>', page.text)
        assert found, page.text
        html_token = found.group(1)

        r = b.post(url, json={"name": "ci", "expires_in": "1d"},
                   headers={"Origin": oidc_gate.url, "Accept": "application/json"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text[:300]
        minted = r.json()
        assert minted["user"] == ALICE and minted["token"].startswith("mgt_") and minted["name"] == "ci"
        assert list(minted["groups"]) == ["alpha"]

        listed = b.get(url, headers={"Accept": "application/json"})
        assert listed.status_code == 200
        ids = [t["id"] for t in listed.json()["tokens"]]
        assert minted["id"] in ids and len(ids) == 2
        listing_page = b.get(url)
        assert minted["id"] in listing_page.text
        assert html_token not in listing_page.text and minted["token"] not in listing_page.text   # shown once

    # The minted tokens work as Bearer for the mlflow client, with alice's rights only.
    for token in (html_token, minted["token"]):
        client = UserClient(oidc_gate.url, ALICE, token)
        exp_id = client.create_experiment(f"alpha/pt-{uid()}")
        assert client.get_run(client.create_run(exp_id).info.run_id).data.tags["mlflow.user"] == ALICE
        with denied():
            client.create_experiment(f"beta/pt-{uid()}")
        with denied():
            client.get_experiment(bob_experiment[0])

    # A personal token cannot mint personal tokens (Bearer or Basic).
    as_bearer = httpx.post(url, json={"name": "x"}, timeout=10,
                           headers={"Authorization": f"Bearer {minted['token']}", "Accept": "application/json",
                                    "Origin": oidc_gate.url})
    assert as_bearer.status_code == 403 and "mgt_" not in as_bearer.text, as_bearer.text
    as_basic = httpx.post(url, json={"name": "x"}, timeout=10, auth=(ALICE, minted["token"]),
                          headers={"Accept": "application/json", "Origin": oidc_gate.url})
    assert as_basic.status_code == 403 and "mgt_" not in as_basic.text, as_basic.text


# ---------------------------------------------------------------------------------------------------- 7. CLI login


CLIENT_SCRIPT = """
import sys, mlflow
from mlflow.exceptions import MlflowException
c = mlflow.MlflowClient()
name, beta_id = sys.argv[1], sys.argv[2]
exp_id = c.create_experiment(name)
run = c.create_run(exp_id)
c.log_metric(run.info.run_id, "loss", 0.5)
print("RUN", run.info.run_id, c.get_run(run.info.run_id).data.tags.get("mlflow.user"), flush=True)
for what, call in (("create_run", lambda: c.create_run(beta_id)),
                   ("create_experiment", lambda: c.create_experiment("beta/from-cli-" + name.split("/")[-1]))):
    try:
        call()
        print("ALLOWED", what, flush=True)
    except MlflowException as exc:
        print("DENIED", what, exc.error_code, flush=True)
"""


def test_mlflow_gate_login_with_the_device_grant(oidc_gate: Gate, oidc_provider: OidcProvider,
                                                 bob_experiment: tuple[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen([*gate_command(), "login", oidc_gate.url, "--poll-interval", "1", "--no-browser"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(HOME=str(home)), cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        uri = None
        deadline = time.monotonic() + 30
        while uri is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, f"login exited early ({proc.returncode}): {''.join(out)}"
                continue
            m = re.search(r"(http://127\.0\.0\.1:\d+/device\?user_code=\S+)", line)
            uri = m.group(1) if m else None
        assert uri, f"no verification_uri_complete line on stdout: {''.join(out)}"
        assert uri.startswith(oidc_provider.issuer + "/device?user_code=")
        approved = oidc_provider.device_approve(uri, ALICE)
        assert approved.status_code == 200 and "Sign-in Success" in approved.text
        rc = proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert rc == 0, f"mlflow-gate login exited {rc}:\nstdout: {''.join(out)}\nstderr: {stderr}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert f"as {ALICE}" in "".join(out)

    creds = home / ".mlflow" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    config = configparser.ConfigParser()
    config.read(creds)
    assert config["mlflow"]["mlflow_tracking_username"] == ALICE
    token = config["mlflow"]["mlflow_tracking_password"]
    assert token.startswith("mgt_")
    assert bearer(oidc_gate, token, "/_gate/me").json()["id"] == ALICE

    # A plain mlflow client, with only MLFLOW_TRACKING_URI: it finds the credentials file by itself.
    env = child_env(HOME=str(home), MLFLOW_TRACKING_URI=oidc_gate.url)
    assert not any(k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI" for k in env)
    name = f"alpha/cli-{uid()}"
    r = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, name, bob_experiment[0]], check=False, env=env,
                       cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"client failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    assert re.search(rf"^RUN \w+ {re.escape(ALICE)}$", r.stdout, re.MULTILINE), r.stdout
    assert "DENIED create_run PERMISSION_DENIED" in r.stdout, r.stdout
    assert "DENIED create_experiment PERMISSION_DENIED" in r.stdout, r.stdout
    assert "ALLOWED" not in r.stdout


# ---------------------------------------------------------------------------------------------------- 4b. rotation
# Last in the module: it changes the session OP's signing keys.


def test_key_rotation_is_followed_without_a_restart(oidc_gate: Gate, oidc_provider: OidcProvider) -> None:
    first_kids = oidc_provider.current_kids()
    used = oidc_provider.mint_jwt_access_token(ALICE)           # verified by the gate before the rotation
    unused = oidc_provider.mint_jwt_access_token(BOB)           # never shown to the gate before the key is dropped
    assert jwt_parts(used)[0]["kid"] == first_kids[0]
    assert bearer(oidc_gate, used).status_code == 200
    pid = oidc_gate.proc.pid if oidc_gate.proc else None

    kids = oidc_provider.rotate_keys()
    assert kids[1:] == first_kids
    rotated = oidc_provider.mint_jwt_access_token(ALICE)
    assert jwt_parts(rotated)[0]["kid"] == kids[0]
    r = bearer(oidc_gate, rotated)
    assert r.status_code == 200, f"a token signed with the new key {kids[0]} was refused: {r.text}"
    assert bearer(oidc_gate, used).status_code == 200           # the old key is still published

    assert oidc_provider.drop_old_keys() == [kids[0]]
    # The gate re-fetches the JWKS when it meets a kid it does not know: the next rotation's key.
    newest = oidc_provider.rotate_keys()
    r = bearer(oidc_gate, oidc_provider.mint_jwt_access_token(ALICE))
    assert r.status_code == 200, f"a token signed with the new key {newest[0]} was refused: {r.text}"
    assert first_kids[0] not in oidc_provider.current_kids()

    body = assert_unauthenticated(bearer(oidc_gate, unused))
    assert first_kids[0] in body["message"]
    assert bearer(oidc_gate, rotated).status_code == 200        # the middle key is still published
    assert oidc_gate.proc is not None and oidc_gate.proc.pid == pid and oidc_gate.proc.poll() is None

    r = bearer(oidc_gate, used)
    assert r.status_code == 401, (
        f"a token signed with the dropped key {first_kids[0]} is still accepted ({r.status_code}) because the gate "
        "verified it before the key was dropped: its verification cache outlives the key")
