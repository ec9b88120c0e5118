"""What the gate's own pages share (`pages.py`, `account.py`): the running services, who is calling, whether
a browser or an API client asks, the same-origin check of browser posts, and small request bodies."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .errors import GateError, Unauthenticated, error_response
from .identity import Identity
from .services import Services


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept or "text/html" not in accept


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def credential(request: Request) -> Identity | None | Response:
    """The caller if the request carries a credential, None if it carries none, 401 JSON if it is invalid."""
    rt = services_of(request)
    try:
        return await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current,
                                       client_of(request))
    except GateError as err:
        return error_response(err)


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


async def caller(request: Request) -> Identity | Response:
    """The signed-in caller, or the answer for one who is not (sign-in redirect for browsers, else 401 JSON)."""
    rt = services_of(request)
    try:
        ident = await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current,
                                        client_of(request))
        if ident is None:
            raise Unauthenticated("Authentication required.")
    except GateError as err:
        if not wants_json(request):
            return RedirectResponse(f"/_gate/login?next={request.url.path}", status_code=302)
        return error_response(err)
    return ident


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


def _origin_of(request: Request, rt: Services) -> str:
    if rt.public_origin:
        return rt.public_origin
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


async def signed_in_now(request: Request) -> Identity | None:
    """The caller if the request carries a valid credential, else None (a stale cookie is "not signed in")."""
    rt = services_of(request)
    try:
        return await rt.authn.identify({k.lower(): v for k, v in request.headers.raw}, rt.store.current,
                                       client_of(request))
    except GateError:
        return None
