"""The gate's own endpoints under /_gate/: sign-in (identity provider or local account), sign-out,
personal tokens, who am I, health."""
from __future__ import annotations

import functools
import html
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .decide import context_for, is_admin
from .errors import BadRequest, GateError, NotFound, PermissionDenied, RateLimited, Unauthenticated, error_response
from .identity import Identity
from .oidc import SignInError
from .services import Services
from .sessions import COOKIE, clear_cookie_header, cookie_header, make_session, new_session
from .tokens import TokenError, mint_token, parse_duration, read_token

TOKENS_COOKIE = "mlflow_gate_tokens"
MAX_TOKEN_LIFETIME = 90 * 86400
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


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title} - mlflow-gate</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;color:#222}}
input,button,select{{font-size:1rem;padding:.4rem;margin:.2rem 0;width:100%}}.err{{color:#b00}}
code{{word-break:break-all;background:#f4f4f4;padding:.2rem}}td{{padding:.2rem .6rem}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status,
                        headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                 "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "form-action 'self'"})


def _login_form(next_path: str, error: str = "", *, accounts: bool, provider: bool) -> str:
    err = f'<p class="err">{html.escape(error)}</p>' if error else ""
    other = (f'<p><a href="/_gate/login?next={html.escape(next_path)}">Sign in with the identity provider</a></p>'
             if provider else "")
    if not accounts:
        return (err + other + "<p>No local accounts are configured on this gate. API clients use a personal "
                "token (<code>MLFLOW_TRACKING_TOKEN</code>) from <code>mlflow-gate token create</code>.</p>")
    return (err + other + '<form method="post" action="/_gate/login">'
            f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
            '<label>User<input name="username" autocomplete="username" autofocus></label>'
            '<label>Password<input name="password" type="password" autocomplete="current-password"></label>'
            '<button type="submit">Sign in</button></form>')


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


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept or "text/html" not in accept


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def login(request: Request) -> Response:
    rt = _services(request)
    if request.method == "POST":
        return await _login_post(request, rt)
    next_path = safe_next(request.query_params.get("next"))
    local = request.query_params.get("local")
    if (rt.oidc is not None and not local and not request.query_params.get("go")
            and request.headers.get("sec-fetch-mode") == "navigate"):
        return keep_fragment(next_path)
    if rt.oidc is not None and not local:
        try:
            return await rt.oidc.start(request, next_path)
        except SignInError as exc:
            return page("Sign in", f'<p class="err">{html.escape(exc.message)}</p>', exc.status)
    return page("Sign in", _login_form(next_path, accounts=bool(rt.store.current.users), provider=rt.oidc is not None))


async def _login_post(request: Request, rt: Services) -> Response:
    policy = rt.store.current
    if not same_origin(request, rt):
        return page("Sign in", '<p class="err">Cross-site sign-in refused.</p>', 403)
    form = await small_form(request)
    next_path = safe_next(str(form.get("next") or "/"))
    again = functools.partial(_login_form, next_path, accounts=bool(policy.users), provider=rt.oidc is not None)
    try:
        ident = await rt.authn.local_account(str(form.get("username") or ""), str(form.get("password") or ""),
                                             policy, _client(request))
    except RateLimited as exc:
        answer = page("Sign in", again(exc.message), 429)
        answer.headers["retry-after"] = str(exc.retry_after)
        return answer
    except Unauthenticated:
        return page("Sign in", again("Unknown user or wrong password."), 401)
    return signed_in(rt, ident, next_path)


async def callback(request: Request) -> Response:
    rt = _services(request)
    if rt.oidc is None:
        return page("Sign in", '<p class="err">No identity provider is configured.</p>', 404)
    try:
        ident, next_path, refresh_token = await rt.oidc.finish(request)
        ident = rt.authn.admit(ident, rt.store.current)
    except SignInError as exc:
        return page("Sign-in failed", f'<p class="err">{html.escape(exc.message)}</p>'
                    '<p><a href="/_gate/login">Try again</a></p>', exc.status)
    except Unauthenticated as exc:
        return page("Sign-in refused", f'<p class="err">{html.escape(exc.message)}</p>', 403)
    return signed_in(rt, ident, safe_next(next_path), refresh_token)


async def logout(request: Request) -> Response:
    rt = _services(request)
    value = request.cookies.get(COOKIE)
    if value:
        await rt.authn.sign_out(value)
    target = "/_gate/signed-out"
    if rt.oidc is not None:
        target = await rt.oidc.logout_url(request) or target
    response = RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})
    response.raw_headers.append((b"set-cookie", clear_cookie_header(rt.secure_cookies)))
    return response


async def signed_out(request: Request) -> Response:
    return page("Signed out", '<p>You are signed out.</p><p><a href="/_gate/login">Sign in again</a></p>')


async def me(request: Request) -> Response:
    ident = await caller(request)
    if isinstance(ident, Response):
        return ident
    info = describe(_services(request), ident)
    if not wants_json(request):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                       for k, v in info.items())
        return page("Who am I", f"<table>{rows}</table><p><a href='/_gate/tokens'>Personal tokens</a> · "
                                "<a href='/_gate/logout'>Sign out</a></p>")
    return JSONResponse(info, headers={"cache-control": "no-store"})


async def tokens(request: Request) -> Response:
    rt = _services(request)
    ident = await caller(request)
    if isinstance(ident, Response):
        return ident
    if ident.via in ("token", "basic"):
        return error_response(PermissionDenied("Personal tokens cannot mint personal tokens: sign in in the "
                                               "browser or use the identity provider's token."))
    if ident.issuer is not None:
        return error_response(PermissionDenied(f"Machine callers (issuer {ident.issuer}) sign in with their own "
                                               "short-lived tokens and cannot mint personal tokens."))
    listed = _read_list(rt, request, ident)
    if request.method == "GET":
        return JSONResponse({"tokens": listed}) if wants_json(request) else page("Personal tokens",
                                                                                 _tokens_page(listed))
    if ident.via == "session" and not same_origin(request, rt):
        return error_response(PermissionDenied("Cross-site request refused."))
    data = await small_json(request) if "json" in request.headers.get("content-type", "") else \
        await small_form(request)
    try:
        seconds = parse_duration(str(data.get("expires_in") or "30d"))
        if seconds > MAX_TOKEN_LIFETIME:
            raise TokenError("a personal token may live at most 90 days (90d)")
    except TokenError as exc:
        return error_response(BadRequest(str(exc)))
    return _minted(request, rt, ident, seconds, str(data.get("name") or "")[:100], listed)


def _minted(request: Request, rt: Services, ident: Identity, seconds: int, name: str,
            listed: list[dict[str, Any]]) -> Response:
    token = mint_token(rt.secret_key, ident.id, tuple(sorted(ident.groups)), seconds, name, account=ident.account)
    minted = read_token(rt.secret_key, token)
    rt.audit.minted(ident, minted)
    claims = minted.as_json()
    listed = ([{k: claims[k] for k in ("id", "name", "expires_at")}] + listed)[:20]
    if wants_json(request):
        response: Response = JSONResponse({"token": token, **claims}, headers={"cache-control": "no-store"})
    else:
        response = page("Personal tokens", "<p>Your new token, shown once. Use it as "
                        "<code>MLFLOW_TRACKING_TOKEN</code>:</p>"
                        f"<p><code id='token'>{html.escape(token)}</code></p>" + _tokens_page(listed))
    response.set_cookie(TOKENS_COOKIE, _list_serializer(rt).dumps({"u": ident.id, "t": listed}),
                        max_age=MAX_TOKEN_LIFETIME, httponly=True, samesite="lax", secure=rt.secure_cookies,
                        path="/_gate/tokens")
    return response


async def oidc_info(request: Request) -> Response:
    rt = _services(request)
    if rt.oidc is None:
        return error_response(NotFound("No identity provider is configured on this gate."))
    s = rt.oidc.settings
    return JSONResponse({"issuer": s.issuer, "cli_client_id": s.cli_client_id, "audience": s.audience,
                         "scopes": s.scopes})


async def health(request: Request) -> Response:
    """The status for anyone (probes send no credential); the details only for admins."""
    rt = _services(request)
    ident = await _credential(request)
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
    rt = _services(request)
    ident = await _credential(request)
    if isinstance(ident, Response):
        return ident
    if ident is None or not is_admin(rt.store.current, ident):
        err: GateError = (Unauthenticated if ident is None else PermissionDenied)(
            "/_gate/metrics is for admins; scrape the metrics listener (mlflow-gate serve --metrics-port) instead.")
        return error_response(err)
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8",
                    headers={"cache-control": "no-store"})


