"""The gate's own endpoints under /_gate/: sign-in with a local account, sign-out, who am I, health."""
from __future__ import annotations

import html
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .decide import context_for, is_admin
from .errors import GateError, Unauthenticated
from .identity import Identity
from .sessions import clear_cookie_header, cookie_header, make_session

if TYPE_CHECKING:
    from .app import Runtime


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
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;color:#222}}
input,button{{font-size:1rem;padding:.4rem;margin:.2rem 0;width:100%}}.err{{color:#b00}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status,
                        headers={"cache-control": "no-store", "x-frame-options": "DENY"})


def _login_form(next_path: str, error: str = "", *, accounts: bool) -> str:
    err = f'<p class="err">{html.escape(error)}</p>' if error else ""
    if not accounts:
        return (err + "<p>No sign-in method is configured for browsers on this gate. API clients use a personal "
                "token (<code>MLFLOW_TRACKING_TOKEN</code>) from <code>mlflow-gate token create</code>.</p>")
    return (err + '<form method="post" action="/_gate/login">'
            f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
            '<label>User<input name="username" autocomplete="username" autofocus></label>'
            '<label>Password<input name="password" type="password" autocomplete="current-password"></label>'
            '<button type="submit">Sign in</button></form>')


def routes(rt: Runtime) -> list[Route]:
    async def login(request: Request) -> Response:
        policy = rt.store.current
        accounts = bool(policy.users)
        if request.method == "GET":
            return page("Sign in", _login_form(safe_next(request.query_params.get("next")), accounts=accounts))
        origin = request.headers.get("origin")
        if origin and origin != _origin_of(request, rt):
            return page("Sign in", '<p class="err">Cross-site sign-in refused.</p>', 403)
        body = await request.body()
        if len(body) > 16384:
            return page("Sign in", '<p class="err">The form is too large.</p>', 413)
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        next_path = safe_next(str(form.get("next") or "/"))
        try:
            ident = rt.authn.local_account(str(form.get("username") or ""), str(form.get("password") or ""), policy)
        except Unauthenticated:
            return page("Sign in", _login_form(next_path, "Unknown user or wrong password.", accounts=accounts), 401)
        return signed_in(rt, ident, next_path)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/_gate/login", status_code=303)
        response.raw_headers.append((b"set-cookie", clear_cookie_header(rt.secure_cookies)))
        return response

    async def me(request: Request) -> Response:
        try:
            ident = await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current)
        except GateError as err:
            return Response(err.body(), status_code=err.status, media_type="application/json")
        if ident is None:
            if "text/html" in request.headers.get("accept", ""):
                return RedirectResponse("/_gate/login?next=/_gate/me", status_code=302)
            return JSONResponse({"error_code": "UNAUTHENTICATED", "message": "Authentication required."}, 401)
        info = describe(rt, ident)
        if "text/html" in request.headers.get("accept", "") and "application/json" not in request.headers.get(
                "accept", ""):
            rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in info.items())
            return page("Who am I", f"<table>{rows}</table><p><a href='/_gate/logout'>Sign out</a></p>")
        return JSONResponse(info)

    async def health(request: Request) -> Response:
        upstream_ok, detail = await rt.upstream_health()
        policy = rt.store.current
        body = {
            "status": "ok" if upstream_ok else "unavailable",
            "upstream": {"ok": upstream_ok, "detail": detail},
            "policy": {"sources": list(policy.sources), "teams": len(policy.teams), "error": rt.store.error,
                       "reloads": rt.store.reloads},
        }
        return JSONResponse(body, status_code=200 if upstream_ok else 503, headers={"cache-control": "no-store"})

    return [
        Route("/_gate/login", login, methods=["GET", "POST"]),
        Route("/_gate/logout", logout, methods=["GET", "POST"]),
        Route("/_gate/me", me, methods=["GET"]),
        Route("/_gate/health", health, methods=["GET"]),
    ]


def signed_in(rt: Runtime, ident: Identity, next_path: str) -> Response:
    value = make_session(rt.secret_key, Identity(ident.id, ident.groups, via="session"), rt.session_lifetime)
    response = RedirectResponse(next_path, status_code=303)
    response.raw_headers.append((b"set-cookie", cookie_header(value, max_age=rt.session_lifetime,
                                                              secure=rt.secure_cookies)))
    return response


def describe(rt: Runtime, ident: Identity) -> dict[str, Any]:
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


def _origin_of(request: Request, rt: Runtime) -> str:
    if rt.public_origin:
        return rt.public_origin
    return f"{request.url.scheme}://{request.headers.get('host', '')}"
