"""What the running gate holds, built whole when it starts and closed when it stops.

`open_services` is the app's lifespan: the policy store and its watcher, the upstream session, the
resolver's caches, the credential chain (with the keys of the identity provider and of the policy's
issuers), the artifact stores, the audit writer (and its ring of the last denials), the metrics, the
per-caller request budgets. Nothing
here is a module global, so tests can run many gates in one process.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from prometheus_client import start_http_server

from . import upstream_version
from .artifact_server import ArtifactServer
from .artifacts import Stores
from .audit import Audit, Denials
from .authn import Authenticator
from .errors import UpstreamUnavailable
from .filters import Searches
from .forward import Upstream
from .issuers import Issuers
from .jwt_bearer import provider_verifier
from .limits import Budgets
from .metrics import Metrics
from .oidc import OidcLogin
from .oidc_config import Discovery, OidcSettings
from .policy import PolicyStore
from .provider_sessions import ProviderSessions
from .resources import Resolver
from .routes import RouteTable
from .settings import Settings, env

log = logging.getLogger("mlflow_gate")


@dataclass
class Services:
    settings: Settings
    upstream_url: str
    store: PolicyStore
    http: httpx.AsyncClient
    oidc: OidcLogin | None
    authn: Authenticator
    table: RouteTable
    metrics: Metrics
    upstream: Upstream
    resolver: Resolver
    searches: Searches
    artifacts: ArtifactServer
    audit: Audit
    public_origin: str | None
    secure_cookies: bool
    denials: Denials                                      # the last refusals (the admin page's), this replica's
    budgets: Budgets                                      # limits.requests_per_minute, this replica's
    version: upstream_version.UpstreamVersion | None = None     # which MLflow the gate fronts (watched)
    _health: tuple[float, bool, str] = field(default=(0.0, False, "not checked yet"))

    @property
    def secret_key(self) -> str:
        return self.settings.secret_key

    @property
    def session_lifetime(self) -> int:
        return self.settings.session_lifetime

    async def upstream_health(self) -> tuple[bool, str]:
        """Whether the upstream answers /health (checked at most every 2 s)."""
        checked, ok, detail = self._health
        if time.monotonic() - checked < 2:
            return ok, detail
        try:
            status, _ = await self.upstream.get_json("/health")
            ok, detail = status == 200, f"{self.upstream_url}/health answered {status}"
        except UpstreamUnavailable as exc:
            ok, detail = False, exc.message
        self._health = (time.monotonic(), ok, detail)
        return ok, detail


@contextlib.asynccontextmanager
async def open_services(settings: Settings, upstream_url: str, *, policy_poll: float = 1.0,
                        audit_sink: Callable[[str], None] | None = None) -> AsyncIterator[Services]:
    store = PolicyStore(settings.policy)
    http = httpx.AsyncClient(timeout=10, follow_redirects=False)
    upstream = Upstream.open(upstream_url)
    watcher = asyncio.create_task(_watch_policy(store, policy_poll))
    services = _build(settings, upstream_url, store, http, upstream, audit_sink)
    versions = upstream_version.start(upstream, services.table)
    services.version = versions
    listener = None
    try:
        if settings.metrics_port is not None:
            listener, _ = start_http_server(settings.metrics_port, settings.metrics_host, services.metrics.registry)
            log.info("metrics on http://%s:%d/_gate/metrics", settings.metrics_host, settings.metrics_port)
        yield services
    finally:
        versions.stop()
        if listener is not None:
            listener.shutdown()
            listener.server_close()
        watcher.cancel()
        services.authn.close()
        if services.authn.issuers is not None:
            await services.authn.issuers.aclose()
        await upstream.close()
        await http.aclose()


def _build(settings: Settings, upstream_url: str, store: PolicyStore, http: httpx.AsyncClient, upstream: Upstream,
           audit_sink: Callable[[str], None] | None) -> Services:
    parts = urlsplit(settings.public_url) if settings.public_url else None
    oidc_settings = OidcSettings.from_env()
    jwt = provider = None
    if oidc_settings:
        discovery = Discovery(oidc_settings, http)
        provider = ProviderSessions(oidc_settings, discovery, http, settings.session_check)
        if oidc_settings.audience:
            jwt = provider_verifier(oidc_settings, discovery, http)
    # MLFLOW_GATE_JWKS_REFRESH_INTERVAL: how often an unknown kid may re-fetch one issuer's keys (5 s)
    issuers = Issuers(http, float(env("JWKS_REFRESH_INTERVAL", "5") or 5))
    metrics = Metrics(store)
    upstream.metrics = metrics
    resolver = Resolver(upstream)
    denials = Denials()
    artifacts = ArtifactServer(Stores(settings.artifacts_destination), resolver, store, settings.secret_key,
                               settings.public_url, internal_from_anywhere=settings.internal_from_anywhere,
                               metrics=metrics)
    return Services(
        settings=settings, upstream_url=upstream_url, store=store, http=http,
        oidc=OidcLogin(oidc_settings, settings.public_url) if oidc_settings else None,
        authn=Authenticator(settings.secret_key, jwt=jwt, provider=provider, issuers=issuers), table=RouteTable(),
        metrics=metrics, upstream=upstream, resolver=resolver, searches=Searches(upstream, settings.secret_key),
        artifacts=artifacts, audit=Audit(metrics, audit_sink, denials),
        denials=denials, budgets=Budgets(),
        public_origin=f"{parts.scheme}://{parts.netloc}" if parts else None,
        secure_cookies=bool(parts and parts.scheme == "https"))


async def _watch_policy(store: PolicyStore, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            store.refresh()
        except Exception:  # a watcher that dies would silently freeze the policy
            log.exception("policy watcher error")
