"""Python driver for the test OpenID provider in `tests/oidc/op.mjs` (npm `oidc-provider` 9.13.3, loopback only).

    from tests.oidc.provider import OidcProvider

    op = OidcProvider().start(resource=gate_url, redirects=[gate_url + "/_gate/callback"],
                              post_logout=[gate_url + "/_gate/signed-out"], groups={"alice@corp.test": ["alpha"]})
    token = op.client_credentials_token()                  # JWT for ci-bot, aud = resource
    at = op.mint_jwt_access_token("alice@corp.test")       # JWT for a user (headless code flow + PKCE)
    page = op.browser_login(httpx.Client(), gate_url + "/_gate/login?next=/", "alice@corp.test")
    op.stop()

Clients registered at the OP (see op.mjs):
  mlflow-gate / gate-secret   confidential, authorization_code + refresh_token, client_secret_basic, PKCE required
  mlflow-cli                  public, device_code + refresh_token
  ci-bot / ci-secret          client_credentials; JWT access token with sub = client_id = ci-bot, no email

Any login id and any password sign in. A login id with an "@" is also the `email` (email_verified true); `groups`
come from the `groups` mapping (login or client id -> list), default none. ID tokens (scope `groups` requested) and
JWT access tokens (always) carry `email` and `groups`.

Nothing here talks to anything but 127.0.0.1: following a redirect to another host raises `OidcDriverError`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from tests.support.process import LogSource, Process

OP_DIR = Path(__file__).resolve().parent
OP_SCRIPT = OP_DIR / "op.mjs"

GATE_CLIENT_ID, GATE_CLIENT_SECRET = "mlflow-gate", "gate-secret"
CLI_CLIENT_ID = "mlflow-cli"
CI_CLIENT_ID, CI_CLIENT_SECRET = "ci-bot", "ci-secret"
# Registered on the mlflow-gate client for the driver's headless code flows; nothing listens there (op.mjs).
TEST_REDIRECT = "http://127.0.0.1:9/oidc-test/callback"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_SCOPE = "openid offline_access email profile groups"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
MAX_HOPS = 30


class OidcDriverError(RuntimeError):
    """The provider or a flow through it did not behave as the driver expected."""


def unavailable_reason() -> str | None:
    """Why the test OP cannot run on this machine, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (the test OpenID provider tests/oidc/op.mjs needs Node.js >= 20)"
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"tests/oidc/node_modules is missing: run `npm ci` in {OP_DIR} (or `npm --prefix tests/oidc ci`)"
    return None


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and claims of a JWT (for assertions; verification is the gate's job)."""
    def part(s: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))  # type: ignore[no-any-return]
    header, claims, _ = token.split(".")
    return part(header), part(claims)


# ---------------------------------------------------------------------------------------------------- HTML forms

@dataclass
class Form:
    action: str
    method: str
    id: str | None
    fields: dict[str, str] = field(default_factory=dict)    # inputs with a name (hidden, text, password)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = Form(action=a.get("action", ""), method=a.get("method", "get").lower(), id=a.get("id"))
            self.forms.append(self._current)
        elif tag == "input" and a.get("name"):
            form = self._current
            if form is None and a.get("form"):
                form = next((f for f in self.forms if f.id == a["form"]), None)
            if form is not None:
                form.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


# ---------------------------------------------------------------------------------------------------- the provider

