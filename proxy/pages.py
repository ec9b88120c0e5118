"""The gate's own endpoints under /_gate/: sign-in (identity provider or local account), sign-out,
your access (who am I), personal tokens, health. Their look is `layout.py`'s."""
from __future__ import annotations

import functools
import html
import json
import re
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from . import account
from .decide import is_admin
from .errors import GateError, NotFound, PermissionDenied, RateLimited, Unauthenticated, error_response
from .identity import Identity
from .layout import asset, card, esc, notice, page
from .oidc import SignInError
from .services import Services
from .sessions import COOKIE, clear_cookie_header, cookie_header, make_session, new_session
from .ui import SIGNED_OUT_COOKIE
from .web import client_of, credential, same_origin, services_of, signed_in_now, small_form

_CONTROL = re.compile(r"[\x00-\x20\x7f]|%[01][0-9a-fA-F]|%7[fF]")


def safe_next(target: str | None) -> str:
    """Where to land after sign-in: a path on this gate only, never another origin."""
    if not target:
        return "/"
    target = target.strip()
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/_gate/log"))
            or "\\" in target or _CONTROL.search(target)):
        return "/"
    return target


def _login_form(next_path: str, error: str = "", *, accounts: bool, provider: bool) -> str:
    """The sign-in card: the identity provider's button and/or the local account form."""
    parts = [('<h1>Sign in to MLflow</h1><p class="muted">This MLflow server is behind mlflow-gate: sign in to '
              "see your team's experiments and models.</p>")]
    if error:
        parts.append(notice(error))
    if provider:
        parts.append(f'<p><a class="button" data-next href="/_gate/login?go=1&amp;next={esc(quote(next_path))}">'
                     "Sign in with your identity provider</a></p>")
    if accounts:
        parts.append(('<p class="muted">or with a local account:</p>' if provider else "")
                     + '<form class="wide" method="post" action="/_gate/login">'
                     f'<input type="hidden" name="next" value="{esc(next_path)}">'
                     '<label for="username">User</label><input id="username" name="username" autocomplete="username" '
                     'autofocus><label for="password">Password</label><input id="password" name="password" '
                     'type="password" autocomplete="current-password"><button type="submit">Sign in</button></form>')
    elif not provider:
        parts.append("<p>No one can sign in here in a browser: this gate has no local accounts (<code>users:</code> "
                     "in its policy) and no identity provider. API clients use a personal token "
                     "(<code>MLFLOW_TRACKING_TOKEN</code>) from <code>mlflow-gate token create</code>.</p>")
    return card(*parts)


def _signed_in_page(ident: Identity, next_path: str, admin: bool) -> HTMLResponse:
    body = card(f"<h1>You are signed in</h1><p>as <b>{esc(ident.id)}</b>.</p>"
                f'<div class="actions"><a class="button" href="{esc(next_path)}">Continue to MLflow</a>'
                '<a class="button secondary" href="/_gate/logout">Sign out</a></div>'
                '<p class="muted after">To sign in as someone else, sign out first.</p>')
    return page("Signed in", body, who=ident, narrow=True, admin=admin)


def keep_fragment(next_path: str) -> HTMLResponse:
    """A browser's URL fragment (the MLflow UI's route, `#/experiments/5`) never reaches the server and
    does not survive the provider's login form: this page adds it to `next` before signing in."""
    nonce = secrets.token_urlsafe(16)
    target = "/_gate/login?go=1&next="
    script = (f"location.replace({json.dumps(target)} + encodeURIComponent({json.dumps(next_path)} + "
              "(location.hash || '')));")
    fallback = html.escape(target + quote(next_path, safe=""))
    body = (f'<!doctype html><html><head><meta charset="utf-8"><title>Signing in - mlflow-gate</title>'
            f'<noscript><meta http-equiv="refresh" content="0;url={fallback}"></noscript>'
            f'<script nonce="{nonce}">{script}</script></head>'
            f'<body><p><a href="{fallback}">Sign in</a></p></body></html>')
    return HTMLResponse(body, headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                       "content-security-policy": f"default-src 'none'; script-src 'nonce-{nonce}'"})


async def login(request: Request) -> Response:
    rt = services_of(request)
    if request.method == "POST":
        return await _login_post(request, rt)
    next_path = safe_next(request.query_params.get("next"))
    local = request.query_params.get("local")
    current = await signed_in_now(request)
    if current is not None:
        return _signed_in_page(current, next_path, is_admin(rt.store.current, current))
    if (rt.oidc is not None and not local and not request.query_params.get("go")
            and request.headers.get("sec-fetch-mode") == "navigate"):
        return keep_fragment(next_path)
    if rt.oidc is not None and not local:
        try:
            return await rt.oidc.start(request, next_path)
        except SignInError as exc:
            return page("Sign in", card("<h1>Sign in to MLflow</h1>", notice(exc.message)), status=exc.status,
                        narrow=True)
    return page("Sign in", _login_form(next_path, accounts=bool(rt.store.current.users), provider=rt.oidc is not None),
                narrow=True)


async def _login_post(request: Request, rt: Services) -> Response:
    policy = rt.store.current
    if not same_origin(request, rt):
        return page("Sign in", card("<h1>Sign in to MLflow</h1>", notice("Cross-site sign-in refused.")), status=403,
                    narrow=True)
    form = await small_form(request)
    next_path = safe_next(str(form.get("next") or "/"))
    again = functools.partial(_login_form, next_path, accounts=bool(policy.users), provider=rt.oidc is not None)
    try:
        ident = await rt.authn.local_account(str(form.get("username") or ""), str(form.get("password") or ""),
                                             policy, client_of(request))
    except RateLimited as exc:
        answer = page("Sign in", again(exc.message), status=429, narrow=True)
        answer.headers["retry-after"] = str(exc.retry_after)
        return answer
    except Unauthenticated:
        return page("Sign in", again("Unknown user or wrong password."), status=401, narrow=True)
    return signed_in(rt, ident, next_path)