async def _credential(request: Request) -> Identity | None | Response:
    """The caller if the request carries a credential, None if it carries none, 401 JSON if it is invalid."""
    rt = _services(request)
    try:
        return await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current,
                                       _client(request))
    except GateError as err:
        return error_response(err)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def caller(request: Request) -> Identity | Response:
    """The signed-in caller, or the answer for one who is not (sign-in redirect for browsers, else 401 JSON)."""
    rt = _services(request)
    try:
        ident = await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current,
                                        _client(request))
        if ident is None:
            raise Unauthenticated("Authentication required.")
    except GateError as err:
        if not wants_json(request):
            return RedirectResponse(f"/_gate/login?next={request.url.path}", status_code=302)
        return error_response(err)
    return ident


def routes() -> list[Route]:
    return [
        Route("/_gate/login", login, methods=["GET", "POST"]),
        Route("/_gate/callback", callback, methods=["GET"]),
        Route("/_gate/logout", logout, methods=["GET", "POST"]),
        Route("/_gate/signed-out", signed_out, methods=["GET"]),
        Route("/_gate/me", me, methods=["GET"]),
        Route("/_gate/tokens", tokens, methods=["GET", "POST"]),
        Route("/_gate/oidc", oidc_info, methods=["GET"]),
        Route("/_gate/health", health, methods=["GET"]),
        Route("/_gate/metrics", metrics, methods=["GET"]),
        Route("/_gate/live", live, methods=["GET"]),
    ]


