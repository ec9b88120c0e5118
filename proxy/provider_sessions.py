"""Sessions signed in with the identity provider, checked with the provider itself.

The provider is the state that every gate replica already shares: a session cookie keeps the
provider's refresh token (encrypted), the gate asks the provider's introspection endpoint (RFC 7662)
whether that token is still active, at most once per `every` seconds per session and replica, and
sign-out revokes it (RFC 7009). So a copy of the cookie stops working on every replica within
`every` seconds of a sign-out, or of the provider ending the session (sign-out at the provider,
an account disabled there). While the provider cannot be reached, sessions keep working (the
signature already proves the gate issued them; the verdict is kept for `every` seconds too, so no
request waits on an unreachable provider more than once per interval) and the failure is logged.
"""
from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .cache import LRU
from .oidc_config import Discovery, OidcSettings

log = logging.getLogger("mlflow_gate.sessions")


class ProviderSessions:
    def __init__(self, settings: OidcSettings, discovery: Discovery, http: httpx.AsyncClient, every: float) -> None:
        self.settings, self.discovery, self.http, self.every = settings, discovery, http, every
        self._checked: LRU[str, bool] = LRU(100_000, ttl=every)
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._warned = 0.0

    async def active(self, sid: str, refresh_token: str) -> bool:
        known = self._checked.get(sid)
        if known is not None:
            return known
        task = self._inflight.get(sid)
        if task is None:                     # concurrent requests of one session share one check
            task = asyncio.ensure_future(self._check(sid, refresh_token))
            self._inflight[sid] = task
            task.add_done_callback(lambda _: self._inflight.pop(sid, None))
        return await asyncio.shield(task)

    async def _check(self, sid: str, refresh_token: str) -> bool:
        verdict = await self._introspect(refresh_token) is not False
        self._checked.put(sid, verdict)      # also while the provider cannot say: no call per request then
        return verdict

    async def _introspect(self, refresh_token: str) -> bool | None:
        """True/False as the provider says; None when it cannot say (no endpoint, unreachable)."""
        try:
            endpoint = (await self.discovery.get()).get("introspection_endpoint")
            if not endpoint:
                return None
            r = await self.http.post(endpoint, data={"token": refresh_token, "token_type_hint": "refresh_token"},
                                     auth=self._auth(), timeout=3)
            r.raise_for_status()
            return bool(r.json().get("active"))
        except (httpx.HTTPError, ValueError) as exc:
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("cannot check sessions with the identity provider (%s); they keep working meanwhile",
                            exc.__class__.__name__)
            return None

    async def revoke(self, sid: str, refresh_token: str) -> None:
        self._checked.put(sid, False)
        try:
            endpoint = (await self.discovery.get()).get("revocation_endpoint")
            if endpoint:
                r = await self.http.post(endpoint, data={"token": refresh_token, "token_type_hint": "refresh_token"},
                                         auth=self._auth(), timeout=5)
                r.raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("the identity provider did not revoke a signed-out session's token (%s); other replicas "
                        "accept a copy of that cookie until it expires", exc.__class__.__name__)

    def _auth(self) -> tuple[str, str]:
        return (self.settings.client_id, self.settings.client_secret or "")