async def callback(request: Request) -> Response:
    rt = services_of(request)
    if rt.oidc is None:
        return page("Sign in", card("<h1>Sign in to MLflow</h1>", notice("No identity provider is configured.")),
                    status=404, narrow=True)
    try:
        ident, next_path, refresh_token = await rt.oidc.finish(request)
        ident = rt.authn.admit(ident, rt.store.current)
    except SignInError as exc:
        return page("Sign-in failed", card("<h1>Sign-in failed</h1>", notice(exc.message),
                                           '<p><a href="/_gate/login">Try again</a></p>'), status=exc.status, narrow=True)
    except Unauthenticated as exc:
        return page("Sign-in refused", card("<h1>Sign-in refused</h1>", notice(exc.message)), status=403, narrow=True)
    return signed_in(rt, ident, safe_next(next_path), refresh_token)


async def logout(request: Request) -> Response:
    rt = services_of(request)
    value = request.cookies.get(COOKIE)
    if value:
        await rt.authn.sign_out(value)
    target = "/_gate/signed-out"
    if rt.oidc is not None:
        target = await rt.oidc.logout_url(request) or target
    response = RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})
    response.raw_headers.append((b"set-cookie", clear_cookie_header(rt.secure_cookies)))
    response.raw_headers.append((b"set-cookie", _CLEAR_SIGNED_OUT))
    return response


_CLEAR_SIGNED_OUT = f"{SIGNED_OUT_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax".encode()


async def signed_out(request: Request) -> Response:
    answer = page("Signed out", card("<h1>You are signed out</h1><p>You are signed out of MLflow on this browser.</p>"
                                     '<div class="actions"><a class="button" href="/_gate/login">Sign in again</a>'
                                     "</div>"), narrow=True)
    answer.raw_headers.append((b"set-cookie", _CLEAR_SIGNED_OUT))
    return answer


async def oidc_info(request: Request) -> Response:
    rt = services_of(request)
    if rt.oidc is None:
        return error_response(NotFound("No identity provider is configured on this gate."))
    s = rt.oidc.settings
    return JSONResponse({"issuer": s.issuer, "cli_client_id": s.cli_client_id, "audience": s.audience,
                         "scopes": s.scopes})


async def health(request: Request) -> Response:
    """The status for anyone (probes send no credential); the details only for admins."""
    rt = services_of(request)
    ident = await credential(request)
    if isinstance(ident, Response):
        return ident
    upstream_ok, detail = await rt.upstream_health()
    policy = rt.store.current
    body: dict[str, Any] = {"status": "ok" if upstream_ok else "unavailable"}
    if ident is not None and is_admin(policy, ident):
        body.update({
            "upstream": {"ok": upstream_ok, "detail": detail},
            "stores": await rt.artifacts.stores.health(policy),
            "policy": {"sources": list(policy.sources), "teams": len(policy.teams), "error": rt.store.error,
                       "reloads": rt.store.reloads},
            "issuers": await rt.authn.issuers.health(policy) if rt.authn.issuers is not None else {},
        })
    return JSONResponse(body, status_code=200 if upstream_ok else 503, headers={"cache-control": "no-store"})


async def live(request: Request) -> Response:
    """Liveness: the gate's own loop answers (the upstream may be down; /_gate/health says so)."""
    return JSONResponse({"status": "alive"}, headers={"cache-control": "no-store"})


async def metrics(request: Request) -> Response:
    """For admins; Prometheus scrapes the listener of `serve --metrics-port` instead, with no credential."""
    rt = services_of(request)
    ident = await credential(request)
    if isinstance(ident, Response):
        return ident
    if ident is None or not is_admin(rt.store.current, ident):
        err: GateError = (Unauthenticated if ident is None else PermissionDenied)(
            "/_gate/metrics is for admins; scrape the metrics listener (mlflow-gate serve --metrics-port) instead.")
        return error_response(err)
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8",
                    headers={"cache-control": "no-store"})


def routes() -> list[Route]:
    return [
        Route("/_gate/login", login, methods=["GET", "POST"]),
        Route("/_gate/callback", callback, methods=["GET"]),
        Route("/_gate/logout", logout, methods=["GET", "POST"]),
        Route("/_gate/signed-out", signed_out, methods=["GET"]),
        Route("/_gate/me", account.me, methods=["GET"]),
        Route("/_gate/tokens", account.tokens, methods=["GET", "POST"]),
        Route("/_gate/oidc", oidc_info, methods=["GET"]),
        Route("/_gate/health", health, methods=["GET"]),
        Route("/_gate/metrics", metrics, methods=["GET"]),
        Route("/_gate/live", live, methods=["GET"]),
        Route("/_gate/static/{name}", asset, methods=["GET"]),
    ]


def signed_in(rt: Services, ident: Identity, next_path: str, refresh_token: str | None = None) -> Response:
    value = make_session(rt.secret_key, new_session(ident, rt.session_lifetime, refresh_token))
    response = RedirectResponse(next_path, status_code=303, headers={"cache-control": "no-store"})
    response.raw_headers.append((b"set-cookie", cookie_header(value, max_age=rt.session_lifetime,
                                                              secure=rt.secure_cookies)))
    return response
