"""The identity provider's settings (MLFLOW_GATE_OIDC_*) and its discovery document, fetched once and cached."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .settings import env


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str | None
    audience: str | None            # expected `aud` of bearer JWTs; None disables JWT bearer tokens
    user_claim: str = "email"
    groups_claim: str = "groups"
    scopes: str = "openid email profile groups"
    cli_client_id: str = "mlflow-cli"
    jwks_refresh_interval: float = 5.0

    @classmethod
    def from_env(cls) -> OidcSettings | None:
        issuer = env("OIDC_ISSUER")
        if not issuer:
            return None
        client_id = env("OIDC_CLIENT_ID")
        if not client_id:
            raise ValueError("MLFLOW_GATE_OIDC_ISSUER is set but MLFLOW_GATE_OIDC_CLIENT_ID is not")
        return cls(issuer=issuer.rstrip("/"), client_id=client_id, client_secret=env("OIDC_CLIENT_SECRET"),
                   audience=env("OIDC_AUDIENCE"), user_claim=env("OIDC_USER_CLAIM", "email") or "email",
                   groups_claim=env("OIDC_GROUPS_CLAIM", "groups") or "groups",
                   scopes=env("OIDC_SCOPES", cls.scopes) or cls.scopes,
                   cli_client_id=env("OIDC_CLI_CLIENT_ID", "mlflow-cli") or "mlflow-cli",
                   jwks_refresh_interval=float(env("OIDC_JWKS_REFRESH_INTERVAL", "5") or 5))

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"


class Discovery:
    """The provider's metadata, fetched lazily with a timeout and kept for an hour."""

    def __init__(self, settings: OidcSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self._doc: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._doc is None or time.monotonic() - self._at > 3600:
                r = await self.http.get(self.settings.discovery_url, timeout=10)
                r.raise_for_status()
                doc = r.json()
                if doc.get("issuer", "").rstrip("/") != self.settings.issuer:
                    raise ValueError(f"the provider's discovery names issuer {doc.get('issuer')!r}, "
                                     f"not {self.settings.issuer!r}")
                self._doc, self._at = doc, time.monotonic()
            return self._doc
