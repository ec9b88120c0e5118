"""/_gate/me (who am I: identity, teams, and what the caller may do, as a table for browsers and JSON for
API clients) and /_gate/tokens (mint and list one's personal tokens)."""
from __future__ import annotations

import time
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import access
from .decide import context_for, is_admin
from .errors import BadRequest, PermissionDenied, error_response
from .identity import Identity
from .layout import card, codes, esc, level_tag, notice, page, table
from .services import Services
from .settings import DurationError, parse_duration
from .tokens import mint_token, read_token
from .web import caller, same_origin, services_of, small_form, small_json, wants_json

TOKENS_COOKIE = "mlflow_gate_tokens"
MAX_TOKEN_LIFETIME = 90 * 86400


async def me(request: Request) -> Response:
    ident = await caller(request)
    if isinstance(ident, Response):
        return ident
    rt = services_of(request)
    info = describe(rt, ident)
    if wants_json(request):
        return JSONResponse(info, headers={"cache-control": "no-store"})
    return page("Your access", _me_page(rt, ident, info), who=ident, admin=info["admin"])


_VIA = {"token": "a personal token", "basic": "a personal token (Basic)", "password": "a local account's password "
        "(Basic)", "jwt": "a token of the identity provider"}


def _me_page(rt: Services, ident: Identity, info: dict[str, Any]) -> str:
    if ident.via == "session":
        how = "this browser's session, " + ("local account" if ident.account else "identity provider")
    else:
        how = _VIA.get(ident.via, ident.via) + (f" (token <code>{esc(ident.token_id)}</code>)" if ident.token_id else "")
    facts = [("User", f"<b>{esc(ident.id)}</b>"), ("Signed in with", how), ("Groups", codes(sorted(ident.groups))),
             ("Admin", "yes: manage on every name" if info["admin"] else "no")]
    if "expires_at" in info:
        facts.append(("Until", esc(info["expires_at"])))
    summary = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    policy = rt.store.current
    teams = table(["Team", "Role", "Experiments", "Models and prompts"],
                  [[esc(name), esc(role), codes(policy.teams[name].experiments), codes(policy.teams[name].models)]
                   for name, role in access.teams(policy, ident).items() if name in policy.teams],
                  "You are in no team.")
    rows = access.rows(policy, ident)
    can = table(["Names", "Of", "Level", "From"],
                [[_names(r), "experiments" if r.kind == "experiment" else "models and prompts",
                  level_tag(r.level, r.cap), esc(r.source)] for r in rows],
                "No rule gives you access yet: ask an admin to add you to a team or a grant.")
    note = ('<p class="muted">Names are decided by prefix: with <code>vision/</code> you can use any experiment '
            "whose name starts with it. A name no row covers is refused; a deny lowers what the other rows give.</p>")
    return (card("<h1>Your access</h1>", summary) + card("<h2>Teams</h2>", teams)
            + card("<h2>What you can do</h2>", can, note)
            + '<p><a href="/_gate/tokens">Personal tokens</a> · <a href="/">Back to MLflow</a></p>')


def _names(row: access.Row) -> str:
    if row.source == "admin":
        return "every name"
    if row.unowned:
        return "names no team owns"
    return f"<code>{esc(row.prefix)}</code>…"


async def tokens(request: Request) -> Response:
    rt = services_of(request)
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
        if wants_json(request):
            return JSONResponse({"tokens": listed})
        return page("Personal tokens", _tokens_page(listed), who=ident, admin=is_admin(rt.store.current, ident))
    if ident.via == "session" and not same_origin(request, rt):
        return error_response(PermissionDenied("Cross-site request refused."))
    data = await small_json(request) if "json" in request.headers.get("content-type", "") else \
        await small_form(request)
    try:
        seconds = parse_duration(str(data.get("expires_in") or "30d"))
        if seconds > MAX_TOKEN_LIFETIME:
            raise DurationError("a personal token may live at most 90 days (90d)")
    except DurationError as exc:
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
        shown = card("<h2>Your new token</h2>", notice("Copy it now: it is shown only once.", "ok"),
                     f'<code id="token">{esc(token)}</code>',
                     f"<p>It expires {esc(claims['expires_at'])}. Give it to the mlflow client as "
                     "<code>MLFLOW_TRACKING_TOKEN</code>, with <code>MLFLOW_TRACKING_URI</code> set to this server's "
                     "address.</p>")
        response = page("Personal tokens", _tokens_page(listed, shown), who=ident,
                        admin=is_admin(rt.store.current, ident))
    response.set_cookie(TOKENS_COOKIE, _list_serializer(rt).dumps({"u": ident.id, "t": listed}),
                        max_age=MAX_TOKEN_LIFETIME, httponly=True, samesite="lax", secure=rt.secure_cookies,
                        path="/_gate/tokens")
    return response


def _tokens_page(listed: list[dict[str, Any]], minted: str = "") -> str:
    """The tokens page: a new token (when one was just minted), the form, and this browser's tokens."""
    form = ('<form method="post" action="/_gate/tokens"><label for="name">Name</label>'
            '<input id="name" name="name" placeholder="laptop" maxlength="100">'
            '<label for="expires_in">Expires in</label><select id="expires_in" name="expires_in">'
            '<option value="7d">7 days</option><option value="30d" selected>30 days</option>'
            '<option value="90d">90 days</option></select>'
            '<div class="actions"><button type="submit">Create token</button></div></form>')
    rows = [[f"<code>{esc(t['id'])}</code>", esc(t["name"]) or '<span class="muted">no name</span>',
             esc(t["expires_at"])] for t in listed]
    return ('<section class="card"><h1>Personal tokens</h1><p>A personal token lets the mlflow client, a job or '
            "a notebook act as you: <code>MLFLOW_TRACKING_TOKEN=&lt;token&gt;</code> with "
            "<code>MLFLOW_TRACKING_URI</code> set to this server.</p></section>" + minted
            + card("<h2>New token</h2>", form)
            + card("<h2>Tokens created in this browser</h2>", table(["Id", "Name", "Expires"], rows,
                                                                    "No tokens created in this browser yet."),
                   '<p class="muted">To revoke a token, ask an admin to add its id to <code>revoked_tokens</code> '
                   "in the policy.</p>"))


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
                           "can": {"teams": owned, "grants": grants, "default": str(policy.default)},
                           "access": [row.as_json() for row in access.rows(policy, ident)]}
    if ident.expires:
        out["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ident.expires))
    if ident.token_id:
        out["token_id"] = ident.token_id
    return out
