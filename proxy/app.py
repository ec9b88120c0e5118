"""create_app: the gate as one ASGI application.

`/_gate/...` goes to the gate's own pages (a small Starlette app: sign-in, who am I, tokens, health, admin),
the internal artifact endpoint and multipart part uploads; every other request goes to `Gate`, the
raw-ASGI hot path. The services (`services.py`) are built whole in the lifespan.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware

from . import admin, pages
from .artifact_server import INTERNAL_PREFIX, PART_PATH
from .compression import Compression
from .errors import GateError, send_error
from .forward import Receive, Send
from .gate import Gate
from .services import Services, open_services
from .settings import Settings


def create_app(settings: Settings, *, upstream_url: str, policy_poll: float = 1.0,
               audit_sink: Callable[[str], None] | None = None) -> Any:
    running: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, upstream_url, policy_poll=policy_poll, audit_sink=audit_sink) as services:
            app.state.services = services
            running["services"], running["gate"] = services, Gate(services)
            try:
                yield
            finally:
                running.clear()

    # authlib keeps the sign-in's state, nonce and PKCE verifier in this short-lived signed cookie.
    secure = (settings.public_url or "").startswith("https://")
    middleware = [Middleware(SessionMiddleware, secret_key=settings.secret_key, session_cookie="mlflow_gate_signin",
                             max_age=600, same_site="lax", https_only=secure)]
    pages_app = Starlette(routes=pages.routes() + admin.routes(), middleware=middleware, lifespan=lifespan)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or "gate" not in running:
            await pages_app(scope, receive, send)  # type: ignore[arg-type]
        elif not path.startswith("/_gate/"):
            await running["gate"](scope, receive, send)
        elif path.startswith(INTERNAL_PREFIX + "/"):
            await _services(running).artifacts.internal(scope, receive, send)
        elif path.startswith(PART_PATH):
            try:
                await _services(running).artifacts.upload_part(scope, receive, send)
            except GateError as err:
                await send_error(send, err)
        else:
            await pages_app(scope, receive, send)  # type: ignore[arg-type]

    return Compression(app)     # outermost: coded answers, decoded request bodies (compression.py)


def _services(running: dict[str, Any]) -> Services:
    services: Services = running["services"]
    return services
