"""/_gate/admin, for admins: the policy in force (teams, grants, denies, limits), who can reach a name and
by which rule (`review.who_can`, as `policy who-can` answers it), and the last refusals this replica saw.

HTML in the pages' shared layout (`pages.page`: no script, a strict content security policy; the who-can
form is a plain GET form), or JSON for API clients. Anyone else signed in gets the 403 of every admin-only
route (`/_gate/metrics`, MLflow's admin routes through the gate): MLflow's JSON error, for browsers too. The
refusals come from the audit's in-memory ring (`audit.Denials`): what the audit log already holds, no database.
"""
from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .audit import Denial
from .decide import is_admin
from .errors import BadRequest, PermissionDenied, error_response
from .layout import card, page
from .policy import KINDS, Policy, Rule, Subject, Team
from .review import WhoCan, who_can
from .services import Services
from .web import caller, wants_json

SHOWN_DENIALS = 50


async def admin(request: Request) -> Response:
    services: Services = request.app.state.services
    ident = await caller(request)
    if isinstance(ident, Response):
        return ident
    policy = services.store.current
    if not is_admin(policy, ident):     # the answer of every admin-only route: MLflow's JSON, whatever Accept says
        return error_response(PermissionDenied("Permission denied: /_gate/admin is for admins only."))
    kind, name = request.query_params.get("kind") or "experiment", request.query_params.get("name") or ""
    problem = "" if kind in KINDS else f"kind must be one of {', '.join(KINDS)}, not {kind!r}."
    answer = who_can(policy, kind, name) if name and not problem else None
    denials = services.denials.latest(SHOWN_DENIALS)
    if wants_json(request):
        if problem:
            return error_response(BadRequest(problem))
        return JSONResponse({"policy": policy_json(policy), "who_can": answer.as_json() if answer else None,
                             "denials": [denial_json(d) for d in denials]}, headers={"cache-control": "no-store"})
    body = (_who_can_section(kind, name, answer, problem) + _policy_sections(policy)
            + _denials_section(denials, services.denials.size))
    return page("Admin", card(body), who=ident, status=400 if problem else 200, admin=True)


def routes() -> list[Route]:
    return [Route("/_gate/admin", admin, methods=["GET"])]


# --- JSON -------------------------------------------------------------------------------------------

def _subjects(subjects: Iterable[Subject]) -> list[str]:
    return [str(s) for s in subjects]


def _rule_json(rule: Rule) -> dict[str, Any]:
    return {"to": _subjects(rule.to), "experiments": list(rule.experiments), "models": list(rule.models)}


def team_json(team: Team) -> dict[str, Any]:
    return {"name": team.name, "members": _subjects(team.members), "maintainers": _subjects(team.maintainers),
            "experiments": list(team.experiments), "models": list(team.models),
            "protected_aliases": sorted(team.protected_aliases)}


def policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "sources": list(policy.sources), "admins": _subjects(policy.admins), "default": str(policy.default),
        "teams": [team_json(t) for t in policy.teams.values()],
        "grants": [{"where": g.where, **_rule_json(g), "permission": str(g.permission)} for g in policy.grants],
        "denies": [{"where": d.where, **_rule_json(d), "keep": str(d.keep)} for d in policy.denies],
        "limits": {"requests_per_minute": policy.limits.requests_per_minute, "per": "caller and gate replica"},
        "revoked_users": sorted(policy.revoked_users), "revoked_tokens": len(policy.revoked_tokens),
    }


def denial_json(d: Denial) -> dict[str, Any]:
    return {"ts": round(d.ts, 3), "who": d.who, "via": d.via, "method": d.method, "path": d.path,
            "status": d.status, "reason": d.reason, "resources": [r.as_json() for r in d.resources],
            "request_id": d.request_id}


# --- HTML -------------------------------------------------------------------------------------------

def _code(items: Iterable[object]) -> str:
    shown = [f"<code>{html.escape(str(i))}</code>" for i in items]
    return ", ".join(shown) if shown else "-"


