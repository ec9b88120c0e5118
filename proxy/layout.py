"""The look of the gate's own pages: one small set in the MLflow UI's style (its font, colours and spacing),
no framework. `page()` wraps a body in the shared shell: the product name, who is signed in, the way back to
MLflow, the gate's other pages and sign-out. The style sheet and the one script are static files
(`proxy/static/`, served at /_gate/static/), so the Content-Security-Policy allows no inline code at all.
Pages that other modules add (an admin page) use `page()` and the helpers below."""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .identity import Identity

STATIC = Path(__file__).with_name("static")
ASSETS = {"gate.css": "text/css; charset=utf-8", "gate.js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"cache-control": "no-store", "x-frame-options": "DENY", "content-security-policy": CSP,
           "referrer-policy": "same-origin", "x-content-type-options": "nosniff"}

_SHELL = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · MLflow</title>
<link rel="stylesheet" href="/_gate/static/gate.css"><script src="/_gate/static/gate.js" defer></script></head>
<body><header class="bar"><a class="brand" href="/"><span>ml<span class="flow">flow</span></span>
<span class="product">gate</span></a>{nav}</header><main class="{width}">{body}</main></body></html>"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, who: Identity | None = None, status: int = 200, narrow: bool = False,
         admin: bool = False) -> HTMLResponse:
    """A page of the gate: `body` (HTML) in the shell; with `who`, the navigation of a signed-in person."""
    return HTMLResponse(_SHELL.format(title=esc(title), nav=_nav(who, admin), body=body,
                                      width="narrow" if narrow else ""),
                        status_code=status, headers=HEADERS)


def _nav(who: Identity | None, admin: bool) -> str:
    if who is None:
        return ""
    links = [("/", "MLflow"), ("/_gate/me", "Your access"), ("/_gate/tokens", "Personal tokens")]
    if admin:
        links.append(("/_gate/admin", "Admin"))
    items = "".join(f'<a href="{href}">{text}</a>' for href, text in links)
    return (f'<nav>{items}<span class="who">Signed in as <b>{esc(who.id)}</b></span>'
            '<a href="/_gate/logout">Sign out</a></nav>')


def card(*parts: str) -> str:
    return '<section class="card">' + "".join(parts) + "</section>"


def notice(text: str, kind: str = "error") -> str:
    """A one-line message (plain text): error | ok."""
    return f'<p class="notice {kind}" role="{"alert" if kind == "error" else "status"}">{esc(text)}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "Nothing yet.") -> str:
    """A table of cells that are HTML already (escape text with `esc`)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def level_tag(level: object, cap: bool = False) -> str:
    text = f"at most {level}" if cap else str(level)
    return f'<span class="tag {"cap" if cap else esc(level)}">{esc(text)}</span>'


def codes(values: Iterable[str]) -> str:
    return ", ".join(f"<code>{esc(v)}</code>" for v in values) or '<span class="muted">none</span>'


async def asset(request: Request) -> Response:
    """/_gate/static/gate.css and gate.js (no credential needed: the sign-in page uses them)."""
    name = request.path_params["name"]
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                    headers={"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"})
