"""`mlflow-gate login URL`: sign a person in from a terminal and store a personal token where the
`mlflow` client finds it (~/.mlflow/credentials), so plain `mlflow` calls need no token variable.

It uses the identity provider's device authorization grant (RFC 8628), or, where the provider has
none, authorization code + PKCE with a loopback redirect in the person's browser. The provider's
access token is exchanged at the gate's /_gate/tokens for a personal token.
"""
from __future__ import annotations

import base64
import configparser
import hashlib
import os
import secrets
import socket
import sys
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginError(Exception):
    pass


def login(gate_url: str, *, expires_in: str = "30d", poll_interval: float | None = None, open_browser: bool = True,
          out: TextIO = sys.stdout, timeout: float = 600) -> Path:
    gate_url = gate_url.rstrip("/")
    with httpx.Client(timeout=15) as http:
        info = _provider(http, gate_url)
        meta = _json(http.get(info["issuer"].rstrip("/") + "/.well-known/openid-configuration"), "provider discovery")
        scope = f"{info.get('scopes') or 'openid email profile groups'} offline_access"
        extra = {"resource": info["audience"]} if info.get("audience") else {}
        if meta.get("device_authorization_endpoint"):
            token = _device_flow(http, meta, info["cli_client_id"], scope, extra, poll_interval, out, timeout)
        else:
            token = _loopback_flow(http, meta, info["cli_client_id"], scope, extra, open_browser, out, timeout)
        r = http.post(gate_url + "/_gate/tokens", headers={"Authorization": f"Bearer {token}",
                                                           "Accept": "application/json"},
                      json={"name": f"mlflow-gate login on {socket.gethostname()}", "expires_in": expires_in})
        minted = _json(r, "the gate's /_gate/tokens")
    path = store_credentials(minted["user"], minted["token"])
    print(f"Signed in to {gate_url} as {minted['user']}; personal token {minted['id']} (expires "
          f"{minted['expires_at']}) stored in {path}.", file=out)
    print(f"Point the mlflow client at the gate: export MLFLOW_TRACKING_URI={gate_url}", file=out)
    return path


def _provider(http: httpx.Client, gate_url: str) -> dict[str, Any]:
    """The gate's identity provider (/_gate/oidc); a gate without one says so, and what to use instead."""
    r = http.get(gate_url + "/_gate/oidc", headers={"Accept": "application/json"})
    if r.status_code == 404:
        try:
            gate = isinstance(r.json(), dict) and r.json().get("error_code") == "ENDPOINT_NOT_FOUND"
        except ValueError:
            gate = False
        if not gate:
            raise LoginError(f"{gate_url} does not look like an mlflow-gate (it has no /_gate/oidc): check the URL")
        raise LoginError(f"{gate_url} has no identity provider to sign in with. Get a personal token instead: "
                         f"sign in at {gate_url}/_gate/tokens in a browser and create one there, or ask an admin "
                         "for one (`mlflow-gate token create --user YOU`); then export MLFLOW_TRACKING_TOKEN=<token> "
                         f"and MLFLOW_TRACKING_URI={gate_url}")
    return _json(r, "the gate's /_gate/oidc")


def _json(r: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code != 200 or not isinstance(data, dict):
        message = data.get("message") or data.get("error_description") or data.get("error") or r.text[:200]
        raise LoginError(f"{what} answered {r.status_code}: {message}")
    return data


def _device_flow(http: httpx.Client, meta: dict[str, Any], client_id: str, scope: str, extra: dict[str, str],
                 poll_interval: float | None, out: TextIO, timeout: float) -> str:
    d = _json(http.post(meta["device_authorization_endpoint"], data={"client_id": client_id, "scope": scope, **extra}),
              "the device authorization endpoint")
    where = d.get("verification_uri_complete") or d["verification_uri"]
    print(f"To sign in, open {where} and confirm the code {d['user_code']}", file=out, flush=True)
    interval = float(poll_interval if poll_interval is not None else d.get("interval", 5))
    deadline = time.monotonic() + min(timeout, float(d.get("expires_in", 600)))
    while time.monotonic() < deadline:
        time.sleep(interval)
        r = http.post(meta["token_endpoint"], data={"grant_type": DEVICE_GRANT, "device_code": d["device_code"],
                                                    "client_id": client_id, **extra})
        data = r.json()
        if r.status_code == 200:
            return str(data["access_token"])
        error = data.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        raise LoginError(f"sign-in failed at the provider: {error}: {data.get('error_description', '')}")
    raise LoginError("sign-in timed out: the code was not confirmed in time")


def _loopback_flow(http: httpx.Client, meta: dict[str, Any], client_id: str, scope: str, extra: dict[str, str],
                   open_browser: bool, out: TextIO, timeout: float) -> str:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(16)
    received: dict[str, str] = {}
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if urlsplit(self.path).path == "/callback":
                received.update(query)
                done.set()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"You may close this window and return to the terminal.")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    url = meta["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256", **extra})
    print(f"To sign in, open {url}", file=out, flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        if not done.wait(timeout):
            raise LoginError("sign-in timed out")
    finally:
        server.shutdown()
    if received.get("state") != state or "code" not in received:
        raise LoginError(f"sign-in failed: {received.get('error', 'the answer did not match this sign-in')}")
    data = _json(http.post(meta["token_endpoint"], data={
        "grant_type": "authorization_code", "code": received["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier, **extra}), "the token endpoint")
    return str(data["access_token"])


def store_credentials(user: str, token: str) -> Path:
    """Write the [mlflow] section of ~/.mlflow/credentials (mode 0600), keeping anything else in it."""
    path = Path(os.path.expanduser("~/.mlflow/credentials"))
    path.parent.mkdir(parents=True, exist_ok=True)
    config = configparser.ConfigParser()
    if path.exists():
        config.read(path)
    if not config.has_section("mlflow"):
        config.add_section("mlflow")
    config.set("mlflow", "mlflow_tracking_username", user)
    config.set("mlflow", "mlflow_tracking_password", token)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        config.write(fh)
    os.chmod(path, 0o600)
    return path