def _table(caption: str, headers: list[str], rows: list[list[str]], empty: str) -> str:
    """A table of already-escaped cells (or `empty` when there are no rows)."""
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table aria-label="{html.escape(caption)}"><tr>{head}</tr>{body}</table>'


def _who_can_section(kind: str, name: str, answer: WhoCan | None, problem: str) -> str:
    options = "".join(f'<option value="{k}"{" selected" if k == kind else ""}>{k}</option>' for k in KINDS)
    form = ('<h2>Who can</h2><form method="get" action="/_gate/admin">'
            f'<label>Name<input name="name" value="{html.escape(name)}" placeholder="vision/resnet"></label>'
            f'<label>Kind<select name="kind">{options}</select></label>'
            '<button type="submit">Who can reach it</button></form>')
    if problem:
        return form + f'<p class="err">{html.escape(problem)}</p>'
    if answer is None:
        return form
    rows = [[_code([h.subject]), html.escape(str(h.level)), html.escape(h.rule)] for h in answer.holders]
    out = form + f"<h3>{html.escape(answer.kind)} <code>{html.escape(answer.name)}</code></h3>"
    out += _table("who can", ["subject", "level", "rule"], rows, "Nobody but admins holds more than none.")
    if not any(h.subject == "everyone" for h in answer.holders):
        out += "<p>Everyone else: none.</p>"
    if answer.capped:
        capped = [[_code([h.subject]), html.escape(str(h.level)), html.escape(h.rule)] for h in answer.capped]
        out += "<p>Capped below everyone's level by denies:</p>" + _table("capped", ["subject", "level", "rule"],
                                                                             capped, "")
    return out


def _policy_sections(policy: Policy) -> str:
    limit = policy.limits.requests_per_minute
    summary = (f"<h2>Policy</h2><p>From {_code(policy.sources)}. Admins: {_code(policy.admins)}. "
               f"Names no team owns: <code>{html.escape(str(policy.default))}</code>. Requests per minute: "
               + (f"<code>{limit}</code> per caller on each gate replica" if limit else "no limit")
               + f". Revoked users: {_code(sorted(policy.revoked_users))}; revoked tokens: "
               f"{len(policy.revoked_tokens)}.</p>")
    teams = [[_code([t.name]), _code(t.members), _code(t.maintainers), _code(t.experiments), _code(t.models),
              _code(sorted(t.protected_aliases))] for t in policy.teams.values()]
    grants = [[html.escape(g.where), _code(g.to), _code(g.experiments), _code(g.models),
               html.escape(str(g.permission))] for g in policy.grants]
    denies = [[html.escape(d.where), _code(d.to), _code(d.experiments), _code(d.models), html.escape(str(d.keep))]
              for d in policy.denies]
    return (summary
            + "<h2>Teams</h2>" + _table("teams", ["team", "members (edit)", "maintainers (manage)", "experiments",
                                                  "models", "protected aliases"], teams, "No teams.")
            + "<h2>Grants</h2>" + _table("grants", ["rule", "to", "experiments", "models", "permission"], grants,
                                         "No grants.")
            + "<h2>Denies</h2>" + _table("denies", ["rule", "to", "experiments", "models", "keep"], denies,
                                         "No denies."))


def _denials_section(denials: list[Denial], kept: int) -> str:
    rows = []
    for d in denials:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.ts))
        resources = "<br>".join(f"{html.escape(r.kind)} <code>{html.escape(r.name)}</code>: needs "
                                f"{html.escape(str(r.needed))}, has {html.escape(str(r.have))} "
                                f"({html.escape(r.reason)})" for r in d.resources)
        rows.append([html.escape(when), _code([d.who or "(no credential)"]), html.escape(d.method),
                     _code([d.path]), str(d.status), html.escape(d.reason) + (f"<br>{resources}" if resources else ""),
                     _code([d.request_id or "-"])])
    return (f"<h2>Last refusals on this replica</h2><p>Newest first; at most {SHOWN_DENIALS} shown, the last "
            f"{kept} kept in memory (the audit log has them all).</p>"
            + _table("refusals", ["time (UTC)", "who", "method", "path", "status", "reason", "request id"], rows,
                     "No refusals since this replica started."))