def _tokens_page(listed: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td><code>{html.escape(str(t['id']))}</code></td><td>{html.escape(str(t['name']))}</td>"
                   f"<td>{html.escape(str(t['expires_at']))}</td></tr>" for t in listed)
    table = f"<table><tr><th>id</th><th>name</th><th>expires</th></tr>{rows}</table>" if rows else \
        "<p>No tokens minted in this browser yet.</p>"
    return (table + '<h2>New token</h2><form method="post" action="/_gate/tokens">'
            '<label>Name<input name="name" placeholder="laptop"></label>'
            '<label>Expires in<select name="expires_in"><option>7d</option><option selected>30d</option>'
            '<option>90d</option></select></label><button type="submit">Create token</button></form>'
            "<p>To revoke a token, ask an admin to add its id to <code>revoked_tokens</code>.</p>")


def _list_serializer(rt: Services) -> URLSafeSerializer:
    return URLSafeSerializer(rt.secret_key, salt="mlflow-gate.token-list")


def _read_list(rt: Services, request: Request, ident: Identity) -> list[dict[str, Any]]:
    value = request.cookies.get(TOKENS_COOKIE)
    if not value:
        return []
    try:
        data = _list_serializer(rt).loads(value)
    except BadSignature:
        return []
    if data.get("u") != ident.id:
        return []
    return [t for t in data.get("t", []) if isinstance(t, dict)]


async def small_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 16384:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace")))


async def small_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body) if 0 < len(body) <= 16384 else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def same_origin(request: Request, rt: Services) -> bool:
    """A state-changing request from a browser must come from this gate's own pages."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent:
        return False
    parts = urlsplit(sent)
    return f"{parts.scheme}://{parts.netloc}" == _origin_of(request, rt)


def signed_in(rt: Services, ident: Identity, next_path: str, refresh_token: str | None = None) -> Response:
    value = make_session(rt.secret_key, new_session(ident, rt.session_lifetime, refresh_token))
    response = RedirectResponse(next_path, status_code=303, headers={"cache-control": "no-store"})
    response.raw_headers.append((b"set-cookie", cookie_header(value, max_age=rt.session_lifetime,
                                                              secure=rt.secure_cookies)))
    return response


def describe(rt: Services, ident: Identity) -> dict[str, Any]:
    policy = rt.store.current
    ctx = context_for(policy, ident)
    teams = {name: ("maintainer" if str(level) == "manage" else "member") for name, level in ctx.roles.items()}
    owned = {
        name: {"experiments": list(policy.teams[name].experiments), "models": list(policy.teams[name].models),
               "level": "manage" if role == "maintainer" else "edit"}
        for name, role in teams.items()
    }
    grants = [{"experiments": list(exps), "models": list(models), "level": str(g.permission)}
              for g, exps, models in ctx.grants]
    out: dict[str, Any] = {**ident.as_json(), "admin": is_admin(policy, ident), "teams": teams,
                           "can": {"teams": owned, "grants": grants, "default": str(policy.default)}}
    if ident.expires:
        out["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ident.expires))
    if ident.token_id:
        out["token_id"] = ident.token_id
    return out


def _origin_of(request: Request, rt: Services) -> str:
    if rt.public_origin:
        return rt.public_origin
    return f"{request.url.scheme}://{request.headers.get('host', '')}"