class OidcProvider(LogSource):
    """One `node op.mjs` process. Start it with `start()`, stop it with `stop()` (or use it as a context manager)."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.process: Process | None = None
        self.port: int | None = None
        self.issuer = ""
        self.resource = ""
        self._env: dict[str, str] = {}
        self._discovery: dict[str, Any] | None = None

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self, port: int | None = None, resource: str = "http://127.0.0.1:5000",
              redirects: list[str] | None = None, post_logout: list[str] | None = None,
              groups: dict[str, list[str]] | None = None, claims: dict[str, dict[str, Any]] | None = None,
              at_ttl: int = 300, timeout: float = 20.0) -> Self:
        """Start the OP on 127.0.0.1:`port` (None: a free port chosen by the OP itself) and wait until its
        discovery document answers. `resource` is the audience of JWT access tokens (the gate's URL);
        `redirects` / `post_logout` are the mlflow-gate client's redirect URIs (default: resource + /_gate/callback,
        none); `groups` maps login or client id -> groups; `claims` maps login -> extra/overriding user claims."""
        if self.process is not None:
            raise OidcDriverError("the OP is already running")
        reason = unavailable_reason()
        if reason:
            raise OidcDriverError(reason)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="mlflow-gate-op-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        resource = resource.rstrip("/")
        self._env = {
            "OP_PORT": str(port or 0),
            "OP_RESOURCE": resource,
            "OP_KEYS": str(self.workdir / "op-keys.json"),
            "OP_REDIRECTS": ",".join(redirects if redirects is not None else [resource + "/_gate/callback"]),
            "OP_POST_LOGOUT": ",".join(post_logout or []),
            "OP_AT_TTL": str(at_ttl),
            "OP_GROUPS": json.dumps(groups or {}),
            "OP_CLAIMS": json.dumps(claims or {}),
        }
        self.resource = resource
        self._spawn(timeout)
        return self

    def _spawn(self, timeout: float) -> None:
        assert self.workdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("OP_")}
        env.update(self._env, OP_EXIT_ON_STDIN_EOF="1", NO_COLOR="1")
        # stdin stays an open pipe: when this Python process dies, the OP sees EOF and exits.
        process = Process("OIDC provider", ["node", str(OP_SCRIPT)], env, OP_DIR, self.workdir / "op.log",
                          stdin_pipe=True)
        offset = process.log_size()
        self.process = process.start()
        deadline = time.monotonic() + timeout
        ready: dict[str, Any] | None = None
        while ready is None:
            rc = process.proc.poll()
            if rc is not None:
                out = self.log()
                self._kill()
                raise OidcDriverError(f"the OP exited with {rc}:\n{out}")
            for line in process.log_since(offset).splitlines():
                if line.startswith("OP_READY "):
                    ready = json.loads(line[len("OP_READY "):])
            if ready is None:
                if time.monotonic() > deadline:
                    out = self.log()
                    self._kill()
                    raise OidcDriverError(f"the OP did not start within {timeout} s:\n{out}")
                time.sleep(0.05)
        self.port = int(ready["port"])
        self.issuer = str(ready["issuer"])
        self._env["OP_PORT"] = str(self.port)           # a restart comes back on the same port
        self._discovery = None
        while True:                                       # listening already; this proves the app answers
            try:
                r = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=2)
                if r.status_code == 200:
                    self._discovery = r.json()
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                out = self.log()
                self._kill()
                raise OidcDriverError(f"the OP's discovery document did not answer within {timeout} s:\n{out}")
            time.sleep(0.05)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port with the same key file. All sessions, grants and refresh tokens
        are lost (the OP keeps them in memory)."""
        self._kill()
        self._spawn(timeout)

    def stop(self) -> None:
        """Stop the OP (its whole process group) and remove its scratch directory if the driver created it."""
        self._kill()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _kill(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
        self.process = None

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive

    def logs(self) -> dict[str, Path]:
        return {"OIDC provider": self.workdir / "op.log"} if self.workdir is not None else {}

    def log(self) -> str:
        """Everything the OP printed (warnings, key reloads, errors)."""
        if self.workdir is None or not (self.workdir / "op.log").exists():
            return ""
        return (self.workdir / "op.log").read_text(errors="replace")

    # -------------------------------------------------------------------------------------------- metadata

    @property
    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            r = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=5)
            r.raise_for_status()
            self._discovery = r.json()
        return self._discovery

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery["token_endpoint"])

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery["authorization_endpoint"])

    @property
    def jwks_uri(self) -> str:
        return str(self.discovery["jwks_uri"])

    def jwks(self) -> dict[str, Any]:
        """The published JWKS (public keys; the first one signs new tokens)."""
        r = httpx.get(self.jwks_uri, timeout=5)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def current_kids(self) -> list[str]:
        """Key ids in the published JWKS, newest (signing) first."""
        return [str(k["kid"]) for k in self.jwks()["keys"]]

    # -------------------------------------------------------------------------------------------- live controls

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.request(method, f"{self.issuer}/_op/{path}", json=body, timeout=10)
        if r.status_code != 200:
            raise OidcDriverError(f"{method} /_op/{path} answered {r.status_code}: {r.text}")
        return r.json()  # type: ignore[no-any-return]

    def rotate_keys(self) -> list[str]:
        """Live, no restart: a new signing key goes in front; the old ones stay published (old tokens still
        validate). Returns the kids, newest first. Same as `node op.mjs rotate` with the OP's OP_KEYS."""
        return [str(k) for k in self._control("POST", "rotate")["kids"]]

    def drop_old_keys(self) -> list[str]:
        """Live, no restart: keep only the newest key; tokens signed by the others no longer validate."""
        return [str(k) for k in self._control("POST", "drop-old")["kids"]]

    def set_users(self, groups: dict[str, list[str]] | None = None,
                  claims: dict[str, dict[str, Any]] | None = None) -> None:
        """Replace the groups mapping and/or the extra-claims mapping for tokens minted from now on."""
        body: dict[str, Any] = {}
        if groups is not None:
            body["groups"] = groups
            self._env["OP_GROUPS"] = json.dumps(groups)
        if claims is not None:
            body["claims"] = claims
            self._env["OP_CLAIMS"] = json.dumps(claims)
        self._control("PUT", "users", body)

    # -------------------------------------------------------------------------------------------- token endpoint

    def token_request(self, data: dict[str, str], client_id: str, secret: str | None = None) -> httpx.Response:
        """POST to the token endpoint (client_secret_basic when `secret` is given, else a public client)."""
        if secret is None:
            return httpx.post(self.token_endpoint, data={**data, "client_id": client_id}, timeout=10)
        return httpx.post(self.token_endpoint, data=data, auth=(client_id, secret), timeout=10)

    def _tokens(self, r: httpx.Response) -> dict[str, Any]:
        if r.status_code != 200:
            raise OidcDriverError(f"token endpoint answered {r.status_code}: {r.text}")
        return r.json()  # type: ignore[no-any-return]

    def client_credentials_token(self, client_id: str = CI_CLIENT_ID, secret: str = CI_CLIENT_SECRET,
                                 scope: str | None = "mlflow") -> str:
        """A JWT access token for a machine client: sub = client_id, aud = the resource, no email."""
        data = {"grant_type": "client_credentials"}
        if scope:
            data["scope"] = scope
        return str(self._tokens(self.token_request(data, client_id, secret))["access_token"])

    def refresh(self, refresh_token: str, client_id: str = GATE_CLIENT_ID,
                secret: str | None = GATE_CLIENT_SECRET) -> dict[str, Any]:
        """Use a refresh token; returns the token response (a new JWT access token)."""
        return self._tokens(self.token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                                               client_id, secret))

    def authorize(self, login: str, password: str = "x", *, client_id: str = GATE_CLIENT_ID,
                  redirect_uri: str = TEST_REDIRECT, scope: str = USER_SCOPE, code_challenge: str | None = None,
                  state: str | None = None, **params: str) -> dict[str, str]:
        """The browser half of an authorization-code flow, headless, as `login`, in a fresh cookie jar: GET the
        authorization endpoint, sign in, and stop at the redirect to `redirect_uri` (which is never contacted).
        Returns that redirect's query: code and state, or error and error_description. PKCE is S256 with
        `code_challenge` (None: no PKCE at all, which the OP refuses). `params`: more authorization parameters."""
        query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
                 "state": state or secrets.token_urlsafe(16), **params}
        if code_challenge is not None:
            query.update(code_challenge=code_challenge, code_challenge_method="S256")
        with httpx.Client(timeout=10) as browser:
            back = self._follow(browser, browser.get(self.authorization_endpoint + "?" + urlencode(query)),
                                login=login, password=password, stop_at=redirect_uri)
        return {k: v[0] for k, v in parse_qs(urlsplit(str(back)).query).items()}

    def authorization_code_tokens(self, login: str, password: str = "x", *, client_id: str = GATE_CLIENT_ID,
                                  secret: str | None = GATE_CLIENT_SECRET, redirect_uri: str = TEST_REDIRECT,
                                  scope: str = USER_SCOPE) -> dict[str, Any]:
        """A complete headless authorization-code flow with PKCE (S256), state and nonce, as `login`, and the code
        exchange (client_secret_basic when `secret` is given). Returns the token response: access_token (JWT,
        aud = resource, with email and groups), id_token (email, groups, nonce), refresh_token."""
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        back = self.authorize(login, password, client_id=client_id, redirect_uri=redirect_uri, scope=scope,
                              code_challenge=challenge, state=state, nonce=nonce)
        if "error" in back:
            raise OidcDriverError(f"authorization failed: {back}")
        if back.get("state") != state:
            raise OidcDriverError(f"state mismatch: {back}")
        tokens = self._tokens(self.token_request(
            {"grant_type": "authorization_code", "code": back["code"], "redirect_uri": redirect_uri,
             "code_verifier": verifier}, client_id, secret))
        if "id_token" in tokens and jwt_parts(tokens["id_token"])[1].get("nonce") != nonce:
            raise OidcDriverError("nonce mismatch in the ID token")
        return tokens

    def mint_jwt_access_token(self, login: str, **kwargs: Any) -> str:
        """A real JWT access token for a user (aud = the resource, with email and groups), from a headless
        authorization-code flow of the mlflow-gate client. kwargs: see `authorization_code_tokens`."""
        return str(self.authorization_code_tokens(login, **kwargs)["access_token"])

    # -------------------------------------------------------------------------------------------- device grant

    def device_authorization(self, client_id: str = CLI_CLIENT_ID, scope: str = USER_SCOPE) -> dict[str, Any]:
        """Start a device grant: device_code, user_code, verification_uri(_complete), expires_in (no interval)."""
        r = httpx.post(self.issuer + "/device/auth", data={"client_id": client_id, "scope": scope}, timeout=10)
        if r.status_code != 200:
            raise OidcDriverError(f"device authorization answered {r.status_code}: {r.text}")
        return r.json()  # type: ignore[no-any-return]

    def device_token(self, device_code: str, client_id: str = CLI_CLIENT_ID) -> httpx.Response:
        """One poll of the token endpoint for a device code (400 authorization_pending until approved)."""
        return self.token_request({"grant_type": DEVICE_GRANT, "device_code": device_code}, client_id)

    def device_approve(self, verification_uri_complete: str, login: str, password: str = "x",
                       approve: bool = True) -> httpx.Response:
        """What the user does in a browser: open the verification page, confirm the code (or abort when
        `approve` is False), sign in. Returns the OP's last page ("Sign-in Success" on approval)."""
        with httpx.Client(timeout=10) as browser:
            return self._follow(browser, browser.get(verification_uri_complete), login=login if approve else None,
                                password=password, device_approve=approve)

    # -------------------------------------------------------------------------------------------- browser flows

    def browser_login(self, http_client: httpx.Client, start_url: str, login: str | None,
                      password: str = "x") -> httpx.Response:
        """Sign in through a relying party (e.g. the gate's `/_gate/login?next=/`) the way a browser would:
        follow redirects to the OP, submit the dev login form as `login` (and a consent form if one appears),
        follow the redirects back through the callback and on. Returns the final (non-redirect) response;
        cookies stay in `http_client`.

        `http_client` shares one cookie jar between the gate and the OP (both on 127.0.0.1, and cookies ignore
        ports), so a second sign-in in the same client reuses the OP session (single sign-on). With `login` given
        the OP must show its login form, else OidcDriverError; pass login=None to expect single sign-on."""
        first = http_client.get(start_url, follow_redirects=False)
        return self._follow(http_client, first, login=login, password=password, require_login=login is not None)

    def browser_logout(self, http_client: httpx.Client, start_url: str, confirm: bool = True) -> httpx.Response:
        """Sign out through a relying party (e.g. the gate's `/_gate/logout`): follow redirects to the OP's
        end_session endpoint, answer its "Do you want to sign-out?" form (yes unless `confirm` is False), follow
        the redirects to the post-logout redirect URI. Returns the final response."""
        first = http_client.get(start_url, follow_redirects=False)
        return self._follow(http_client, first, logout=confirm)

    def _is_op(self, url: httpx.URL) -> bool:
        return f"{url.scheme}://{url.host}:{url.port}" == self.issuer

    def _follow(self, client: httpx.Client, response: httpx.Response, *, login: str | None = None,
                password: str = "x", require_login: bool = False, stop_at: str | None = None,
                logout: bool = True, device_approve: bool = True) -> Any:
        """Drive a browser-like flow from `response`. Returns the final response, or, with `stop_at`, the URL of
        the first redirect that starts with it (as an httpx.URL, not requested)."""
        logged_in = reached_op = False
        for _ in range(MAX_HOPS):
            if response.is_redirect:
                request = response.next_request
                assert request is not None
                if request.url.host not in LOOPBACK_HOSTS:
                    raise OidcDriverError(f"refusing to follow a redirect off loopback: {request.url}")
                if stop_at is not None and str(request.url).startswith(stop_at):
                    return request.url
                reached_op = reached_op or self._is_op(request.url)
                response = client.send(request, follow_redirects=False)
                continue
            form = None
            if self._is_op(response.url):
                reached_op = True
                if "html" in response.headers.get("content-type", ""):
                    form = self._next_form(response, login, password, logout, device_approve)
            if form is None:
                if require_login and not reached_op:
                    raise OidcDriverError(f"the flow never reached the OP ({self.issuer}); it ended at "
                                          f"{response.url} ({response.status_code}):\n{response.text[:2000]}")
                if require_login and not logged_in:
                    raise OidcDriverError("the OP did not ask for a login: this client already has an OP session "
                                          "(use a fresh httpx.Client per user, or login=None for single sign-on)")
                if stop_at is not None:
                    raise OidcDriverError(f"the flow ended at {response.url} ({response.status_code}) before "
                                          f"reaching {stop_at}:\n{response.text[:2000]}")
                return response
            action, data = form
            logged_in = logged_in or data.get("prompt") == "login"
            response = client.post(urljoin(str(response.url), action), data=data, follow_redirects=False)
        raise OidcDriverError(f"more than {MAX_HOPS} hops; last at {response.url}")

    @staticmethod
    def _next_form(response: httpx.Response, login: str | None, password: str, logout: bool,
                   device_approve: bool) -> tuple[str, dict[str, str]] | None:
        """The form a user would submit on this OP page, filled in, or None when the page wants nothing."""
        for form in parse_forms(response.text):
            if form.method != "post":
                continue
            data = dict(form.fields)
            prompt = data.get("prompt")
            if prompt == "login":
                if login is None:
                    raise OidcDriverError("the OP asks for a login but no login id was given")
                data.update(login=login, password=password)
                return form.action, data
            if prompt == "consent":
                return form.action, data
            if form.id == "op.logoutForm":
                if logout:
                    data["logout"] = "yes"
                return form.action, data
            if form.id == "op.deviceConfirmForm":
                if not device_approve:
                    data.pop("confirm", None)
                    data["abort"] = "yes"
                return form.action, data
            if form.id is None and "xsrf" in data:        # the auto-submitting (form_post) page
                return form.action, data
        return None
