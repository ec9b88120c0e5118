"""create_app: the gate as one ASGI application.

`/_gate/...` goes to a small Starlette app (sign-in, who am I, health); every other request goes
to `Gate`, the raw-ASGI hot path. Resources (the upstream session, policy store, caches and the
policy watcher) live in the lifespan.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware

from . import pages
from .artifact_server import INTERNAL_PREFIX, PART_PATH, ArtifactServer
from .artifacts import Stores
from .audit import Audit
from .authn import Authenticator
from .compression import Compression
from .errors import GateError, UpstreamUnavailable, error_headers
from .forward import Receive, Send, Upstream, send_bytes
from .gate import Gate
from .jwt_bearer import JwtValidator
from .metrics import Metrics
from .oidc import OidcLogin
from .oidc_config import Discovery, OidcSettings
from .policy import PolicyStore
from .resources import Resolver
from .routes import RouteTable
from .settings import Settings

log = logging.getLogger("mlflow_gate")


class Runtime:
    """What the running gate holds; filled in by the lifespan."""

    def __init__(self, settings: Settings, upstream_url: str) -> None:
        self.settings = settings
        self.upstream_url = upstream_url
        self.secret_key = settings.secret_key
        self.session_lifetime = settings.session_lifetime
        parts = urlsplit(settings.public_url) if settings.public_url else None
        self.public_origin = f"{parts.scheme}://{parts.netloc}" if parts else None
        self.secure_cookies = bool(parts and parts.scheme == "https")
        self.store = PolicyStore(settings.policy)
        self.http = httpx.AsyncClient(timeout=10, follow_redirects=False)
        oidc_settings = OidcSettings.from_env()
        self.oidc = OidcLogin(oidc_settings, settings.public_url) if oidc_settings else None
        jwt = None
        if oidc_settings and oidc_settings.audience:
            jwt = JwtValidator(oidc_settings, Discovery(oidc_settings, self.http), self.http)
        self.authn = Authenticator(settings.secret_key, jwt=jwt)
        self.table = RouteTable()
        self.gate: Gate | None = None
        self.metrics = Metrics(self.store)
        self.stores = Stores(settings.artifacts_destination)
        self.artifacts: ArtifactServer | None = None
        self.upstream: Upstream | None = None
        self._health: tuple[float, bool, str] = (0.0, False, "not checked yet")

    async def upstream_health(self) -> tuple[bool, str]:
        checked, ok, detail = self._health
        if time.monotonic() - checked < 2 or self.upstream is None:
            return ok, detail
        try:
            status, _ = await self.upstream.get_json("/health")
            ok, detail = status == 200, f"{self.upstream_url}/health answered {status}"
        except UpstreamUnavailable as exc:
            ok, detail = False, exc.message
        self._health = (time.monotonic(), ok, detail)
        return ok, detail


async def _watch_policy(store: PolicyStore, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            store.refresh()
        except Exception:  # a watcher that dies would silently freeze the policy
            log.exception("policy watcher error")


def create_app(settings: Settings, *, upstream_url: str, policy_poll: float = 1.0) -> Any:
    rt = Runtime(settings, upstream_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream = Upstream.open(upstream_url)
        rt.upstream = upstream
        resolver = Resolver(upstream)
        upstream.metrics = rt.metrics
        rt.artifacts = ArtifactServer(rt.stores, resolver, rt.store, settings.secret_key, settings.public_url,
                                      internal_from_anywhere=settings.internal_from_anywhere, metrics=rt.metrics)
        rt.gate = Gate(store=rt.store, authn=rt.authn, upstream=upstream, resolver=resolver,
                       table=rt.table, public_origin=rt.public_origin, artifacts=rt.artifacts,
                       audit=Audit(rt.metrics))
        watcher = asyncio.create_task(_watch_policy(rt.store, policy_poll))
        try:
            yield
        finally:
            watcher.cancel()
            await upstream.close()
            await rt.http.aclose()

    # authlib keeps the sign-in's state, nonce and PKCE verifier in this short-lived signed cookie.
    middleware = [Middleware(SessionMiddleware, secret_key=settings.secret_key, session_cookie="mlflow_gate_signin",
                             max_age=600, same_site="lax", https_only=rt.secure_cookies)]
    pages_app = Starlette(routes=pages.routes(rt), middleware=middleware, lifespan=lifespan)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or rt.gate is None or rt.artifacts is None:
            await pages_app(scope, receive, send)  # type: ignore[arg-type]
        elif not path.startswith("/_gate/"):
            start, status = time.perf_counter(), 0

            async def counted(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await rt.gate(scope, receive, counted)
            finally:
                rt.metrics.request(scope["method"], status or 500, time.perf_counter() - start)
        elif path.startswith(INTERNAL_PREFIX + "/"):
            await rt.artifacts.internal(scope, receive, send)
        elif path.startswith(PART_PATH):
            try:
                await rt.artifacts.upload_part(scope, receive, send)
            except GateError as err:
                await send_bytes(send, err.status, error_headers(err), err.body())
        else:
            await pages_app(scope, receive, send)  # type: ignore[arg-type]

    wrapped = Compression(app)      # outermost: coded answers and decoded request bodies (compression.py)
    wrapped.runtime = rt
    return wrapped
